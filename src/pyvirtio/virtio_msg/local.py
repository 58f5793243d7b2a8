"""One device behind a virtio-msg bus in this process, and a driver-side transport to it.

:func:`device_transport` is what the transport matrix, the benchmarks and ``pyvirtio demo``-style
callers need: a :class:`~.server.BusServer` with ``device`` on it, served on a UNIX socket
(``binding="socket"``: the socket binding, memory shared by memfd) or on an in-process queue pair
(``binding="queue"``), and a :class:`~.transport.VirtioMsgTransport` that claimed it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from ..device import VirtioDevice
from ..errors import UsageError
from .client import DEFAULT_MEMORY, BusClient
from .server import BusServer
from .transport import VirtioMsgTransport, open_device

BINDINGS = ("socket", "queue")


@contextlib.contextmanager
def device_transport(device: VirtioDevice, binding: str = "socket", socket_path: str | None = None, *,
                     memory_size: int = DEFAULT_MEMORY, split_only: bool = False) -> Iterator[VirtioMsgTransport]:
    """Serve ``device`` on a fresh bus and yield a transport that claimed it; on exit the
    transport hangs up and the bus stops (the device stays the caller's to close)."""
    if binding not in BINDINGS:
        raise UsageError(f"binding {binding!r}: one of {', '.join(BINDINGS)}")
    server = BusServer()
    try:
        server.bus.add(device)
        if binding == "socket":
            if socket_path is None:
                raise UsageError("the socket binding needs a socket_path")
            server.listen(socket_path)
            client = BusClient.connect(socket_path, memory_size=memory_size)
        else:
            client = BusClient(server.connect_in_process(), memory_size=memory_size, name="virtio-msg:queue")
        try:
            t = open_device(client, int(device.device_type), owns_client=True, split_only=split_only)
        except BaseException:
            client.close()
            raise
        try:
            yield t
        finally:
            t.close()
    finally:
        server.close()


class InProcessBusTransport(VirtioMsgTransport):
    """``LoopbackTransport(device, memory_size=...)``'s shape over virtio-msg: ``device`` alone
    on a bus of its own in this process (the queue binding, or the socket binding with
    ``socket_path``), claimed by this transport; :meth:`close` also stops the bus.  Kicks are
    synchronous by default (``sync_kicks``: served when notify() returns, as loopback's are)."""

    def __init__(self, device: VirtioDevice, memory_size: int = DEFAULT_MEMORY, *,
                 socket_path: str | None = None, split_only: bool = False, sync_kicks: bool = True):
        self.server = BusServer()
        self.device = device
        try:
            self.server.bus.add(device)
            if socket_path is not None:
                self.server.listen(socket_path)
                client = BusClient.connect(socket_path, memory_size=memory_size)
            else:
                client = BusClient(self.server.connect_in_process(), memory_size=memory_size,
                                   name="virtio-msg:queue")
            try:
                super().__init__(client, client.claim(int(device.device_type)), owns_client=True,
                                 split_only=split_only, sync_kicks=sync_kicks)
            except BaseException:
                client.close()
                raise
        except BaseException:
            self.server.close()
            raise

    def close(self) -> None:
        super().close()
        self.server.close()


__all__ = ["BINDINGS", "InProcessBusTransport", "device_transport"]
