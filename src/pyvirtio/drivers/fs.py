"""File system driver (VIRTIO 1.3, 5.11): a FUSE client over virtio-fs, mount-free, any transport.

The driver plays the guest kernel's ``virtiofs``: it reads the tag and the number of request
queues from the config space (a vhost-user back-end without a config space, such as virtiofsd:
no tag, one request queue), sets up the hiprio queue and the request queues, and after
DRIVER_OK negotiates FUSE_INIT.  Then every FUSE request is one chain: the device-readable
``fuse_in_header`` and its arguments, then device-writable buffers for the ``fuse_out_header``
and the reply (5.11.6.1), as Linux lays them out.  FORGET and BATCH_FORGET go on the hiprio
queue and get no reply (the device hands the buffers back, written length 0).

    fs = FsDriver.probe(transport)
    entry = fs.lookup(FUSE_ROOT_ID, "a.txt")          # a FuseEntry (nodeid, attr ...)
    fh = fs.open(entry.nodeid, os.O_RDONLY).fh
    data = fs.read(entry.nodeid, fh, 0, 4096)
    fs.release(entry.nodeid, fh); fs.forget(entry.nodeid, 1)

Node-level calls take node ids, as FUSE does; :class:`~pyvirtio.drivers.fs_client.FsClient`
adds paths.  Many requests may be in flight: :meth:`FsDriver.submit` returns a
:class:`FuseCall` at once (round-robin over the request queues) and :meth:`FsDriver.wait`
collects its reply.  The device is not trusted: a reply shorter than its header, one whose
``len`` exceeds what was written or whose ``unique`` is not the request's, or an ``error`` that
is not 0 or a negated errno raises :class:`FuseReplyError` (the device's fault); ``error < 0`` is
:class:`FuseError`, an ``OSError`` with that errno (the file system said no).  One thread at a
time.
"""

from __future__ import annotations

import errno as errno_mod
import os
import struct
from typing import NamedTuple, Sequence

from ..driver import DriverQueue, Pending, VirtioDriver
from ..errors import DeviceFault, Scope, UsageError, VirtioError
from ..spec import fuse as F
from ..spec.fs import FS_CONFIG, FsConfig, HIPRIOQ, REQUESTQ_BASE
from ..spec.ids import DeviceType

Op = F.FuseOpcode
#: FUSE_INIT flags the driver asks for (the device keeps those it supports).
INIT_FLAGS = (F.FuseInitFlag.ASYNC_READ | F.FuseInitFlag.ATOMIC_O_TRUNC | F.FuseInitFlag.BIG_WRITES
              | F.FuseInitFlag.DO_READDIRPLUS | F.FuseInitFlag.PARALLEL_DIROPS
              | F.FuseInitFlag.MAX_PAGES | F.FuseInitFlag.INIT_EXT)
#: Reads and writes are cut into pieces of at most this many bytes (and of the device's max_write).
DEFAULT_MAX_IO = 256 * 1024
#: FUSE_DEFAULT_MAX_PAGES_PER_REQ (the kernel's limit without FUSE_MAX_PAGES).
DEFAULT_MAX_PAGES = 32
PAGE = 4096
#: The largest errno a reply may carry (Linux MAX_ERRNO).
MAX_ERRNO = 4095


class FuseError(OSError):
    """The file system refused a request: the reply's ``error`` (-errno), as ``errno``.  For the
    common errnos the raised class is also Python's OSError subclass (see :func:`fuse_error`):
    ``except FileNotFoundError`` catches a FUSE ENOENT."""

    scope = Scope.REQUEST

    def __init__(self, err: int, opcode: int, detail: str = ""):
        name = Op(opcode).name if opcode in Op._value2member_map_ else str(opcode)
        super().__init__(err, f"FUSE {name}{' ' + detail if detail else ''}: {os.strerror(err)}")
        self.opcode = opcode


class FuseReplyError(DeviceFault):
    """The device broke the FUSE protocol (a malformed or mismatched reply): the device's fault."""


class FuseEntry(NamedTuple):
    """A LOOKUP/MKDIR/CREATE/... reply (fuse_entry_out): the node and its attributes.  Each one
    the device hands out counts one lookup of ``nodeid`` to FORGET later."""

    nodeid: int
    generation: int
    entry_valid: int
    attr_valid: int
    entry_valid_nsec: int
    attr_valid_nsec: int
    attr: F.FuseAttr


class DirEntry(NamedTuple):
    """One READDIR entry (fuse_dirent); ``off`` is the cookie to continue after it, ``entry``
    the READDIRPLUS fuse_entry_out (None for READDIR)."""

    ino: int
    off: int
    type: int
    name: str
    entry: FuseEntry | None = None


class FuseCall:
    """One FUSE request in flight."""

    __slots__ = ("pending", "queue", "opcode", "unique", "reply_size", "detail")

    def __init__(self, pending: Pending, queue: DriverQueue, opcode: int, unique: int,
                 reply_size: int, detail: str):
        self.pending, self.queue, self.opcode, self.unique = pending, queue, opcode, unique
        self.reply_size, self.detail = reply_size, detail


def cstr(name: str | bytes) -> bytes:
    """A name as FUSE carries it: UTF-8 (or the bytes given), NUL-terminated; a name holding a
    NUL cannot be sent."""
    raw = os.fsencode(name)
    if b"\0" in raw:
        raise UsageError(f"a FUSE name cannot hold a NUL byte: {raw!r}")
    return raw + b"\0"


def parse_entry(data: bytes, offset: int = 0) -> FuseEntry:
    """A fuse_entry_out at ``offset`` of ``data`` (FuseReplyError if too short)."""
    if len(data) < offset + F.FUSE_ENTRY_OUT_SIZE:
        raise FuseReplyError(f"fuse_entry_out of {len(data) - offset} bytes, needs {F.FUSE_ENTRY_OUT_SIZE}")
    head = F.FUSE_ENTRY_OUT_HEAD.unpack_from(data, offset)
    attr = F.FuseAttr._make(F.FUSE_ATTR.unpack_from(data, offset + F.FUSE_ENTRY_OUT_ATTR_OFFSET))
    return FuseEntry._make((*head, attr))


def parse_dirents(data: bytes, plus: bool) -> list[DirEntry]:
    """The entries of a READDIR (``plus`` False) or READDIRPLUS reply.  A record that runs past
    the reply or names no bytes is the device's fault (FuseReplyError)."""
    out, pos = [], 0
    head = F.FUSE_NAME_OFFSET_DIRENTPLUS if plus else F.FUSE_NAME_OFFSET
    while pos < len(data):
        if pos + head > len(data):
            raise FuseReplyError(f"directory record at {pos} cut short ({len(data) - pos} bytes)")
        entry = parse_entry(data, pos) if plus else None
        dpos = pos + (F.FUSE_ENTRY_OUT_SIZE if plus else 0)
        ino, off, namelen, dtype = F.FUSE_DIRENT.unpack_from(data, dpos)
        end = dpos + F.FUSE_NAME_OFFSET + namelen
        if namelen == 0 or end > len(data):
            raise FuseReplyError(f"directory record at {pos}: name of {namelen} bytes does not fit")
        name = os.fsdecode(data[dpos + F.FUSE_NAME_OFFSET:end])
        out.append(DirEntry(ino, off, dtype, name, entry))
        pos = end + (-end % F.FUSE_DIRENT_ALIGNMENT)
    return out


class FsDriver(VirtioDriver):
    """The virtio-fs driver (VIRTIO 1.3, 5.11): FUSE requests over the request queues, FORGET
    over hiprio, FUSE_INIT at probe time."""

    id_table = (DeviceType.FS,)
    queue_size = 128

    def __init__(self, transport, *, max_request_queues: int | None = None,
                 max_io: int = DEFAULT_MAX_IO, init_flags: int = INIT_FLAGS,
                 uid: int | None = None, gid: int | None = None):
        super().__init__(transport)
        self.max_request_queues = max_request_queues
        self.want_flags = init_flags
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self._max_io = max_io
        self._unique = 0
        self._rr = 0
        self._forgets: list[tuple[DriverQueue, Pending]] = []
        self.config = FsConfig(b"", 1, 0)
        self.hiprio: DriverQueue | None = None
        self.requestqs: list[DriverQueue] = []
        #: FUSE_INIT's reply (None until negotiated).
        self.init_out: F.FuseInitOut | None = None
        self.proto_minor = 0
        self.flags = 0

    # --- initialisation ---------------------------------------------------------------------------

    def setup(self) -> None:
        if self.transport.has_config_space:
            self.config = FsConfig._make(FS_CONFIG.unpack(self.read_config(0, FS_CONFIG.size)))
        count = max(1, self.config.num_request_queues)
        if self.max_request_queues:
            count = min(count, self.max_request_queues)
        self.hiprio = self.create_queue(HIPRIOQ)
        self.requestqs = [self.create_queue(REQUESTQ_BASE + i) for i in range(count)]
        self.queues = [self.hiprio, *self.requestqs]

    def _initialise(self) -> None:
        super()._initialise()
        self.init()

    @property
    def tag(self) -> str:
        """The file system's tag from the config space (5.11.4; "" without a config space)."""
        return self.config.tag.split(b"\0", 1)[0].decode("utf-8", "replace")

    def init(self) -> F.FuseInitOut:
        """FUSE_INIT: offer protocol 7.38 and ``want_flags``; keep the device's answer."""
        flags = int(self.want_flags)
        arg = F.FUSE_INIT_IN.pack(F.FUSE_KERNEL_VERSION, F.FUSE_KERNEL_MINOR_VERSION,
                                  DEFAULT_MAX_IO, flags & 0xFFFFFFFF, flags >> 32)
        data = self.request(Op.INIT, 0, [arg], F.FUSE_INIT_OUT_SIZE)
        if len(data) < F.FUSE_COMPAT_INIT_OUT_SIZE:
            raise FuseReplyError(f"FUSE_INIT reply of {len(data)} bytes")
        out = F.FuseInitOut._make(F.FUSE_INIT_OUT.unpack(data[:F.FUSE_INIT_OUT_SIZE].ljust(F.FUSE_INIT_OUT_SIZE, b"\0")))
        if out.major != F.FUSE_KERNEL_VERSION:
            raise FuseReplyError(f"FUSE_INIT: the device speaks protocol {out.major}.{out.minor}, not 7")
        self.init_out, self.proto_minor = out, min(out.minor, F.FUSE_KERNEL_MINOR_VERSION)
        got = out.flags | ((out.flags2 << 32) if out.flags & F.FuseInitFlag.INIT_EXT else 0)
        self.flags = got & flags
        return out

    def has_init_flag(self, flag: int) -> bool:
        """Whether FUSE_INIT negotiated ``flag`` (both sides set it)."""
        return bool(self.flags & flag)

    @property
    def max_read(self) -> int:
        """The most bytes one READ asks for (our max_io, within the device's page limit)."""
        pages = DEFAULT_MAX_PAGES
        if self.init_out is not None and self.has_init_flag(F.FuseInitFlag.MAX_PAGES) and self.init_out.max_pages:
            pages = self.init_out.max_pages
        return max(PAGE, min(self._max_io, pages * PAGE))

    @property
    def max_write(self) -> int:
        """The most bytes one WRITE carries (the device's max_write, within max_read's limit)."""
        limit = self.init_out.max_write if self.init_out is not None and self.init_out.max_write else PAGE
        return max(1, min(self.max_read, limit))

    def remove(self) -> None:
        """FUSE_DESTROY (as an unmount sends it), then reset the device and free the rings."""
        try:
            if self.init_out is not None and self.requestqs:
                self.request(Op.DESTROY, 0, [], 0, timeout=5.0)
        except (OSError, VirtioError):  # a device already gone: reset it anyway
            pass
        finally:
            self.init_out = None
            self._forgets.clear()
            super().remove()

    # --- requests ---------------------------------------------------------------------------------

    def _next_queue(self) -> DriverQueue:
        if not self.requestqs:
            raise UsageError("the driver has no request queue (not probed, or removed)")
        self._rr = (self._rr + 1) % len(self.requestqs)
        return self.requestqs[self._rr]

    def _header(self, opcode: int, nodeid: int, args_len: int) -> tuple[bytes, int]:
        self._unique += 2  # the kernel's uniques are even (odd ones mark interrupts)
        header = F.FUSE_IN_HEADER.pack(F.FUSE_IN_HEADER_SIZE + args_len, opcode, self._unique,
                                       nodeid, self.uid, self.gid, os.getpid(), 0, 0)
        return header, self._unique

    def submit(self, opcode: int, nodeid: int, args: Sequence[bytes], reply_size: int, *,
               kick: bool = True, detail: str = "") -> FuseCall:
        """Queue one request (``args``: the in struct, names, data, each its own buffer) with room
        for a reply of ``reply_size`` bytes after the out header; do not wait."""
        header, unique = self._header(opcode, nodeid, sum(len(a) for a in args))
        q = self._next_queue()
        in_sizes = [F.FUSE_OUT_HEADER_SIZE] + ([reply_size] if reply_size else [])
        pending = q.submit([header, *(a for a in args if a)], in_sizes, kick=kick)
        return FuseCall(pending, q, opcode, unique, reply_size, detail)

    def wait(self, call: FuseCall, timeout: float | None = 30.0) -> bytes:
        """The reply's payload (after the out header); FuseError for ``error < 0``,
        FuseReplyError for a malformed reply."""
        q, pending = call.queue, call.pending
        try:
            q.wait(pending, timeout)
            return self.check_reply(call, q.read_in(pending))
        finally:
            if pending.done:
                q.release(pending)

    def check_reply(self, call: FuseCall, data: bytes) -> bytes:
        """Validate a reply to ``call`` (the bytes the device wrote); its payload."""
        if len(data) < F.FUSE_OUT_HEADER_SIZE:
            raise FuseReplyError(f"reply to unique {call.unique}: {len(data)} bytes, shorter than fuse_out_header")
        length, error, unique = F.FUSE_OUT_HEADER.unpack_from(data)
        if unique != call.unique:
            raise FuseReplyError(f"reply carries unique {unique}, the request was {call.unique}")
        if not F.FUSE_OUT_HEADER_SIZE <= length <= len(data):
            raise FuseReplyError(f"reply to unique {call.unique}: len {length}, but {len(data)} bytes written")
        if error > 0 or error < -MAX_ERRNO:
            raise FuseReplyError(f"reply to unique {call.unique}: error {error} is not a negated errno")
        if error:
            raise fuse_error(-error, call.opcode, call.detail)
        return data[F.FUSE_OUT_HEADER_SIZE:length]

    def request(self, opcode: int, nodeid: int, args: Sequence[bytes], reply_size: int, *,
                timeout: float | None = 30.0, detail: str = "") -> bytes:
        """Submit one request and wait for its payload."""
        return self.wait(self.submit(opcode, nodeid, args, reply_size, detail=detail), timeout)

    def _reply(self, opcode: int, nodeid: int, args: Sequence[bytes], out: struct.Struct,
               detail: str = "") -> tuple:
        data = self.request(opcode, nodeid, args, out.size, detail=detail)
        if len(data) < out.size:
            raise FuseReplyError(f"{Op(opcode).name} reply of {len(data)} bytes, needs {out.size}")
        return out.unpack_from(data)

    def _entry(self, opcode: int, nodeid: int, args: Sequence[bytes], detail: str = "") -> FuseEntry:
        return parse_entry(self.request(opcode, nodeid, args, F.FUSE_ENTRY_OUT_SIZE, detail=detail))

    # --- forgetting (hiprio) ----------------------------------------------------------------------

    def _hiprio_send(self, opcode: int, nodeid: int, arg: bytes) -> None:
        assert self.hiprio is not None
        self._reap_forgets()
        header, _ = self._header(opcode, nodeid, len(arg))
        self._forgets.append((self.hiprio, self.hiprio.submit([header, arg], [])))

    def _reap_forgets(self) -> None:
        if self.hiprio is None:
            return
        self.hiprio.poll()
        keep = []
        for q, pending in self._forgets:
            if pending.done:
                q.release(pending)
            else:
                keep.append((q, pending))
        self._forgets = keep

    def forget(self, nodeid: int, nlookup: int = 1) -> None:
        """FUSE_FORGET: drop ``nlookup`` lookups of ``nodeid`` (hiprio, no reply)."""
        self._hiprio_send(Op.FORGET, nodeid, F.FUSE_FORGET_IN.pack(nlookup))

    def batch_forget(self, items: Sequence[tuple[int, int]]) -> None:
        """FUSE_BATCH_FORGET of ``(nodeid, nlookup)`` pairs (hiprio, no reply)."""
        if not items:
            return
        body = b"".join(F.FUSE_FORGET_ONE.pack(n, c) for n, c in items)
        self._hiprio_send(Op.BATCH_FORGET, 0, F.FUSE_BATCH_FORGET_IN.pack(len(items), 0) + body)

    def drain_forgets(self, timeout: float = 10.0) -> None:
        """Wait until the device has taken back every FORGET buffer."""
        for q, pending in self._forgets:
            q.wait(pending, timeout)
        self._reap_forgets()

    # --- names ------------------------------------------------------------------------------------

    def lookup(self, parent: int, name: str | bytes) -> FuseEntry:
        """FUSE_LOOKUP of ``name`` in directory ``parent`` (one lookup to forget)."""
        return self._entry(Op.LOOKUP, parent, [cstr(name)], f"{name!r}")

    def getattr(self, nodeid: int, fh: int | None = None) -> F.FuseAttr:
        """FUSE_GETATTR (of the open file ``fh`` when given)."""
        arg = F.FUSE_GETATTR_IN.pack(F.FUSE_GETATTR_FH if fh is not None else 0, 0, fh or 0)
        data = self.request(Op.GETATTR, nodeid, [arg], F.FUSE_ATTR_OUT_SIZE)
        return _attr_out(data)

    def setattr(self, nodeid: int, *, mode: int | None = None, uid: int | None = None,
                gid: int | None = None, size: int | None = None, atime_ns: int | None = None,
                mtime_ns: int | None = None, fh: int | None = None) -> F.FuseAttr:
        """FUSE_SETATTR of the fields given (chmod, chown, truncate, utimes); the new attributes."""
        valid, fields = 0, dict.fromkeys(F.FuseSetattrIn._fields, 0)
        for flag, key, value in ((F.FattrFlag.MODE, "mode", mode), (F.FattrFlag.UID, "uid", uid),
                                 (F.FattrFlag.GID, "gid", gid), (F.FattrFlag.SIZE, "size", size),
                                 (F.FattrFlag.FH, "fh", fh)):
            if value is not None:
                valid |= flag
                fields[key] = value
        for flag, key, ns in ((F.FattrFlag.ATIME, "atime", atime_ns), (F.FattrFlag.MTIME, "mtime", mtime_ns)):
            if ns is not None:
                valid |= flag
                fields[key], fields[key + "nsec"] = divmod(ns, 1_000_000_000)
        fields["valid"] = valid
        arg = F.FUSE_SETATTR_IN.pack(*F.FuseSetattrIn(**fields))
        return _attr_out(self.request(Op.SETATTR, nodeid, [arg], F.FUSE_ATTR_OUT_SIZE))

    def readlink(self, nodeid: int) -> str:
        """FUSE_READLINK: the symlink's target text."""
        return os.fsdecode(self.request(Op.READLINK, nodeid, [], PAGE))

    def symlink(self, parent: int, name: str, target: str | bytes) -> FuseEntry:
        """FUSE_SYMLINK: ``name`` in ``parent`` pointing at ``target``."""
        return self._entry(Op.SYMLINK, parent, [cstr(name) + cstr(target)], f"{name!r}")

    def mknod(self, parent: int, name: str, mode: int, rdev: int = 0, umask: int = 0) -> FuseEntry:
        """FUSE_MKNOD (a regular file, FIFO, socket or device node by ``mode``)."""
        return self._entry(Op.MKNOD, parent, [F.FUSE_MKNOD_IN.pack(mode, rdev, umask, 0), cstr(name)], f"{name!r}")

    def mkdir(self, parent: int, name: str, mode: int = 0o755, umask: int = 0) -> FuseEntry:
        """FUSE_MKDIR."""
        return self._entry(Op.MKDIR, parent, [F.FUSE_MKDIR_IN.pack(mode, umask), cstr(name)], f"{name!r}")

    def unlink(self, parent: int, name: str) -> None:
        """FUSE_UNLINK."""
        self.request(Op.UNLINK, parent, [cstr(name)], 0, detail=f"{name!r}")

    def rmdir(self, parent: int, name: str) -> None:
        """FUSE_RMDIR."""
        self.request(Op.RMDIR, parent, [cstr(name)], 0, detail=f"{name!r}")

    def rename(self, parent: int, name: str, newparent: int, newname: str, flags: int = 0) -> None:
        """FUSE_RENAME, or FUSE_RENAME2 with ``flags`` (RENAME_NOREPLACE / RENAME_EXCHANGE)."""
        names = cstr(name) + cstr(newname)
        if flags:
            self.request(Op.RENAME2, parent, [F.FUSE_RENAME2_IN.pack(newparent, flags, 0), names], 0,
                         detail=f"{name!r}")
        else:
            self.request(Op.RENAME, parent, [F.FUSE_RENAME_IN.pack(newparent), names], 0, detail=f"{name!r}")

    def link(self, nodeid: int, newparent: int, newname: str) -> FuseEntry:
        """FUSE_LINK: a new name for ``nodeid``."""
        return self._entry(Op.LINK, newparent, [F.FUSE_LINK_IN.pack(nodeid), cstr(newname)], f"{newname!r}")

    def access(self, nodeid: int, mask: int) -> None:
        """FUSE_ACCESS (R_OK/W_OK/X_OK/F_OK)."""
        self.request(Op.ACCESS, nodeid, [F.FUSE_ACCESS_IN.pack(mask, 0)], 0)

    def statfs(self, nodeid: int = F.FUSE_ROOT_ID) -> F.FuseKstatfs:
        """FUSE_STATFS."""
        return F.FuseKstatfs._make(self._reply(Op.STATFS, nodeid, [], F.FUSE_KSTATFS))

    # --- files --------------------------------------------------------------------------------------

    def open(self, nodeid: int, flags: int = os.O_RDONLY) -> F.FuseOpenOut:
        """FUSE_OPEN with open(2) ``flags`` (O_CREAT, O_EXCL, O_NOCTTY never go to the device)."""
        arg = F.FUSE_OPEN_IN.pack(flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY), 0)
        return F.FuseOpenOut._make(self._reply(Op.OPEN, nodeid, [arg], F.FUSE_OPEN_OUT))

    def create(self, parent: int, name: str, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
               mode: int = 0o644, umask: int = 0) -> tuple[FuseEntry, F.FuseOpenOut]:
        """FUSE_CREATE: create (or, without O_EXCL, open) ``name`` and open it."""
        arg = F.FUSE_CREATE_IN.pack(flags | os.O_CREAT, mode | 0o100000, umask, 0)
        size = F.FUSE_ENTRY_OUT_SIZE + F.FUSE_OPEN_OUT.size
        data = self.request(Op.CREATE, parent, [arg, cstr(name)], size, detail=f"{name!r}")
        if len(data) < size:
            raise FuseReplyError(f"CREATE reply of {len(data)} bytes, needs {size}")
        return parse_entry(data), F.FuseOpenOut._make(F.FUSE_OPEN_OUT.unpack_from(data, F.FUSE_ENTRY_OUT_SIZE))

    def submit_read(self, nodeid: int, fh: int, offset: int, size: int) -> FuseCall:
        """Queue a FUSE_READ of at most ``size`` bytes; :meth:`wait` returns the bytes."""
        if not 0 < size <= self.max_read:
            raise UsageError(f"READ of {size} bytes: 1 to {self.max_read} per request")
        arg = F.FUSE_READ_IN.pack(fh, offset, size, 0, 0, 0, 0)
        return self.submit(Op.READ, nodeid, [arg], size)

    def read(self, nodeid: int, fh: int, offset: int, size: int) -> bytes:
        """FUSE_READ: at most ``size`` bytes at ``offset`` (fewer at the end of the file)."""
        call = self.submit_read(nodeid, fh, offset, size)
        data = self.wait(call)
        if len(data) > size:
            raise FuseReplyError(f"READ of {size} bytes answered with {len(data)}")
        return data

    def submit_write(self, nodeid: int, fh: int, offset: int, data: bytes) -> FuseCall:
        """Queue a FUSE_WRITE; :meth:`written` of the reply is the count."""
        if not 0 < len(data) <= self.max_write:
            raise UsageError(f"WRITE of {len(data)} bytes: 1 to {self.max_write} per request")
        arg = F.FUSE_WRITE_IN.pack(fh, offset, len(data), 0, 0, 0, 0)
        return self.submit(Op.WRITE, nodeid, [arg, data], F.FUSE_WRITE_OUT.size)

    def written(self, call: FuseCall) -> int:
        """Wait for a WRITE; the bytes the device wrote."""
        data = self.wait(call)
        if len(data) < F.FUSE_WRITE_OUT.size:
            raise FuseReplyError(f"WRITE reply of {len(data)} bytes")
        return F.FUSE_WRITE_OUT.unpack_from(data)[0]

    def write(self, nodeid: int, fh: int, offset: int, data: bytes) -> int:
        """FUSE_WRITE of ``data`` at ``offset``; how many bytes the device wrote."""
        return self.written(self.submit_write(nodeid, fh, offset, data))

    def release(self, nodeid: int, fh: int, flags: int = 0) -> None:
        """FUSE_RELEASE: close ``fh``."""
        self.request(Op.RELEASE, nodeid, [F.FUSE_RELEASE_IN.pack(fh, flags, 0, 0)], 0)

    def flush(self, nodeid: int, fh: int, lock_owner: int = 0) -> None:
        """FUSE_FLUSH (close(2) of one descriptor of ``fh``)."""
        self.request(Op.FLUSH, nodeid, [F.FUSE_FLUSH_IN.pack(fh, 0, 0, lock_owner)], 0)

    def fsync(self, nodeid: int, fh: int, datasync: bool = False) -> None:
        """FUSE_FSYNC."""
        arg = F.FUSE_FSYNC_IN.pack(fh, F.FUSE_FSYNC_FDATASYNC if datasync else 0, 0)
        self.request(Op.FSYNC, nodeid, [arg], 0)

    def fallocate(self, nodeid: int, fh: int, offset: int, length: int, mode: int = 0) -> None:
        """FUSE_FALLOCATE (``mode``: FALLOC_FL_*)."""
        self.request(Op.FALLOCATE, nodeid, [F.FUSE_FALLOCATE_IN.pack(fh, offset, length, mode, 0)], 0)

    def lseek(self, nodeid: int, fh: int, offset: int, whence: int) -> int:
        """FUSE_LSEEK (SEEK_DATA / SEEK_HOLE); the offset found."""
        return self._reply(Op.LSEEK, nodeid, [F.FUSE_LSEEK_IN.pack(fh, offset, whence, 0)], F.FUSE_LSEEK_OUT)[0]

    def copy_file_range(self, nodeid_in: int, fh_in: int, off_in: int, nodeid_out: int, fh_out: int,
                        off_out: int, length: int) -> int:
        """FUSE_COPY_FILE_RANGE (the device copies, no data crosses the queue); bytes copied."""
        arg = F.FUSE_COPY_FILE_RANGE_IN.pack(fh_in, off_in, nodeid_out, fh_out, off_out, length, 0)
        return self._reply(Op.COPY_FILE_RANGE, nodeid_in, [arg], F.FUSE_WRITE_OUT)[0]

    # --- directories -----------------------------------------------------------------------------

    def opendir(self, nodeid: int) -> F.FuseOpenOut:
        """FUSE_OPENDIR."""
        arg = F.FUSE_OPEN_IN.pack(os.O_RDONLY | os.O_DIRECTORY, 0)
        return F.FuseOpenOut._make(self._reply(Op.OPENDIR, nodeid, [arg], F.FUSE_OPEN_OUT))

    def readdir(self, nodeid: int, fh: int, offset: int = 0, size: int = PAGE, *,
                plus: bool | None = None) -> list[DirEntry]:
        """One FUSE_READDIR (or READDIRPLUS: by default when negotiated) from cookie ``offset``;
        an empty list at the end.  Each READDIRPLUS entry with a node id counts one lookup,
        except ``.`` and ``..`` (as the kernel counts them)."""
        if plus is None:
            plus = self.has_init_flag(F.FuseInitFlag.DO_READDIRPLUS)
        arg = F.FUSE_READ_IN.pack(fh, offset, size, 0, 0, 0, 0)
        data = self.request(Op.READDIRPLUS if plus else Op.READDIR, nodeid, [arg], size)
        if len(data) > size:
            raise FuseReplyError(f"READDIR of {size} bytes answered with {len(data)}")
        return parse_dirents(data, plus)

    def releasedir(self, nodeid: int, fh: int) -> None:
        """FUSE_RELEASEDIR."""
        self.request(Op.RELEASEDIR, nodeid, [F.FUSE_RELEASE_IN.pack(fh, 0, 0, 0)], 0)

    def fsyncdir(self, nodeid: int, fh: int, datasync: bool = False) -> None:
        """FUSE_FSYNCDIR."""
        arg = F.FUSE_FSYNC_IN.pack(fh, F.FUSE_FSYNC_FDATASYNC if datasync else 0, 0)
        self.request(Op.FSYNCDIR, nodeid, [arg], 0)

    # --- extended attributes -----------------------------------------------------------------------

    def setxattr(self, nodeid: int, name: str, value: bytes, flags: int = 0) -> None:
        """FUSE_SETXATTR (``flags``: XATTR_CREATE / XATTR_REPLACE); the 16-byte in struct when
        FUSE_SETXATTR_EXT was negotiated, else the 8-byte one."""
        if self.has_init_flag(F.FuseInitFlag.SETXATTR_EXT):
            arg = F.FUSE_SETXATTR_IN.pack(len(value), flags, 0, 0)
        else:
            arg = F.FUSE_COMPAT_SETXATTR_IN.pack(len(value), flags)
        self.request(Op.SETXATTR, nodeid, [arg, cstr(name), value], 0, detail=f"{name!r}")

    def getxattr(self, nodeid: int, name: str, size: int = 65536) -> bytes:
        """FUSE_GETXATTR: the value (at most ``size`` bytes: ERANGE if longer)."""
        return self.request(Op.GETXATTR, nodeid, [F.FUSE_GETXATTR_IN.pack(size, 0), cstr(name)], size,
                            detail=f"{name!r}")

    def listxattr(self, nodeid: int, size: int = 65536) -> list[str]:
        """FUSE_LISTXATTR: the names."""
        data = self.request(Op.LISTXATTR, nodeid, [F.FUSE_GETXATTR_IN.pack(size, 0)], size)
        return [os.fsdecode(n) for n in data.split(b"\0") if n]

    def removexattr(self, nodeid: int, name: str) -> None:
        """FUSE_REMOVEXATTR."""
        self.request(Op.REMOVEXATTR, nodeid, [cstr(name)], 0, detail=f"{name!r}")


def _attr_out(data: bytes) -> F.FuseAttr:
    if len(data) < F.FUSE_ATTR_OUT_SIZE:
        raise FuseReplyError(f"fuse_attr_out of {len(data)} bytes, needs {F.FUSE_ATTR_OUT_SIZE}")
    return F.FuseAttr._make(F.FUSE_ATTR.unpack_from(data, F.FUSE_ATTR_OUT_HEAD.size))


class FuseNotFound(FuseError, FileNotFoundError):
    """FuseError ENOENT (also a FileNotFoundError)."""


class FuseExists(FuseError, FileExistsError):
    """FuseError EEXIST (also a FileExistsError)."""


class FuseNotADirectory(FuseError, NotADirectoryError):
    """FuseError ENOTDIR (also a NotADirectoryError)."""


class FuseIsADirectory(FuseError, IsADirectoryError):
    """FuseError EISDIR (also an IsADirectoryError)."""


class FusePermission(FuseError, PermissionError):
    """FuseError EACCES or EPERM (also a PermissionError)."""


_ERRNO_CLASSES: dict[int, type[FuseError]] = {
    errno_mod.ENOENT: FuseNotFound, errno_mod.EEXIST: FuseExists, errno_mod.ENOTDIR: FuseNotADirectory,
    errno_mod.EISDIR: FuseIsADirectory, errno_mod.EACCES: FusePermission, errno_mod.EPERM: FusePermission}


def fuse_error(err: int, opcode: int, detail: str = "") -> FuseError:
    """The FuseError for errno ``err``: the subclass that is also Python's OSError subclass for it
    (FuseNotFound is a FileNotFoundError …), else FuseError itself."""
    return _ERRNO_CLASSES.get(err, FuseError)(err, opcode, detail)
