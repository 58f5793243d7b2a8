"""The virtio-fs device's request flow: data requests run in the pool and complete out of
order, a blocked READ holds up neither the metadata requests of its queue nor the hiprio
queue, quiesce waits for what is in flight, and the config space carries the tag."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

import pytest

from fs_requests import entry, init, name, read_in, request, split
from pyvirtio.devices.fs import FsDevice
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec import fs as spec_fs
from pyvirtio.spec import fuse as F
from test_fs_vhost_user import RawFsDriver

O = F.FuseOpcode
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def running(tmp_path):
    (tmp_path / "f").write_bytes(b"0123456789")
    dev = FsDevice(str(tmp_path), tag="t" * 36, threads=2)
    t = LoopbackTransport(dev)
    drv = RawFsDriver.probe(t)
    drv.fuse(init())
    yield dev, drv
    t.close()
    dev.close()


def test_config_space_and_queues(tmp_path):
    dev = FsDevice(str(tmp_path), tag="t" * 36, num_request_queues=3)
    try:
        cfg = spec_fs.FsConfig._make(spec_fs.FS_CONFIG.unpack(dev.config_bytes()))
        assert cfg.tag == b"t" * 36 and cfg.num_request_queues == 3
        assert len(dev.queues) == 4 and dev.queue_groups() == [(0,), (1,), (2,), (3,)]
    finally:
        dev.close()
    with pytest.raises(ValueError):
        FsDevice(str(tmp_path), tag="x" * 37)


def test_a_blocked_read_does_not_hold_up_other_requests(running):
    dev, drv = running
    head, _ = entry(drv.fuse(request(O.LOOKUP, 1, name("f"))))
    fh = F.FUSE_OPEN_OUT.unpack(drv.fuse(request(O.OPEN, head.nodeid, F.FUSE_OPEN_IN.pack(0, 0))))[0]
    gate, entered = threading.Event(), threading.Event()
    real_read = dev.backend.read_into

    def slow_read(*args, nowait=False):
        if nowait:  # as if the data were not in the page cache
            raise BlockingIOError
        entered.set()
        assert gate.wait(30)
        return real_read(*args)

    dev.backend.read_into = slow_read
    pending = drv.requestq.submit([request(O.READ, head.nodeid, read_in(fh, 2, 4))], [64])
    assert entered.wait(10)
    # The same queue answers metadata meanwhile, and hiprio takes forgets.
    assert split([drv.requestq.call([request(O.GETATTR, 1, F.FUSE_GETATTR_IN.pack(0, 0, 0))], [256])])[0].error == 0
    drv.hiprio.call([request(O.FORGET, head.nodeid, F.FUSE_FORGET_IN.pack(0))], [])
    assert not pending.done
    assert dev.quiesce(None, 1, timeout=0.2) is False  # still in flight
    gate.set()
    drv.requestq.wait(pending)
    hdr, payload = split([drv.requestq.read_in(pending)])
    assert (hdr.error, payload) == (0, b"2345")


def test_many_reads_in_flight_complete(running, tmp_path):
    dev, drv = running
    data = os.urandom(1 << 20)
    (tmp_path / "big").write_bytes(data)
    head, _ = entry(drv.fuse(request(O.LOOKUP, 1, name("big"))))
    fh = F.FUSE_OPEN_OUT.unpack(drv.fuse(request(O.OPEN, head.nodeid, F.FUSE_OPEN_IN.pack(0, 0))))[0]
    chunk = 1 << 15
    pendings = [(off, drv.requestq.submit([request(O.READ, head.nodeid, read_in(fh, off, chunk))], [16 + chunk]))
                for off in range(0, 1 << 20, chunk)]
    for off, p in pendings:
        drv.requestq.wait(p)
        hdr, payload = split([drv.requestq.read_in(p)])
        drv.requestq.release(p)
        assert hdr.error == 0 and payload == data[off:off + chunk]
    assert dev.quiesce(None) is True


def test_a_small_cached_read_is_served_inline(running, tmp_path):
    dev, drv = running
    head, _ = entry(drv.fuse(request(O.LOOKUP, 1, name("f"))))
    fh = F.FUSE_OPEN_OUT.unpack(drv.fuse(request(O.OPEN, head.nodeid, F.FUSE_OPEN_IN.pack(0, 0))))[0]
    assert drv.fuse(request(O.READ, head.nodeid, read_in(fh, 0, 100))) == b"0123456789"
    assert dev._pool is None  # written just now: in the page cache, no pool round trip


def _write_read(drv, data):
    head, _ = entry(drv.fuse(request(O.LOOKUP, 1, name("f"))))
    fh = F.FUSE_OPEN_OUT.unpack(drv.fuse(request(O.OPEN, head.nodeid, F.FUSE_OPEN_IN.pack(os.O_RDWR, 0))))[0]
    drv.fuse(request(O.WRITE, head.nodeid, F.FUSE_WRITE_IN.pack(fh, 0, len(data), 0, 0, 0, 0), data))
    return drv.fuse(request(O.READ, head.nodeid, read_in(fh, 0, len(data))), 16 + len(data))


def test_io_on_tmpfs_is_inline_and_on_a_disk_goes_to_the_pool(tmp_path):
    data = os.urandom(1 << 19)
    memory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    for where, pooled in ((str(tmp_path), True), (memory, False)):
        if where is None:
            continue
        share = tempfile.mkdtemp(dir=where)
        open(os.path.join(share, "f"), "wb").close()
        dev = FsDevice(share)
        t = LoopbackTransport(dev)
        try:
            drv = RawFsDriver.probe(t)
            drv.fuse(init())
            assert _write_read(drv, data) == data
            assert (dev._pool is not None) == pooled, where
        finally:
            t.close()
            dev.close()
            shutil.rmtree(share)


def test_no_pool_runs_everything_inline(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    dev = FsDevice(str(tmp_path), threads=0)
    t = LoopbackTransport(dev)
    try:
        drv = RawFsDriver.probe(t)
        drv.fuse(init())
        head, _ = entry(drv.fuse(request(O.LOOKUP, 1, name("f"))))
        fh = F.FUSE_OPEN_OUT.unpack(drv.fuse(request(O.OPEN, head.nodeid, F.FUSE_OPEN_IN.pack(0, 0))))[0]
        assert drv.fuse(request(O.READ, head.nodeid, read_in(fh, 0, 3))) == b"abc"
        assert dev._pool is None
    finally:
        t.close()
        dev.close()


def test_passes_the_device_conformance_checks(tmp_path):
    from pyvirtio.conformance.device_model import CHECKS, check_device
    assert len(check_device(lambda: FsDevice(str(tmp_path)))) == len(CHECKS)


def test_serve_fs_passes_the_vhost_user_checks(tmp_path):
    from pyvirtio.conformance.vhost_user import Status, run_checks
    from pyvirtio.testing.serve import ServeProcess
    sock = str(tmp_path / "fs.sock")
    daemon = ServeProcess(tmp_path, "fs", ["fs", f"--socket-path={sock}", f"--shared-dir={tmp_path}"], [sock])
    try:
        ctx, results = run_checks(sock, timeout=10.0)
    finally:
        assert daemon.stop() == 0
    bad = [r.line() for r in results if r.status in (Status.FAIL, Status.ERROR)]
    assert not bad, "\n".join(bad)
    assert sum(r.status is Status.PASS for r in results) >= 20  # the ring checks need blk/rng requests


def test_write_and_read_through_scattered_buffers(running, tmp_path):
    """WRITE data stays in guest memory (any descriptor split, even inside the headers); READ
    data lands straight in the driver's buffers, the reply header split across them too."""
    dev, drv = running
    head, _ = entry(drv.fuse(request(O.LOOKUP, 1, name("f"))))
    fh = F.FUSE_OPEN_OUT.unpack(drv.fuse(request(O.OPEN, head.nodeid, F.FUSE_OPEN_IN.pack(os.O_RDWR, 0))))[0]
    data = os.urandom(70_000)
    req = request(O.WRITE, head.nodeid, F.FUSE_WRITE_IN.pack(fh, 0, len(data), 0, 0, 0, 0), data)
    parts = [req[:50], req[50:150], req[150:40_000], req[40_000:]]
    hdr, payload = split([drv.requestq.call(parts, [7, 9, 100])])
    assert hdr.error == 0 and F.FUSE_WRITE_OUT.unpack(payload)[0] == len(data)
    assert (tmp_path / "f").read_bytes() == data
    reply = drv.requestq.call([request(O.READ, head.nodeid, read_in(fh, 0, 70_000))], [10, 6, 100, 69_900])
    hdr, payload = split([reply])
    assert hdr.error == 0 and payload == data
    short = request(O.WRITE, head.nodeid, F.FUSE_WRITE_IN.pack(fh, 0, 5000, 0, 0, 0, 0), b"x" * 10,
                    length=F.FUSE_IN_HEADER_SIZE + 40 + 5000)
    assert split([drv.requestq.call([short], [64])])[0].error == -22  # len past the chain: EINVAL
