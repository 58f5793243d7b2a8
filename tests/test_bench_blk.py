"""``pyvirtio bench blk``: the load generator against ``pyvirtio serve blk`` and
qemu-storage-daemon (short runs), its numbers' plumbing, and its errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from pyvirtio.bench.blk import (BlkBenchConfig, bench_driver_class, latency_summary, parse_size,
                                progress_line, run)
from pyvirtio.bench.peers import start_pyvirtio, start_qsd
from pyvirtio.cli import main
from pyvirtio.errors import UsageError
from pyvirtio.testing.env import in_ci as _ci






@pytest.fixture
def pyvirtio_blk(tmp_path, image):
    with start_pyvirtio("blk", str(tmp_path / "pv.sock"), blk_file=image, num_queues=2) as peer:
        yield peer


def test_parse_size():
    assert [parse_size(s) for s in ("4k", "4K", "1M", "1MiB", "512", "64kb", "1g")] == \
        [4096, 4096, 1 << 20, 1 << 20, 512, 65536, 1 << 30]
    with pytest.raises(UsageError):
        parse_size("lots")


def test_latency_summary_percentiles():
    s = latency_summary(list(range(1, 1001)))
    assert s["min"] == 1 and s["max"] == 1000 and s["p50"] == 501 and s["p99"] == 991
    assert latency_summary([]) == {}


def test_config_is_checked():
    for bad in (dict(rw="trim"), dict(bs=1000), dict(iodepth=0), dict(queues=0), dict(runtime=0)):
        with pytest.raises(UsageError):
            BlkBenchConfig("x", **bad).check()


def test_queues_are_deep_enough_for_the_depth():
    assert bench_driver_class(1).queue_size >= 3
    assert bench_driver_class(32).queue_size >= 96
    assert bench_driver_class(1024).queue_size == 1024


@pytest.mark.peer
def test_randread_keeps_iodepth_in_flight(pyvirtio_blk):
    seen = []
    r = run(BlkBenchConfig(pyvirtio_blk.socket_path, rw="randread", iodepth=16, runtime=1.2),
            progress=lambda *a: seen.append(a))
    assert r.ios > 100 and r.max_inflight == 16
    assert r.lat_ns["min"] <= r.lat_ns["p50"] <= r.lat_ns["p99"] <= r.lat_ns["max"]
    assert r.kicks < r.ios  # batched and suppressed: not one kick per request
    assert seen and "IOPS" in progress_line(BlkBenchConfig("x"), *seen[0])


@pytest.mark.peer
def test_two_queues_sequential_write(pyvirtio_blk, image):
    r = run(BlkBenchConfig(pyvirtio_blk.socket_path, rw="write", bs=64 * 1024, iodepth=4,
                           queues=2, runtime=0.5, size=4 << 20))
    assert r.queues == 2 and r.max_inflight == 8 and r.ios > 0
    with open(image, "rb") as f:
        assert f.read(65536) != bytes(65536)  # the writes reached the disk


@pytest.mark.peer
def test_cli_json_and_errors(pyvirtio_blk, capsys):
    sock = f"--socket-path={pyvirtio_blk.socket_path}"
    assert main(["bench", "blk", sock, "--runtime=0.3", "--iodepth=2", "--bs=1M", "--rw=read",
                 "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bs"] == 1 << 20 and result["iops"] > 0 and "p99" in result["lat_ns"]
    assert main(["bench", "blk", sock, "--queues=3", "--runtime=0.2", "--no-progress"]) == 1
    assert "has 2 request queue(s)" in capsys.readouterr().err
    assert main(["bench", "blk", sock, "--bs=1000"]) == 1
    assert "multiple of 512" in capsys.readouterr().err
    assert main(["bench", "blk", "--socket-path=/nonexistent/x.sock"]) == 1
    assert "no such socket" in capsys.readouterr().err


@pytest.mark.peer
def test_read_only_device_refuses_a_write_benchmark(tmp_path, image, capsys):
    with start_pyvirtio("blk", str(tmp_path / "ro.sock"), blk_file=image, read_only=True) as peer:
        assert main(["bench", "blk", f"--socket-path={peer.socket_path}", "--rw=randwrite",
                     "--no-progress"]) == 1
    assert "read-only" in capsys.readouterr().err


@pytest.mark.peer
def test_against_qemu_storage_daemon(tmp_path, capsys):
    if shutil.which("qemu-storage-daemon") is None:
        if _ci():
            pytest.fail("qemu-storage-daemon is not installed; CI is set: not skipping")
        pytest.skip("qemu-storage-daemon is not installed")
    with start_qsd(str(tmp_path / "q.sock"), null_size=64 << 20) as peer:
        r = run(BlkBenchConfig(peer.socket_path, iodepth=32, runtime=0.5))
        assert r.ios > 100 and r.max_inflight == 32
        assert main(["bench", "blk", f"--socket-path={peer.socket_path}", "--bs=1M", "--rw=read",
                     "--iodepth=4", "--runtime=0.3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "read: IOPS=" in out and "clat percentiles" in out


def test_help_explains_every_flag():
    out = subprocess.run([sys.executable, "-m", "pyvirtio.cli", "bench", "blk", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--socket-path", "--rw", "--bs", "--iodepth", "--runtime", "--queues", "--json",
                 "--size", "--timeout", "--no-progress"):
        assert flag in out


def test_back_end_that_hangs_up_is_one_line(tmp_path, capsys):
    import socket
    import threading
    path = str(tmp_path / "hup.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def accept_and_close():
        conn, _ = listener.accept()
        conn.close()

    threading.Thread(target=accept_and_close, daemon=True).start()
    try:
        assert main(["bench", "blk", f"--socket-path={path}", "--no-progress"]) == 1
    finally:
        listener.close()
    err = capsys.readouterr().err.strip()
    assert "hung up" in err and "\n" not in err
