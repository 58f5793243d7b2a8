"""The FUSE server core of virtio-fs, opcode by opcode: raw request bytes in, reply bytes
checked against linux/fuse.h layouts and against the host directory."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from fs_requests import dirents, entry, init, name, read_in, request, split, u32s
from pyvirtio.devices.fs.passthrough import PassthroughFs
from pyvirtio.devices.fs.server import FuseServer
from pyvirtio.spec import fuse as F

O = F.FuseOpcode


@pytest.fixture
def share(tmp_path):
    root = tmp_path / "share"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello, world\n")
    (root / "sub").mkdir()
    (root / "sub" / "inner").write_bytes(b"x" * 10000)
    return root


@pytest.fixture
def srv(share):
    server = FuseServer(PassthroughFs(str(share), xattr=True), cache="auto")
    hdr, _ = call(server, init())
    assert hdr.error == 0
    yield server
    server.backend.close()


def call(server, data, out=1 << 21):
    reply = server.handle(data, out)
    assert reply is not None
    return split(reply)


def ok(server, data, out=1 << 21):
    hdr, payload = call(server, data, out)
    assert hdr.error == 0, os.strerror(-hdr.error)
    return payload


def err(server, data, out=1 << 21) -> int:
    hdr, payload = call(server, data, out)
    assert payload == b""
    return -hdr.error


def lookup(server, parent, nm):
    return entry(ok(server, request(O.LOOKUP, parent, name(nm))))


def open_(server, nodeid, flags=os.O_RDONLY):
    return F.FUSE_OPEN_OUT.unpack(ok(server, request(O.OPEN, nodeid, F.FUSE_OPEN_IN.pack(flags, 0))))


# --- INIT -----------------------------------------------------------------------------------------

def test_init_negotiates_version_and_flags(share):
    server = FuseServer(PassthroughFs(str(share)))
    offered = F.FuseInitFlag.ASYNC_READ | F.FuseInitFlag.POSIX_LOCKS | F.FuseInitFlag.WRITEBACK_CACHE | F.FuseInitFlag.MAX_PAGES
    out = F.FuseInitOut._make(F.FUSE_INIT_OUT.unpack(ok(server, init(flags=offered, max_readahead=65536))))
    assert (out.major, out.minor) == (7, 38)
    assert out.flags == F.FuseInitFlag.ASYNC_READ | F.FuseInitFlag.MAX_PAGES  # no locks, no writeback
    assert out.max_readahead == 65536 and out.max_write == 1 << 20 and out.max_pages == 256
    assert out.time_gran == 1


def test_requests_before_init_get_eio(share):
    server = FuseServer(PassthroughFs(str(share)))
    assert err(server, request(O.LOOKUP, 1, name("hello.txt"))) == errno.EIO


@pytest.mark.parametrize("major, minor", [(6, 99), (7, 30), (0, 0)])
def test_init_refuses_old_protocols(share, major, minor):
    server = FuseServer(PassthroughFs(str(share)))
    assert err(server, init(major, minor)) == errno.EPROTO
    assert not server.initialized


def test_init_with_a_newer_major_answers_ours_and_waits(share):
    server = FuseServer(PassthroughFs(str(share)))
    out = F.FuseInitOut._make(F.FUSE_INIT_OUT.unpack(ok(server, init(8, 0))))
    assert (out.major, out.minor, out.flags, out.max_write) == (7, 38, 0, 0)
    assert not server.initialized
    ok(server, init())
    assert server.initialized


def test_short_init_of_an_old_kernel_is_read(share):
    server = FuseServer(PassthroughFs(str(share)))
    short = request(O.INIT, 0, F.FUSE_INIT_IN_COMPAT.pack(7, 31, 4096, F.FuseInitFlag.ASYNC_READ))
    out = F.FuseInitOut._make(F.FUSE_INIT_OUT.unpack(ok(server, short)))
    assert out.flags == F.FuseInitFlag.ASYNC_READ


def test_init_ext_flags2(share):
    server = FuseServer(PassthroughFs(str(share)))
    flags = F.FuseInitFlag.INIT_EXT | F.FuseInitFlag.ASYNC_READ
    data = request(O.INIT, 0, F.FUSE_INIT_IN.pack(7, 38, 0, flags, 0xFFFFFFFF))
    out = F.FuseInitOut._make(F.FUSE_INIT_OUT.unpack(ok(server, data)))
    assert out.flags == flags and out.flags2 == 0  # we take none of the high flags


def test_cache_never_drops_readdirplus_and_sets_direct_io(share):
    server = FuseServer(PassthroughFs(str(share)), cache="never")
    out = F.FuseInitOut._make(F.FUSE_INIT_OUT.unpack(ok(server, init())))
    assert not out.flags & F.FuseInitFlag.DO_READDIRPLUS
    head, _ = lookup(server, 1, "hello.txt")
    assert (head.entry_valid, head.attr_valid) == (0, 0)
    assert open_(server, head.nodeid)[1] == F.FopenFlag.DIRECT_IO


def test_cache_always_keeps_cache_long(share):
    server = FuseServer(PassthroughFs(str(share)), cache="always")
    ok(server, init())
    head, _ = lookup(server, 1, "hello.txt")
    assert head.entry_valid == head.attr_valid == 86400
    assert open_(server, head.nodeid)[1] == F.FopenFlag.KEEP_CACHE
    dir_out = F.FUSE_OPEN_OUT.unpack(ok(server, request(O.OPENDIR, 1, F.FUSE_OPEN_IN.pack(0, 0))))
    assert dir_out[1] == F.FopenFlag.CACHE_DIR


def test_reinit_drops_what_the_old_driver_held(srv):
    head, _ = lookup(srv, 1, "hello.txt")
    fh = open_(srv, head.nodeid)[0]
    ok(srv, init())
    assert err(srv, request(O.GETATTR, head.nodeid, F.FUSE_GETATTR_IN.pack(0, 0, 0))) == errno.EBADF
    assert err(srv, request(O.READ, head.nodeid, read_in(fh, 0, 10))) == errno.EBADF


# --- names and attributes -------------------------------------------------------------------------

def test_lookup_returns_entry_with_host_attributes(srv, share):
    head, attr = lookup(srv, 1, "hello.txt")
    st = os.stat(share / "hello.txt")
    assert head.nodeid > 1 and head.generation == 0 and head.entry_valid == 1
    assert (attr.ino, attr.size, attr.mode, attr.nlink) == (st.st_ino, 13, st.st_mode, 1)
    assert attr.mtime * 10**9 + attr.mtimensec == st.st_mtime_ns
    again, _ = lookup(srv, 1, "hello.txt")
    assert again.nodeid == head.nodeid  # same (dev, ino), same node id


def test_lookup_missing_is_enoent(srv):
    assert err(srv, request(O.LOOKUP, 1, name("nope"))) == errno.ENOENT


def test_getattr(srv, share):
    payload = ok(srv, request(O.GETATTR, 1, F.FUSE_GETATTR_IN.pack(0, 0, 0)))
    valid, nsec, _ = F.FUSE_ATTR_OUT_HEAD.unpack_from(payload)
    attr = F.FuseAttr._make(F.FUSE_ATTR.unpack_from(payload, 16))
    assert valid == 1 and attr.ino == os.stat(share).st_ino and stat.S_ISDIR(attr.mode)


def test_setattr_mode_size_times(srv, share):
    head, _ = lookup(srv, 1, "hello.txt")
    valid = F.FattrFlag.MODE | F.FattrFlag.SIZE | F.FattrFlag.MTIME | F.FattrFlag.ATIME
    arg = F.FuseSetattrIn(valid, 0, 0, 5, 0, 1000, 2000, 0, 7, 8, 0, 0o100600, 0, 0, 0, 0)
    payload = ok(srv, request(O.SETATTR, head.nodeid, F.FUSE_SETATTR_IN.pack(*arg)))
    attr = F.FuseAttr._make(F.FUSE_ATTR.unpack_from(payload, 16))
    st = os.stat(share / "hello.txt")
    assert (attr.size, attr.mode & 0o7777, attr.mtime, attr.atime) == (5, 0o600, 2000, 1000)
    assert (st.st_size, st.st_mtime_ns, st.st_atime_ns) == (5, 2000 * 10**9 + 8, 1000 * 10**9 + 7)
    assert (share / "hello.txt").read_bytes() == b"hello"


def test_setattr_through_a_file_handle(srv, share):
    head, _ = lookup(srv, 1, "hello.txt")
    fh = open_(srv, head.nodeid, os.O_RDWR)[0]
    arg = F.FuseSetattrIn(F.FattrFlag.SIZE | F.FattrFlag.FH, 0, fh, 2, *(0,) * 12)
    ok(srv, request(O.SETATTR, head.nodeid, F.FUSE_SETATTR_IN.pack(*arg)))
    assert (share / "hello.txt").read_bytes() == b"he"


def test_mkdir_mknod_symlink_link_unlink_rmdir_rename(srv, share):
    d, dattr = entry(ok(srv, request(O.MKDIR, 1, F.FUSE_MKDIR_IN.pack(0o777, 0o022), name("dir"))))
    assert stat.S_ISDIR(dattr.mode) and (share / "dir").is_dir()
    assert stat.S_IMODE(os.stat(share / "dir").st_mode) == 0o777  # the guest applied its umask
    f, fattr = entry(ok(srv, request(O.MKNOD, d.nodeid, F.FUSE_MKNOD_IN.pack(stat.S_IFREG | 0o644, 0, 0, 0), name("f"))))
    assert stat.S_ISREG(fattr.mode) and (share / "dir" / "f").is_file()
    s, sattr = entry(ok(srv, request(O.SYMLINK, 1, name("link"), name("dir/f"))))
    assert stat.S_ISLNK(sattr.mode) and os.readlink(share / "link") == "dir/f"
    assert ok(srv, request(O.READLINK, s.nodeid)) == b"dir/f"
    h, hattr = entry(ok(srv, request(O.LINK, 1, F.FUSE_LINK_IN.pack(f.nodeid), name("hard"))))
    assert h.nodeid == f.nodeid and hattr.nlink == 2 and os.path.samefile(share / "hard", share / "dir" / "f")
    ok(srv, request(O.RENAME, 1, F.FUSE_RENAME_IN.pack(d.nodeid), name("hard"), name("moved")))
    assert (share / "dir" / "moved").exists() and not (share / "hard").exists()
    assert err(srv, request(O.RENAME2, d.nodeid, F.FUSE_RENAME2_IN.pack(d.nodeid, F.RENAME_NOREPLACE, 0),
                            name("moved"), name("f"))) == errno.EEXIST
    ok(srv, request(O.RENAME2, d.nodeid, F.FUSE_RENAME2_IN.pack(1, F.RENAME_EXCHANGE, 0), name("f"), name("link")))
    assert (share / "dir" / "f").is_symlink() and (share / "link").is_file()
    ok(srv, request(O.UNLINK, d.nodeid, name("moved")))
    ok(srv, request(O.UNLINK, d.nodeid, name("f")))
    assert err(srv, request(O.RMDIR, 1, name("sub"))) == errno.ENOTEMPTY
    ok(srv, request(O.RMDIR, 1, name("dir")))
    assert not (share / "dir").exists()


def test_statfs(srv, share):
    payload = ok(srv, request(O.STATFS, 1))
    st = F.FuseKstatfs._make(F.FUSE_KSTATFS.unpack(payload))
    v = os.statvfs(share)
    assert (st.bsize, st.namelen, st.blocks) == (v.f_bsize, v.f_namemax, v.f_blocks)


def test_access(srv, share):
    head, _ = lookup(srv, 1, "hello.txt")
    ok(srv, request(O.ACCESS, head.nodeid, F.FUSE_ACCESS_IN.pack(os.R_OK | os.W_OK, 0)))
    assert err(srv, request(O.ACCESS, head.nodeid, F.FUSE_ACCESS_IN.pack(os.X_OK, 0))) == errno.EACCES
    os.chmod(share / "hello.txt", 0o600)
    other = request(O.ACCESS, head.nodeid, F.FUSE_ACCESS_IN.pack(os.R_OK, 0), uid=4321, gid=4321)
    assert err(srv, other) == errno.EACCES


# --- files ----------------------------------------------------------------------------------------

def test_open_read_write_flush_fsync_release(srv, share):
    head, _ = lookup(srv, 1, "hello.txt")
    fh, flags, _ = open_(srv, head.nodeid, os.O_RDWR)
    assert flags == 0
    assert ok(srv, request(O.READ, head.nodeid, read_in(fh, 7, 100))) == b"world\n"
    w = F.FUSE_WRITE_IN.pack(fh, 0, 5, 0, 0, 0, 0)
    assert u32s(ok(srv, request(O.WRITE, head.nodeid, w, b"HELLO")), 1) == (5,)
    assert (share / "hello.txt").read_bytes() == b"HELLO, world\n"
    ok(srv, request(O.FLUSH, head.nodeid, F.FUSE_FLUSH_IN.pack(fh, 0, 0, 0)))
    ok(srv, request(O.FSYNC, head.nodeid, F.FUSE_FSYNC_IN.pack(fh, F.FUSE_FSYNC_FDATASYNC, 0)))
    ok(srv, request(O.RELEASE, head.nodeid, F.FUSE_RELEASE_IN.pack(fh, 0, 0, 0)))
    assert err(srv, request(O.READ, head.nodeid, read_in(fh, 0, 1))) == errno.EBADF
    assert err(srv, request(O.RELEASE, head.nodeid, F.FUSE_RELEASE_IN.pack(fh, 0, 0, 0))) == errno.EBADF


def test_open_with_o_trunc(srv, share):
    head, _ = lookup(srv, 1, "hello.txt")
    open_(srv, head.nodeid, os.O_WRONLY | os.O_TRUNC)
    assert (share / "hello.txt").read_bytes() == b""


def test_create_then_exclusive_create_fails(srv, share):
    arg = F.FUSE_CREATE_IN.pack(os.O_RDWR | os.O_CREAT, 0o640, 0o022, 0)
    payload = ok(srv, request(O.CREATE, 1, arg, name("new")))
    head, attr = entry(payload[:F.FUSE_ENTRY_OUT_SIZE])
    fh, _, _ = F.FUSE_OPEN_OUT.unpack(payload[F.FUSE_ENTRY_OUT_SIZE:])
    assert stat.S_ISREG(attr.mode) and attr.mode & 0o777 == 0o640  # our umask does not apply
    ok(srv, request(O.WRITE, head.nodeid, F.FUSE_WRITE_IN.pack(fh, 0, 3, 0, 0, 0, 0), b"abc"))
    assert (share / "new").read_bytes() == b"abc"
    excl = F.FUSE_CREATE_IN.pack(os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640, 0, 0)
    assert err(srv, request(O.CREATE, 1, excl, name("new"))) == errno.EEXIST
    again = ok(srv, request(O.CREATE, 1, arg, name("new")))  # without O_EXCL: opened
    assert entry(again[:F.FUSE_ENTRY_OUT_SIZE])[0].nodeid == head.nodeid


def test_read_is_capped_by_the_reply_buffer(srv, share):
    head, _ = lookup(srv, 1, "sub")
    inner, _ = lookup(srv, head.nodeid, "inner")
    fh = open_(srv, inner.nodeid)[0]
    huge = request(O.READ, inner.nodeid, read_in(fh, 0, 0xFFFFFFFF))
    assert len(ok(srv, huge, out=16 + 4096)) == 4096
    assert len(ok(srv, huge)) == 10000


def test_fallocate_lseek_copy_file_range(srv, share):
    head, _ = lookup(srv, 1, "hello.txt")
    fh = open_(srv, head.nodeid, os.O_RDWR)[0]
    ok(srv, request(O.FALLOCATE, head.nodeid, F.FUSE_FALLOCATE_IN.pack(fh, 0, 8192, 0, 0)))
    assert os.path.getsize(share / "hello.txt") == 8192
    pos = F.FUSE_LSEEK_OUT.unpack(ok(srv, request(O.LSEEK, head.nodeid, F.FUSE_LSEEK_IN.pack(fh, 0, os.SEEK_DATA, 0))))
    assert pos == (0,)
    arg = F.FUSE_CREATE_IN.pack(os.O_RDWR | os.O_CREAT, 0o644, 0, 0)
    payload = ok(srv, request(O.CREATE, 1, arg, name("copy")))
    out_node = entry(payload[:F.FUSE_ENTRY_OUT_SIZE])[0].nodeid
    fh_out = F.FUSE_OPEN_OUT.unpack(payload[F.FUSE_ENTRY_OUT_SIZE:])[0]
    cfr = F.FUSE_COPY_FILE_RANGE_IN.pack(fh, 0, out_node, fh_out, 0, 13, 0)
    assert u32s(ok(srv, request(O.COPY_FILE_RANGE, head.nodeid, cfr)), 1) == (13,)
    assert (share / "copy").read_bytes() == b"hello, world\n"


# --- directories ------------------------------------------------------------------------------------

def test_readdir_lists_every_entry_with_stable_cookies(srv, share):
    for i in range(50):
        (share / f"file{i:02d}").write_bytes(b"")
    fh = F.FUSE_OPEN_OUT.unpack(ok(srv, request(O.OPENDIR, 1, F.FUSE_OPEN_IN.pack(0, 0))))[0]
    seen, offset = [], 0
    while True:
        got = dirents(ok(srv, request(O.READDIR, 1, read_in(fh, offset, 256))))
        if not got:
            break
        seen += got
        offset = got[-1][2]
    names = sorted(n for n, *_ in seen)
    assert names == sorted([b".", b"..", b"hello.txt", b"sub"] + [f"file{i:02d}".encode() for i in range(50)])
    types = {n: t for n, _, _, t in seen}
    assert types[b"sub"] == stat.S_IFDIR >> 12 and types[b"hello.txt"] == stat.S_IFREG >> 12
    root_ino = os.stat(share).st_ino
    assert {n: i for n, i, _, _ in seen}[b".."] == root_ino  # the root's parent is hidden
    ok(srv, request(O.FSYNCDIR, 1, F.FUSE_FSYNC_IN.pack(fh, 0, 0)))
    ok(srv, request(O.RELEASEDIR, 1, F.FUSE_RELEASE_IN.pack(fh, 0, 0, 0)))
    assert err(srv, request(O.READDIR, 1, read_in(fh, 0, 4096))) == errno.EBADF


def test_readdirplus_looks_up_entries_and_counts_them(srv, share):
    fh = F.FUSE_OPEN_OUT.unpack(ok(srv, request(O.OPENDIR, 1, F.FUSE_OPEN_IN.pack(0, 0))))[0]
    before = len(srv.backend.inodes)
    payload = ok(srv, request(O.READDIRPLUS, 1, read_in(fh, 0, 1 << 16)))
    got = dirents(payload, plus=True)
    assert sorted(n for n, *_ in got) == [b".", b"..", b"hello.txt", b"sub"]
    assert len(srv.backend.inodes) == before + 2
    head, attr = entry(payload[:F.FUSE_ENTRY_OUT_SIZE])
    assert head.nodeid == 0  # '.' carries no entry
    # A buffer that holds one entry only: what did not fit is not counted.
    fh2 = F.FUSE_OPEN_OUT.unpack(ok(srv, request(O.OPENDIR, 1, F.FUSE_OPEN_IN.pack(0, 0))))[0]
    small = ok(srv, request(O.READDIRPLUS, 1, read_in(fh2, 2, 200)))
    assert len(dirents(small, plus=True)) == 1


def test_opendir_of_a_file_is_enotdir(srv):
    head, _ = lookup(srv, 1, "hello.txt")
    assert err(srv, request(O.OPENDIR, head.nodeid, F.FUSE_OPEN_IN.pack(0, 0))) == errno.ENOTDIR


# --- xattrs, locks, session -------------------------------------------------------------------------

def test_xattrs(srv, share):
    head, _ = lookup(srv, 1, "hello.txt")
    setx = F.FUSE_COMPAT_SETXATTR_IN.pack(3, 0)
    try:
        ok(srv, request(O.SETXATTR, head.nodeid, setx, name("user.test"), b"abc"))
    except AssertionError:
        pytest.skip("the host file system has no user xattrs")
    assert os.getxattr(share / "hello.txt", "user.test") == b"abc"
    size = ok(srv, request(O.GETXATTR, head.nodeid, F.FUSE_GETXATTR_IN.pack(0, 0), name("user.test")))
    assert u32s(size, 1) == (3,)
    assert ok(srv, request(O.GETXATTR, head.nodeid, F.FUSE_GETXATTR_IN.pack(64, 0), name("user.test"))) == b"abc"
    assert err(srv, request(O.GETXATTR, head.nodeid, F.FUSE_GETXATTR_IN.pack(1, 0), name("user.test"))) == errno.ERANGE
    assert b"user.test\0" in ok(srv, request(O.LISTXATTR, head.nodeid, F.FUSE_GETXATTR_IN.pack(4096, 0)))
    ok(srv, request(O.REMOVEXATTR, head.nodeid, name("user.test")))
    assert err(srv, request(O.GETXATTR, head.nodeid, F.FUSE_GETXATTR_IN.pack(64, 0), name("user.test"))) == errno.ENODATA


def test_xattrs_off_is_enosys(share):
    server = FuseServer(PassthroughFs(str(share)))
    ok(server, init())
    assert err(server, request(O.GETXATTR, 1, F.FUSE_GETXATTR_IN.pack(64, 0), name("user.x"))) == errno.ENOSYS


@pytest.mark.parametrize("op", [O.GETLK, O.SETLK, O.SETLKW, O.BMAP, O.IOCTL, O.POLL, O.SYNCFS, O.TMPFILE,
                                O.SETUPMAPPING, 999, 0, 0xFFFFFFFF])
def test_unserved_and_unknown_opcodes_are_enosys(srv, op):
    assert err(srv, request(op, 1, bytes(64))) == errno.ENOSYS


def test_forget_and_interrupt_have_no_reply(srv):
    head, _ = lookup(srv, 1, "hello.txt")
    assert srv.handle(request(O.FORGET, head.nodeid, F.FUSE_FORGET_IN.pack(1)), 0) is None
    assert err(srv, request(O.GETATTR, head.nodeid, F.FUSE_GETATTR_IN.pack(0, 0, 0))) == errno.EBADF
    assert srv.handle(request(O.INTERRUPT, 1, F.FUSE_INTERRUPT_IN.pack(5)), 64) is None


def test_batch_forget(srv):
    heads = [lookup(srv, 1, n)[0] for n in ("hello.txt", "sub", "hello.txt")]
    forgets = F.FUSE_FORGET_ONE.pack(heads[0].nodeid, 2) + F.FUSE_FORGET_ONE.pack(heads[1].nodeid, 1)
    assert srv.handle(request(O.BATCH_FORGET, 0, F.FUSE_BATCH_FORGET_IN.pack(2, 0), forgets), 0) is None
    assert len(srv.backend.inodes) == 1


def test_destroy_ends_the_session(srv):
    lookup(srv, 1, "hello.txt")
    assert ok(srv, request(O.DESTROY, 1)) == b""
    assert len(srv.backend.inodes) == 1
    assert err(srv, request(O.GETATTR, 1, F.FUSE_GETATTR_IN.pack(0, 0, 0))) == errno.EIO


def test_read_only_refuses_every_change(share):
    server = FuseServer(PassthroughFs(str(share), read_only=True, xattr=True))
    ok(server, init())
    head, _ = lookup(server, 1, "hello.txt")
    refused = [
        request(O.MKDIR, 1, F.FUSE_MKDIR_IN.pack(0o755, 0), name("d")),
        request(O.CREATE, 1, F.FUSE_CREATE_IN.pack(os.O_RDWR | os.O_CREAT, 0o644, 0, 0), name("c")),
        request(O.UNLINK, 1, name("hello.txt")),
        request(O.RENAME, 1, F.FUSE_RENAME_IN.pack(1), name("hello.txt"), name("x")),
        request(O.SYMLINK, 1, name("s"), name("t")),
        request(O.OPEN, head.nodeid, F.FUSE_OPEN_IN.pack(os.O_WRONLY, 0)),
        request(O.SETATTR, head.nodeid, F.FUSE_SETATTR_IN.pack(F.FattrFlag.SIZE, *(0,) * 15)),
        request(O.SETXATTR, head.nodeid, F.FUSE_COMPAT_SETXATTR_IN.pack(1, 0), name("user.a"), b"v"),
    ]
    for data in refused:
        assert err(server, data) == errno.EROFS
    assert open_(server, head.nodeid)[0] > 0  # reading is fine
    assert (share / "hello.txt").read_bytes() == b"hello, world\n"
