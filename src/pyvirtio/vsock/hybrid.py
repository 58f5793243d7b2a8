"""The host side of ``pyvirtio serve vsock``: "hybrid vsock" over UNIX sockets.

The convention of Firecracker and rust-vmm's vhost-device-vsock:

* host → guest: a host program connects to the UNIX socket ``UDS`` and writes
  ``CONNECT <port>\\n``; once the guest's listener on ``port`` accepted, it reads
  ``OK <hostport>\\n`` (the host-side port the guest sees) and then the byte stream.  A refused
  connection is closed without an answer.
* guest → host: a guest connection to the host (CID 2) port ``P`` goes to the UNIX socket
  ``UDS_P`` when something listens there; otherwise the guest gets RST.

:class:`HybridHost` owns the listening socket and the clients still sending their line (at most
:data:`~pyvirtio.limits.VSOCK_MAX_HANDSHAKES`, each line at most
:data:`~pyvirtio.limits.VSOCK_HANDSHAKE_LINE` bytes; the line is peeked and then read up to its
newline, so bytes a client sends right behind it stay in the socket for the guest).
:class:`Bridge` is one connection's host socket with the guest bytes it has not taken yet.
Everything here is non-blocking and runs in the device's worker.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import OrderedDict
from typing import Optional

from ..errors import UsageError
from ..limits import VSOCK_HANDSHAKE_LINE, VSOCK_MAX_HANDSHAKES
from ..sockets import bind_unix, inode_of, unlink_if_ours

log = logging.getLogger(__name__)

_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


def parse_connect_line(line: bytes) -> int:
    """The port of a ``CONNECT <port>\\n`` line; UsageError for anything else."""
    word, _, rest = line.rstrip(b"\n").partition(b" ")
    if word != b"CONNECT" or not rest.isdigit() or len(rest) > 10 or int(rest) > 0xFFFFFFFF:
        raise UsageError(f"not a 'CONNECT <port>' line: {line[:VSOCK_HANDSHAKE_LINE]!r}")
    return int(rest)


class Bridge:
    """One vsock connection's host socket, and the guest's bytes it has not taken yet (at most
    the connection's buf_alloc: the guest may not send more before we pass them on)."""

    __slots__ = ("sock", "fd", "out", "prefix", "peer_done_sending", "wr_shut", "rd_done",
                 "readable", "client")

    def __init__(self, sock: socket.socket, *, client: bool = False):
        self.sock = sock
        self.fd = sock.fileno()
        self.out = bytearray()  # guest bytes waiting for the host socket
        self.prefix = b""  # "OK <hostport>\n", written before any guest byte
        self.peer_done_sending = False  # the guest sent SHUTDOWN SEND
        self.wr_shut = False  # we shut down the host socket's writing side
        self.rd_done = False  # the host socket reached end of file (or the guest won't read)
        self.readable = True  # worth a recv (cleared on EAGAIN, set by POLLIN)
        self.client = client  # a host program that connected to UDS (it waits for OK)

    def write_out(self) -> int:
        """Write the prefix and queued guest bytes; returns the guest bytes the socket took.
        Raises OSError for a host socket that failed (reset, broken pipe)."""
        if self.prefix:
            n = _send(self.sock, [self.prefix])
            self.prefix = self.prefix[n:]
            if self.prefix:
                return 0
        if not self.out:
            return 0
        n = _send(self.sock, [self.out])
        del self.out[:n]
        return n

    def send_views(self, views: list[memoryview]) -> int:
        """Write guest bytes straight from guest memory (nothing queued before them)."""
        if self.prefix or self.out:
            return 0
        return _send(self.sock, views)

    def maybe_shut_write(self) -> None:
        """The guest sends no more and everything it sent is out: end of file for the host."""
        if self.peer_done_sending and not self.out and not self.prefix and not self.wr_shut:
            self.wr_shut = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    @property
    def pending(self) -> int:
        return len(self.out) + len(self.prefix)

    def close(self) -> None:
        if self.fd >= 0:
            self.fd = -1
            self.sock.close()


def _send(sock: socket.socket, views) -> int:
    try:
        return sock.sendmsg(views, [], socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
    except OSError as exc:
        if exc.errno in _AGAIN:
            return 0
        raise


class HybridHost:
    """The UNIX-socket side of the hybrid convention: ``uds_path`` for host-initiated
    connections, ``uds_path + "_" + port`` for guest-initiated ones."""

    def __init__(self, uds_path: str, *, socket_mode: int = 0o600, listen: bool = True):
        self.uds_path = uds_path
        self.listener: Optional[socket.socket] = None
        self._inode = -1
        if listen:
            self.listener = bind_unix(uds_path, VSOCK_MAX_HANDSHAKES, mode=socket_mode)
            self.listener.setblocking(False)
            self._inode = inode_of(uds_path)
        #: Clients still sending their CONNECT line, oldest first.
        self.handshakes: OrderedDict[int, socket.socket] = OrderedDict()
        self.stats = {"host_connects": 0, "bad_handshakes": 0, "handshakes_dropped": 0,
                      "guest_connects": 0, "guest_connects_refused": 0}

    @property
    def listen_fd(self) -> int:
        return self.listener.fileno() if self.listener is not None else -1

    def accept_all(self) -> None:
        """Take every waiting client; past the bound the oldest unfinished one is dropped."""
        if self.listener is None:
            return
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError as exc:
                if exc.errno not in _AGAIN + (errno.ECONNABORTED,):
                    log.warning("vsock: accept on %s: %s", self.uds_path, exc)
                return
            sock.setblocking(False)
            if len(self.handshakes) >= VSOCK_MAX_HANDSHAKES:
                _, old = self.handshakes.popitem(last=False)
                old.close()
                self.stats["handshakes_dropped"] += 1
            self.handshakes[sock.fileno()] = sock

    def read_handshake(self, fd: int) -> Optional[tuple[socket.socket, int]]:
        """(socket, port) once client ``fd`` sent its line; None while it is incomplete.  A
        client that hung up or sent a bad line is closed."""
        sock = self.handshakes.get(fd)
        if sock is None:
            return None
        try:
            peek = sock.recv(VSOCK_HANDSHAKE_LINE, socket.MSG_PEEK)
        except OSError as exc:
            if exc.errno in _AGAIN:
                return None
            peek = b""
        end = peek.find(b"\n")
        try:
            if end < 0:
                if peek and len(peek) < VSOCK_HANDSHAKE_LINE:
                    return None  # more to come
                raise UsageError(f"no CONNECT line ({len(peek)} bytes)" if peek else "hung up")
            port = parse_connect_line(sock.recv(end + 1))
        except (UsageError, OSError) as exc:
            self.stats["bad_handshakes"] += 1
            log.info("vsock: host client on %s dropped: %s", self.uds_path, exc)
            del self.handshakes[fd]
            sock.close()
            return None
        del self.handshakes[fd]
        self.stats["host_connects"] += 1
        return sock, port

    def connect_guest_port(self, port: int) -> Optional[socket.socket]:
        """A connection to ``UDS_port`` for a guest's REQUEST, or None (nothing listens)."""
        path = f"{self.uds_path}_{port}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            self.stats["guest_connects_refused"] += 1
            log.debug("vsock: guest connection to host port %d: %s: %s", port, path, exc)
            return None
        self.stats["guest_connects"] += 1
        return sock

    def close(self) -> None:
        for sock in self.handshakes.values():
            sock.close()
        self.handshakes.clear()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            unlink_if_ours(self.uds_path, self._inode)


__all__ = ["Bridge", "HybridHost", "parse_connect_line"]
