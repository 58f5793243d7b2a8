"""One handler per FUSE opcode: decode the ``*_in`` struct and names, call the back-end,
encode the ``*_out`` reply (linux/fuse.h).  The table :data:`HANDLERS` is what
:class:`~.server.FuseServer` dispatches through; an opcode not in it gets ENOSYS.

Each handler is ``(server, header, args, out_size) -> reply or None``; errors are raised
(FuseError, OSError) and become errno replies in the server.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Callable

from ...spec import fuse as F
from .passthrough import Caller, Entry
from .wire import PATH_MAX, Args, FuseError, Placed, dirent, reply_error, reply_ok

O = F.FuseOpcode
_NS = 1_000_000_000
_U64 = (1 << 64) - 1
#: The most one READ or READDIR returns, whatever it asks (and never more than the buffer).
MAX_READ = 1 << 24
#: Longest xattr value (Linux XATTR_SIZE_MAX).
XATTR_SIZE_MAX = 1 << 16


def _split(ns: int) -> tuple[int, int]:
    sec, nsec = divmod(ns, _NS)
    return sec & _U64, nsec


def pack_attr(st: os.stat_result) -> bytes:
    """fuse_attr from a host stat."""
    a, m, c = _split(st.st_atime_ns), _split(st.st_mtime_ns), _split(st.st_ctime_ns)
    return F.FUSE_ATTR.pack(st.st_ino, st.st_size, st.st_blocks, a[0], m[0], c[0], a[1], m[1], c[1],
                            st.st_mode, min(st.st_nlink, 0xFFFFFFFF), st.st_uid, st.st_gid,
                            st.st_rdev & 0xFFFFFFFF, st.st_blksize, 0)


def _valid(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * _NS)


def pack_entry(srv, entry: Entry) -> bytes:
    """fuse_entry_out for a looked-up inode, with the cache mode's timeouts."""
    sec, nsec = _valid(srv.timeout)
    return F.FUSE_ENTRY_OUT_HEAD.pack(entry.inode.nodeid, 0, sec, sec, nsec, nsec) + pack_attr(entry.st)


def pack_attr_out(srv, st: os.stat_result) -> bytes:
    """fuse_attr_out with the cache mode's timeout."""
    sec, nsec = _valid(srv.timeout)
    return F.FUSE_ATTR_OUT_HEAD.pack(sec, nsec, 0) + pack_attr(st)


def _caller(hdr: F.FuseInHeader) -> Caller:
    return Caller(hdr.uid, hdr.gid, hdr.pid)


def _entry_reply(srv, hdr, entry: Entry):
    return reply_ok(hdr.unique, pack_entry(srv, entry))


def _empty(hdr):
    return reply_ok(hdr.unique)


# --- names ---------------------------------------------------------------------------------------

def op_lookup(srv, hdr, args: Args, out_size):
    return _entry_reply(srv, hdr, srv.backend.lookup(hdr.nodeid, args.name()))


def op_forget(srv, hdr, args: Args, out_size):
    (nlookup,) = args.struct(F.FUSE_FORGET_IN)
    srv.backend.forget(hdr.nodeid, nlookup)
    return None


def op_batch_forget(srv, hdr, args: Args, out_size):
    count, _ = args.struct(F.FUSE_BATCH_FORGET_IN)
    rest = args.rest()
    count = min(count, len(rest) // F.FUSE_FORGET_ONE.size)  # no more than the request carries
    for nodeid, nlookup in F.FUSE_FORGET_ONE.iter_unpack(rest[:count * F.FUSE_FORGET_ONE.size]):
        srv.backend.forget(nodeid, nlookup)
    return None


def op_mknod(srv, hdr, args: Args, out_size):
    mode, rdev, _umask, _ = args.struct(F.FUSE_MKNOD_IN)
    name = args.name()
    return _entry_reply(srv, hdr, srv.backend.mknod(hdr.nodeid, name, mode, rdev, _caller(hdr)))


def op_mkdir(srv, hdr, args: Args, out_size):
    mode, _umask = args.struct(F.FUSE_MKDIR_IN)
    name = args.name()
    return _entry_reply(srv, hdr, srv.backend.mkdir(hdr.nodeid, name, mode, _caller(hdr)))


def op_symlink(srv, hdr, args: Args, out_size):
    name = args.name()
    target = args.name(PATH_MAX)
    return _entry_reply(srv, hdr, srv.backend.symlink(hdr.nodeid, name, target, _caller(hdr)))


def op_link(srv, hdr, args: Args, out_size):
    (oldnodeid,) = args.struct(F.FUSE_LINK_IN)
    return _entry_reply(srv, hdr, srv.backend.link(oldnodeid, hdr.nodeid, args.name()))


def op_unlink(srv, hdr, args: Args, out_size):
    srv.backend.unlink(hdr.nodeid, args.name())
    return _empty(hdr)


def op_rmdir(srv, hdr, args: Args, out_size):
    srv.backend.rmdir(hdr.nodeid, args.name())
    return _empty(hdr)


def op_rename(srv, hdr, args: Args, out_size):
    (newdir,) = args.struct(F.FUSE_RENAME_IN)
    old, new = args.name(), args.name()
    srv.backend.rename(hdr.nodeid, old, newdir, new)
    return _empty(hdr)


def op_rename2(srv, hdr, args: Args, out_size):
    newdir, flags, _ = args.struct(F.FUSE_RENAME2_IN)
    if flags & ~(F.RENAME_NOREPLACE | F.RENAME_EXCHANGE | F.RENAME_WHITEOUT):
        raise FuseError(errno.EINVAL, "unknown rename flags")
    old, new = args.name(), args.name()
    srv.backend.rename(hdr.nodeid, old, newdir, new, flags)
    return _empty(hdr)


def op_readlink(srv, hdr, args: Args, out_size):
    return reply_ok(hdr.unique, srv.backend.readlink(hdr.nodeid))


# --- attributes ----------------------------------------------------------------------------------

def op_getattr(srv, hdr, args: Args, out_size):
    return reply_ok(hdr.unique, pack_attr_out(srv, srv.backend.getattr(hdr.nodeid)))


def op_setattr(srv, hdr, args: Args, out_size):
    arg = F.FuseSetattrIn._make(args.struct(F.FUSE_SETATTR_IN))
    fh = arg.fh if arg.valid & F.FattrFlag.FH else None
    return reply_ok(hdr.unique, pack_attr_out(srv, srv.backend.setattr(hdr.nodeid, fh, arg)))


def op_statfs(srv, hdr, args: Args, out_size):
    v = srv.backend.statfs(hdr.nodeid)
    return reply_ok(hdr.unique, F.FUSE_KSTATFS.pack(v.f_blocks, v.f_bfree, v.f_bavail, v.f_files, v.f_ffree,
                                                    v.f_bsize, v.f_namemax, v.f_frsize, 0))


def op_access(srv, hdr, args: Args, out_size):
    mask, _ = args.struct(F.FUSE_ACCESS_IN)
    srv.backend.access(hdr.nodeid, mask, _caller(hdr))
    return _empty(hdr)


# --- extended attributes --------------------------------------------------------------------------

def _sized(hdr, value: bytes, size: int):
    """GETXATTR/LISTXATTR: size 0 asks for the length; a smaller buffer is ERANGE."""
    if size == 0:
        return reply_ok(hdr.unique, F.FUSE_GETXATTR_OUT.pack(len(value), 0))
    if len(value) > size:
        return reply_error(hdr.unique, errno.ERANGE)
    return reply_ok(hdr.unique, value)


def op_getxattr(srv, hdr, args: Args, out_size):
    size, _ = args.struct(F.FUSE_GETXATTR_IN)
    return _sized(hdr, srv.backend.getxattr(hdr.nodeid, args.name()), size)


def op_listxattr(srv, hdr, args: Args, out_size):
    size, _ = args.struct(F.FUSE_GETXATTR_IN)
    return _sized(hdr, srv.backend.listxattr(hdr.nodeid), size)


def op_setxattr(srv, hdr, args: Args, out_size):
    if srv.flags & F.FuseInitFlag.SETXATTR_EXT:
        size, flags, _, _ = args.struct(F.FUSE_SETXATTR_IN)
    else:
        size, flags = args.struct(F.FUSE_COMPAT_SETXATTR_IN)
    if size > XATTR_SIZE_MAX:
        raise FuseError(errno.E2BIG, "xattr value larger than XATTR_SIZE_MAX")
    name = args.name()
    srv.backend.setxattr(hdr.nodeid, name, bytes(args.data(size)), flags)
    return _empty(hdr)


def op_removexattr(srv, hdr, args: Args, out_size):
    srv.backend.removexattr(hdr.nodeid, args.name())
    return _empty(hdr)


# --- files ---------------------------------------------------------------------------------------

def _open_flags(srv, is_dir: bool) -> int:
    if srv.cache == "never":
        return 0 if is_dir else F.FopenFlag.DIRECT_IO
    if srv.cache == "always":
        return F.FopenFlag.CACHE_DIR if is_dir else F.FopenFlag.KEEP_CACHE
    return 0


def op_open(srv, hdr, args: Args, out_size):
    flags, _ = args.struct(F.FUSE_OPEN_IN)
    fh = srv.backend.open(hdr.nodeid, flags)
    return reply_ok(hdr.unique, F.FUSE_OPEN_OUT.pack(fh, _open_flags(srv, False), 0))


def op_create(srv, hdr, args: Args, out_size):
    flags, mode, _umask, _ = args.struct(F.FUSE_CREATE_IN)
    entry, fh = srv.backend.create(hdr.nodeid, args.name(), flags, mode, _caller(hdr))
    return reply_ok(hdr.unique, pack_entry(srv, entry), F.FUSE_OPEN_OUT.pack(fh, _open_flags(srv, False), 0))


def op_read(srv, hdr, args: Args, out_size, *, nowait: bool = False):
    arg = F.FuseReadIn._make(args.struct(F.FUSE_READ_IN))
    size = min(arg.size, MAX_READ, max(out_size - F.FUSE_OUT_HEADER_SIZE, 0))
    if args.sink is not None and size:  # straight into the driver's buffers
        done = srv.backend.read_into(arg.fh, arg.offset, args.sink(size), nowait=nowait)
        return reply_ok(hdr.unique, Placed(done))
    return reply_ok(hdr.unique, srv.backend.read(arg.fh, arg.offset, size, nowait=nowait))


def op_write(srv, hdr, args: Args, out_size, *, nowait: bool = False):
    arg = F.FuseWriteIn._make(args.struct(F.FUSE_WRITE_IN))
    written = srv.backend.write(arg.fh, arg.offset, args.data_views(arg.size), nowait=nowait)
    return reply_ok(hdr.unique, F.FUSE_WRITE_OUT.pack(written, 0))


def op_release(srv, hdr, args: Args, out_size):
    fh = args.struct(F.FUSE_RELEASE_IN)[0]
    srv.backend.release(fh)
    return _empty(hdr)


def op_flush(srv, hdr, args: Args, out_size):
    fh = args.struct(F.FUSE_FLUSH_IN)[0]
    srv.backend.flush(fh)
    return _empty(hdr)


def op_fsync(srv, hdr, args: Args, out_size, *, is_dir: bool = False):
    fh, flags, _ = args.struct(F.FUSE_FSYNC_IN)
    srv.backend.fsync(fh, bool(flags & F.FUSE_FSYNC_FDATASYNC), is_dir=is_dir)
    return _empty(hdr)


def op_fsyncdir(srv, hdr, args: Args, out_size):
    return op_fsync(srv, hdr, args, out_size, is_dir=True)


def op_fallocate(srv, hdr, args: Args, out_size):
    fh, offset, length, mode, _ = args.struct(F.FUSE_FALLOCATE_IN)
    srv.backend.fallocate(fh, mode, offset, length)
    return _empty(hdr)


def op_lseek(srv, hdr, args: Args, out_size):
    fh, offset, whence, _ = args.struct(F.FUSE_LSEEK_IN)
    return reply_ok(hdr.unique, F.FUSE_LSEEK_OUT.pack(srv.backend.lseek(fh, offset, whence)))


def op_copy_file_range(srv, hdr, args: Args, out_size):
    arg = F.FuseCopyFileRangeIn._make(args.struct(F.FUSE_COPY_FILE_RANGE_IN))
    length = min(arg.len, 0xFFFFFFFF)  # fuse_write_out.size is a u32
    done = srv.backend.copy_file_range(arg.fh_in, arg.off_in, arg.fh_out, arg.off_out, length, arg.flags)
    return reply_ok(hdr.unique, F.FUSE_WRITE_OUT.pack(done, 0))


# --- directories ---------------------------------------------------------------------------------

def op_opendir(srv, hdr, args: Args, out_size):
    fh = srv.backend.opendir(hdr.nodeid)
    return reply_ok(hdr.unique, F.FUSE_OPEN_OUT.pack(fh, _open_flags(srv, True), 0))


def op_releasedir(srv, hdr, args: Args, out_size):
    fh = args.struct(F.FUSE_RELEASE_IN)[0]
    srv.backend.releasedir(fh)
    return _empty(hdr)


def _readdir(srv, hdr, args: Args, out_size, plus: bool):
    arg = F.FuseReadIn._make(args.struct(F.FUSE_READ_IN))
    room = min(arg.size, MAX_READ, max(out_size - F.FUSE_OUT_HEADER_SIZE, 0))
    parts: list[bytes] = []
    used = 0
    overhead = F.FUSE_ENTRY_OUT_SIZE if plus else 0
    for name, ino, dtype, next_off in srv.backend.readdir(arg.fh, arg.offset, room, overhead):
        if plus:
            record = _direntplus(srv, hdr.nodeid, name, ino, dtype, next_off)
            if record is None:
                continue  # vanished since the listing was read
            record, entry = record
        else:
            record, entry = dirent(ino, next_off, dtype, name), None
        if used + len(record) > room:
            if entry is not None:
                srv.backend.forget(entry.inode.nodeid, 1)  # not sent: not looked up
            break
        parts.append(record)
        used += len(record)
    return reply_ok(hdr.unique, b"".join(parts))


def _direntplus(srv, parent: int, name: bytes, ino: int, dtype: int, next_off: int):
    """A fuse_direntplus: '.' and '..' carry no entry (node id 0: the driver makes no dentry),
    every other name is looked up (one lookup counted)."""
    if name in (b".", b".."):
        head = bytes(F.FUSE_ENTRY_OUT_HEAD.size)
        attr = F.FUSE_ATTR.pack(ino, 0, 0, 0, 0, 0, 0, 0, 0, dtype << 12, 0, 0, 0, 0, 0, 0)
        return head + attr + dirent(ino, next_off, dtype, name), None
    try:
        entry = srv.backend.lookup(parent, name)
    except FileNotFoundError:
        return None
    dtype = stat.S_IFMT(entry.st.st_mode) >> 12
    return pack_entry(srv, entry) + dirent(entry.st.st_ino, next_off, dtype, name), entry


def op_readdir(srv, hdr, args: Args, out_size):
    return _readdir(srv, hdr, args, out_size, plus=False)


def op_readdirplus(srv, hdr, args: Args, out_size):
    return _readdir(srv, hdr, args, out_size, plus=True)


# --- session -------------------------------------------------------------------------------------

def op_interrupt(srv, hdr, args: Args, out_size):
    args.struct(F.FUSE_INTERRUPT_IN)
    return None  # requests run to completion; nothing to interrupt, nothing to answer


def op_destroy(srv, hdr, args: Args, out_size):
    srv.destroy()
    return _empty(hdr)


HANDLERS: dict[int, Callable[..., Any]] = {
    O.LOOKUP: op_lookup, O.FORGET: op_forget, O.BATCH_FORGET: op_batch_forget,
    O.GETATTR: op_getattr, O.SETATTR: op_setattr, O.READLINK: op_readlink,
    O.SYMLINK: op_symlink, O.MKNOD: op_mknod, O.MKDIR: op_mkdir, O.UNLINK: op_unlink,
    O.RMDIR: op_rmdir, O.RENAME: op_rename, O.RENAME2: op_rename2, O.LINK: op_link,
    O.OPEN: op_open, O.CREATE: op_create, O.READ: op_read, O.WRITE: op_write,
    O.RELEASE: op_release, O.FLUSH: op_flush, O.FSYNC: op_fsync, O.STATFS: op_statfs,
    O.SETXATTR: op_setxattr, O.GETXATTR: op_getxattr, O.LISTXATTR: op_listxattr,
    O.REMOVEXATTR: op_removexattr, O.OPENDIR: op_opendir, O.READDIR: op_readdir,
    O.READDIRPLUS: op_readdirplus, O.RELEASEDIR: op_releasedir, O.FSYNCDIR: op_fsyncdir,
    O.ACCESS: op_access, O.FALLOCATE: op_fallocate, O.LSEEK: op_lseek,
    O.COPY_FILE_RANGE: op_copy_file_range, O.INTERRUPT: op_interrupt, O.DESTROY: op_destroy,
}

__all__ = ["HANDLERS", "MAX_READ", "pack_attr", "pack_attr_out", "pack_entry"]
