"""A host directory shared with the guest: the file-system back-end of the virtio-fs device.

Every call works relative to an inode's ``O_PATH`` descriptor (:mod:`.inodes`) with ``*at``
calls on one name component; no path from the share's root is ever built, so what a guest can
reach is what is reachable from the share's root directory by single steps, none of them
following a symlink:

* Names are checked as virtiofsd checks them (passthrough_ll.c): LOOKUP refuses a name with
  '/' (EINVAL) and turns ``..`` at the root into ``.``; every call that creates, removes or
  renames refuses '/', ``.`` and ``..`` (EINVAL, its ``is_safe_path_component``).
* LOOKUP opens ``O_PATH | O_NOFOLLOW``: a symlink is an inode of its own, never followed here
  (the guest's kernel resolves symlinks, inside the guest's mount).
* A file is opened for I/O by reopening its descriptor through ``/proc/self/fd/N``, and only a
  regular file or a directory (EBADF otherwise, as virtiofsd's ``lo_inode_open``); the magic
  link names the inode itself, so a rename racing the open cannot redirect it.
* LINK links the inode's own descriptor; RENAME moves a name between two directory descriptors.

``read_only``: every call that would change the share gets EROFS.  Caller credentials: files
are created by this process and, when it runs as root, handed to the request's uid/gid.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import NamedTuple

from ...spec import fuse as F
from . import sysc
from .inodes import Handle, HandleTable, Inode, InodeTable
from .wire import FuseError

_PROC_FD = "/proc/self/fd/{}"
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
#: The largest READ tried from the page cache without waiting (blk_io.OFFLOAD_BYTES: a larger
#: copy is better done beside the queue's worker).
NOWAIT_READ_MAX = 128 << 10
#: open(2) flags a guest's OPEN may not pass through (the kernel strips the first three itself).
_STRIP = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW | getattr(os, "O_DIRECT", 0)
_WRITES = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND
_ACCESS_BITS = {os.R_OK: 4, os.W_OK: 2, os.X_OK: 1}


class Entry(NamedTuple):
    """A looked-up inode (one lookup counted) and its attributes."""

    inode: Inode
    st: os.stat_result


class Caller(NamedTuple):
    """Who sent a request (fuse_in_header uid, gid, pid)."""

    uid: int
    gid: int
    pid: int


def check_name(name: bytes) -> None:
    """virtiofsd's is_safe_path_component: one component, not '.' or '..' (EINVAL)."""
    if not name or b"/" in name or name in (b".", b".."):
        raise FuseError(errno.EINVAL, f"unsafe name {name!r}")


def proc_path(fd: int) -> str:
    """The magic link that names the inode of ``fd`` itself."""
    return _PROC_FD.format(fd)


class PassthroughFs:
    """The file-system back-end: a host directory, every call relative to O_PATH handles."""

    def __init__(self, shared_dir: str, *, read_only: bool = False, xattr: bool = False,
                 max_inodes: int | None = None, max_handles: int | None = None):
        fd = os.open(shared_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.shared_dir = shared_dir
        self.read_only = read_only
        self.xattr = xattr
        self.inodes = InodeTable(fd, **({"max_inodes": max_inodes} if max_inodes else {}))
        self.handles = HandleTable(**({"max_handles": max_handles} if max_handles else {}))
        self._chown = os.geteuid() == 0
        self._umask = _process_umask()  # 0 under 'serve fs' (virtiofsd's umask(0))

    def close(self) -> None:
        """Close every handle and inode."""
        self.handles.clear()
        self.inodes.close()

    def reset(self) -> None:
        """Forget what a previous driver held (DESTROY, device reset)."""
        self.handles.clear()
        self.inodes.clear()

    def _writable(self) -> None:
        if self.read_only:
            raise FuseError(errno.EROFS, "the share is read-only")

    # --- names ----------------------------------------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> Entry:
        """LOOKUP: one lookup of ``name`` in ``parent`` counted (ENOENT for an unknown parent,
        as virtiofsd)."""
        if b"/" in name:
            raise FuseError(errno.EINVAL, "name with '/'")
        with self.inodes.use(parent, errno.ENOENT) as dir_:
            if dir_ is self.inodes.root and name == b"..":
                name = b"."  # do not allow escaping the root directory
            return self._lookup_at(dir_, name)

    def _lookup_at(self, dir_: Inode, name: bytes, owner: Caller | None = None, mode: int = -1) -> Entry:
        """Open ``name`` O_PATH and count a lookup.  ``owner``: chown the new file to the
        caller first; ``mode``: the permissions it was created with, set again if this
        process's umask took bits away.  Whatever is done to the descriptor is done before it
        is in the table (once there, a racing FORGET may close it)."""
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_.fd)
        try:
            st = os.stat(fd)
            if mode >= 0 and stat.S_IMODE(st.st_mode) != mode & 0o7777 and not stat.S_ISLNK(st.st_mode):
                os.chmod(proc_path(fd), mode & 0o7777)  # the guest's kernel applied its umask
                st = os.stat(fd)
            if owner is not None and (owner.uid, owner.gid) != (st.st_uid, st.st_gid):
                try:
                    sysc.fchown_empty(fd, owner.uid, owner.gid)
                    st = os.stat(fd)
                except OSError:
                    pass  # keep what the host allows
        except OSError:
            os.close(fd)
            raise
        return Entry(self.inodes.add_lookup(fd, st), st)

    def forget(self, nodeid: int, nlookup: int) -> None:
        """FORGET (and each entry of BATCH_FORGET)."""
        self.inodes.forget(nodeid, nlookup)

    def _created(self, dir_: Inode, name: bytes, caller: Caller, mode: int = -1) -> Entry:
        if mode >= 0 and not self._umask & mode:
            mode = -1  # created as asked
        return self._lookup_at(dir_, name, caller if self._chown else None, mode)

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, caller: Caller) -> Entry:
        """MKNOD (regular files, fifos, sockets, device nodes as virtiofsd allows them)."""
        check_name(name)
        self._writable()
        with self.inodes.use(parent) as dir_:
            os.mknod(name, mode, rdev, dir_fd=dir_.fd)
            return self._created(dir_, name, caller, mode)

    def mkdir(self, parent: int, name: bytes, mode: int, caller: Caller) -> Entry:
        """MKDIR."""
        check_name(name)
        self._writable()
        with self.inodes.use(parent) as dir_:
            os.mkdir(name, mode & 0o7777, dir_fd=dir_.fd)
            return self._created(dir_, name, caller, mode)

    def symlink(self, parent: int, name: bytes, target: bytes, caller: Caller) -> Entry:
        """SYMLINK: ``target`` is stored as given; the server never follows it."""
        check_name(name)
        self._writable()
        with self.inodes.use(parent) as dir_:
            os.symlink(target, name, dir_fd=dir_.fd)
            return self._created(dir_, name, caller)

    def link(self, nodeid: int, newparent: int, name: bytes) -> Entry:
        """LINK: a new name in ``newparent`` for the inode ``nodeid`` (one lookup counted)."""
        check_name(name)
        self._writable()
        with self.inodes.use(nodeid) as inode, self.inodes.use(newparent) as dir_:
            os.link(proc_path(inode.fd), name, dst_dir_fd=dir_.fd, follow_symlinks=True)
            st = os.stat(inode.fd)
            self.inodes.add_ref(inode)
            return Entry(inode, st)

    def unlink(self, parent: int, name: bytes) -> None:
        """UNLINK."""
        check_name(name)
        self._writable()
        with self.inodes.use(parent) as dir_:
            os.unlink(name, dir_fd=dir_.fd)

    def rmdir(self, parent: int, name: bytes) -> None:
        """RMDIR."""
        check_name(name)
        self._writable()
        with self.inodes.use(parent) as dir_:
            os.rmdir(name, dir_fd=dir_.fd)

    def rename(self, parent: int, name: bytes, newparent: int, newname: bytes, flags: int = 0) -> None:
        """RENAME / RENAME2 (``flags``: RENAME_NOREPLACE, EXCHANGE, WHITEOUT)."""
        check_name(name)
        check_name(newname)
        self._writable()
        with self.inodes.use(parent) as old, self.inodes.use(newparent) as new:
            if not flags:
                os.rename(name, newname, src_dir_fd=old.fd, dst_dir_fd=new.fd)
                return
            try:
                sysc.renameat2(old.fd, name, new.fd, newname, flags)
            except OSError as exc:
                if exc.errno == errno.ENOSYS:
                    raise FuseError(errno.EINVAL, "renameat2 is missing") from None
                raise

    # --- attributes -----------------------------------------------------------------------------

    def getattr(self, nodeid: int) -> os.stat_result:
        """GETATTR (the inode's own attributes, a symlink's included)."""
        with self.inodes.use(nodeid) as inode:
            return os.stat(inode.fd)

    def setattr(self, nodeid: int, fh: int | None, arg: F.FuseSetattrIn) -> os.stat_result:
        """SETATTR, field by field as ``valid`` says, then the new attributes."""
        valid = arg.valid
        if valid & ~(F.FattrFlag.FH | F.FattrFlag.LOCKOWNER | F.FattrFlag.KILL_SUIDGID):
            self._writable()
        with self.inodes.use(nodeid) as inode:
            if fh is not None:
                with self.handles.use(fh) as handle:
                    self._setattr(inode, handle, arg)
            else:
                self._setattr(inode, None, arg)
            return os.stat(inode.fd)

    def _setattr(self, inode: Inode, handle: Handle | None, arg: F.FuseSetattrIn) -> None:
        valid = arg.valid
        if valid & F.FattrFlag.MODE:
            if handle is not None:
                os.fchmod(handle.fd, arg.mode & 0o7777)
            else:
                os.chmod(proc_path(inode.fd), arg.mode & 0o7777)
        if valid & (F.FattrFlag.UID | F.FattrFlag.GID):
            uid = arg.uid if valid & F.FattrFlag.UID else -1
            gid = arg.gid if valid & F.FattrFlag.GID else -1
            sysc.fchown_empty(inode.fd, uid, gid)
        if valid & F.FattrFlag.SIZE:
            if handle is not None:
                os.ftruncate(handle.fd, arg.size)
            else:
                fd = self._reopen(inode, os.O_RDWR)
                try:
                    os.ftruncate(fd, arg.size)
                finally:
                    os.close(fd)
        if valid & (F.FattrFlag.ATIME | F.FattrFlag.MTIME | F.FattrFlag.ATIME_NOW | F.FattrFlag.MTIME_NOW):
            atime = _time(valid, F.FattrFlag.ATIME, F.FattrFlag.ATIME_NOW, arg.atime, arg.atimensec)
            mtime = _time(valid, F.FattrFlag.MTIME, F.FattrFlag.MTIME_NOW, arg.mtime, arg.mtimensec)
            if handle is not None:
                sysc.utimens(handle.fd, b"", atime, mtime)
            else:
                sysc.utimens(-100, proc_path(inode.fd).encode(), atime, mtime)  # AT_FDCWD

    def readlink(self, nodeid: int) -> bytes:
        """READLINK (EINVAL for an inode that is not a symlink)."""
        with self.inodes.use(nodeid) as inode:
            return os.readlink(b"", dir_fd=inode.fd)

    def statfs(self, nodeid: int) -> os.statvfs_result:
        """STATFS of the file system holding ``nodeid``."""
        with self.inodes.use(nodeid) as inode:
            return os.statvfs(inode.fd)

    def access(self, nodeid: int, mask: int, caller: Caller) -> None:
        """ACCESS: the permission bits against the caller's uid/gid (root may read and write
        anything, and execute what has an x bit); EACCES if refused."""
        with self.inodes.use(nodeid) as inode:
            st = os.stat(inode.fd)
        if mask & os.W_OK and self.read_only:
            raise FuseError(errno.EROFS, "the share is read-only")
        if caller.uid == 0:
            if mask & os.X_OK and not st.st_mode & 0o111 and not stat.S_ISDIR(st.st_mode):
                raise FuseError(errno.EACCES, "no execute bit")
            return
        shift = 6 if caller.uid == st.st_uid else 3 if caller.gid == st.st_gid else 0
        for bit, perm in _ACCESS_BITS.items():
            if mask & bit and not (st.st_mode >> shift) & perm:
                raise FuseError(errno.EACCES, "permission bits refuse it")

    # --- extended attributes (through the magic link: symlinks are not followed by it) ----------

    def _xattr_on(self) -> None:
        if not self.xattr:
            raise FuseError(errno.ENOSYS, "extended attributes are off")

    def getxattr(self, nodeid: int, name: bytes) -> bytes:
        """GETXATTR: the value (the caller checks it against the guest's size)."""
        self._xattr_on()
        with self.inodes.use(nodeid) as inode:
            return os.getxattr(proc_path(inode.fd), name)

    def listxattr(self, nodeid: int) -> bytes:
        """LISTXATTR: the NUL-terminated names, concatenated."""
        self._xattr_on()
        with self.inodes.use(nodeid) as inode:
            names = os.listxattr(proc_path(inode.fd))
        return b"".join(os.fsencode(n) + b"\0" for n in names)

    def setxattr(self, nodeid: int, name: bytes, value: bytes, flags: int) -> None:
        """SETXATTR (``flags``: XATTR_CREATE / XATTR_REPLACE)."""
        self._xattr_on()
        self._writable()
        with self.inodes.use(nodeid) as inode:
            os.setxattr(proc_path(inode.fd), name, value, flags)

    def removexattr(self, nodeid: int, name: bytes) -> None:
        """REMOVEXATTR."""
        self._xattr_on()
        self._writable()
        with self.inodes.use(nodeid) as inode:
            os.removexattr(proc_path(inode.fd), name)

    # --- opening ------------------------------------------------------------------------------

    def _reopen(self, inode: Inode, flags: int) -> int:
        """A real descriptor for a regular file or directory (EBADF for anything else: device
        nodes, fifos and symlinks are never opened by the server)."""
        if not (inode.is_reg or inode.is_dir):
            raise FuseError(errno.EBADF, "only regular files and directories are opened")
        return os.open(proc_path(inode.fd), (flags & ~_STRIP) | os.O_CLOEXEC)

    def open(self, nodeid: int, flags: int) -> int:
        """OPEN: a file handle."""
        if flags & _WRITES:
            self._writable()
        with self.inodes.use(nodeid) as inode:
            return self.handles.add(self._reopen(inode, flags), nodeid, is_dir=False)

    def create(self, parent: int, name: bytes, flags: int, mode: int, caller: Caller) -> tuple[Entry, int]:
        """CREATE: make (or, without O_EXCL, open an existing) regular file; entry and handle."""
        check_name(name)
        self._writable()
        with self.inodes.use(parent) as dir_:
            fd = -1
            try:
                fd = os.open(name, (flags & ~_STRIP) | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             mode & 0o7777, dir_fd=dir_.fd)
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
            try:
                entry = self._created(dir_, name, caller, mode) if fd >= 0 else self._lookup_at(dir_, name)
            except BaseException:
                if fd >= 0:
                    os.close(fd)
                raise
        try:
            if fd < 0:
                with self.inodes.use(entry.inode.nodeid) as inode:  # a FORGET may race us
                    fd = self._reopen(inode, flags)
            return entry, self.handles.add(fd, entry.inode.nodeid, is_dir=False)
        except BaseException:
            self.inodes.forget(entry.inode.nodeid, 1)
            raise

    def opendir(self, nodeid: int) -> int:
        """OPENDIR: a directory handle (ENOTDIR for anything else)."""
        with self.inodes.use(nodeid) as inode:
            if not inode.is_dir:
                raise FuseError(errno.ENOTDIR, "not a directory")
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=inode.fd)
            return self.handles.add(fd, nodeid, is_dir=True)

    # --- I/O on handles -----------------------------------------------------------------------

    def read(self, fh: int, offset: int, size: int, *, nowait: bool = False) -> bytes:
        """READ: at most ``size`` bytes at ``offset`` (fewer at the end of the file); see
        :meth:`read_into` for ``nowait``."""
        buf = bytearray(size)
        n = self.read_into(fh, offset, [memoryview(buf)], nowait=nowait)
        del buf[n:]
        return bytes(buf)

    def read_into(self, fh: int, offset: int, views: list[memoryview], *, nowait: bool = False) -> int:
        """READ into ``views`` (guest memory, or a buffer): the bytes read, fewer only at the
        end of the file.  With ``nowait``, only what cannot wait for a disk: a file in memory
        (tmpfs), or up to :data:`NOWAIT_READ_MAX` bytes from the page cache (``RWF_NOWAIT``);
        BlockingIOError otherwise (a range only partly cached before the end of the file counts
        as uncached; ``views`` may then hold part of the data)."""
        size = sum(len(v) for v in views)
        with self.handles.use(fh) as handle:
            if not nowait or _in_memory(handle):
                return _preadv_full(handle.fd, views, offset, size)
            if size > NOWAIT_READ_MAX or not _RWF_NOWAIT:
                raise BlockingIOError(errno.EAGAIN, "may wait for a disk")
            try:
                n = os.preadv(handle.fd, views, offset, _RWF_NOWAIT)
            except OSError as exc:  # EAGAIN, or no RWF_NOWAIT on this file system
                raise BlockingIOError(errno.EAGAIN, "not in the page cache") from exc
            if n < size and offset + n < os.fstat(handle.fd).st_size:
                raise BlockingIOError(errno.EAGAIN, "only partly in the page cache")
            return n

    def write(self, fh: int, offset: int, data: list[memoryview], *, nowait: bool = False) -> int:
        """WRITE ``data`` (views of guest memory, written with one pwritev): the bytes written.
        With ``nowait``, only to a file in memory (tmpfs); BlockingIOError otherwise, before
        anything is written."""
        self._writable()
        with self.handles.use(fh) as handle:
            if nowait and not _in_memory(handle):
                raise BlockingIOError(errno.EAGAIN, "may wait for a disk")
            return os.pwritev(handle.fd, data, offset) if data else 0

    def release(self, fh: int) -> None:
        """RELEASE: the handle is closed (once no request uses it)."""
        self.handles.remove(fh)

    def flush(self, fh: int) -> None:
        """FLUSH: close a duplicate, as close(2) of the guest's descriptor would (errors of
        delayed writes show here)."""
        with self.handles.use(fh) as handle:
            os.close(os.dup(handle.fd))

    def fsync(self, fh: int, datasync: bool, *, is_dir: bool = False) -> None:
        """FSYNC / FSYNCDIR."""
        with self.handles.use(fh, is_dir=is_dir) as handle:
            (os.fdatasync if datasync else os.fsync)(handle.fd)

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """FALLOCATE with its mode."""
        self._writable()
        with self.handles.use(fh) as handle:
            sysc.fallocate(handle.fd, mode, offset, length)

    def lseek(self, fh: int, offset: int, whence: int) -> int:
        """LSEEK (SEEK_DATA / SEEK_HOLE; SEEK_SET/CUR/END as lseek(2) does them)."""
        with self.handles.use(fh) as handle:
            return os.lseek(handle.fd, offset, whence)

    def copy_file_range(self, fh_in: int, off_in: int, fh_out: int, off_out: int, length: int,
                        flags: int) -> int:
        """COPY_FILE_RANGE inside the share: the bytes copied."""
        self._writable()
        if flags:
            raise FuseError(errno.EINVAL, "copy_file_range flags must be 0")
        with self.handles.use(fh_in) as src, self.handles.use(fh_out) as dst:
            return os.copy_file_range(src.fd, dst.fd, length, off_in, off_out)

    def releasedir(self, fh: int) -> None:
        """RELEASEDIR."""
        self.handles.remove(fh, is_dir=True)

    def readdir(self, fh: int, offset: int, room: int, overhead: int = 0) -> list[tuple[bytes, int, int, int]]:
        """READDIR from cookie ``offset`` (0: the start; else an entry's ``d_off``, as seekdir):
        (name, ino, DT_* type, next cookie) for the entries that fill about ``room`` bytes
        (each takes a fuse_dirent and its name, plus ``overhead``).  Nothing is kept between
        calls: the cookie is the directory's own position, as virtiofsd's seekdir."""
        out: list[tuple[bytes, int, int, int]] = []
        used = 0
        with self.handles.use(fh, is_dir=True) as handle:
            fd = handle.fd
            os.lseek(fd, offset - (1 << 64) if offset >= 1 << 63 else offset, os.SEEK_SET)
            root_ino = os.stat(fd).st_ino if handle.nodeid == F.FUSE_ROOT_ID else None
            while used < room:
                batch = sysc.getdents(fd)
                if not batch:
                    break
                for name, ino, dtype, next_off in batch:
                    if root_ino is not None and name == b"..":
                        ino = root_ino  # hide the root's parent directory (as virtiofsd)
                    out.append((name, ino, dtype, next_off & _U64))
                    used += overhead + 24 + ((len(name) + 7) & ~7)
        return out


_U64 = (1 << 64) - 1


def _preadv_full(fd: int, views: list[memoryview], offset: int, size: int) -> int:
    """preadv until ``size`` bytes or the end of the file (a read may come back short)."""
    done = 0
    while done < size:
        n = os.preadv(fd, _skip(views, done), offset + done)
        if n <= 0:
            break
        done += n
    return done


def _skip(views: list[memoryview], n: int) -> list[memoryview]:
    if not n:
        return views
    out = []
    for v in views:
        if n >= len(v):
            n -= len(v)
            continue
        out.append(v[n:])
        n = 0
    return out


def _in_memory(handle: Handle) -> bool:
    if handle.in_memory is None:
        handle.in_memory = sysc.in_memory_fs(handle.fd)
    return handle.in_memory


def _process_umask() -> int:
    """This process's umask, read without changing it (/proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _time(valid: int, given: int, now: int, sec: int, nsec: int) -> tuple[int, int]:
    if valid & now:
        return (0, sysc.UTIME_NOW)
    if valid & given:
        return (sec if sec < 1 << 63 else sec - (1 << 64), nsec)
    return (0, sysc.UTIME_OMIT)


__all__ = ["Caller", "Entry", "PassthroughFs", "check_name", "proc_path"]
