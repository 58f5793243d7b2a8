"""Paths over a virtio-fs driver: read, write, list and change files by name, no mount.

:class:`FsClient` turns a path into FUSE LOOKUPs from the root, one component at a time (no
symlink is followed: a component that is a symlink fails with ENOTDIR from the device, as
``O_NOFOLLOW`` would), runs the operation on the node ids, and forgets every lookup it made
(one BATCH_FORGET on the hiprio queue).  As the kernel's VFS does, the node a call removes or
renames is looked up first and stays looked up during the call (virtiofsd answers EIO to an
UNLINK or RENAME of a name whose inode it does not hold).  Nothing is cached, so each call sees
the host's current tree.  ``.`` and empty components are dropped; ``..`` goes to the device as a name
(the device decides what the parent of its root is: virtiofsd answers with the root itself).

    client = FsClient(FsDriver.probe(transport))
    client.write_file("dir/a.txt", b"data")
    client.read_file("dir/a.txt"); client.listdir("dir"); client.stat("dir/a.txt").size

Reads and writes keep up to ``window`` requests in flight, spread over the request queues.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
from collections import deque
from typing import Iterator

from ..errors import UsageError
from ..spec import fuse as F
from .fs import DirEntry, FsDriver, FuseCall, FuseEntry, FuseReplyError

ROOT = F.FUSE_ROOT_ID
#: Requests a read or write keeps in flight.
DEFAULT_WINDOW = 8


def split_path(path: str) -> list[str]:
    """The names of ``path``, relative to the share's root (empty and ``.`` parts dropped)."""
    return [p for p in path.split("/") if p not in ("", ".")]


class _Lookups:
    """The lookups one client call made, forgotten together at the end."""

    def __init__(self, fs: FsDriver):
        self.fs = fs
        self.counts: dict[int, int] = {}

    def add(self, entry: FuseEntry) -> FuseEntry:
        if entry.nodeid:
            self.counts[entry.nodeid] = self.counts.get(entry.nodeid, 0) + 1
        return entry

    def forget(self) -> None:
        self.fs.batch_forget(sorted(self.counts.items()))
        self.counts = {}


class FsClient:
    """Path-level calls over an :class:`FsDriver` (see the module docstring)."""

    def __init__(self, fs: FsDriver, *, window: int = DEFAULT_WINDOW, umask: int = 0o022):
        self.fs, self.window, self.umask = fs, max(1, window), umask

    # --- resolving ------------------------------------------------------------------------------

    def _walk(self, names: list[str], seen: _Lookups) -> int:
        node = ROOT
        for name in names:
            node = seen.add(self.fs.lookup(node, name)).nodeid
        return node

    def _node(self, path: str, seen: _Lookups) -> int:
        return self._walk(split_path(path), seen)

    def _parent(self, path: str, seen: _Lookups) -> tuple[int, str]:
        names = split_path(path)
        if not names:
            raise UsageError(f"{path!r} names the share's root, which has no parent here")
        return self._walk(names[:-1], seen), names[-1]

    def _run(self, fn):
        seen = _Lookups(self.fs)
        try:
            return fn(seen)
        finally:
            seen.forget()

    # --- metadata ---------------------------------------------------------------------------------

    def stat(self, path: str) -> F.FuseAttr:
        """The attributes of ``path`` (not following a final symlink: lstat)."""
        return self._run(lambda seen: self.fs.getattr(self._node(path, seen)))

    def exists(self, path: str) -> bool:
        """Whether ``path`` names something (ENOENT/ENOTDIR: no)."""
        try:
            self.stat(path)
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory."""
        return stat_mod.S_ISDIR(self.stat(path).mode)

    def chmod(self, path: str, mode: int) -> F.FuseAttr:
        """SETATTR of the permission bits."""
        return self._run(lambda seen: self.fs.setattr(self._node(path, seen), mode=mode & 0o7777))

    def truncate(self, path: str, size: int) -> F.FuseAttr:
        """SETATTR of the size."""
        return self._run(lambda seen: self.fs.setattr(self._node(path, seen), size=size))

    def utime(self, path: str, atime_ns: int, mtime_ns: int) -> F.FuseAttr:
        """SETATTR of the access and modification times (nanoseconds since the epoch)."""
        return self._run(lambda seen: self.fs.setattr(self._node(path, seen), atime_ns=atime_ns,
                                                      mtime_ns=mtime_ns))

    def statvfs(self) -> F.FuseKstatfs:
        """STATFS of the share."""
        return self.fs.statfs(ROOT)

    def readlink(self, path: str) -> str:
        """The target of the symlink ``path``."""
        return self._run(lambda seen: self.fs.readlink(self._node(path, seen)))

    # --- names ------------------------------------------------------------------------------------

    def mkdir(self, path: str, mode: int = 0o755) -> F.FuseAttr:
        """Make the directory ``path``; its attributes."""
        def go(seen):
            parent, name = self._parent(path, seen)
            return seen.add(self.fs.mkdir(parent, name, self._mode(mode), self.umask)).attr
        return self._run(go)

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        """Make ``path`` and its missing parents (existing directories are fine)."""
        names = split_path(path)
        for i in range(1, len(names) + 1):
            try:
                self.mkdir("/".join(names[:i]), mode)
            except FileExistsError:
                if not self.is_dir("/".join(names[:i])):
                    raise

    def symlink(self, target: str, path: str) -> F.FuseAttr:
        """Make ``path`` a symlink to ``target`` (the text is stored as given)."""
        def go(seen):
            parent, name = self._parent(path, seen)
            return seen.add(self.fs.symlink(parent, name, target)).attr
        return self._run(go)

    def link(self, src: str, dst: str) -> F.FuseAttr:
        """Give the file ``src`` the new name ``dst`` (a hard link)."""
        def go(seen):
            node = self._node(src, seen)
            parent, name = self._parent(dst, seen)
            return seen.add(self.fs.link(node, parent, name)).attr
        return self._run(go)

    def rename(self, src: str, dst: str, flags: int = 0) -> None:
        """Rename ``src`` to ``dst`` (replacing it, unless ``flags`` says RENAME_NOREPLACE)."""
        def go(seen):
            sparent, sname = self._parent(src, seen)
            dparent, dname = self._parent(dst, seen)
            seen.add(self.fs.lookup(sparent, sname))
            self._lookup_if_there(dparent, dname, seen)
            self.fs.rename(sparent, sname, dparent, dname, flags)
        self._run(go)

    def _lookup_if_there(self, parent: int, name: str, seen: _Lookups) -> None:
        try:
            seen.add(self.fs.lookup(parent, name))
        except FileNotFoundError:
            pass

    def unlink(self, path: str) -> None:
        """Remove the non-directory ``path``."""
        def go(seen):
            parent, name = self._parent(path, seen)
            seen.add(self.fs.lookup(parent, name))
            self.fs.unlink(parent, name)
        self._run(go)

    def rmdir(self, path: str) -> None:
        """Remove the empty directory ``path``."""
        def go(seen):
            parent, name = self._parent(path, seen)
            seen.add(self.fs.lookup(parent, name))
            self.fs.rmdir(parent, name)
        self._run(go)

    def remove(self, path: str) -> None:
        """Remove ``path``: a directory with everything in it, or a file or symlink."""
        st = self.stat(path)
        if stat_mod.S_ISDIR(st.mode):
            for name in self.listdir(path):
                self.remove(f"{path}/{name}")
            self.rmdir(path)
        else:
            self.unlink(path)

    # --- directories -----------------------------------------------------------------------------

    def scandir(self, path: str = "", *, plus: bool | None = None) -> list[DirEntry]:
        """Every entry of the directory ``path`` but ``.`` and ``..``, in the device's order
        (READDIRPLUS when negotiated, unless ``plus`` says; its lookups are forgotten)."""
        def go(seen):
            node = self._node(path, seen)
            fh = self.fs.opendir(node).fh
            out, offset = [], 0
            try:
                while batch := self.fs.readdir(node, fh, offset, 16 * 1024, plus=plus):
                    for d in batch:
                        if d.name in (".", ".."):
                            continue
                        if d.entry is not None and d.entry.nodeid:
                            seen.add(d.entry)
                        out.append(d)
                    if batch[-1].off == offset:
                        raise FuseReplyError(f"READDIR at cookie {offset} did not move on")
                    offset = batch[-1].off
            finally:
                self.fs.releasedir(node, fh)
            return out
        return self._run(go)

    def listdir(self, path: str = "") -> list[str]:
        """The names in directory ``path``, sorted (without ``.`` and ``..``)."""
        return sorted(d.name for d in self.scandir(path))

    def walk(self, path: str = "") -> Iterator[tuple[str, list[str], list[str]]]:
        """Like os.walk (top-down, symlinks not followed): (dirpath, dirnames, filenames)."""
        entries = self.scandir(path)
        dirs = sorted(d.name for d in entries if d.type == stat_mod.S_IFDIR >> 12)
        files = sorted(d.name for d in entries if d.type != stat_mod.S_IFDIR >> 12)
        yield path, dirs, files
        for name in dirs:
            yield from self.walk(f"{path}/{name}" if path else name)

    # --- file contents ----------------------------------------------------------------------------

    def read_file(self, path: str) -> bytes:
        """The whole content of the file ``path`` (READs in flight up to ``window``, then on
        to the end of the file if it grew)."""
        def go(seen):
            node = self._node(path, seen)
            fh = self.fs.open(node, os.O_RDONLY).fh
            try:
                return self._read_all(node, fh, self.fs.getattr(node, fh).size)
            finally:
                self.fs.release(node, fh, os.O_RDONLY)
        return self._run(go)

    def _read_all(self, node: int, fh: int, size: int) -> bytes:
        chunk = self.fs.max_read
        out = bytearray()
        calls: deque[FuseCall] = deque()
        offset = 0
        try:
            while True:
                while len(calls) < self.window and (offset < size or not calls):
                    calls.append(self.fs.submit_read(node, fh, offset, chunk))
                    offset += chunk
                data = self.fs.wait(calls.popleft())
                if len(data) > chunk:
                    raise FuseReplyError(f"READ of {chunk} bytes answered with {len(data)}")
                out += data
                if len(data) < chunk:  # the end of the file
                    return bytes(out)
        finally:
            self._drain(calls)

    def _drain(self, calls) -> None:
        """Collect what is still in flight (so its buffers are freed); its errors are moot."""
        for call in calls:
            try:
                self.fs.wait(call if isinstance(call, FuseCall) else call[1])
            except (OSError, FuseReplyError):
                pass

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> int:
        """Create (or truncate) the file ``path`` and write ``data`` (WRITEs in flight up to
        ``window``); the bytes written.  As the kernel does, an existing file is looked up and
        OPENed with O_TRUNC, a missing one CREATEd (virtiofsd 7.2 aborts on a CREATE without
        O_EXCL of a file that exists: glibc's "openat64 call: O_CREAT without mode")."""
        def go(seen):
            parent, name = self._parent(path, seen)
            flags = os.O_WRONLY | os.O_TRUNC
            try:
                node = seen.add(self.fs.lookup(parent, name)).nodeid
                opened = self.fs.open(node, flags)
            except FileNotFoundError:
                flags |= os.O_CREAT
                entry, opened = self.fs.create(parent, name, flags, self._mode(mode), self.umask)
                node = seen.add(entry).nodeid
            try:
                return self._write_all(node, opened.fh, memoryview(data), 0)
            finally:
                self._close(node, opened, flags)
        return self._run(go)

    def append_file(self, path: str, data: bytes) -> int:
        """Write ``data`` after the end of the existing file ``path``."""
        def go(seen):
            node = self._node(path, seen)
            opened = self.fs.open(node, os.O_WRONLY)
            try:
                return self._write_all(node, opened.fh, memoryview(data), self.fs.getattr(node, opened.fh).size)
            finally:
                self._close(node, opened, os.O_WRONLY)
        return self._run(go)

    def _mode(self, mode: int) -> int:
        """``mode`` as the kernel sends it: the umask applied already unless FUSE_DONT_MASK."""
        return mode if self.fs.has_init_flag(F.FuseInitFlag.DONT_MASK) else mode & ~self.umask

    def _close(self, node: int, opened: F.FuseOpenOut, flags: int) -> None:
        """close(2) of a file opened for writing, as the kernel does it: FLUSH (unless the
        device said FOPEN_NOFLUSH), then RELEASE with the open flags."""
        try:
            if not opened.open_flags & F.FopenFlag.NOFLUSH:
                self.fs.flush(node, opened.fh)
        finally:
            self.fs.release(node, opened.fh, flags)

    def _write_all(self, node: int, fh: int, data: memoryview, base: int) -> int:
        chunk = self.fs.max_write
        calls: deque[tuple[int, FuseCall]] = deque()
        pos = done = 0
        try:
            while pos < len(data) or calls:
                while pos < len(data) and len(calls) < self.window:
                    piece = bytes(data[pos:pos + chunk])
                    calls.append((len(piece), self.fs.submit_write(node, fh, base + pos, piece)))
                    pos += len(piece)
                want, call = calls.popleft()
                got = self.fs.written(call)
                if got != want:
                    raise OSError(errno.EIO, f"WRITE of {want} bytes at {base + done} wrote {got}")
                done += got
            return done
        finally:
            self._drain(calls)

    def fsync(self, path: str) -> None:
        """FSYNC of the file ``path`` (opened for writing for the purpose)."""
        def go(seen):
            node = self._node(path, seen)
            opened = self.fs.open(node, os.O_WRONLY)
            try:
                self.fs.fsync(node, opened.fh)
            finally:
                self._close(node, opened, os.O_WRONLY)
        self._run(go)

    # --- extended attributes -----------------------------------------------------------------------

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        """Set the extended attribute ``name`` of ``path``."""
        self._run(lambda seen: self.fs.setxattr(self._node(path, seen), name, value, flags))

    def getxattr(self, path: str, name: str) -> bytes:
        """The extended attribute ``name`` of ``path``."""
        return self._run(lambda seen: self.fs.getxattr(self._node(path, seen), name))

    def listxattr(self, path: str) -> list[str]:
        """The names of the extended attributes of ``path``."""
        return self._run(lambda seen: self.fs.listxattr(self._node(path, seen)))

    def removexattr(self, path: str, name: str) -> None:
        """Remove the extended attribute ``name`` of ``path``."""
        self._run(lambda seen: self.fs.removexattr(self._node(path, seen), name))
