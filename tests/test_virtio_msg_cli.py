"""``pyvirtio serve TYPE --transport=virtio-msg`` for every device class, ``pyvirtio serve-bus``
and ``pyvirtio probe --transport=virtio-msg``: the real programs, driven by our driver-side bus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pyvirtio.cli import main
from pyvirtio.drivers.blk import BlkDriver
from pyvirtio.drivers.rng import RngDriver
from pyvirtio.spec.ids import DeviceType
from pyvirtio.testing.serve import ServeProcess, signal_thread, worker_threads
from pyvirtio.virtio_msg import BusClient, open_device

pytestmark = pytest.mark.timeout(120)


def _classes(tmp_path) -> dict[str, tuple[list[str], int]]:
    img, scsi_img = tmp_path / "disk.img", tmp_path / "scsi.img"
    img.write_bytes(bytes(1 << 20))
    scsi_img.write_bytes(bytes(1 << 20))
    shared = tmp_path / "shared"
    shared.mkdir()
    return {
        "blk": ([f"--blk-file={img}", "--serial=vmsg-cli"], DeviceType.BLOCK),
        "rng": ([], DeviceType.ENTROPY),
        "net": (["--null"], DeviceType.NET),
        "console": ([f"--port=name=org.test.0,path={tmp_path / 'port0.sock'}"], DeviceType.CONSOLE),
        "input": (["--kind=keyboard"], DeviceType.INPUT),
        "vsock": (["--guest-cid=7", f"--uds-path={tmp_path / 'vsock.uds'}"], DeviceType.VSOCK),
        "scsi": ([f"--disk={scsi_img}"], DeviceType.SCSI),
        "fs": ([f"--shared-dir={shared}"], DeviceType.FS),
    }


def test_serve_every_device_class_over_virtio_msg(tmp_path):
    from pyvirtio.commands.serve import BACKENDS
    classes = _classes(tmp_path)
    assert set(BACKENDS) <= set(classes), "a device class this test does not serve"
    socks = {name: str(tmp_path / f"{name}.sock") for name in classes}
    procs: dict[str, ServeProcess] = {}
    try:
        for name, (flags, _) in classes.items():  # started together: their imports overlap
            procs[name] = ServeProcess(tmp_path, name, [name, "--transport=virtio-msg",
                                                        f"--socket-path={socks[name]}", *flags], [])
        for name, proc in procs.items():
            proc_wait(proc, socks[name])
            client = BusClient.connect(socks[name], memory_size=1 << 20)
            try:
                ((n, info),) = list(client.devices())
                assert (n, info.device_id) == (1, classes[name][1]), name
                if name in ("blk", "rng"):
                    t = open_device(client, info.device_id)
                    if name == "rng":
                        drv = RngDriver.probe(t)
                        assert len(drv.read(1000)) == 1000
                    else:
                        drv = BlkDriver.probe(t)
                        drv.write(8, b"\x77" * 4096)
                        assert drv.read(8, 4096) == b"\x77" * 4096 and drv.get_id() == "vmsg-cli"
                    drv.remove()
                    t.close()
            finally:
                client.close()
        for name, proc in procs.items():
            assert proc.stop() == 0, proc.log.read_text()
            assert not os.path.exists(socks[name]), f"{name}: the socket file was left"
    finally:
        for proc in procs.values():
            if proc.proc.poll() is None:
                proc.stop()


def proc_wait(proc: ServeProcess, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.proc.poll() is None and time.monotonic() < deadline, proc.log.read_text()
        time.sleep(0.02)


def test_sigterm_taken_by_any_thread_ends_the_bus(tmp_path):
    """The kernel may hand SIGTERM to a session's thread rather than the main one, which waits."""
    sock = str(tmp_path / "rng.sock")
    proc = ServeProcess(tmp_path, "rng", ["rng", "--transport=virtio-msg", f"--socket-path={sock}"], [sock])
    try:
        client = BusClient.connect(sock, memory_size=1 << 20)  # a session: its thread runs
        assert [n for n, _ in client.devices()] == [1]
        tids = worker_threads(proc.proc.pid)
        assert tids, "the bus serves each driver on a thread"
        signal_thread(proc.proc.pid, tids[-1], signal.SIGTERM)
        assert proc.proc.wait(10) == 0, proc.log.read_text()
        assert not os.path.exists(sock)
        client.close()
    finally:
        proc.stop()


def test_serve_bus_and_probe(tmp_path, capsys):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(2 << 20))
    sock = str(tmp_path / "bus.sock")
    log = open(tmp_path / "serve-bus.log", "w")
    child = subprocess.Popen([sys.executable, "-m", "pyvirtio.cli", "serve-bus", f"--socket-path={sock}",
                              "--device", f"blk --blk-file={img} --serial=bus-disk", "--device", "rng",
                              "--device", "rng"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert child.poll() is None and time.monotonic() < deadline, (tmp_path / "serve-bus.log").read_text()
            time.sleep(0.02)
        assert main(["probe", "--transport=virtio-msg", f"--socket-path={sock}", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["revision"] == 1 and report["ping"]
        assert [(d["dev_num"], d["device_type_name"]) for d in report["devices"]] == [(1, "blk"), (2, "rng"), (3, "rng")]
        disk = report["devices"][0]
        assert disk["config"]["capacity"] == (2 << 20) // 512 and "VIRTIO_BLK_F_FLUSH" in disk["feature_names"]
        assert main(["probe", "--transport=virtio-msg", f"--socket-path={sock}"]) == 0
        table = capsys.readouterr().out
        assert "device 3: rng (4)" in table and "capacity" in table
        a, b = BusClient.connect(sock, memory_size=1 << 20), BusClient.connect(sock, memory_size=1 << 20)
        try:
            assert {a.claim(DeviceType.ENTROPY), b.claim(DeviceType.ENTROPY)} == {2, 3}
        finally:
            a.close()
            b.close()
    finally:
        child.terminate()
        assert child.wait(20) == 0, (tmp_path / "serve-bus.log").read_text()
        log.close()
    assert not os.path.exists(sock)


@pytest.mark.parametrize("argv,message", [
    (["serve", "rng", "--transport=virtio-msg", "--socket-path=/tmp/x.sock", "--connect"], "client mode"),
    (["serve", "rng", "--transport=virtio-msg", "--socket-path=/tmp/x.sock", "--control=/tmp/c.sock"],
     "--control works with --transport=vhost-user only"),
    (["serve", "rng", "--transport=virtio-msg"], "exactly one of --socket-path"),
    (["serve-bus", "--socket-path=/tmp/x.sock"], "at least one --device"),
    (["serve-bus", "--socket-path=/tmp/x.sock", "--device", "toaster"], "begin with a type"),
    (["serve-bus", "--socket-path=/tmp/x.sock", "--device", "blk --no-such-flag"], "bad flags"),
])
def test_usage_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_probe_of_nothing_is_one_line(tmp_path, capsys):
    assert main(["probe", "--transport=virtio-msg", f"--socket-path={tmp_path / 'none.sock'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such socket" in err
