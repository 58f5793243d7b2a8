"""virtio-msg: Linaro's message-based virtio transport draft, device side and driver side.

* :mod:`.protocol` — messages as bytes and back, validation, typed errors (sans-I/O);
* :mod:`.device` — one VirtioDevice behind transport messages (sans-I/O);
* :mod:`.bus` — the device directory (numbers, claims, hot-plug) and one session per driver;
* :mod:`.channel` — the bus bindings: a UNIX stream socket (memfds by SCM_RIGHTS) and an
  in-process queue pair;
* :mod:`.server` — the device side's I/O shell; :mod:`.client` — the driver side's bus;
* :mod:`.transport` — :class:`VirtioMsgTransport`, a DriverTransport every driver runs on;
* :mod:`.local` — a device and a transport to it in one process.

The draft followed, and every place where it was unclear, are in ``docs/virtio-msg.md``.
"""

from .bus import BusSession, DeviceBus
from .client import BusClient
from .protocol import BusTimeout, ClaimFailed, MalformedMessage, Message, RequestFailed
from .server import BusServer
from .transport import VirtioMsgTransport, open_device, open_transport

__all__ = ["BusClient", "BusServer", "BusSession", "BusTimeout", "ClaimFailed", "DeviceBus",
           "MalformedMessage", "Message", "RequestFailed", "VirtioMsgTransport", "open_device", "open_transport"]
