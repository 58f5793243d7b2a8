"""The node-id and file-handle tables of the pass-through file system.

Every inode the guest knows is an ``O_PATH | O_NOFOLLOW`` file descriptor, keyed by
``(st_dev, st_ino)`` and counted by lookups (FUSE's ``nlookup``): each reply that hands the
guest a node id (LOOKUP, CREATE, MKDIR, MKNOD, SYMLINK, LINK, READDIRPLUS) adds one, FORGET and
BATCH_FORGET take them away, and at zero the descriptor is closed.  Node ids are ours: handed out
once, never reused, so a forged or stale id finds nothing (EBADF), never another file.  The root
is node 1 and is never forgotten.

File handles (OPEN, CREATE, OPENDIR) are real descriptors in a second table.

Both tables are shared by the threads that run requests, so each entry is *used* under a count
(:meth:`InodeTable.use`, :meth:`HandleTable.use`): a FORGET or RELEASE that races a request
only unlinks the entry, and its descriptor is closed when the last user is done -- a descriptor
number can never be closed under a request and reused for another file.

Limits: ``max_inodes`` inodes (a lookup past it: ENFILE) and ``max_handles`` handles (EMFILE),
so a guest that never forgets, or opens without end, costs bounded memory and descriptors; a
FORGET storm with forged ids changes nothing.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
from contextlib import contextmanager
from typing import Iterator

from ...spec import fuse as F
from .wire import FuseError

#: Inodes the guest may hold at once (each is one O_PATH descriptor).
MAX_INODES = 1 << 18
#: Open files and directories at once.
MAX_HANDLES = 1 << 14
#: Root's lookup count: the kernel never forgets the root, and a guest that says it does is
#: ignored.
_ROOT_NLOOKUP = 1 << 62


class _Entry:
    """A descriptor shared by requests: closed when unlinked and no longer used."""

    __slots__ = ("fd", "users", "gone")

    def __init__(self, fd: int):
        self.fd = fd
        self.users = 0
        self.gone = False

    def _close_if_done(self) -> None:
        if self.gone and self.users == 0 and self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class Inode(_Entry):
    """One inode the guest knows: its O_PATH descriptor, identity and file type."""

    __slots__ = ("nodeid", "key", "mode", "nlookup")

    def __init__(self, nodeid: int, fd: int, st: os.stat_result):
        super().__init__(fd)
        self.nodeid = nodeid
        self.key = (st.st_dev, st.st_ino)
        self.mode = stat.S_IFMT(st.st_mode)
        self.nlookup = 0

    @property
    def is_dir(self) -> bool:
        return self.mode == stat.S_IFDIR

    @property
    def is_reg(self) -> bool:
        return self.mode == stat.S_IFREG


class InodeTable:
    """Node id -> :class:`Inode`, with lookup counts (see the module docstring)."""

    def __init__(self, root_fd: int, *, max_inodes: int = MAX_INODES):
        self.max_inodes = max_inodes
        self._lock = threading.Lock()
        st = os.stat(root_fd)
        self.root = Inode(F.FUSE_ROOT_ID, root_fd, st)
        self.root.nlookup = _ROOT_NLOOKUP
        self._by_id: dict[int, Inode] = {F.FUSE_ROOT_ID: self.root}
        self._by_key: dict[tuple[int, int], Inode] = {self.root.key: self.root}
        self._ids = itertools.count(F.FUSE_ROOT_ID + 1)

    def __len__(self) -> int:
        return len(self._by_id)

    @contextmanager
    def use(self, nodeid: int, err: int = errno.EBADF) -> Iterator[Inode]:
        """The inode of ``nodeid``, kept open while the block runs; FuseError(``err``) for an
        id that is not in the table (never handed out, or forgotten)."""
        with self._lock:
            inode = self._by_id.get(nodeid)
            if inode is None:
                raise FuseError(err, f"node id {nodeid} is not known")
            inode.users += 1
        try:
            yield inode
        finally:
            with self._lock:
                inode.users -= 1
                inode._close_if_done()

    def add_lookup(self, fd: int, st: os.stat_result) -> Inode:
        """Count one lookup of the file ``fd`` (an O_PATH descriptor we now own: kept as the
        inode's, or closed if the inode is already known).  ENFILE past ``max_inodes``."""
        key = (st.st_dev, st.st_ino)
        with self._lock:
            inode = self._by_key.get(key)
            if inode is None and len(self._by_id) >= self.max_inodes:
                os.close(fd)
                raise FuseError(errno.ENFILE, f"{self.max_inodes} inodes in use")
            if inode is None:
                inode = Inode(next(self._ids), fd, st)
                self._by_id[inode.nodeid] = inode
                self._by_key[key] = inode
                fd = -1
            inode.nlookup += 1
        if fd >= 0:
            os.close(fd)
        return inode

    def add_ref(self, inode: Inode) -> None:
        """One more lookup of an inode the caller uses (LINK, the root in READDIRPLUS)."""
        with self._lock:
            inode.nlookup += 1

    def forget(self, nodeid: int, nlookup: int) -> None:
        """FORGET: take ``nlookup`` lookups away; at zero the inode leaves the table.  Unknown
        ids and the root are ignored (there is no reply to carry an error)."""
        with self._lock:
            inode = self._by_id.get(nodeid)
            if inode is None or inode is self.root:
                return
            inode.nlookup -= min(nlookup, inode.nlookup)
            if inode.nlookup == 0:
                self._unlink(inode)

    def _unlink(self, inode: Inode) -> None:
        del self._by_id[inode.nodeid]
        if self._by_key.get(inode.key) is inode:
            del self._by_key[inode.key]
        inode.gone = True
        inode._close_if_done()

    def clear(self) -> None:
        """Forget everything but the root (DESTROY, a device reset)."""
        with self._lock:
            for inode in [i for i in self._by_id.values() if i is not self.root]:
                self._unlink(inode)

    def close(self) -> None:
        """Forget everything and close the root."""
        self.clear()
        with self._lock:
            self._by_id.clear()
            self._by_key.clear()
            self.root.gone = True
            self.root._close_if_done()


class Handle(_Entry):
    """One open file or directory: its descriptor and the inode it was opened on."""

    __slots__ = ("fh", "nodeid", "is_dir", "in_memory")

    def __init__(self, fh: int, fd: int, nodeid: int, is_dir: bool):
        super().__init__(fd)
        self.fh = fh
        self.nodeid = nodeid
        self.is_dir = is_dir
        #: Whether the file lives on tmpfs/ramfs (its I/O never blocks); None: not known yet.
        self.in_memory: bool | None = None


class HandleTable:
    """fh -> :class:`Handle`, bounded by ``max_handles``."""

    def __init__(self, *, max_handles: int = MAX_HANDLES):
        self.max_handles = max_handles
        self._lock = threading.Lock()
        self._by_fh: dict[int, Handle] = {}
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._by_fh)

    def add(self, fd: int, nodeid: int, *, is_dir: bool) -> int:
        """A new handle owning ``fd``; EMFILE (``fd`` closed) past ``max_handles``."""
        with self._lock:
            if len(self._by_fh) >= self.max_handles:
                os.close(fd)
                raise FuseError(errno.EMFILE, f"{self.max_handles} files open")
            handle = Handle(next(self._ids), fd, nodeid, is_dir)
            self._by_fh[handle.fh] = handle
            return handle.fh

    @contextmanager
    def use(self, fh: int, *, is_dir: bool = False) -> Iterator[Handle]:
        """The handle ``fh``, kept open while the block runs; EBADF for an unknown handle or a
        file handle used as a directory one (or the reverse)."""
        with self._lock:
            handle = self._by_fh.get(fh)
            if handle is None or handle.is_dir != is_dir:
                raise FuseError(errno.EBADF, f"file handle {fh} is not open")
            handle.users += 1
        try:
            yield handle
        finally:
            with self._lock:
                handle.users -= 1
                handle._close_if_done()

    def remove(self, fh: int, *, is_dir: bool = False) -> None:
        """RELEASE / RELEASEDIR: the handle leaves the table (closed once unused); EBADF if
        unknown."""
        with self._lock:
            handle = self._by_fh.get(fh)
            if handle is None or handle.is_dir != is_dir:
                raise FuseError(errno.EBADF, f"file handle {fh} is not open")
            del self._by_fh[fh]
            handle.gone = True
            handle._close_if_done()

    def clear(self) -> None:
        """Close every handle (DESTROY, a device reset)."""
        with self._lock:
            handles, self._by_fh = list(self._by_fh.values()), {}
            for handle in handles:
                handle.gone = True
                handle._close_if_done()


__all__ = ["Handle", "HandleTable", "Inode", "InodeTable", "MAX_HANDLES", "MAX_INODES"]
