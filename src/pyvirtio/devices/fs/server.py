"""The FUSE server core: one request's bytes and a file-system back-end in, the reply's bytes
out (sans-I/O; the back-end does the host calls).

    server = FuseServer(PassthroughFs("/srv/share"), cache="auto")
    reply = server.handle(request_bytes, out_size)   # list of byte strings, or None

Rules, after fuse_lowlevel.c and passthrough_ll.c of virtiofsd (QEMU 7.2):

* Before FUSE_INIT every request gets EIO.  INIT with major 7 and minor >= 31 is answered with
  our version (7.38) and the flags we support among those the driver offered; major < 7 or an
  older minor: EPROTO; major > 7: the reply carries only our version, and the driver is expected
  to send a second INIT (fuse.h's negotiation).  A second INIT on a running session starts over
  (virtiofsd does so after a guest's hard reboot): every handle and inode is dropped first.
* Unknown opcodes and the ones we do not serve (BMAP, IOCTL, POLL, SETUPMAPPING, SYNCFS,
  TMPFILE, GETLK/SETLK/SETLKW -- virtiofsd's default ``no_posix_lock`` answers those ENOSYS,
  and the driver then does its locks locally): ENOSYS.
* FORGET, BATCH_FORGET and INTERRUPT get no reply (``None``).
* Cache modes set the entry/attr timeouts and open flags as virtiofsd's ``--cache``: never (0 s,
  FOPEN_DIRECT_IO, no READDIRPLUS), auto (1 s), always (1 day, FOPEN_KEEP_CACHE on files,
  FOPEN_CACHE_DIR on directories).
* A reply never exceeds ``out_size`` (the driver's writable bytes): READ and READDIR are cut to
  fit; anything else too large becomes ERANGE; with no room for a header there is no reply.
* Any failure is an errno reply; a bug of ours is logged (rate-limited) and answered EIO.
"""

from __future__ import annotations

import errno
import logging
import traceback
from typing import Callable, Sequence

from ...limits import PeerLog
from ...spec import fuse as F
from .passthrough import PassthroughFs
from .wire import Args, FuseError, Reply, Sink, parse_request, reply_error, reply_len, reply_ok

log = logging.getLogger(__name__)

#: Timeouts (seconds) of each cache mode, as virtiofsd's ``timeout`` defaults.
CACHE_TIMEOUTS = {"never": 0.0, "auto": 1.0, "always": 86400.0}
#: virtiofsd's largest WRITE (its buffer: 1 MiB of data after the headers).
MAX_WRITE = 1 << 20
#: The oldest protocol we speak (virtiofsd refuses < 7.31 too).
MIN_MINOR = 31
#: INIT flags we take when the driver offers them.
SUPPORTED = (F.FuseInitFlag.ASYNC_READ | F.FuseInitFlag.ATOMIC_O_TRUNC | F.FuseInitFlag.EXPORT_SUPPORT
             | F.FuseInitFlag.BIG_WRITES | F.FuseInitFlag.AUTO_INVAL_DATA | F.FuseInitFlag.ASYNC_DIO
             | F.FuseInitFlag.PARALLEL_DIROPS | F.FuseInitFlag.MAX_PAGES | F.FuseInitFlag.INIT_EXT
             | F.FuseInitFlag.DO_READDIRPLUS | F.FuseInitFlag.READDIRPLUS_AUTO)
_READDIRPLUS = F.FuseInitFlag.DO_READDIRPLUS | F.FuseInitFlag.READDIRPLUS_AUTO
_PAGE = 4096

Handler = Callable[..., "Reply | None"]


class FuseServer:
    """A FUSE session over one back-end (see the module docstring)."""

    def __init__(self, backend: PassthroughFs, *, cache: str = "auto", max_write: int = MAX_WRITE):
        if cache not in CACHE_TIMEOUTS:
            raise ValueError(f"cache mode {cache!r}: one of never, auto, always")
        self.backend = backend
        self.cache = cache
        self.timeout = CACHE_TIMEOUTS[cache]
        self.max_write = max_write
        self.initialized = False
        self.minor = F.FUSE_KERNEL_MINOR_VERSION
        self.flags = 0  # negotiated INIT flags (flags2 shifted up)
        self.max_readahead = 0
        self.guest_log = PeerLog(log)
        from .ops import HANDLERS
        self._handlers: dict[int, Handler] = HANDLERS

    # --- one request ------------------------------------------------------------------------------

    def handle(self, data: bytes | bytearray | memoryview, out_size: int, *,
               nowait: bool = False, tail: Sequence[memoryview] = (), sink: Sink | None = None) -> Reply | None:
        """The reply to one request (``None``: no reply).  Raises FuseProtocolError only when
        the request is shorter than a fuse_in_header (nothing to answer).  ``nowait``: a READ
        or WRITE is done only if it cannot wait for a disk (see PassthroughFs.read/write),
        else BlockingIOError is raised (the caller then runs it where it may block).
        ``tail`` and ``sink``: where the bulk of a WRITE is and where a READ's data may go,
        in guest memory (:class:`~.wire.Args`)."""
        try:
            request = parse_request(data, sum(len(v) for v in tail))
        except FuseError as exc:
            unique = F.FUSE_IN_HEADER.unpack_from(bytes(data[:F.FUSE_IN_HEADER_SIZE]))[2]
            return self._fit(reply_error(unique, exc.errno), out_size, unique)
        hdr = request.header
        reply = self._dispatch(hdr, Args(request.body, tail, sink), out_size, nowait)
        return None if reply is None else self._fit(reply, out_size, hdr.unique)

    def _dispatch(self, hdr: F.FuseInHeader, args: Args, out_size: int, nowait: bool = False) -> Reply | None:
        op = hdr.opcode
        if op == F.FuseOpcode.INIT:
            return self._init(hdr, args)
        if not self.initialized:
            return reply_error(hdr.unique, errno.EIO)
        handler = self._handlers.get(op)
        if handler is None:
            return reply_error(hdr.unique, errno.ENOSYS)
        try:
            if nowait and op in (F.FuseOpcode.READ, F.FuseOpcode.WRITE):
                return handler(self, hdr, args, out_size, nowait=True)
            return handler(self, hdr, args, out_size)
        except BlockingIOError:
            if nowait:
                raise
            return reply_error(hdr.unique, errno.EAGAIN)
        except FuseError as exc:
            return reply_error(hdr.unique, exc.errno)
        except OSError as exc:
            return reply_error(hdr.unique, exc.errno or errno.EIO)
        except Exception:  # a bug of ours: the guest gets EIO, the daemon goes on
            self.guest_log.error("FUSE opcode %d failed:\n%s", op, traceback.format_exc())
            return reply_error(hdr.unique, errno.EIO)

    @staticmethod
    def _fit(reply: Reply, out_size: int, unique: int) -> Reply | None:
        if reply_len(reply) <= out_size:
            return reply
        if out_size < F.FUSE_OUT_HEADER_SIZE:
            return None
        return reply_error(unique, errno.ERANGE)

    # --- INIT ---------------------------------------------------------------------------------

    def _init(self, hdr: F.FuseInHeader, args: Args) -> Reply:
        try:
            arg = F.FuseInitIn._make(args.prefix(F.FUSE_INIT_IN, F.FUSE_INIT_IN_COMPAT))
        except FuseError as exc:
            return reply_error(hdr.unique, exc.errno)
        if arg.major < F.FUSE_KERNEL_VERSION or (arg.major == F.FUSE_KERNEL_VERSION and arg.minor < MIN_MINOR):
            return reply_error(hdr.unique, errno.EPROTO)
        if arg.major > F.FUSE_KERNEL_VERSION:  # answer with ours; a 7.x INIT is to follow
            out = F.FuseInitOut(F.FUSE_KERNEL_VERSION, F.FUSE_KERNEL_MINOR_VERSION, *(0,) * 9)
            return reply_ok(hdr.unique, F.FUSE_INIT_OUT.pack(*out))
        if self.initialized:  # a new driver (a guest reboot): drop what the old one held
            self.backend.reset()
        offered = arg.flags | (arg.flags2 << 32 if arg.flags & F.FuseInitFlag.INIT_EXT else 0)
        want = SUPPORTED if self.cache != "never" else SUPPORTED & ~_READDIRPLUS
        self.flags = offered & want
        self.minor = min(arg.minor, F.FUSE_KERNEL_MINOR_VERSION)
        self.max_readahead = arg.max_readahead
        self.initialized = True
        out = F.FuseInitOut(
            major=F.FUSE_KERNEL_VERSION, minor=F.FUSE_KERNEL_MINOR_VERSION,
            max_readahead=arg.max_readahead, flags=self.flags & 0xFFFFFFFF, max_background=0,
            congestion_threshold=0, max_write=self.max_write, time_gran=1,
            max_pages=self.max_write // _PAGE, map_alignment=0, flags2=self.flags >> 32)
        return reply_ok(hdr.unique, F.FUSE_INIT_OUT.pack(*out))

    def destroy(self) -> None:
        """DESTROY: the session ends; everything the driver held is dropped."""
        self.backend.reset()
        self.initialized = False


__all__ = ["CACHE_TIMEOUTS", "FuseServer", "MAX_WRITE", "SUPPORTED"]
