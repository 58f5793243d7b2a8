"""A console port as a blocking byte stream, and the small records the console driver hands out.

:class:`ConsolePort` is what :meth:`~.console.ConsoleDriver.open_port` returns; every wait goes
through the driver's ``_until`` (service the queues, try, sleep until an interrupt), so a port is
safe to use from any thread.  :meth:`ConsolePort.aio` gives the asyncio flavour.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import Scope, VirtioError
from ..spec import console as spec

if TYPE_CHECKING:
    from .console import ConsoleDriver
    from .console_aio import AsyncConsolePort


class PortClosed(VirtioError):
    """The port was closed by this side, or unplugged by the device."""

    scope = Scope.REQUEST


@dataclass(frozen=True)
class PortEvent:
    """Something happened to a port: ``kind`` is add, remove, name, console, open (``value``:
    whether the host side is connected) or resize (``value``: (cols, rows))."""

    kind: str
    port_id: int
    name: str | None = None
    value: Any = None


@dataclass(eq=False)
class PortState:
    """The driver's view of one port."""

    id: int
    name: str | None = None
    console: bool = False
    host_connected: bool = False
    guest_open: bool = False
    removed: bool = False
    size: tuple[int, int] | None = None
    inbox: deque = field(default_factory=deque)  # [Pending, bytes consumed] of used rx buffers
    handle: "ConsolePort" | None = None


class ConsolePort:
    """One open port as a blocking byte stream."""

    def __init__(self, driver: ConsoleDriver, state: PortState):
        self._driver, self.state = driver, state
        self.closed = False

    id = property(lambda self: self.state.id, doc="The port's id (0 is the console).")
    name = property(lambda self: self.state.name, doc="The port's name, as the device announced it.")
    is_console = property(lambda self: self.state.console, doc="Whether the port is a console port.")
    host_connected = property(lambda self: self.state.host_connected,
                              doc="Whether a program on the host side has the port open.")
    size = property(lambda self: self.state.size, doc="The console's size (columns, rows), if known.")

    def __repr__(self) -> str:
        return f"<ConsolePort {self.id} {self.name!r}{' closed' if self.closed else ''}>"

    def _check(self) -> PortState:
        if self.closed:
            raise PortClosed(f"port {self.id} is closed")
        return self.state

    def read(self, n: int = 65536, timeout: float | None = None) -> bytes:
        """At least one byte (at most ``n``), waiting for it; b"" when the host side is closed
        or the port was unplugged and nothing is left.  TimeoutError after ``timeout``."""
        st = self._check()
        drv = self._driver
        return drv._until(lambda: drv._take(st, n) if drv._readable(st) else None, timeout)

    def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until a host program is attached to the port (PORT_OPEN 1 from the device)."""
        st = self._check()
        self._driver._until(lambda: True if st.host_connected or st.removed else None, timeout)
        if st.removed:
            raise PortClosed(f"port {st.id} was unplugged")

    def read_nowait(self, n: int = 65536) -> bytes | None:
        """What is there now (up to ``n``); None if nothing yet, b"" at end of stream."""
        try:
            return self.read(n, timeout=0)
        except TimeoutError:
            return None

    def read_exactly(self, n: int, timeout: float | None = None) -> bytes:
        """Exactly ``n`` bytes from the port, waiting up to ``timeout`` seconds in all (None: for
        ever); :class:`PortClosed` when the port closes first."""
        out = bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(out) < n:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            chunk = self.read(n - len(out), left)
            if not chunk:
                raise EOFError(f"port {self.id}: end of stream after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    def write_some(self, data, timeout: float | None = 0) -> int:
        """Queue what fits (waiting up to ``timeout`` for room or a host peer); returns the
        bytes queued, 0 if none."""
        st = self._check()
        drv, view = self._driver, memoryview(data).cast("B")

        def attempt():
            if st.removed:
                raise PortClosed(f"port {st.id} was unplugged")
            if not view or not drv._writable(st):
                return None if view else 0
            return drv._send(st, view) or None
        try:
            return self._driver._until(attempt, timeout)
        except TimeoutError:
            return 0

    def write(self, data, timeout: float | None = None) -> int:
        """Queue all of ``data`` (waits while the ring is full or no host peer is connected)."""
        view = memoryview(data).cast("B")
        deadline = None if timeout is None else time.monotonic() + timeout
        sent = 0
        while sent < len(view):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"port {self.id}: {sent} of {len(view)} bytes written in {timeout}s")
            sent += self.write_some(view[sent:], left)
        return sent

    def drain(self, timeout: float | None = None) -> None:
        """Wait until the device has taken every byte written so far."""
        index = spec.transmitq_index(self._check().id)
        self._driver._until(lambda: True if index not in self._driver._tx_inflight else None, timeout)

    def close(self) -> None:
        """Close (PORT_OPEN 0); unread data is dropped.  Console ports stay open underneath."""
        if not self.closed:
            self.closed = True
            with self._driver._lock:
                self._driver._close(self.state)

    def aio(self) -> "AsyncConsolePort":
        """The same port for asyncio code: ``await port.read(n)``, ``await port.write(data)``."""
        from .console_aio import AsyncConsolePort
        return AsyncConsolePort(self)

    def __enter__(self) -> "ConsolePort":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
