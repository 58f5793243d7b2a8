"""The I/O shell around :mod:`.protocol`: one connected qtest socket, requests and replies.

Requests are serialised by a lock; asynchronous ``IRQ raise/lower`` lines that arrive before a
reply (or while idle, see :meth:`QtestClient.wait_async`) update :attr:`QtestClient.irq_levels`
and bump :attr:`QtestClient.irq_epoch`.  Batches of writes are pipelined (sent together, replies
read after), which keeps publishing a ring to QEMU cheap.
"""

from __future__ import annotations

import base64
import select
import socket
import threading
from typing import Iterable

from ..errors import PeerDisconnected, TransportError
from . import protocol as p

#: Requests sent before their replies are read, at most (replies to writes are 3 bytes each).
PIPELINE_DEPTH = 512


class QtestError(TransportError):
    """QEMU answered FAIL, or the qtest connection broke."""


class QtestClient:
    def __init__(self, sock: socket.socket, timeout: float = 30.0):
        self.sock = sock
        self.timeout = timeout
        self._parser = p.QtestParser()
        self._pending: list[p.Reply] = []  # IRQ events are absorbed, not queued
        self._lock = threading.RLock()
        self.irq_levels: dict[int, bool] = {}
        self.irq_epoch = 0
        self.requests = 0

    # --- the protocol shell ---------------------------------------------------------------------

    def _absorb(self, events: Iterable[p.Event]) -> None:
        for ev in events:
            if isinstance(ev, p.IrqEvent):
                self.irq_levels[ev.line] = ev.raised
                self.irq_epoch += 1
            else:
                self._pending.append(ev)

    def _receive(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return False
        try:
            data = self.sock.recv(1 << 20)
        except OSError as exc:
            raise QtestError(f"qtest socket: {exc}") from exc
        if not data:
            raise PeerDisconnected("QEMU closed the qtest connection")
        self._absorb(self._parser.feed(data))
        return True

    def _next_reply(self) -> p.Reply:
        while not self._pending:
            if not self._receive(self.timeout):
                raise QtestError(f"no qtest reply within {self.timeout}s")
        return self._pending.pop(0)

    def pipeline(self, lines: list[str]) -> list[p.Reply]:
        """Send ``lines`` in batches, return their replies in order; FAIL raises QtestError."""
        replies = []
        with self._lock:
            for start in range(0, len(lines), PIPELINE_DEPTH):
                batch = lines[start:start + PIPELINE_DEPTH]
                try:
                    self.sock.sendall("".join(line + "\n" for line in batch).encode("ascii"))
                except OSError as exc:
                    raise QtestError(f"qtest socket: {exc}") from exc
                self.requests += len(batch)
                for line in batch:
                    reply = self._next_reply()
                    if not reply.ok:
                        raise QtestError(f"qtest {line.split()[0]} failed: {' '.join(reply.words)}")
                    replies.append(reply)
        return replies

    def request(self, line: str) -> p.Reply:
        return self.pipeline([line])[0]

    def wait_async(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for asynchronous lines while no request is outstanding."""
        with self._lock:
            epoch = self.irq_epoch
            self._receive(timeout)
            return self.irq_epoch != epoch

    # --- accesses -------------------------------------------------------------------------------

    def mem_read(self, addr: int, size: int) -> int:
        return self.request(p.mem_read(addr, size)).value

    def mem_write(self, addr: int, size: int, value: int) -> None:
        self.request(p.mem_write(addr, size, value))

    def port_in(self, port: int, size: int) -> int:
        return self.request(p.port_in(port, size)).value

    def port_out(self, port: int, size: int, value: int) -> None:
        self.request(p.port_out(port, size, value))

    def read_bytes(self, addr: int, length: int) -> bytes:
        reply = self.request(p.b64read(addr, length))
        data = base64.b64decode(reply.words[0]) if reply.words else b""
        if len(data) != length:
            raise QtestError(f"b64read of {length} bytes returned {len(data)}")
        return data

    def write_commands(self, addr: int, data: bytes) -> str:
        return p.b64write(addr, base64.b64encode(data).decode("ascii"), len(data))

    def write_bytes(self, addr: int, data: bytes) -> None:
        if data:
            self.request(self.write_commands(addr, data))

    def irq_intercept_in(self, qom_path: str) -> None:
        self.request(f"irq_intercept_in {qom_path}")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
