"""``--socket=HOST:PORT|PATH``: frames over a stream socket, framed as QEMU's ``-netdev stream``
does (each frame preceded by its length as a 4-byte big-endian integer; no virtio header).

As a client the back-end connects once at start; as a server (``listen=True``) it accepts one
peer at a time and accepts the next one when that peer hangs up.  The link is up while a peer is
connected.  Reads go through one buffer (one ``recv_into`` for many frames, then one copy per
frame into the guest); writes are one ``sendmsg`` of the length and the guest's views.  A write
the socket only partly took keeps its rest (and only that) until the socket is writable again.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from typing import Union

from ..errors import UsageError
from ..sockets import bind_unix, inode_of, unlink_if_ours
from .backend import MAX_FRAME, READ, WRITE, NetBackend, Views, copy_into, fit_iov

log = logging.getLogger(__name__)

_LEN = struct.Struct("!I")
READ_BUFFER = 256 * 1024


def parse_address(address: str) -> tuple[int, Union[str, tuple[str, int]]]:
    """``HOST:PORT`` / ``[V6]:PORT`` → an inet address; anything with a ``/`` or no ``:`` → a
    UNIX socket path.  Returns ``(family, sockaddr)``."""
    if "/" in address or ":" not in address:
        return socket.AF_UNIX, address
    host, _, port = address.rpartition(":")
    try:
        port_number = int(port)
    except ValueError:
        raise UsageError(f"bad port in socket address {address!r}") from None
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], port_number)
    return socket.AF_INET, (host or "127.0.0.1", port_number)


class StreamBackend(NetBackend):
    """A stream-socket back-end (client, server, or around an already connected socket)."""

    kind = "socket"

    def __init__(self, address: str | None = None, *, listen: bool = False,
                 sock: socket.socket | None = None):
        super().__init__()
        self.address = address
        self.listener: socket.socket | None = None
        self._inode = -1  # the UNIX socket file we made (removed at close only if still ours)
        self.peer: socket.socket | None = None
        self._rbuf = bytearray(READ_BUFFER)
        self._rview = memoryview(self._rbuf)
        self._start = self._end = 0
        self._pending = b""  # the unsent rest of a partly written frame
        self.stats.update(connects=0, disconnects=0, errors=0)
        if sock is not None:
            self._attach(sock)
        elif address is None:
            raise UsageError("a stream back-end needs an address or a socket")
        elif listen:
            self._listen(address)
        else:
            self._connect(address)

    def describe(self) -> str:
        return f"socket:{self.address or 'fd'}"

    # --- connection management -----------------------------------------------------------------

    def _listen(self, address: str) -> None:
        family, addr = parse_address(address)
        if isinstance(addr, str):  # a UNIX socket path: never another program's live socket
            sock = bind_unix(addr, backlog=1)
            self._inode = inode_of(addr)
            sock.setblocking(False)
            self.listener = sock
            return
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(1)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.listener = sock

    def _connect(self, address: str) -> None:
        family, addr = parse_address(address)
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(addr)
        except OSError:
            sock.close()
            raise
        self._attach(sock)

    def _attach(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer = sock
        self._start = self._end = 0
        self._pending = b""
        self.stats["connects"] += 1

    def _drop_peer(self, why: str) -> None:
        peer, self.peer = self.peer, None
        if peer is None:
            return
        log.info("%s: peer gone: %s", self.describe(), why)
        _shutdown(peer)
        peer.close()
        self._pending = b""
        self.stats["disconnects"] += 1

    @property
    def link_up(self) -> bool:
        return self.peer is not None

    @property
    def bound_address(self):
        """Where a listening back-end listens (its port, when it was given port 0)."""
        return self.listener.getsockname() if self.listener is not None else None

    def poll_fds(self, read: bool, write: bool) -> list[tuple[int, int]]:
        if self.peer is not None:
            events = (READ if read else 0) | (WRITE if write or self._pending else 0)
            return [(self.peer.fileno(), events)] if events else []
        if self.listener is not None:
            return [(self.listener.fileno(), READ)]
        return []

    def service(self) -> None:
        if self.peer is None and self.listener is not None:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            self._attach(sock)
        elif self._pending:
            self._flush()

    # --- receiving -----------------------------------------------------------------------------

    def recv_into(self, views: Views) -> int | None:
        while self.peer is not None:
            length = self._frame_ready()
            if length is not None:
                start = self._start + _LEN.size
                copy_into(views, self._rview[start:start + length])
                self._start = start + length
                self.stats["rx_frames"] += 1
                return length
            if self.peer is None or not self._fill():  # (a bad length dropped the peer)
                return None
        return None

    def _frame_ready(self) -> int | None:
        have = self._end - self._start
        if have < _LEN.size:
            return None
        (length,) = _LEN.unpack_from(self._rbuf, self._start)
        if length == 0 or length > MAX_FRAME:
            self.stats["errors"] += 1
            self._drop_peer(f"bad frame length {length}")
            return None
        return length if have >= _LEN.size + length else None

    def _fill(self) -> bool:
        """One recv into the buffer; False when nothing more can be read now."""
        if self._start and (self._end == self._start or len(self._rbuf) - self._end < MAX_FRAME):
            rest = self._end - self._start
            self._rbuf[:rest] = self._rbuf[self._start:self._end]
            self._start, self._end = 0, rest
        if self.peer is None:
            return False
        try:
            n = self.peer.recv_into(self._rview[self._end:])
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self._drop_peer(str(exc))
            return False
        if n == 0:
            self._drop_peer("end of stream")
            return False
        self._end += n
        return True

    # --- sending -------------------------------------------------------------------------------

    def send(self, views: Views) -> bool:
        if self.peer is None:
            self.stats["tx_dropped"] += 1  # no cable: the frame is lost, as on a real link
            return True
        if self._pending and not self._flush():
            return False
        length = sum(len(v) for v in views)
        # a guest's frame of IOV_MAX buffers plus our length would be EMSGSIZE: one peer lost
        parts: list[Union[bytes, memoryview]] = [_LEN.pack(length), *fit_iov(views, reserve=1)]
        try:
            sent = self.peer.sendmsg(parts)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self.stats["tx_dropped"] += 1
            if exc.errno in (errno.EMSGSIZE, errno.EINVAL):  # this frame's fault, not the peer's
                self.stats["errors"] += 1
                return True
            self._drop_peer(str(exc))
            return True
        if sent < _LEN.size + length:
            self._pending = b"".join(bytes(p) for p in parts)[sent:]
        self.stats["tx_frames"] += 1
        return True

    def _flush(self) -> bool:
        """Write what is left of a partial frame; True once nothing is left."""
        if self.peer is None:
            self._pending = b""
            return True
        try:
            sent = self.peer.send(self._pending)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self._drop_peer(str(exc))
            return True
        self._pending = self._pending[sent:]
        return not self._pending

    def close(self) -> None:
        super().close()
        self._drop_peer("closed")
        if self.listener is not None:
            if self.listener.family == socket.AF_UNIX and isinstance(self.address, str):
                family, addr = parse_address(self.address)
                if isinstance(addr, str):
                    unlink_if_ours(addr, self._inode)
            _shutdown(self.listener)
            self.listener.close()
            self.listener = None


def _shutdown(sock: socket.socket) -> None:
    """End the connection now: a close alone waits until no poll(2) (the device's worker, in
    another thread) holds the socket any more, so the peer would not see the end."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected, or already gone
