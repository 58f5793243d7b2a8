"""The asyncio flavour of console ports: the same driver core, its waits run in a worker thread.

Each wait is cut into short slices so a cancelled task stops waiting within ``slice_time``; a
slice that times out has moved no bytes, so retrying it is safe.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: console_port imports this module when asked for .aio()
    from .console import ConsoleDriver, ConsolePort

SLICE_TIME = 0.25


class AsyncConsolePort:
    """``await port.read(n)``, ``await port.write(data)`` over a :class:`ConsolePort`."""

    def __init__(self, port: ConsolePort, slice_time: float = SLICE_TIME):
        self.port = port
        self.slice_time = slice_time

    @classmethod
    async def open(cls, driver: ConsoleDriver, name: str | None = None, *,
                   port_id: int | None = None, timeout: float | None = 5.0) -> "AsyncConsolePort":
        """Open the port called ``name`` (or numbered ``port_id``) of ``driver``, waiting up to
        ``timeout`` seconds for the device to announce it."""
        port = await asyncio.to_thread(driver.open_port, name, port_id=port_id, timeout=timeout)
        return cls(port)

    async def read(self, n: int = 65536) -> bytes:
        """At least one byte; b"" at end of stream."""
        while True:
            try:
                return await asyncio.to_thread(self.port.read, n, self.slice_time)
            except TimeoutError:
                continue

    async def read_exactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes from the port; :class:`~pyvirtio.drivers.console_port.PortClosed`
        when it closes first."""
        out = bytearray()
        while len(out) < n:
            chunk = await self.read(n - len(out))
            if not chunk:
                raise EOFError(f"port {self.port.id}: end of stream after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    async def write(self, data) -> int:
        """Send ``data`` on the port (queued; :meth:`drain` waits until the device took it)."""
        view = memoryview(data).cast("B")
        sent = 0
        while sent < len(view):
            sent += await asyncio.to_thread(self.port.write_some, view[sent:], self.slice_time)
        return sent

    async def drain(self) -> None:
        """Wait until the device has taken everything written."""
        while True:
            try:
                return await asyncio.to_thread(self.port.drain, self.slice_time)
            except TimeoutError:
                continue

    async def close(self) -> None:
        """Close the port (PORT_OPEN 0)."""
        await asyncio.to_thread(self.port.close)

    async def __aenter__(self) -> "AsyncConsolePort":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
