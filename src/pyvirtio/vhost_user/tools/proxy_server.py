"""The vhost-user proxy's I/O shell: sockets, fd passing, timers.  The rules, framing and log
lines are :mod:`pyvirtio.vhost_user.tools.proxy`'s; this module only moves bytes and fds.

Each front-end that connects to ``listen`` gets its own connection to ``connect`` (a front-end
that reconnects, as QEMU does with ``reconnect=1``, gets a fresh back-end connection too).  Each
header is read with its own ``recvmsg`` so its fds are the ones sent with it (wire.Framer's
rule), and sent on with one ``sendmsg`` carrying those fds; the proxy closes its copies after.
When either side of a session hangs up, the proxy closes the other side — a back-end sees its
front-end leave exactly when the front-end left.

SET_BACKEND_REQ_FD: the front-end's socket is kept by the proxy and the back-end gets one end of
a new socketpair; the proxy then relays (and logs) the back-end's requests and the front-end's
replies between the two (streams ``be>fe*`` and ``fe>be*``).
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, TextIO

from ...errors import TransportError
from ...sockets import bind_unix, inode_of, unlink_if_ours
from ..fdio import close_fds, recv_with_fds, send_all
from ..errors import FramingError
from .proxy import (BE_FE, BE_FE_REQ, FE_BE, FE_BE_REQ, Passage, ProxySession, Rule, dumps,
                    event_record, record_header, stamp)
from ..protocol import MAX_FDS

log = logging.getLogger("pyvirtio.vhost_user.tools.proxy")

#: fds accepted with one header (more are cut by the kernel and the session ends).
MAX_FDS_RECEIVED = 4 * MAX_FDS
#: How long a send may block on a peer that does not read.
SEND_TIMEOUT = 10.0


@dataclass
class _Link:
    """One front-end's session: its sockets by stream and what waits to be sent on each."""

    core: ProxySession
    source: dict[str, socket.socket]  # stream -> the socket it is read from
    queues: dict[str, deque] = field(default_factory=lambda: {s: deque() for s in
                                                               (FE_BE, BE_FE, BE_FE_REQ, FE_BE_REQ)})

    def sink(self, stream: str) -> socket.socket | None:
        return self.source.get({FE_BE: BE_FE, BE_FE: FE_BE, BE_FE_REQ: FE_BE_REQ,
                                FE_BE_REQ: BE_FE_REQ}[stream])


class ProxyServer:
    """Listen on ``listen``, relay each front-end to a new connection to ``connect``.

    ``on_line(text)`` gets each log line (default: the ``pyvirtio.vhost_user.tools.proxy`` logger at
    info); ``record`` (a text file) gets the JSON Lines record described in
    :mod:`pyvirtio.vhost_user.tools.proxy`."""

    def __init__(self, listen: str, connect: str, *, rules: list[Rule] | None = None,
                 record: TextIO | None = None, on_line: Callable[[str], None] | None = None,
                 connect_timeout: float = 5.0):
        self.listen_path, self.connect_path = listen, connect
        self.rules = rules or []
        self.record = record
        self.on_line = on_line or log.info
        self.connect_timeout = connect_timeout
        self.start = time.monotonic()
        self.sessions = 0
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._links: list[_Link] = []
        self._listener = bind_unix(listen)
        self._inode = inode_of(listen)
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        if record is not None:
            self._write(record_header(listen, connect, time.time()))

    # --- loop -----------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        try:
            while True:
                for key, _ in self._sel.select(self._timeout()):
                    if key.data == "wake":
                        return
                    if key.data == "accept":
                        self._accept()
                    else:
                        self._read(*key.data)
                for link in list(self._links):
                    self._flush(link)
        finally:
            self._close_all()

    def wake_on(self, fileobj) -> None:
        """End :meth:`serve_forever` also when ``fileobj`` becomes readable (a
        :class:`~pyvirtio.signals.StopSignals`: a signal caught by any thread)."""
        self._sel.register(fileobj, selectors.EVENT_READ, "wake")

    def shutdown(self) -> None:
        """End :meth:`serve_forever` (from another thread or a signal handler)."""
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _timeout(self) -> float | None:
        due = [q[0].send_at for link in self._links for q in link.queues.values() if q]
        return max(0.0, min(due) - time.monotonic()) if due else None

    # --- sessions -------------------------------------------------------------------------------

    def _accept(self) -> None:
        front, _ = self._listener.accept()
        self.sessions += 1
        conn = self.sessions
        back = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        back.settimeout(self.connect_timeout)
        try:
            back.connect(self.connect_path)
        except OSError as exc:
            back.close()
            front.close()
            self._event(conn, "close", f"cannot connect to {self.connect_path}: {exc.strerror or exc}")
            return
        link = _Link(ProxySession(conn, self.rules, self.start), {FE_BE: front, BE_FE: back})
        for stream, sock in link.source.items():
            self._watch(link, stream, sock)
        self._links.append(link)
        self._event(conn, "connect", f"front-end on {self.listen_path}, back-end {self.connect_path}")

    def _watch(self, link: _Link, stream: str, sock: socket.socket) -> None:
        sock.settimeout(SEND_TIMEOUT)
        self._sel.register(sock, selectors.EVENT_READ, (link, stream))

    def _read(self, link: _Link, stream: str) -> None:
        sock = link.source[stream]
        try:
            data, fds, truncated = _recv(sock, link.core.want(stream))
        except OSError as exc:
            return self._end(link, stream, f"{stream} read failed: {exc.strerror or exc}")
        if truncated:
            close_fds(fds)
            return self._end(link, stream, f"{stream}: more than {MAX_FDS_RECEIVED} fds in one message")
        if not data:
            close_fds(fds)
            who = "front-end" if stream in (FE_BE, FE_BE_REQ) else "back-end"
            what = "the back-end request channel" if "*" in stream else "the connection"
            return self._end(link, stream, f"the {who} closed {what}")
        try:
            passages = link.core.receive(stream, data, fds, time.monotonic())
        except FramingError as exc:
            return self._end(link, stream, f"{stream}: {exc}")
        for p in passages:
            self.on_line(p.line())
            if self.record is not None:
                self._write(p.record())
            if p.action == "drop":
                close_fds(p.fds)
            else:
                link.queues[stream].append(p)

    def _flush(self, link: _Link) -> None:
        now = time.monotonic()
        for stream, queue in link.queues.items():
            while queue and queue[0].send_at <= now and link in self._links:
                p = queue.popleft()
                try:
                    self._send(link, p)
                except (OSError, TransportError) as exc:
                    self._end(link, stream, f"{stream} send failed: {getattr(exc, 'strerror', None) or exc}")
                finally:
                    close_fds(p.fds)

    def _send(self, link: _Link, p: Passage) -> None:
        sink = link.sink(p.stream)
        if sink is None:
            raise TransportError("no back-end request channel to send on")
        if p.opens_backend_channel:
            front_end_side = socket.socket(fileno=p.message.take_fd(0))
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            link.source[FE_BE_REQ], link.source[BE_FE_REQ] = front_end_side, ours
            self._watch(link, FE_BE_REQ, front_end_side)
            self._watch(link, BE_FE_REQ, ours)
            p.message.fds[0] = theirs.detach()
        send_all(sink, p.data, [fd for fd in p.fds if fd >= 0])

    def _end(self, link: _Link, stream: str, why: str) -> None:
        if "*" in stream:  # only the back-end request channel ends
            for s in (FE_BE_REQ, BE_FE_REQ):
                self._forget(link.source.pop(s, None))
                for p in link.queues[s]:
                    close_fds(p.fds)
                link.queues[s].clear()
            self._event(link.core.conn, "close", why)
            return
        if link not in self._links:
            return
        self._links.remove(link)
        for sock in link.source.values():
            self._forget(sock)
        for queue in link.queues.values():
            for p in queue:
                close_fds(p.fds)
        close_fds(link.core.take_all_fds())
        self._event(link.core.conn, "close", why)

    def _forget(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    def _event(self, conn: int, event: str, detail: str) -> None:
        t = time.monotonic() - self.start
        self.on_line(f"{stamp(t)} #{conn} -- {event} {detail}")
        if self.record is not None:
            self._write(event_record(t, conn, event, detail))

    def _write(self, obj: dict) -> None:
        if self.record is not None:  # callers check too; --record is optional
            self.record.write(dumps(obj))
            self.record.flush()

    def _close_all(self) -> None:
        for link in list(self._links):
            self._end(link, FE_BE, "the proxy stopped")
        self._sel.close()
        self._listener.close()
        unlink_if_ours(self.listen_path, self._inode)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)


def _recv(sock: socket.socket, want: int) -> tuple[bytes, list[int], bool]:
    return recv_with_fds(sock, want, MAX_FDS_RECEIVED)


__all__ = ["ProxyServer", "MAX_FDS_RECEIVED", "SEND_TIMEOUT"]
