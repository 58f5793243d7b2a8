"""The virtio-fs device end to end over vhost-user: our VhostUserServer serving FsDevice, our
vhost-user front-end driving it with raw FUSE requests (INIT, LOOKUP, OPEN, READ, WRITE,
READDIRPLUS, FORGET on the hiprio queue), several requests in flight at once; and the same
device on the in-process loopback transport."""

from __future__ import annotations

import os
import threading

import pytest

from fs_requests import dirents, entry, init, name, read_in, request, split
from pyvirtio.devices.fs import FsDevice
from pyvirtio.driver import VirtioDriver
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec import fs as spec_fs
from pyvirtio.spec import fuse as F
from pyvirtio.spec.ids import DeviceType
from pyvirtio.vhost_user.backend.server import VhostUserServer
from pyvirtio.vhost_user.frontend.transport import VhostUserTransport

pytestmark = pytest.mark.timeout(120)
O = F.FuseOpcode


class RawFsDriver(VirtioDriver):
    """Just enough of a virtio-fs driver to send raw FUSE requests."""

    id_table = (DeviceType.FS,)
    queue_size = 128

    def setup(self) -> None:
        self.hiprio = self.create_queue(spec_fs.HIPRIOQ)
        self.requestq = self.create_queue(spec_fs.REQUESTQ_BASE)
        self.queues = [self.hiprio, self.requestq]

    def fuse(self, data: bytes, reply_size: int = 1 << 16):
        hdr, payload = split([self.requestq.call([data], [reply_size])])
        assert hdr.error == 0, os.strerror(-hdr.error)
        return payload


@pytest.fixture
def share(tmp_path):
    root = tmp_path / "share"
    root.mkdir()
    (root / "data.bin").write_bytes(os.urandom(300_000))
    (root / "dir").mkdir()
    return root


@pytest.fixture
def served(tmp_path, share):
    path = str(tmp_path / "fs.sock")
    dev = FsDevice(str(share), tag="hostshare")
    server = VhostUserServer()
    server.add(dev, socket_path=path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path, dev
    server.shutdown()
    thread.join(10)
    dev.close()


def _exercise(drv: RawFsDriver, dev: FsDevice, share) -> None:
    tag, nrq, _ = spec_fs.FS_CONFIG.unpack(drv.read_config(0, spec_fs.FS_CONFIG_SIZE))
    assert tag.rstrip(b"\0") == b"hostshare" and nrq == 1
    out = F.FuseInitOut._make(F.FUSE_INIT_OUT.unpack(drv.fuse(init())))
    assert (out.major, out.minor) == (7, 38)
    head, attr = entry(drv.fuse(request(O.LOOKUP, 1, name("data.bin"))))
    assert attr.size == 300_000
    fh = F.FUSE_OPEN_OUT.unpack(drv.fuse(request(O.OPEN, head.nodeid, F.FUSE_OPEN_IN.pack(os.O_RDWR, 0))))[0]
    # Several reads in flight at once, answered as they finish.
    chunk = 1 << 16
    pendings = [drv.requestq.submit([request(O.READ, head.nodeid, read_in(fh, off, chunk))], [16 + chunk])
                for off in range(0, 300_000, chunk)]
    got = b""
    for p in pendings:
        drv.requestq.wait(p)
        hdr, payload = split([drv.requestq.read_in(p)])
        drv.requestq.release(p)
        assert hdr.error == 0
        got += payload
    assert got == (share / "data.bin").read_bytes()
    drv.fuse(request(O.WRITE, head.nodeid, F.FUSE_WRITE_IN.pack(fh, 0, 4, 0, 0, 0, 0), b"ABCD"))
    assert (share / "data.bin").read_bytes()[:4] == b"ABCD"
    dfh = F.FUSE_OPEN_OUT.unpack(drv.fuse(request(O.OPENDIR, 1, F.FUSE_OPEN_IN.pack(0, 0))))[0]
    names = sorted(n for n, *_ in dirents(drv.fuse(request(O.READDIRPLUS, 1, read_in(dfh, 0, 1 << 15))), plus=True))
    assert names == [b".", b"..", b"data.bin", b"dir"]
    # FORGET on the hiprio queue: no reply buffers, no reply.
    inodes = len(dev.backend.inodes)
    forgets = F.FUSE_FORGET_ONE.pack(head.nodeid, 2)  # LOOKUP + READDIRPLUS
    drv.hiprio.call([request(O.BATCH_FORGET, 0, F.FUSE_BATCH_FORGET_IN.pack(1, 0), forgets)], [])
    assert len(dev.backend.inodes) == inodes - 1
    assert dev.statistics()["device"]["handles"] == 2


def test_fuse_over_vhost_user(served, share):
    path, dev = served
    t = VhostUserTransport(path, device_type=DeviceType.FS)
    try:
        drv = RawFsDriver.probe(t)
        _exercise(drv, dev, share)
        drv.remove()
    finally:
        t.close()


def test_fuse_over_loopback(share):
    dev = FsDevice(str(share), tag="hostshare")
    t = LoopbackTransport(dev)
    try:
        drv = RawFsDriver.probe(t)
        _exercise(drv, dev, share)
        drv.remove()
    finally:
        t.close()
        dev.close()
