"""``pyvirtio bench blk``: the load generator against ``pyvirtio serve blk`` and
qemu-storage-daemon (short runs), its numbers' plumbing, and its errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from pyvirtio.bench.blk import (BlkBenchConfig, bench_driver_class, format_result, latency_summary, parse_size,
                                progress_line, run)
from pyvirtio.bench.peers import start_pyvirtio, start_qsd
from pyvirtio.cli import main
from pyvirtio.errors import UsageError
from pyvirtio.testing.env import require






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
def test_ring_layout_is_chosen_and_reported(pyvirtio_blk, capsys):
    # pyvirtio serve offers packed rings: auto takes them, split hides them; the result says which.
    for ring, expected in (("auto", "packed"), ("split", "split"), ("packed", "packed")):
        r = run(BlkBenchConfig(pyvirtio_blk.socket_path, iodepth=4, runtime=0.3, ring=ring))
        assert r.ring == expected and r.ios > 10 and r.as_dict()["ring"] == expected
    assert main(["bench", "blk", f"--socket-path={pyvirtio_blk.socket_path}", "--ring=split",
                 "--runtime=0.2", "--iodepth=2", "--no-progress"]) == 0
    assert "ring=split" in capsys.readouterr().out
    with pytest.raises(UsageError):
        BlkBenchConfig("x", ring="ring").check()


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
    (job,) = result["jobs"]  # fio's --output-format=json layout, for fio's tools
    read = job["read"]
    assert read["iops"] == result["iops"] and read["total_ios"] == result["ios"] and job["write"]["iops"] == 0
    assert read["bw"] == round(result["iops"] * (1 << 20) / 1024)
    assert read["clat_ns"]["percentile"]["99.000000"] == result["lat_ns"]["p99"]
    assert read["clat_ns"]["min"] == result["lat_ns"]["min"] and job["job options"]["rw"] == "read"
    assert main(["bench", "blk", sock, "--queues=3", "--runtime=0.2", "--no-progress"]) == 1
    assert "has 2 request queue(s)" in capsys.readouterr().err
    assert main(["bench", "blk", sock, "--bs=1000"]) == 2
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
    require(shutil.which("qemu-storage-daemon") is not None, "qemu-storage-daemon")
    with start_qsd(str(tmp_path / "q.sock"), null_size=64 << 20) as peer:
        r = run(BlkBenchConfig(peer.socket_path, iodepth=32, runtime=0.5))
        assert r.ios > 100 and r.max_inflight == 32
        assert r.ring == "split"  # libvhost-user has no packed ring
        with pytest.raises(UsageError, match="RING_PACKED"):
            run(BlkBenchConfig(peer.socket_path, iodepth=2, runtime=0.2, ring="packed"))
        assert main(["bench", "blk", f"--socket-path={peer.socket_path}", "--bs=1M", "--rw=read",
                     "--iodepth=4", "--runtime=0.3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "read: IOPS=" in out and "clat percentiles" in out


@pytest.mark.peer
@pytest.mark.timeout(120)
def test_qemu_storage_daemon_in_an_iothread_with_a_polling_budget(tmp_path, image):
    """benchmarks/blk_vhost_user.py's qsd-iothread with ``--poll-us``: the IOThread takes the
    budget (poll-max-ns) and serves, verified reads included."""
    require(shutil.which("qemu-storage-daemon") is not None, "qemu-storage-daemon")
    with start_qsd(str(tmp_path / "q.sock"), image, iothread=True, poll_max_ns=65536) as peer:
        assert "poll-max-ns=65536" in " ".join(peer.process.args)
        r = run(BlkBenchConfig(peer.socket_path, iodepth=4, runtime=0.3, verify=True, size=8 << 20))
        assert r.ios > 50 and r.verified == r.ios


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


# --- --verify: stamps before the timed phase, every read checked ---------------------------------

from pyvirtio.bench.blk import DataMismatch, Stamp  # noqa: E402
from pyvirtio.bench.peers import InProcessBackend  # noqa: E402
from pyvirtio.devices.blk import BlkDevice  # noqa: E402
from pyvirtio.errors import RequestError  # noqa: E402
from pyvirtio.spec import blk as blk_spec  # noqa: E402


class _ReadHook(BlkDevice):
    """A BlkDevice that hands each read's data views to ``spoil(block_sector, views)``."""

    spoil = None  # (sector, views) -> None, or an int status to answer instead of reading

    def handle_chain(self, queue_index, chain):
        rtype, _, sector = blk_spec.BLK_REQ_HEADER.unpack_from(chain.readable[0])
        if rtype != blk_spec.BlkReqType.IN or self.spoil is None:
            return super().handle_chain(queue_index, chain)
        status = self.spoil(sector, chain.writable_views(0, chain.writable_len - 1))
        if status is None:
            return super().handle_chain(queue_index, chain)
        chain.writable[-1][-1] = status
        return 1


def _swap_sectors(sector, views):
    return None if sector else "swap"


@pytest.fixture
def hooked(tmp_path, image):
    with InProcessBackend(_ReadHook(image), str(tmp_path / "hook.sock")) as be:
        yield be


def test_stamp_checks_every_sector_and_names_the_first_wrong_one():
    st = Stamp(4096, range(16))
    buf = memoryview(bytearray(4096)).cast("Q")
    st.fill(buf, 7)
    assert st.check(buf, 7) and not st.check(buf, 8)
    buf[64 * 3] ^= 1  # sector 3's first word
    assert not st.check(buf, 7)
    assert "sector 3 (LBA 59)" in str(st.mismatch(buf, 7))
    st.poison(buf, 7)
    err = str(st.mismatch(buf, 7))
    assert "block 7" in err and "sector 0 (LBA 56)" in err and "poison" in err


@pytest.mark.peer
@pytest.mark.parametrize("rw", ["randread", "read", "randwrite", "write"])
def test_verify_passes_on_a_good_backend(hooked, rw):
    r = run(BlkBenchConfig(hooked.socket_path, rw=rw, iodepth=8, runtime=0.5,
                           size=1 << 20, verify=True))
    assert r.verify and r.ios > 10
    assert r.stamped_blocks == 256 if rw in ("read", "write") else 0 < r.stamped_blocks <= 256
    assert r.verified == (r.ios if rw.endswith("read") else r.stamped_blocks)


@pytest.mark.peer
def test_verify_fails_when_the_image_changes_after_the_stamp(tmp_path, image):
    def overwrite_block_3():  # block 5's stamp where block 3's belongs: a misplaced block
        with open(image, "r+b") as f:
            f.seek(5 * 4096)
            five = f.read(4096)
            f.seek(3 * 4096)
            f.write(five)

    with InProcessBackend(BlkDevice(image), str(tmp_path / "b.sock")) as be:
        cfg = BlkBenchConfig(be.socket_path, rw="read", iodepth=4, runtime=0.5, size=64 << 10,
                             verify=True)
        with pytest.raises(DataMismatch) as info:
            run(cfg, stamped=overwrite_block_3)
    msg = str(info.value)
    assert info.value.block == 3 and "sector 0 (LBA 24)" in msg
    assert "the stamp of block 3 sector 0 (LBA 24), found" in msg
    assert msg.endswith("the stamp of block 5 sector 0 (LBA 40)")


@pytest.mark.peer
def test_verify_catches_misplaced_sectors_and_missing_copies(hooked):
    def swap(sector, views):  # the device's copy puts sector 1 of every block where sector 0 goes
        os.preadv(hooked.device.fd, views, sector * 512)
        v = views[0]
        v[:512], v[512:1024] = bytes(v[512:1024]), bytes(v[:512])
        return blk_spec.BlkStatus.OK

    cfg = BlkBenchConfig(hooked.socket_path, rw="randread", iodepth=4, runtime=0.5,
                         size=64 << 10, verify=True)
    hooked.device.spoil = swap
    with pytest.raises(DataMismatch, match=r"sector 0 .*found .*the stamp of block \d+ sector 1"):
        run(cfg)
    hooked.device.spoil = lambda sector, views: blk_spec.BlkStatus.OK  # OK, but no data copied
    with pytest.raises(DataMismatch, match="poison"):
        run(cfg)
    hooked.device.spoil = lambda sector, views: blk_spec.BlkStatus.IOERR
    with pytest.raises(RequestError, match=r"a read request of block \d+ failed with status IOERR"):
        run(cfg)


@pytest.mark.peer
def test_cli_verify_failure_is_exit_1_naming_the_block(hooked, capsys):
    hooked.device.spoil = lambda sector, views: (
        None if sector != 16 else blk_spec.BlkStatus.OK)  # block 2 (of 4 KiB) is never copied
    sock = f"--socket-path={hooked.socket_path}"
    assert main(["bench", "blk", sock, "--rw=read", "--size=32k", "--runtime=0.3", "--verify",
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "verify: block 2 " in err and "the stamp of block 2 sector 0 (LBA 16), found" in err
    assert "poison" in err
    hooked.device.spoil = None
    assert main(["bench", "blk", sock, "--rw=read", "--size=32k", "--runtime=0.3", "--verify",
                 "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verify"] is True and result["verified"] == result["ios"] > 0


@pytest.mark.peer
def test_verify_refuses_to_stamp_a_huge_disk_without_size(hooked, monkeypatch):
    import pyvirtio.bench.blk as engine
    monkeypatch.setattr(engine, "STAMP_LIMIT", 1 << 20)
    with pytest.raises(UsageError, match="give --size"):
        run(BlkBenchConfig(hooked.socket_path, rw="read", runtime=0.2, verify=True))


@pytest.mark.peer
def test_verify_against_qemu_storage_daemon(tmp_path, image):
    require(shutil.which("qemu-storage-daemon") is not None, "qemu-storage-daemon")
    with start_qsd(str(tmp_path / "q.sock"), image) as peer:
        for rw, bs in (("randread", 4096), ("read", 1 << 20), ("randwrite", 4096)):
            r = run(BlkBenchConfig(peer.socket_path, rw=rw, bs=bs, iodepth=8, runtime=0.4,
                                   size=8 << 20, verify=True))
            assert r.verify and r.ios > 0 and r.verified > 0
    with start_qsd(str(tmp_path / "n.sock"), null_size=8 << 20) as peer:  # stores nothing
        with pytest.raises(DataMismatch):
            run(BlkBenchConfig(peer.socket_path, rw="read", iodepth=4, runtime=0.3, verify=True))


@pytest.mark.peer
def test_plot_draws_a_latency_histogram(pyvirtio_blk, tmp_path, capsys):
    png = tmp_path / "lat.png"
    assert main(["bench", "blk", f"--socket-path={pyvirtio_blk.socket_path}", "--runtime=0.3",
                 "--iodepth=4", "--no-progress", f"--plot={png}"]) == 0
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000
    assert "latency histogram" in capsys.readouterr().err


def test_plot_without_matplotlib_is_one_line_before_the_run(monkeypatch, capsys):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *a, **kw):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    # no back-end listens on this socket: the refusal comes before any connection is tried
    assert main(["bench", "blk", "--socket-path=/nonexistent.sock", "--plot=x.png"]) == 1
    err = capsys.readouterr().err
    assert "needs matplotlib" in err and "Traceback" not in err


# --- --seg-size: a request in several data descriptors, as a guest's scattered pages --------------


class _CountSegments(BlkDevice):
    """A BlkDevice that records how many descriptors each request came in."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.descriptors: set[int] = set()

    def handle_chain(self, queue_index, chain):
        self.descriptors.add(chain.descriptors)
        return super().handle_chain(queue_index, chain)


def test_seg_size_is_checked():
    assert BlkBenchConfig("x", bs=65536, seg_size=4096).segments == 16
    assert BlkBenchConfig("x", bs=65536).segments == 1
    for bad in (dict(bs=8192, seg_size=3000), dict(bs=8192, seg_size=0), dict(bs=12288, seg_size=8192),
                dict(bs=1 << 20, seg_size=512)):  # 2048 segments: more than a chain may have
        with pytest.raises(UsageError, match="--seg-size"):
            BlkBenchConfig("x", **bad).check()
    assert bench_driver_class(8, 32).max_indirect >= 34  # a whole request in one table
    assert bench_driver_class(8, 32).queue_size >= 8 * 34  # or straight in the ring


@pytest.mark.peer
@pytest.mark.parametrize("rw", ["randread", "randwrite"])
def test_seg_size_splits_every_request_and_the_data_still_verifies(tmp_path, image, rw):
    device = _CountSegments(image)
    with InProcessBackend(device, str(tmp_path / "seg.sock")) as be:
        r = run(BlkBenchConfig(be.socket_path, rw=rw, bs=32768, seg_size=4096, iodepth=4,
                               runtime=0.4, size=1 << 20, verify=True))
    assert r.segments == 8 and r.ios > 10 and r.verified > 0
    assert device.descriptors == {10}  # header, 8 pages, status: every request, stamps included
    assert "8 data descriptors per request" in format_result(r)


@pytest.mark.peer
def test_seg_size_beyond_the_devices_seg_max_is_refused(tmp_path, image):
    device = BlkDevice(image, queue_max_size=8)  # seg_max 6
    with InProcessBackend(device, str(tmp_path / "max.sock")) as be:
        with pytest.raises(UsageError, match="SEG_MAX"):
            run(BlkBenchConfig(be.socket_path, bs=32768, seg_size=4096, iodepth=1, runtime=0.2))


@pytest.mark.peer
def test_seg_size_against_qemu_storage_daemon(tmp_path, image):
    require(shutil.which("qemu-storage-daemon") is not None, "qemu-storage-daemon")
    with start_qsd(str(tmp_path / "q.sock"), image) as peer:
        r = run(BlkBenchConfig(peer.socket_path, rw="randread", bs=131072, seg_size=4096, iodepth=4,
                               runtime=0.4, size=8 << 20, verify=True))
        assert r.segments == 32 and r.verified > 0
    assert main(["bench", "blk", f"--socket-path={peer.socket_path}", "--seg-size=3k",
                 "--runtime=0.1", "--no-progress"]) == 2
