"""A hostile driver against the virtio-fs device: malformed FUSE headers (``len`` shorter than
the header, past the buffer, disagreeing with the chain), unknown opcodes, forged node ids and
file handles, FORGET storms, oversized requests and replies that do not fit.  Errors go back to
the guest, nothing raises out of the server, memory (inodes, handles) stays bounded; property
tests draw arbitrary requests."""

from __future__ import annotations

import errno
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fs_requests import init, name, read_in, request, split
from pyvirtio.devices.fs import FsDevice
from pyvirtio.devices.fs.ops import HANDLERS
from pyvirtio.devices.fs.passthrough import PassthroughFs
from pyvirtio.devices.fs.server import FuseServer
from pyvirtio.devices.fs.wire import FuseError, FuseProtocolError, parse_request
from pyvirtio.spec import fuse as F
from pyvirtio.loopback import LoopbackTransport
from test_fs_vhost_user import RawFsDriver

O = F.FuseOpcode


@pytest.fixture
def share(tmp_path):
    root = tmp_path / "share"
    root.mkdir()
    for i in range(20):
        (root / f"f{i}").write_bytes(b"%d" % i)
    return root


def make(share, **kw):
    server = FuseServer(PassthroughFs(str(share), xattr=True, **kw))
    assert split(server.handle(init(), 4096))[0].error == 0
    return server


def errno_of(server, data, out=1 << 16):
    hdr, payload = split(server.handle(data, out))
    return -hdr.error


# --- malformed headers -----------------------------------------------------------------------------

def test_shorter_than_a_header_cannot_be_answered(share):
    server = make(share)
    for n in (0, 1, 39):
        with pytest.raises(FuseProtocolError):
            server.handle(bytes(n), 4096)


@pytest.mark.parametrize("length", [0, 1, 39])
def test_len_shorter_than_the_header_is_einval_with_its_unique(share, length):
    server = make(share)
    hdr, _ = split(server.handle(request(O.GETATTR, 1, bytes(16), unique=77, length=length), 4096))
    assert (hdr.error, hdr.unique) == (-errno.EINVAL, 77)


def test_len_past_the_buffer_is_einval(share):
    server = make(share)
    assert errno_of(server, request(O.LOOKUP, 1, name("f1"), length=10_000)) == errno.EINVAL
    assert errno_of(server, request(O.LOOKUP, 1, name("f1"), length=0xFFFFFFFF)) == errno.EINVAL


def test_len_cutting_the_body_short(share):
    server = make(share)
    cut = request(O.LOOKUP, 1, name("f1"), length=F.FUSE_IN_HEADER_SIZE + 2)  # no NUL inside len
    assert errno_of(server, cut) == errno.EINVAL
    short = request(O.SETATTR, 1, bytes(20))  # fuse_setattr_in is 88 bytes
    assert errno_of(server, short) == errno.EINVAL
    trailing = request(O.LOOKUP, 1, name("f1"), length=F.FUSE_IN_HEADER_SIZE + 3) + b"junk"
    assert errno_of(server, trailing) == 0  # bytes after len are ignored


def test_names_too_long_or_unterminated(share):
    server = make(share)
    assert errno_of(server, request(O.LOOKUP, 1, b"a" * 300)) == errno.ENAMETOOLONG
    assert errno_of(server, request(O.LOOKUP, 1, b"a" * 100)) == errno.EINVAL
    assert errno_of(server, request(O.LOOKUP, 1, name("a" * 256))) == errno.ENAMETOOLONG


def test_write_and_setxattr_sizes_must_match_the_data(share):
    server = make(share)
    assert errno_of(server, request(O.WRITE, 1, F.FUSE_WRITE_IN.pack(1, 0, 1000, 0, 0, 0, 0), b"abc")) == errno.EINVAL
    big = F.FUSE_COMPAT_SETXATTR_IN.pack(1 << 20, 0)
    assert errno_of(server, request(O.SETXATTR, 1, big, name("user.a"), b"x")) == errno.E2BIG


def test_replies_that_do_not_fit(share):
    server = make(share)
    data = request(O.LOOKUP, 1, name("f1"))
    assert server.handle(data, 8) is None  # not even a header: nothing written
    assert errno_of(server, data, out=20) == errno.ERANGE
    assert server.handle(data, 16 + 128) is not None


# --- forged ids ------------------------------------------------------------------------------------

FORGED = [0, 2, 3, 1000, 2**32, 2**63, 2**64 - 1]


@pytest.mark.parametrize("op", sorted(HANDLERS))
def test_every_opcode_with_forged_node_ids_and_handles(share, op):
    server = make(share)
    for nodeid in FORGED:
        for body in (bytes(128), struct.pack("<Q", nodeid) * 16, name("f1") + bytes(120)):
            reply = server.handle(request(op, nodeid, body), 1 << 16)
            if reply is None:
                continue
            hdr, _ = split(reply)
            assert hdr.error <= 0
    assert sorted(os.listdir(share)) == sorted(f"f{i}" for i in range(20))  # nothing made or removed


def test_forged_file_handles_are_ebadf(share):
    server = make(share)
    for fh in FORGED:
        assert errno_of(server, request(O.READ, 1, read_in(fh, 0, 10))) == errno.EBADF
        assert errno_of(server, request(O.RELEASE, 1, F.FUSE_RELEASE_IN.pack(fh, 0, 0, 0))) == errno.EBADF
        assert errno_of(server, request(O.READDIR, 1, read_in(fh, 0, 100))) == errno.EBADF


def test_a_file_handle_is_not_a_directory_handle(share):
    server = make(share)
    dfh = F.FUSE_OPEN_OUT.unpack(split(server.handle(request(O.OPENDIR, 1, F.FUSE_OPEN_IN.pack(0, 0)), 64))[1])[0]
    assert errno_of(server, request(O.READ, 1, read_in(dfh, 0, 10))) == errno.EBADF
    assert errno_of(server, request(O.WRITE, 1, F.FUSE_WRITE_IN.pack(dfh, 0, 1, 0, 0, 0, 0), b"x")) == errno.EBADF


# --- bounds ---------------------------------------------------------------------------------------

def _lookup(server, nm):
    hdr, payload = split(server.handle(request(O.LOOKUP, 1, name(nm)), 4096))
    return hdr, payload


def test_forget_storm_keeps_the_table_bounded(share):
    server = make(share)
    table = server.backend.inodes
    ids = set()
    for _ in range(50):
        for i in range(20):
            hdr, payload = _lookup(server, f"f{i}")
            ids.add(F.FUSE_ENTRY_OUT_HEAD.unpack_from(payload)[0])
    assert len(table) == 21 and len(ids) == 20
    storm = b"".join(F.FUSE_FORGET_ONE.pack(n, 2**64 - 1) for n in list(ids) + FORGED + [1] * 10)
    count = len(storm) // 16
    assert server.handle(request(O.BATCH_FORGET, 0, F.FUSE_BATCH_FORGET_IN.pack(count, 0), storm), 0) is None
    assert len(table) == 1  # only the root, which cannot be forgotten
    assert errno_of(server, request(O.GETATTR, 1, F.FUSE_GETATTR_IN.pack(0, 0, 0))) == 0
    for n in range(20_000):  # forged forgets: nothing grows
        server.handle(request(O.FORGET, n * 7919 + 3, F.FUSE_FORGET_IN.pack(n)), 0)
    assert len(table) == 1


def test_batch_forget_count_past_the_body(share):
    server = make(share)
    hdr, payload = _lookup(server, "f1")
    node = F.FUSE_ENTRY_OUT_HEAD.unpack_from(payload)[0]
    body = F.FUSE_BATCH_FORGET_IN.pack(0xFFFFFFFF, 0) + F.FUSE_FORGET_ONE.pack(node, 1) + b"\1\2\3"
    assert server.handle(request(O.BATCH_FORGET, 0, body), 0) is None
    assert len(server.backend.inodes) == 1


def test_inode_and_handle_limits(share):
    server = make(share, max_inodes=6, max_handles=3)
    results = [_lookup(server, f"f{i}")[0].error for i in range(8)]
    assert results[:5] == [0] * 5 and set(results[5:]) == {-errno.ENFILE}
    node = F.FUSE_ENTRY_OUT_HEAD.unpack_from(_lookup(server, "f0")[1])[0]
    opens = [split(server.handle(request(O.OPEN, node, F.FUSE_OPEN_IN.pack(0, 0)), 64))[0].error for _ in range(5)]
    assert opens == [0, 0, 0, -errno.EMFILE, -errno.EMFILE]


def test_huge_read_is_capped(share):
    server = make(share)
    (share / "big").write_bytes(os.urandom(1 << 20))
    node = F.FUSE_ENTRY_OUT_HEAD.unpack_from(_lookup(server, "big")[1])[0]
    fh = F.FUSE_OPEN_OUT.unpack(split(server.handle(request(O.OPEN, node, F.FUSE_OPEN_IN.pack(0, 0)), 64))[1])[0]
    for out in (16, 17, 4096 + 16, 100_000):
        reply = server.handle(request(O.READ, node, read_in(fh, 0, 0xFFFFFFFF)), out)
        assert sum(len(p) for p in reply) <= out


# --- the device: chains the driver got wrong ------------------------------------------------------

def test_device_survives_bad_chains(share):
    dev = FsDevice(str(share))
    t = LoopbackTransport(dev)
    try:
        drv = RawFsDriver.probe(t)
        drv.fuse(init())
        q = drv.requestq
        assert q.call([b"short"], [64]) == b""  # no header: nothing written
        assert q.call([request(O.GETATTR, 1, F.FUSE_GETATTR_IN.pack(0, 0, 0))], [8]) == b""  # no room
        long_len = request(O.WRITE, 1, F.FUSE_WRITE_IN.pack(1, 0, 1, 0, 0, 0, 0), b"x", length=2**31)
        assert F.FUSE_OUT_HEADER.unpack(q.call([long_len], [64]))[1] == -errno.EINVAL
        assert q.call([request(O.FORGET, 5, F.FUSE_FORGET_IN.pack(1))], [64]) == b""
        assert dev.stats["errors"] >= 1
        hdr, _ = split([q.call([request(O.GETATTR, 1, F.FUSE_GETATTR_IN.pack(0, 0, 0))], [256])])
        assert hdr.error == 0  # still serving
        drv.remove()
    finally:
        t.close()
        dev.close()


# --- properties ------------------------------------------------------------------------------------

@given(st.binary(max_size=200))
def test_parse_request_only_raises_typed_errors(data):
    try:
        req = parse_request(data)
    except (FuseError, FuseProtocolError):
        return
    assert req.header.len == F.FUSE_IN_HEADER_SIZE + len(req.body) <= len(data)


_OPS = st.sampled_from(sorted(HANDLERS) + [O.INIT, 0, 77, 4096])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=_OPS, nodeid=st.sampled_from([0, 1, 2, 3, 2**64 - 1]), body=st.binary(max_size=160),
       cut=st.integers(-8, 8), out=st.sampled_from([0, 15, 16, 40, 200, 4096]))
def test_any_request_gets_an_answer_that_fits(tmp_path_factory, op, nodeid, body, cut, out):
    share = tmp_path_factory.getbasetemp() / "prop_share"
    outside = tmp_path_factory.getbasetemp() / "prop_outside"
    share.mkdir(exist_ok=True)
    outside.mkdir(exist_ok=True)
    (outside / "keep").write_bytes(b"keep")
    server = make(share)
    try:
        data = request(op, nodeid, body)
        length = max(0, len(data) + cut)
        data = struct.pack("<I", length) + data[4:]
        reply = server.handle(data, out)
        if reply is not None:
            hdr, _ = split(reply)
            assert hdr.len <= out and hdr.error <= 0
    finally:
        server.backend.close()
    assert os.listdir(outside) == ["keep"] and (outside / "keep").read_bytes() == b"keep"
