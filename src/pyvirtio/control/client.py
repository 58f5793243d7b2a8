"""The control socket's client: one connection, one request at a time (``pyvirtio ctl``, ``top``).

:meth:`ControlClient.call` sends a request and returns the reply's ``result``, or raises
:class:`~.protocol.ControlError` with the reply's error type and message.  A socket that is not
there, refuses the connection, or hangs up raises :class:`ControlUnavailable`.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Mapping

from ..errors import TransportError
from .protocol import ControlError, encode_request

DEFAULT_TIMEOUT = 30.0


class ControlUnavailable(TransportError):
    """The control socket is not there, refused the connection, or went away."""


class ControlClient:
    def __init__(self, path: str, *, timeout: float = DEFAULT_TIMEOUT):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except FileNotFoundError:
            self.sock.close()
            raise ControlUnavailable(f"{path}: no such control socket") from None
        except ConnectionRefusedError:
            self.sock.close()
            raise ControlUnavailable(f"{path}: connection refused (is the daemon running?)") from None
        except OSError as exc:
            self.sock.close()
            raise ControlUnavailable(f"{path}: {exc.strerror or exc}") from None
        self._buf = bytearray()
        self._next_id = 1

    def request(self, cmd: str, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send one request; the whole reply object (ok or not)."""
        rid = self._next_id
        self._next_id += 1
        try:
            self.sock.sendall(encode_request(cmd, args, rid))
            line = self._line()
        except socket.timeout:
            raise ControlUnavailable(f"{self.path}: no reply within {self.sock.gettimeout():.0f} s") from None
        except OSError as exc:
            raise ControlUnavailable(f"{self.path}: {exc.strerror or exc}") from None
        try:
            reply = json.loads(line)
        except ValueError:
            raise ControlUnavailable(f"{self.path}: the daemon's reply is not JSON") from None
        if not isinstance(reply, dict) or "ok" not in reply:
            raise ControlUnavailable(f"{self.path}: the daemon's reply is not a control reply")
        return reply

    def call(self, cmd: str, args: Mapping[str, Any] | None = None) -> Any:
        """Send one request; its result, or :class:`ControlError` for an error reply."""
        reply = self.request(cmd, args)
        if reply["ok"]:
            return reply.get("result")
        error = reply.get("error") or {}
        raise ControlError(str(error.get("type", "failed")), str(error.get("message", "failed")))

    def _line(self) -> bytes:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[:nl + 1]
                return line
            data = self.sock.recv(65536)
            if not data:
                raise ControlUnavailable(f"{self.path}: the daemon hung up")
            self._buf += data

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ControlClient", "ControlUnavailable", "DEFAULT_TIMEOUT"]
