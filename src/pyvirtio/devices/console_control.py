"""The control queues of the console device (VIRTIO 1.3, 5.3.6.2).

:class:`ControlQueues` is the part of a :class:`~.console.ConsoleDevice` that speaks the control
protocol; the device owns one and calls it from its turns (the engine's worker, see
:mod:`pyvirtio.engine`).  Messages the driver sends (DEVICE_READY, PORT_READY, PORT_OPEN) are
parsed with bounds checks and dispatched through a table; anything else — a truncated message,
an unknown or device-only event, a port out of range or never added — raises
:class:`ConsoleControlError`, which :meth:`ControlQueues.receive` logs and counts before it goes
on with the next message.  Messages to the driver wait in a bounded :attr:`ControlQueues.outbox`
until the driver posts control receive buffers.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Callable

from ..errors import DriverFault, Scope
from ..memory import GuestMemory
from ..spec import console as spec

if TYPE_CHECKING:
    from .console import ConsoleDevice, DevicePort


_E = spec.ConsoleEvent
_CTRL = spec.CONSOLE_CONTROL
#: The most a control message from the driver can usefully carry (header only is defined).
MAX_CONTROL_IN = 64
#: How many bad control messages are remembered (their text) for inspection.
MAX_FAULTS_KEPT = 32


class ConsoleControlError(DriverFault):
    """A control message from the driver that breaks 5.3.6.2; it is dropped, the device goes on."""

    scope = Scope.REQUEST


class ControlQueues:
    """The control receiveq/transmitq of one console device."""

    def __init__(self, device: ConsoleDevice):
        self.device = device
        self.outbox: deque[bytes] = deque()
        #: The last bad control messages from the driver (what was wrong with each).
        self.faults: deque[str] = deque(maxlen=MAX_FAULTS_KEPT)
        self._handlers: dict[int, Callable[[GuestMemory, spec.ConsoleControl], None]] = {
            _E.DEVICE_READY: self._on_device_ready,
            _E.PORT_READY: self._on_port_ready,
            _E.PORT_OPEN: self._on_port_open,
        }

    @property
    def limit(self) -> int:
        """Messages kept for a driver that posts no control buffers; more are dropped."""
        return 4 * self.device.max_nr_ports + 64

    def reset(self) -> None:
        self.outbox.clear()

    # --- control messages from the driver (5.3.6.2) ---------------------------------------------

    def receive(self, mem: GuestMemory) -> None:
        """The driver kicked the control transmitq: handle every message in it."""
        dev = self.device
        queue = dev.usable(spec.CONTROL_TRANSMITQ)
        if queue is None:
            return
        handled = False
        while (chain := dev.pop(mem, queue)) is not None:
            try:
                self.handle(mem, chain.read(0, min(chain.readable_len, MAX_CONTROL_IN)))
            except ConsoleControlError as exc:
                self._fault(exc)
            queue.add_used(mem, chain.head_index, 0)
            handled = True
        if handled:
            dev.signal(mem, queue)

    def handle(self, mem: GuestMemory, data: bytes) -> None:
        """One message from the driver (raises ConsoleControlError when it breaks 5.3.6.2)."""
        msg = parse_control(data)
        handler = self._handlers.get(msg.event)
        if handler is None:
            raise ConsoleControlError(f"control event {msg.event} is not one the driver sends")
        handler(mem, msg)

    def _fault(self, exc: ConsoleControlError) -> None:
        self.device.stats["control_errors"] += 1
        self.faults.append(str(exc))
        self.device.guest_log.warning("console: bad control message dropped: %s", exc)

    def _port_for(self, msg: spec.ConsoleControl) -> DevicePort:
        dev = self.device
        if msg.id >= dev.max_nr_ports:
            raise ConsoleControlError(f"port id {msg.id} is not below max_nr_ports {dev.max_nr_ports}")
        port = dev.ports.get(msg.id)
        if port is None or not port.announced:
            raise ConsoleControlError(f"event {msg.event} for port {msg.id}, which was never added")
        return port

    def _on_device_ready(self, mem: GuestMemory, msg: spec.ConsoleControl) -> None:
        dev = self.device
        if msg.value != 1:
            self.device.guest_log.warning("console: the driver failed to set up (DEVICE_READY %d)", msg.value)
            return
        if dev.device_ready:
            raise ConsoleControlError("DEVICE_READY sent twice")
        dev.device_ready = True
        for pid in sorted(dev.ports):
            self.announce(dev.ports[pid])

    def _on_port_ready(self, mem: GuestMemory, msg: spec.ConsoleControl) -> None:
        port = self._port_for(msg)
        if msg.value != 1:
            self.device.guest_log.warning("console: the driver could not add port %d", port.id)
            port.ready = False
            return
        port.ready = True
        if port.console:
            self.send(port.id, _E.CONSOLE_PORT, 1)
        if port.name:
            self.send(port.id, _E.PORT_NAME, 0, port.name.encode())
        port.host_open = False
        self.sync_host_open(port)

    def _on_port_open(self, mem: GuestMemory, msg: spec.ConsoleControl) -> None:
        port = self._port_for(msg)
        if msg.value not in (0, 1):
            raise ConsoleControlError(f"PORT_OPEN value {msg.value} for port {port.id} is not 0 or 1")
        port.guest_open = bool(msg.value)
        if port.guest_open:
            self.device.service(mem, port.id)

    # --- control messages to the driver ---------------------------------------------------------

    def announce(self, port: DevicePort) -> None:
        if self.device.multiport:
            port.announced = True
            self.send(port.id, _E.DEVICE_ADD)

    def sync_host_open(self, port: DevicePort) -> None:
        """Tell the driver when the port's host side connected or hung up (PORT_OPEN)."""
        connected = port.endpoint.connected
        if port.ready and self.device.multiport and connected != port.host_open:
            port.host_open = connected
            self.send(port.id, _E.PORT_OPEN, int(connected))

    def send(self, pid: int, event: int, value: int = 0, payload: bytes = b"") -> None:
        if len(self.outbox) >= self.limit:
            self.device.stats["control_dropped"] += 1  # a driver that posts no control buffers
            self.device.guest_log.warning("console: control queue to the driver is full; event %d dropped", event)
            return
        self.outbox.append(_CTRL.pack(pid, event, value) + payload)

    def flush(self, mem: GuestMemory) -> None:
        """Move waiting messages into the control receive buffers the driver posted."""
        dev = self.device
        if not self.outbox or not dev.multiport:
            return
        queue = dev.usable(spec.CONTROL_RECEIVEQ)
        if queue is None:
            return
        sent = False
        while self.outbox and (chain := dev.pop(mem, queue)) is not None:
            msg = self.outbox.popleft()
            if chain.writable_len < len(msg):
                self.device.guest_log.warning("console: control buffer of %d bytes is too small for %d; truncated",
                            chain.writable_len, len(msg))
                msg = msg[:chain.writable_len]
            queue.add_used(mem, chain.head_index, chain.write(msg))
            sent = True
        if sent:
            dev.signal(mem, queue)


def parse_control(data: bytes) -> spec.ConsoleControl:
    """A control message's header (5.3.6.2); raises ConsoleControlError when it is truncated."""
    if len(data) < spec.CONSOLE_CONTROL_SIZE:
        raise ConsoleControlError(f"control message of {len(data)} bytes is shorter than "
                                  f"{spec.CONSOLE_CONTROL_SIZE}")
    return spec.ConsoleControl(*_CTRL.unpack_from(data))
