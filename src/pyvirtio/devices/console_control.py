"""The control queues of the console device (VIRTIO 1.3, 5.3.6.2), as a mixin of ConsoleDevice.

Everything here runs with the device lock held, from :class:`~.console.ConsoleDevice`'s entry
points.  Messages the driver sends (DEVICE_READY, PORT_READY, PORT_OPEN) are parsed with bounds
checks and dispatched through a table; anything else — a truncated message, an unknown or
device-only event, a port out of range or never added — raises :class:`ConsoleControlError`,
which the queue loop logs and counts before it goes on with the next message.  Messages to the
driver wait in a bounded queue until the driver posts control receive buffers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import DriverFault, Scope
from ..memory import GuestMemory
from ..spec import console as spec

if TYPE_CHECKING:
    from .console import DevicePort

log = logging.getLogger("pyvirtio.devices.console")

_E = spec.ConsoleEvent
_CTRL = spec.CONSOLE_CONTROL
#: The most a control message from the driver can usefully carry (header only is defined).
MAX_CONTROL_IN = 64


class ConsoleControlError(DriverFault):
    """A control message from the driver that breaks 5.3.6.2; it is dropped, the device goes on."""

    scope = Scope.REQUEST


class ControlQueues:
    """The control receiveq/transmitq half of :class:`~.console.ConsoleDevice`."""

    # --- control messages from the driver (5.3.6.2) ---------------------------------------------

    def _handle_control_tx(self, mem: GuestMemory) -> None:
        queue = self._usable(spec.CONTROL_TRANSMITQ)
        if queue is None:
            return
        handled = False
        while (chain := self._pop(mem, queue)) is not None:
            try:
                self._control(mem, chain.read(0, min(chain.readable_len, MAX_CONTROL_IN)))
            except ConsoleControlError as exc:
                self._control_fault(exc)
            self._used(mem, queue, chain, 0)
            handled = True
        if handled:
            self._signal(mem, queue)

    def _control(self, mem: GuestMemory, data: bytes) -> None:
        msg = parse_control(data)
        handler = _DRIVER_EVENTS.get(msg.event)
        if handler is None:
            raise ConsoleControlError(f"control event {msg.event} is not one the driver sends")
        handler(self, mem, msg)

    def _control_fault(self, exc: ConsoleControlError) -> None:
        self.stats["control_errors"] += 1
        self.control_faults.append(str(exc))
        log.warning("console: bad control message dropped: %s", exc)

    def _port_for(self, msg: spec.ConsoleControl) -> "DevicePort":
        if msg.id >= self.max_nr_ports:
            raise ConsoleControlError(f"port id {msg.id} is not below max_nr_ports {self.max_nr_ports}")
        port = self.ports.get(msg.id)
        if port is None or not port.announced:
            raise ConsoleControlError(f"event {msg.event} for port {msg.id}, which was never added")
        return port

    def _on_device_ready(self, mem: GuestMemory, msg: spec.ConsoleControl) -> None:
        if msg.value != 1:
            log.warning("console: the driver failed to set up (DEVICE_READY %d)", msg.value)
            return
        if self.device_ready:
            raise ConsoleControlError("DEVICE_READY sent twice")
        self.device_ready = True
        for pid in sorted(self.ports):
            self._announce(self.ports[pid])

    def _on_port_ready(self, mem: GuestMemory, msg: spec.ConsoleControl) -> None:
        port = self._port_for(msg)
        if msg.value != 1:
            log.warning("console: the driver could not add port %d", port.id)
            port.ready = False
            return
        port.ready = True
        if port.console:
            self._send(port.id, _E.CONSOLE_PORT, 1)
        if port.name:
            self._send(port.id, _E.PORT_NAME, 0, port.name.encode())
        port.host_open = False
        self._sync_host_open(port)

    def _on_port_open(self, mem: GuestMemory, msg: spec.ConsoleControl) -> None:
        port = self._port_for(msg)
        if msg.value not in (0, 1):
            raise ConsoleControlError(f"PORT_OPEN value {msg.value} for port {port.id} is not 0 or 1")
        port.guest_open = bool(msg.value)
        if port.guest_open:
            self._service(mem, port.id)

    # --- control messages to the driver ---------------------------------------------------------

    def _announce(self, port: "DevicePort") -> None:
        if self.multiport:
            port.announced = True
            self._send(port.id, _E.DEVICE_ADD)

    def _sync_host_open(self, port: "DevicePort") -> None:
        connected = port.endpoint.connected
        if port.ready and self.multiport and connected != port.host_open:
            port.host_open = connected
            self._send(port.id, _E.PORT_OPEN, int(connected))

    def _send(self, pid: int, event: int, value: int = 0, payload: bytes = b"") -> None:
        if len(self._ctrl_out) >= 4 * self.max_nr_ports + 64:
            self.stats["control_dropped"] += 1  # a driver that posts no control buffers
            log.warning("console: control queue to the driver is full; event %d dropped", event)
            return
        self._ctrl_out.append(_CTRL.pack(pid, event, value) + payload)

    def _flush_control(self, mem: GuestMemory) -> None:
        if not self._ctrl_out or not self.multiport:
            return
        queue = self._usable(spec.CONTROL_RECEIVEQ)
        if queue is None:
            return
        sent = False
        while self._ctrl_out and (chain := self._pop(mem, queue)) is not None:
            msg = self._ctrl_out.popleft()
            if chain.writable_len < len(msg):
                log.warning("console: control buffer of %d bytes is too small for %d; truncated",
                            chain.writable_len, len(msg))
                msg = msg[:chain.writable_len]
            self._used(mem, queue, chain, chain.write(msg))
            sent = True
        if sent:
            self._signal(mem, queue)


def parse_control(data: bytes) -> spec.ConsoleControl:
    """A control message's header (5.3.6.2); raises ConsoleControlError when it is truncated."""
    if len(data) < spec.CONSOLE_CONTROL_SIZE:
        raise ConsoleControlError(f"control message of {len(data)} bytes is shorter than "
                                  f"{spec.CONSOLE_CONTROL_SIZE}")
    return spec.ConsoleControl(*_CTRL.unpack_from(data))


_DRIVER_EVENTS = {
    _E.DEVICE_READY: ControlQueues._on_device_ready,
    _E.PORT_READY: ControlQueues._on_port_ready,
    _E.PORT_OPEN: ControlQueues._on_port_open,
}
