"""The host side of ``pyvirtio serve vsock``: "hybrid vsock" over UNIX sockets.

The convention of Firecracker and rust-vmm's vhost-device-vsock:

* host → guest: a host program connects to the UNIX socket ``UDS`` and writes
  ``CONNECT <port>\\n``; once the guest's listener on ``port`` accepted, it reads
  ``OK <hostport>\\n`` (the host-side port the guest sees) and then the byte stream.  A refused
  connection is closed without an answer.
* guest → host: a guest connection to the host (CID 2) port ``P`` goes to the UNIX socket
  ``UDS_P`` when something listens there; otherwise the guest gets RST.

SEQPACKET (our extension of the convention; VIRTIO_VSOCK_F_SEQPACKET): a guest SEQPACKET
connection to port ``P`` connects a ``SOCK_SEQPACKET`` UNIX socket to ``UDS_P``; host programs
open one to a guest port through ``UDS.seqpacket`` (a ``SOCK_SEQPACKET`` listener), with
``CONNECT <port>\n`` and ``OK <hostport>\n`` as one message each.  One vsock message is one
UNIX message (empty messages are not carried: a zero-length read is the end of the stream).

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
import os
import socket
from collections import OrderedDict, deque

from ..errors import UsageError
from ..limits import VSOCK_BUF_ALLOC, VSOCK_HANDSHAKE_LINE, VSOCK_MAX_HANDSHAKES
from ..sockets import SocketInUse, bind_unix, inode_of, unlink_if_ours

log = logging.getLogger(__name__)

_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
#: The largest host SEQPACKET message carried to the guest (larger ones are dropped, counted).
MAX_SEQ_MESSAGE = VSOCK_BUF_ALLOC


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
        if self.peer_done_sending and not self.pending and not self.wr_shut:
            self.wr_shut = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    @property
    def pending(self) -> int:
        """Bytes waiting for the host socket."""
        return len(self.out) + len(self.prefix)

    @property
    def buffered(self) -> int:
        """Bytes of the guest's held here (memory)."""
        return self.pending

    def close(self) -> None:
        if self.fd >= 0:
            self.fd = -1
            self.sock.close()


class SeqBridge(Bridge):
    """A SEQPACKET connection's host socket (``SOCK_SEQPACKET``): whole messages each way.
    Guest fragments gather until EOM (the credit bounds them); a host message is read whole
    (it must fit the guest's credit, at most :data:`MAX_SEQ_MESSAGE`) and goes to the guest
    in fragments."""

    __slots__ = ("partial", "queue", "queued", "inbound", "waiting_for")

    def __init__(self, sock: socket.socket, *, client: bool = False):
        super().__init__(sock, client=client)
        self.partial = bytearray()  # the guest message being gathered
        self.queue: deque[bytes] = deque()  # whole guest messages the socket has not taken
        self.queued = 0
        self.inbound: memoryview | None = None  # the rest of a host message for the guest
        self.waiting_for = 0  # the size of a host message that waits for the guest's credit

    def add_fragment(self, views: list[memoryview], eom: bool) -> None:
        for view in views:
            self.partial += view
        if eom:
            message, self.partial = bytes(self.partial), bytearray()
            self.queue.append(message)
            self.queued += len(message)

    def send_views(self, views: list[memoryview]) -> int:
        return 0  # a message goes out whole: see add_fragment and write_out

    def write_out(self) -> int:
        if self.prefix:
            if not _send(self.sock, [self.prefix]):
                return 0
            self.prefix = b""
        sent = 0
        while self.queue:
            message = self.queue[0]
            if message and not _send(self.sock, [message]):
                break
            self.queue.popleft()
            self.queued -= len(message)
            sent += len(message)
        return sent

    @property
    def pending(self) -> int:
        return self.queued + len(self.prefix)

    @property
    def buffered(self) -> int:
        return self.queued + len(self.partial) + (len(self.inbound) if self.inbound is not None else 0)


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

    def __init__(self, uds_path: str, *, socket_mode: int = 0o600, listen: bool = True,
                 seqpacket: bool = True):
        self.uds_path = uds_path
        self.seq_path = uds_path + ".seqpacket"
        self.listener: socket.socket | None = None
        self.seq_listener: socket.socket | None = None
        self._inode = self._seq_inode = -1
        if listen:
            self.listener = bind_unix(uds_path, VSOCK_MAX_HANDSHAKES, mode=socket_mode)
            self.listener.setblocking(False)
            self._inode = inode_of(uds_path)
        if listen and seqpacket:
            try:
                self.seq_listener = _bind_seqpacket(self.seq_path, socket_mode)
            except OSError:
                self.close()
                raise
            self._seq_inode = inode_of(self.seq_path)
        #: Clients still sending their CONNECT line, oldest first.
        self.handshakes: OrderedDict[int, socket.socket] = OrderedDict()
        self.stats = {"host_connects": 0, "bad_handshakes": 0, "handshakes_dropped": 0,
                      "guest_connects": 0, "guest_connects_refused": 0}

    @property
    def listen_fds(self) -> list[int]:
        return [s.fileno() for s in (self.listener, self.seq_listener) if s is not None]

    def accept_all(self) -> None:
        """Take every waiting client; past the bound the oldest unfinished one is dropped."""
        for listener in (self.listener, self.seq_listener):
            if listener is not None:
                self._accept(listener)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
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

    def read_handshake(self, fd: int) -> tuple[socket.socket, int] | None:
        """(socket, port) once client ``fd`` sent its line; None while it is incomplete.  A
        client that hung up or sent a bad line is closed."""
        sock = self.handshakes.get(fd)
        if sock is None:
            return None
        seq = sock.type == socket.SOCK_SEQPACKET
        try:
            peek = sock.recv(VSOCK_HANDSHAKE_LINE, 0 if seq else socket.MSG_PEEK)
        except OSError as exc:
            if exc.errno in _AGAIN:
                return None
            peek = b""
        end = peek.find(b"\n")
        try:
            if end < 0:
                if peek and len(peek) < VSOCK_HANDSHAKE_LINE and not seq:
                    return None  # more to come
                raise UsageError(f"no CONNECT line ({len(peek)} bytes)" if peek else "hung up")
            port = parse_connect_line(peek if seq else sock.recv(end + 1))
        except (UsageError, OSError) as exc:
            self.stats["bad_handshakes"] += 1
            log.info("vsock: host client on %s dropped: %s", self.uds_path, exc)
            del self.handshakes[fd]
            sock.close()
            return None
        del self.handshakes[fd]
        self.stats["host_connects"] += 1
        return sock, port

    def connect_guest_port(self, port: int, seqpacket: bool = False) -> socket.socket | None:
        """A connection to ``UDS_port`` for a guest's REQUEST, or None (nothing listens, or a
        listener of the other socket type)."""
        path = f"{self.uds_path}_{port}"
        kind = socket.SOCK_SEQPACKET if seqpacket else socket.SOCK_STREAM
        sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
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
        if self.seq_listener is not None:
            self.seq_listener.close()
            self.seq_listener = None
            unlink_if_ours(self.seq_path, self._seq_inode)


def _bind_seqpacket(path: str, mode: int) -> socket.socket:
    """A SOCK_SEQPACKET listener at ``path`` (a stale socket file replaced; mode ``mode``)."""
    try:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            probe.connect(path)
        finally:
            probe.close()
    except OSError:
        try:
            os.unlink(path)  # nothing answers there: stale
        except FileNotFoundError:
            pass
    else:
        raise SocketInUse(f"{path}: a live socket is listening there")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)  # connecting needs write permission: the default mode lets only us
        os.chmod(path, mode)
        sock.listen(VSOCK_MAX_HANDSHAKES)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


__all__ = ["Bridge", "HybridHost", "MAX_SEQ_MESSAGE", "SeqBridge", "parse_connect_line"]
