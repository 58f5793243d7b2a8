"""virtio-msg bus bindings: how whole messages (and fds) move between the two sides.

Two bindings of one small interface (:class:`Channel`: ``send(bytes, fds)``, ``recv()`` one
whole message with its fds, ``close()``):

* :class:`SocketChannel` — a UNIX stream socket.  Messages follow each other; the header's
  ``msg_size`` frames them (a ``msg_size`` below 8 or above the bus's maximum leaves the stream
  without framing: :class:`~.protocol.MalformedMessage` of CONNECTION scope, the connection is
  dropped).  Guest memory crosses as memfds with SCM_RIGHTS, an fd with the first byte of its
  message (:mod:`pyvirtio.vhost_user.fdio`, shared with vhost-user).
* :func:`queue_pair` — two in-process queues.  An fd "sent" is duplicated, as SCM_RIGHTS does,
  so each side owns and closes its own; closing one end tells the other (PeerDisconnected).

A peer that stops reading cannot hold the other side: a send waits at most :data:`SEND_TIMEOUT`
seconds, then the connection is dropped.
"""

from __future__ import annotations

import os
import queue
import select
import socket
import threading
import time
from typing import Protocol, Sequence

from ..errors import PeerDisconnected, Scope
from ..spec import virtio_msg as S
from ..vhost_user.fdio import ancillary, close_fds, recv_with_fds
from .protocol import MalformedMessage, decode_header

#: fds one message may bring (pyvirtio's SET_MEMORY takes one); more are closed and the
#: message goes on without them (the session then refuses it).
MAX_FDS = 4
#: Messages an in-process queue holds before a sender waits.
QUEUE_DEPTH = 4096
#: How long a send may wait for a peer that does not read; then the connection is dropped
#: (a driver that stops reading cannot hold the device side's threads or the bus).
SEND_TIMEOUT = 5.0


class Channel(Protocol):
    """A bus binding: whole messages with their fds, both ways."""

    def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send one message (``fds`` stay the caller's)."""

    def recv(self) -> tuple[bytes, list[int]]:
        """The next whole message and the fds that came with it (the caller owns them); raises
        PeerDisconnected when the other side is gone."""

    def close(self) -> None:
        """Close this end (the other side's recv() then raises PeerDisconnected)."""


class SocketChannel:
    """A Channel over a connected UNIX stream socket."""

    def __init__(self, sock: socket.socket, max_message_size: int = S.MAX_MAX_MESSAGE_SIZE):
        self.sock = sock
        self.max_message_size = max_message_size
        self._send_lock = threading.Lock()
        self._closed = False

    @classmethod
    def connect(cls, path: str, max_message_size: int = S.MAX_MAX_MESSAGE_SIZE) -> "SocketChannel":
        """Connect to a bus listening on ``path``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return cls(sock, max_message_size)

    def fileno(self) -> int:
        """The socket's fd (-1 once closed)."""
        return -1 if self._closed else self.sock.fileno()

    def send(self, data: bytes, fds: Sequence[int] = (), timeout: float | None = None) -> None:
        """Send one message; a peer that takes none of it for ``timeout`` seconds (default
        :data:`SEND_TIMEOUT`) is hung up on (PeerDisconnected)."""
        timeout = SEND_TIMEOUT if timeout is None else timeout
        with self._send_lock:
            if self._closed:
                raise PeerDisconnected("the virtio-msg connection is closed")
            try:
                self._send(data, fds, time.monotonic() + timeout)
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise PeerDisconnected(f"the virtio-msg peer hung up: {exc.strerror}") from None
            except TimeoutError:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)  # its reader sees the end too
                except OSError:
                    pass
                raise PeerDisconnected(f"the virtio-msg peer read nothing for {timeout:g} s: "
                                       "hung up on") from None

    def _send(self, data: bytes, fds: Sequence[int], deadline: float) -> None:
        view, anc = memoryview(data), ancillary(fds)
        while view:
            try:
                n = self.sock.sendmsg([view], anc, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([], [self.sock], [], left)[1]:
                    raise TimeoutError from None
                continue
            view, anc = view[n:], []

    def _read(self, want: int, fds: list[int]) -> bytes:
        out = bytearray()
        while len(out) < want:
            try:
                data, got, truncated = recv_with_fds(self.sock, want - len(out), MAX_FDS)
            except (ConnectionResetError, OSError) as exc:
                close_fds(fds)
                raise PeerDisconnected(f"the virtio-msg peer is gone: {exc}") from None
            keep = MAX_FDS - len(fds)
            fds.extend(got[:max(keep, 0)])
            close_fds(got[max(keep, 0):])
            if not data:
                close_fds(fds)
                raise PeerDisconnected("the virtio-msg peer hung up")
            out += data
        return bytes(out)

    def recv(self) -> tuple[bytes, list[int]]:
        fds: list[int] = []
        head = self._read(S.HEADER_SIZE, fds)
        h = decode_header(head)
        if not S.HEADER_SIZE <= h.msg_size <= self.max_message_size:
            close_fds(fds)
            raise MalformedMessage(f"msg_size {h.msg_size} outside 8..{self.max_message_size}: "
                                   "the stream has lost its framing", h, Scope.CONNECTION)
        return head + self._read(h.msg_size - S.HEADER_SIZE, fds), fds

    def close(self) -> None:
        with self._send_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class QueueChannel:
    """One end of an in-process pair (see :func:`queue_pair`)."""

    def __init__(self, inbox: "queue.Queue[tuple[bytes, list[int]] | None]",
                 outbox: "queue.Queue[tuple[bytes, list[int]] | None]"):
        self._inbox, self._outbox = inbox, outbox
        self._closed = False
        self.peer: QueueChannel | None = None

    def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        if self._closed or (self.peer is not None and self.peer._closed):
            raise PeerDisconnected("the in-process virtio-msg peer is gone")
        dups = [os.dup(fd) for fd in fds]
        try:
            self._outbox.put((bytes(data), dups), timeout=SEND_TIMEOUT)
        except queue.Full:
            close_fds(dups)
            self.close()  # the peer stopped reading: hang up on it
            raise PeerDisconnected(f"the in-process virtio-msg peer read nothing for {SEND_TIMEOUT:g} s") from None

    def recv(self) -> tuple[bytes, list[int]]:
        if self._closed:
            raise PeerDisconnected("this end is closed")
        item = self._inbox.get()
        if item is None:
            _put_end(self._inbox)  # every later recv() sees the end too
            raise PeerDisconnected("the in-process virtio-msg peer closed its end")
        return item

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for q in (self._outbox, self._inbox):  # the peer's reader, and our own
            _put_end(q)
        _drain_fds(self._inbox)


def _put_end(q: "queue.Queue[tuple[bytes, list[int]] | None]") -> None:
    """Put the end-of-stream mark, making room in a full queue (its messages are dropped)."""
    while True:
        try:
            q.put_nowait(None)
            return
        except queue.Full:
            try:
                item = q.get_nowait()
            except queue.Empty:
                continue
            if item is not None:
                close_fds(item[1])


def _drain_fds(q: "queue.Queue[tuple[bytes, list[int]] | None]") -> None:
    """Close the fds of messages nobody will read (the sentinel goes back)."""
    saw_end = False
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            break
        if item is None:
            saw_end = True
        else:
            close_fds(item[1])
    if saw_end:
        _put_end(q)


def queue_pair() -> tuple[QueueChannel, QueueChannel]:
    """Two connected in-process channels (driver end, device end)."""
    a: queue.Queue = queue.Queue(QUEUE_DEPTH)
    b: queue.Queue = queue.Queue(QUEUE_DEPTH)
    driver, device = QueueChannel(a, b), QueueChannel(b, a)
    driver.peer, device.peer = device, driver
    return driver, device


__all__ = ["Channel", "MAX_FDS", "QueueChannel", "SocketChannel", "queue_pair"]
