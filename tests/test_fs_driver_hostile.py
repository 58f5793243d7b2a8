"""The virtio-fs driver against a device that answers garbage: every malformed reply is a typed
error (FuseReplyError: the device's fault; FuseError: an errno), never a hang or a crash, and the
driver goes on serving the next request.  Plus property tests of the reply parsers."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given, settings, strategies as st

from pyvirtio.device import VirtioDevice
from pyvirtio.drivers.fs import (DirEntry, FsDriver, FuseCall, FuseError, FuseReplyError,
                                 parse_dirents)
from pyvirtio.errors import DeviceFault
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec import fuse as F
from pyvirtio.spec.fs import FS_CONFIG
from pyvirtio.spec.ids import DeviceType

Op = F.FuseOpcode
GOOD_INIT = F.FUSE_INIT_OUT.pack(7, 31, 65536, 0, 16, 12, 65536, 1, 32, 0, 0)


def out_header(length: int, error: int, unique: int) -> bytes:
    return F.FUSE_OUT_HEADER.pack(length, error, unique)


class GarbageFsDevice(VirtioDevice):
    """A virtio-fs device that answers INIT properly and every other request with what
    ``self.answer(header, chain)`` returns (bytes to write; None: never answer)."""

    device_type = DeviceType.FS
    num_queues = 2

    def __init__(self, init_reply: bytes = GOOD_INIT):
        super().__init__()
        self.init_reply = init_reply
        self.answer = self.good
        self.seen: list[F.FuseInHeader] = []
        self.sizes: list[tuple[int, int, int]] = []  # (opcode, readable, writable) per chain

    def config_bytes(self) -> bytes:
        return FS_CONFIG.pack(b"evil", 1, 0)

    def handle_chain(self, queue_index: int, chain) -> int | None:
        header = F.FuseInHeader._make(F.FUSE_IN_HEADER.unpack(chain.read(0, F.FUSE_IN_HEADER_SIZE)))
        self.seen.append(header)
        self.sizes.append((header.opcode, chain.readable_len, chain.writable_len))
        if queue_index == 0:  # hiprio: FORGETs, no reply
            return 0
        if header.opcode == Op.INIT:
            reply = out_header(16 + len(self.init_reply), 0, header.unique) + self.init_reply
        else:
            reply = self.answer(header, chain)
            if reply is None:
                return None
        return chain.write(reply[:chain.writable_len])

    @staticmethod
    def good(header, chain) -> bytes:
        payload = bytes(chain.writable_len - 16)
        return out_header(16 + len(payload), 0, header.unique) + payload


@pytest.fixture
def evil():
    device = GarbageFsDevice()
    t = LoopbackTransport(device, memory_size=4 << 20)
    fs = FsDriver.probe(t)
    yield fs, device
    t.close()
    device.close()


ANSWERS = {
    "shorter than the out header": lambda h, c: b"\x10\x00\x00",
    "another unique": lambda h, c: out_header(16, 0, h.unique + 2),
    "len past what was written": lambda h, c: out_header(16 + 500, 0, h.unique),
    "len below the header": lambda h, c: out_header(8, 0, h.unique) + bytes(8),
    "positive error": lambda h, c: out_header(16, 5, h.unique),
    "error beyond errno": lambda h, c: out_header(16, -5000, h.unique),
    "short entry": lambda h, c: out_header(16 + 40, 0, h.unique) + bytes(40),
}


@pytest.mark.parametrize("kind", sorted(ANSWERS))
def test_malformed_reply_is_the_devices_fault_and_the_driver_goes_on(evil, kind):
    fs, device = evil
    device.answer = ANSWERS[kind]
    with pytest.raises(FuseReplyError):
        fs.lookup(F.FUSE_ROOT_ID, "x")
    device.answer = device.good
    assert fs.lookup(F.FUSE_ROOT_ID, "x").nodeid == 0  # the zeroed entry of the good answer


@pytest.mark.parametrize("err,cls", [(errno.ENOENT, FileNotFoundError), (errno.EACCES, PermissionError),
                                     (errno.EEXIST, FileExistsError), (errno.ENOSPC, OSError)])
def test_errno_reply_is_a_typed_oserror(evil, err, cls):
    fs, device = evil
    device.answer = lambda h, c: out_header(16, -err, h.unique)
    with pytest.raises(cls) as info:
        fs.mkdir(F.FUSE_ROOT_ID, "d")
    assert isinstance(info.value, FuseError) and info.value.errno == err
    assert info.value.opcode == Op.MKDIR


def test_a_device_that_never_answers_times_out(evil):
    fs, device = evil
    device.answer = lambda h, c: None
    with pytest.raises(DeviceFault):
        fs.request(Op.GETATTR, 1, [F.FUSE_GETATTR_IN.pack(0, 0, 0)], F.FUSE_ATTR_OUT_SIZE, timeout=0.3)


def test_read_longer_than_asked_is_refused(evil):
    fs, device = evil
    device.answer = lambda h, c: out_header(16 + 64, 0, h.unique) + bytes(64)
    with pytest.raises(FuseReplyError):
        fs.read(2, 0, 0, 32)  # the device's buffers hold 32; a reply can claim no more than written


def test_garbage_directory_records_are_refused(evil):
    fs, device = evil
    record = F.FUSE_DIRENT.pack(5, 1, 10_000, 8) + b"name\0\0\0\0"
    device.answer = lambda h, c: out_header(16 + len(record), 0, h.unique) + record
    with pytest.raises(FuseReplyError):
        fs.readdir(1, 0, 0, 4096, plus=False)


def test_requests_are_well_formed(evil):
    """What the device saw: in-header len = every readable byte, unique new and even, the
    opcode and node id the call named, hiprio only for FORGET."""
    fs, device = evil
    fs.lookup(F.FUSE_ROOT_ID, "name")
    fs.rename(1, "a", 1, "bb")
    fs.write(7, 3, 0, b"x" * 100)
    fs.forget(9, 2)
    fs.drain_forgets()
    init, *rest = device.seen
    assert init.opcode == Op.INIT and init.len == F.FUSE_IN_HEADER_SIZE + F.FUSE_INIT_IN_SIZE
    lens = {Op.LOOKUP: 40 + 5, Op.RENAME: 40 + 8 + 2 + 3, Op.WRITE: 40 + 40 + 100, Op.FORGET: 40 + 8}
    assert [(h.opcode, h.len) for h in rest] == [(op, n) for op, n in lens.items()]
    uniques = [h.unique for h in device.seen]
    assert len(set(uniques)) == len(uniques) and all(u % 2 == 0 and u for u in uniques)
    assert rest[2].nodeid == 7 and rest[3].nodeid == 9


def test_init_with_another_major_fails_the_probe():
    device = GarbageFsDevice(init_reply=F.FUSE_INIT_OUT.pack(8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    t = LoopbackTransport(device, memory_size=4 << 20)
    try:
        with pytest.raises(FuseReplyError):
            FsDriver.probe(t)
    finally:
        t.close()


def test_old_short_init_reply_is_accepted():
    device = GarbageFsDevice(init_reply=GOOD_INIT[:F.FUSE_COMPAT_22_INIT_OUT_SIZE])
    t = LoopbackTransport(device, memory_size=4 << 20)
    try:
        fs = FsDriver.probe(t)
        assert fs.init_out.minor == 31 and fs.init_out.max_pages == 0
        assert fs.max_read == 32 * 4096  # no MAX_PAGES: the kernel's default of 32 pages
    finally:
        t.close()


# --- property tests of the parsers (device-controlled input) -------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_parse_dirents_only_raises_typed_errors(data, plus):
    try:
        entries = parse_dirents(data, plus)
    except FuseReplyError:
        return
    assert all(isinstance(e, DirEntry) and e.name for e in entries)


def _dirent(ino, off, name: bytes, dtype=8) -> bytes:
    rec = F.FUSE_DIRENT.pack(ino, off, len(name), dtype) + name
    return rec + bytes(-len(rec) % 8)


@given(st.lists(st.binary(min_size=1, max_size=40).filter(lambda n: b"/" not in n and b"\0" not in n),
                max_size=20))
def test_parse_dirents_round_trip(names):
    data = b"".join(_dirent(i + 10, i + 1, n) for i, n in enumerate(names))
    entries = parse_dirents(data, plus=False)
    assert [e.off for e in entries] == list(range(1, len(names) + 1))
    assert [e.ino for e in entries] == [i + 10 for i in range(len(names))]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 2**64 - 1))
def test_check_reply_only_raises_typed_errors(data, unique):
    fs = FsDriver.__new__(FsDriver)
    call = FuseCall(None, None, Op.GETATTR, unique, 0, "")  # type: ignore[arg-type]
    try:
        payload = fs.check_reply(call, data)
    except (FuseReplyError, FuseError):
        return
    length, error, got = struct.unpack_from("<IiQ", data)
    assert error == 0 and got == unique and payload == data[16:length]


def test_a_read_failing_midway_frees_every_buffer(evil):
    """READs in flight, the third fails: read_file raises the errno, collects the others, and
    every guest buffer goes back to the allocator (bounded memory on errors)."""
    from pyvirtio.drivers.fs_client import FsClient
    fs, device = evil
    size = 16 * fs.max_read

    def answer(h, chain):
        if h.opcode == Op.GETATTR:
            attr = F.FUSE_ATTR.pack(2, size, *([0] * 7), 0o100644, 1, 0, 0, 0, 4096, 0)
            payload = F.FUSE_ATTR_OUT_HEAD.pack(1, 0, 0) + attr
            return out_header(16 + len(payload), 0, h.unique) + payload
        if h.opcode == Op.READ:
            fh, offset, want = F.FUSE_READ_IN.unpack(chain.read(40, 40))[:3]
            if offset == 2 * fs.max_read:
                return out_header(16, -errno.EIO, h.unique)
            return out_header(16 + want, 0, h.unique) + b"r" * want
        return device.good(h, chain)

    device.answer = answer
    free = fs.transport.allocator.free_bytes
    client = FsClient(fs, window=6)
    with pytest.raises(FuseError) as info:
        client.read_file("f")
    assert info.value.errno == errno.EIO
    fs.drain_forgets()
    assert fs.transport.allocator.free_bytes == free
    device.answer = device.good
    assert fs.getattr(1).size == 0  # still served


def test_every_request_has_fuse_h_sizes(evil):
    """Each call's chain: in-header ``len`` equals every device-readable byte, the fixed part
    after the header is its fuse.h struct, and the writable room is the out header plus the
    reply struct the opcode has (none for FORGET)."""
    fs, device = evil
    calls = [
        (lambda: fs.getattr(5), Op.GETATTR, 16, F.FUSE_ATTR_OUT_SIZE),
        (lambda: fs.setattr(5, size=3), Op.SETATTR, F.FUSE_SETATTR_IN_SIZE, F.FUSE_ATTR_OUT_SIZE),
        (lambda: fs.mkdir(1, "dd"), Op.MKDIR, 8 + 3, F.FUSE_ENTRY_OUT_SIZE),
        (lambda: fs.mknod(1, "n", 0o10644), Op.MKNOD, 16 + 2, F.FUSE_ENTRY_OUT_SIZE),
        (lambda: fs.symlink(1, "s", "tgt"), Op.SYMLINK, 2 + 4, F.FUSE_ENTRY_OUT_SIZE),
        (lambda: fs.link(5, 1, "l"), Op.LINK, 8 + 2, F.FUSE_ENTRY_OUT_SIZE),
        (lambda: fs.unlink(1, "u"), Op.UNLINK, 2, 0),
        (lambda: fs.rmdir(1, "r"), Op.RMDIR, 2, 0),
        (lambda: fs.rename(1, "a", 1, "b", F.RENAME_NOREPLACE), Op.RENAME2, 16 + 4, 0),
        (lambda: fs.open(5, 0), Op.OPEN, 8, F.FUSE_OPEN_OUT.size),
        (lambda: fs.create(1, "c"), Op.CREATE, 16 + 2, F.FUSE_ENTRY_OUT_SIZE + F.FUSE_OPEN_OUT.size),
        (lambda: fs.read(5, 0, 0, 100), Op.READ, F.FUSE_READ_IN_SIZE, 100),
        (lambda: fs.release(5, 0), Op.RELEASE, 24, 0),
        (lambda: fs.flush(5, 0), Op.FLUSH, 24, 0),
        (lambda: fs.fsync(5, 0), Op.FSYNC, 16, 0),
        (lambda: fs.opendir(5), Op.OPENDIR, 8, F.FUSE_OPEN_OUT.size),
        (lambda: fs.readdir(5, 0, 0, 512, plus=True), Op.READDIRPLUS, F.FUSE_READ_IN_SIZE, 512),
        (lambda: fs.releasedir(5, 0), Op.RELEASEDIR, 24, 0),
        (lambda: fs.statfs(), Op.STATFS, 0, F.FUSE_KSTATFS_SIZE),
        (lambda: fs.access(5, 4), Op.ACCESS, 8, 0),
        (lambda: fs.setxattr(5, "user.x", b"vv"), Op.SETXATTR, 8 + 7 + 2, 0),
        (lambda: fs.getxattr(5, "user.x", 64), Op.GETXATTR, 8 + 7, 64),
        (lambda: fs.listxattr(5, 64), Op.LISTXATTR, 8, 64),
        (lambda: fs.removexattr(5, "user.x"), Op.REMOVEXATTR, 7, 0),
        (lambda: fs.fallocate(5, 0, 0, 10), Op.FALLOCATE, 32, 0),
        (lambda: fs.lseek(5, 0, 0, 3), Op.LSEEK, 24, 8),
        (lambda: fs.copy_file_range(5, 0, 0, 6, 0, 0, 10), Op.COPY_FILE_RANGE, 56, 8),
        (lambda: fs.batch_forget([(5, 1), (6, 2)]), Op.BATCH_FORGET, 8 + 32, None),
    ]
    device.answer = device.good
    for call, opcode, args_len, reply in calls:
        before = len(device.sizes)
        try:
            call()
        except FuseReplyError:
            pass  # zeroed answers are not always valid (a READDIRPLUS record of zeros)
        fs.drain_forgets()
        assert len(device.sizes) == before + 1, Op(opcode).name
        got_op, readable, writable = device.sizes[-1]
        header = device.seen[-1]
        assert (got_op, header.len, readable) == (opcode, 40 + args_len, 40 + args_len), Op(opcode).name
        assert writable == (0 if reply is None else 16 + reply), Op(opcode).name
