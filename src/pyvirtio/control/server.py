"""The control socket's I/O shell: a UNIX socket (0600), served from the daemon's loop.

:class:`ControlServer` listens on a path (:func:`pyvirtio.sockets.bind_unix`, created with
mode 0600 without a race; a stale socket file is replaced, a live one refused) and has the
:class:`~pyvirtio.vhost_user.backend.server.VhostUserServer`'s selector loop watch the listener and each
client (``watch``/``unwatch``): no thread of its own.  Each client gets a
:class:`~.protocol.ControlConnection`; what it sends is cut into lines and answered in order.
Replies a client does not read are queued up to :data:`~pyvirtio.limits.MAX_CONTROL_PENDING`
bytes, then the client is dropped; at most :data:`~pyvirtio.limits.MAX_CONTROL_CLIENTS` are
served at once (one more is told so and closed).  A client that hangs up, sends garbage or goes
away in the middle of a line costs the daemon nothing but that client.
"""

from __future__ import annotations

import logging
import selectors
import socket
from typing import Any, Callable

from ..limits import MAX_CONTROL_CLIENTS, MAX_CONTROL_PENDING
from ..sockets import DEFAULT_SOCKET_MODE, bind_unix, inode_of, unlink_if_ours
from .commands import ControlTarget, build_commands
from .protocol import ControlConnection, Dispatcher, encode_error

log = logging.getLogger("pyvirtio.control")
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_CHUNK = 65536


class _Client:
    def __init__(self, sock: socket.socket, dispatcher: Dispatcher):
        self.sock = sock
        self.conn = ControlConnection(dispatcher)
        self.outbox = bytearray()


class ControlServer:
    """Serve the control protocol for ``target`` on ``path`` from ``loop`` (anything with
    ``watch(fileobj, callback, events)`` and ``unwatch(fileobj)``)."""

    def __init__(self, path: str, target: ControlTarget, loop: Any, *,
                 mode: int = DEFAULT_SOCKET_MODE, max_clients: int = MAX_CONTROL_CLIENTS,
                 dispatcher: Dispatcher | None = None):
        self.path = path
        self.target = target
        self.loop = loop
        self.max_clients = max_clients
        self.dispatcher = dispatcher or Dispatcher(build_commands(target))
        self.listener: socket.socket | None = bind_unix(path, mode=mode)
        self.listener.setblocking(False)
        self._inode = inode_of(path)
        self.clients: dict[int, _Client] = {}
        loop.watch(self.listener, self._accept)

    # --- the loop's callbacks -------------------------------------------------------------------

    def _accept(self, mask: int) -> None:
        if self.listener is None:
            return
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("control %s: accept: %s", self.path, exc.strerror or exc)
            return
        sock.setblocking(False)
        if len(self.clients) >= self.max_clients:
            try:
                sock.send(encode_error(None, "failed", f"too many control clients (at most {self.max_clients})"))
            except OSError:
                pass
            sock.close()
            return
        client = _Client(sock, self.dispatcher)
        self.clients[sock.fileno()] = client
        self.loop.watch(sock, self._callback(client))

    def _callback(self, client: _Client) -> Callable[[int], None]:
        return lambda mask: self._ready(client, mask)

    def _ready(self, client: _Client, mask: int) -> None:
        if mask & _READ and not self._read(client):
            return
        self._flush(client)

    def _read(self, client: _Client) -> bool:
        """Read what is there and answer it; False if the client is gone."""
        for _ in range(16):  # one chatty client cannot starve the devices
            try:
                data = client.sock.recv(_CHUNK)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self._drop(client)
                return False
            if not data:
                self._drop(client)
                return False
            for reply in client.conn.receive(data):
                client.outbox += reply
            if len(client.outbox) > MAX_CONTROL_PENDING:
                log.warning("control %s: a client does not read its replies; dropped", self.path)
                self._drop(client)
                return False
        return True

    def _flush(self, client: _Client) -> None:
        while client.outbox:
            try:
                n = client.sock.send(client.outbox)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(client)
                return
            del client.outbox[:n]
        events = _READ | (_WRITE if client.outbox else 0)
        self.loop.watch(client.sock, self._callback(client), events)

    def _drop(self, client: _Client) -> None:
        self.loop.unwatch(client.sock)
        self.clients.pop(client.sock.fileno(), None)
        client.sock.close()

    # --- shutdown -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every client and the listener, remove the socket file if it is still ours."""
        for client in list(self.clients.values()):
            self._drop(client)
        if self.listener is not None:
            self.loop.unwatch(self.listener)
            self.listener.close()
            self.listener = None
            unlink_if_ours(self.path, self._inode)


__all__ = ["ControlServer"]
