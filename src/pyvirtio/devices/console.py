"""Console device (VIRTIO 1.3, 5.3): port 0 as the console, more ports with MULTIPORT.

Each port is bridged to a :class:`~pyvirtio.devices.console_endpoints.HostEndpoint`.  The core is
sans-I/O and never blocks: the transport calls :meth:`ConsoleDevice.queue_notify` (or
:meth:`process_queue`) when the guest kicks, and the host's I/O shell calls
:meth:`ConsoleDevice.service_port` when an endpoint is readable or writable (the shell learns
which fds to watch from :meth:`ConsoleDevice.host_interest`, and is told to look again through
:attr:`ConsoleDevice.wakeup`).  Every entry point takes ``self.lock`` while it touches queues and
fires interrupts after letting go of it.

Flow control through the rings, with no buffer of our own in between:

* guest → host: a transmit chain is popped only when the one before it has gone to the endpoint
  in full; a chain the endpoint took part of stays popped (``held``) and is completed as the
  endpoint drains.  A slow host leaves the guest's data in the guest's ring.
* host → guest: the endpoint reads straight into a popped receive chain; with no chain posted the
  device stops reading and the bytes wait in the endpoint (the socket's buffer, the pty).

Control messages (5.3.6.2) live in ``console_control.py``: a bad one from the driver (too short,
unknown event, a port out of range or never added) raises :class:`ConsoleControlError`, which is
logged and counted while the device keeps serving every port.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from ..device import VirtioDevice
from ..errors import DriverFault, GuestMemoryError, QueueBroken, UsageError
from ..interrupt import Interrupt
from ..memory import GuestMemory
from ..spec import console as spec
from ..spec.ids import DeviceType
from ..spec.status import DeviceStatus
from ..virtq import DescriptorChain, SplitDeviceQueue
from .console_control import ConsoleControlError, ControlQueues, parse_control
from .console_endpoints import HostEndpoint, NullEndpoint

log = logging.getLogger(__name__)

_F = spec.ConsoleFeature
_E = spec.ConsoleEvent
#: Port names are short tags ("org.qemu.guest_agent.0"); Linux reads them from one page.
MAX_NAME_BYTES = 1024
#: Emergency-write bytes kept while port 0's endpoint is full; more are dropped (and counted).
EMERG_BUFFER = 4096
#: Most queues a console may have: 2 + 2 * max_nr_ports stays under vhost-user/PCI limits.
MAX_PORTS_LIMIT = 511


@dataclass
class DevicePort:
    """One port as the device sees it."""

    id: int
    endpoint: HostEndpoint
    name: Optional[str] = None
    console: bool = False
    size: tuple[int, int] = (0, 0)  # (cols, rows) for RESIZE messages (ports >= 1)
    announced: bool = False  # DEVICE_ADD sent
    ready: bool = False  # the driver answered PORT_READY 1
    guest_open: bool = False  # the driver's last PORT_OPEN value
    host_open: bool = False  # the last PORT_OPEN value we sent
    emerg: bytearray = field(default_factory=bytearray)
    stats: dict = field(default_factory=lambda: {"rx_bytes": 0, "tx_bytes": 0, "tx_dropped": 0,
                                                 "emerg_dropped": 0})


@dataclass
class PortSpec:
    """A port to create with the device (see :meth:`ConsoleDevice.add_port`)."""

    endpoint: HostEndpoint
    name: Optional[str] = None
    port_id: Optional[int] = None
    console: bool = False


def port_of_queue(index: int) -> tuple[int, bool]:
    """(port id, is transmitq) of a data queue index (5.3.2); control queues are not data queues."""
    if index < 2:
        return 0, index == 1
    return (index - 2) // 2, bool(index & 1)


class ConsoleDevice(ControlQueues, VirtioDevice):
    """A virtio console with up to ``max_nr_ports`` ports, each bridged to a host endpoint."""

    device_type = DeviceType.CONSOLE

    def __init__(self, console: Optional[HostEndpoint] = None, ports: Iterable[PortSpec] = (), *,
                 max_nr_ports: int = 31, multiport: bool = True, size: tuple[int, int] = (80, 25),
                 emerg_write: bool = True, queue_max_size: int = 256):
        if not 1 <= max_nr_ports <= MAX_PORTS_LIMIT:
            raise UsageError(f"max_nr_ports {max_nr_ports} is not in 1..{MAX_PORTS_LIMIT}")
        self.max_nr_ports = max_nr_ports if multiport else 1
        self.num_queues = 2 * self.max_nr_ports + 2 if multiport else 2
        self.queue_max_size = queue_max_size
        self.device_specific_features = ((1 << _F.SIZE) | (multiport << _F.MULTIPORT)
                                         | (emerg_write << _F.EMERG_WRITE))
        super().__init__()
        self.lock = threading.RLock()  # TODO(engine): goes when this device runs on one group worker
        self.cols, self.rows = size
        self.ports: dict[int, DevicePort] = {}
        self.multiport = False  # negotiated
        self.device_ready = False  # the driver sent DEVICE_READY 1
        self._ctrl_out: deque[bytes] = deque()
        self._rx_held: dict[int, DescriptorChain] = {}  # rx queue -> popped, unfilled chain
        self._tx_held: dict[int, list] = {}  # tx queue -> [chain, bytes already written]
        self._irq: set[int] = set()
        self.stats = {"control_errors": 0, "control_dropped": 0}
        self.control_faults: deque[str] = deque(maxlen=32)
        #: The I/O shell sets this: "registrations may have changed, look again" (any thread).
        self.wakeup: Callable[[], None] = lambda: None
        #: The transport may veto touching a queue it has stopped (vhost-user ring enable).
        self.queue_gate: Callable[[int], bool] = lambda index: True
        #: vhost-user keeps the status apart (no DRIVER_OK here): its glue clears this flag and
        #: lets :attr:`queue_gate` decide.
        self.requires_driver_ok = True
        #: Interrupts for queues other than the one being served wait for :meth:`fire_deferred`
        #: (called by the host loop, a thread that holds no ring lock of the transport).
        self.defer_interrupts = False
        self._deferred: set[int] = set()
        if console is not None:
            self.add_port(console, port_id=0, console=True)
        for p in ports:
            self.add_port(p.endpoint, p.name, port_id=p.port_id, console=p.console)

    # --- config space (5.3.4) -------------------------------------------------------------------

    def config_bytes(self) -> bytes:
        return spec.CONSOLE_CONFIG.pack(self.cols, self.rows, self.max_nr_ports, 0)

    def write_config(self, offset: int, data: bytes) -> None:
        """Only emerg_wr is writable: its low byte goes out on port 0 (5.3.5.1), at any time."""
        at = spec.ConsoleConfigOffset.EMERG_WR - offset
        if self.device_features & (1 << _F.EMERG_WRITE) and 0 <= at < len(data):
            self.emergency_write(data[at])

    def emergency_write(self, byte: int) -> None:
        with self.lock:
            port = self.ports.get(0)
            if port is None or not port.endpoint.connected:
                log.info("console emergency write %r with no console attached", chr(byte))
                return
            if len(port.emerg) >= EMERG_BUFFER:
                port.stats["emerg_dropped"] += 1
                return
            port.emerg.append(byte)
            self._flush_emerg(port)
        self.wakeup()

    # --- features, reset ------------------------------------------------------------------------

    def on_features(self, features: int) -> None:
        self.multiport = bool(features & (1 << _F.MULTIPORT))

    def on_reset(self) -> None:
        with self.lock:
            self.multiport = self.device_ready = False
            self._ctrl_out.clear()
            self._rx_held.clear()
            self._tx_held.clear()
            self._irq.clear()
            self._deferred.clear()
            for port in self.ports.values():
                port.announced = port.ready = port.guest_open = port.host_open = False

    def on_driver_ok(self) -> None:
        self.wakeup()

    # --- ports: hot-plug from the host ----------------------------------------------------------

    def add_port(self, endpoint: HostEndpoint, name: Optional[str] = None, *,
                 port_id: Optional[int] = None, console: bool = False,
                 mem: Optional[GuestMemory] = None) -> int:
        """Add a port (at start or while the driver runs); returns its id.  With ``mem`` the
        DEVICE_ADD goes to the guest now, else at the next :meth:`poll`."""
        _check_name(name)
        with self.lock:
            pid = self._free_id() if port_id is None else port_id
            if not 0 <= pid < self.max_nr_ports or pid in self.ports:
                raise UsageError(f"port id {pid} is in use or not below max_nr_ports {self.max_nr_ports}")
            self.ports[pid] = DevicePort(pid, endpoint, name, console or pid == 0)
            if self.device_ready:
                self._announce(self.ports[pid])
        self._after_host_change(mem)
        return pid

    def remove_port(self, port_id: int, *, mem: Optional[GuestMemory] = None,
                    close: bool = True) -> HostEndpoint:
        """Unplug a port: DEVICE_REMOVE to the guest, its held transmit data is returned to the
        guest's ring as consumed; the endpoint is closed unless ``close`` is False."""
        with self.lock:
            port = self.ports.pop(port_id, None)
            if port is None:
                raise UsageError(f"no port {port_id}")
            if port.announced and self.multiport:
                self._send(port_id, _E.DEVICE_REMOVE)
        if close:
            port.endpoint.close()
        self._after_host_change(mem)
        return port.endpoint

    def resize(self, cols: int, rows: int, *, port_id: int = 0, mem: Optional[GuestMemory] = None) -> None:
        """The console got a new size.  Port 0: the config space changes (config interrupt,
        5.3.6 item 3); a ready console port also gets a RESIZE message with MULTIPORT."""
        if not (0 <= cols <= 0xFFFF and 0 <= rows <= 0xFFFF):
            raise UsageError(f"size {cols}x{rows} does not fit le16 fields")
        with self.lock:
            port = self.ports.get(port_id)
            if port is None and port_id != 0:
                raise UsageError(f"no port {port_id}")
            if port_id == 0:
                self.cols, self.rows = cols, rows
            if port is not None:
                port.size = (cols, rows)
                if port.ready and port.console and self.multiport:
                    self._send(port_id, _E.RESIZE, 0, spec.CONSOLE_RESIZE.pack(cols, rows))
        if port_id == 0:
            self.config_changed()
        self._after_host_change(mem)

    def _after_host_change(self, mem: Optional[GuestMemory]) -> None:
        if mem is not None:
            self.poll(mem)
        else:
            self.wakeup()

    def _free_id(self) -> int:
        for pid in range(1, self.max_nr_ports):
            if pid not in self.ports:
                return pid
        raise UsageError(f"all {self.max_nr_ports} ports are in use")

    # --- entry points for transports and the I/O shell ------------------------------------------

    def queue_notify(self, mem: GuestMemory, index: int) -> None:
        """The guest kicked queue ``index``."""
        if not 0 <= index < len(self.queues):
            log.warning("console: notify for queue %d that does not exist", index)
            return
        self._run(mem, lambda: self._on_kick(mem, index))

    def process_queue(self, mem: GuestMemory, queue: SplitDeviceQueue) -> bool:
        """Serve a kick of ``queue`` (vhost-user's entry); returns whether to signal it.
        Interrupts for other queues go out through :attr:`interrupt`."""
        return self._run(mem, lambda: self._on_kick(mem, queue.index), own=queue.index)

    def service_port(self, mem: GuestMemory, port_id: int) -> None:
        """The shell saw port ``port_id``'s endpoint readable, writable, or connectable."""
        self._run(mem, lambda: self._service(mem, port_id))

    def poll(self, mem: GuestMemory) -> None:
        """Make every possible step: control messages out, every port both ways."""
        self._run(mem, lambda: [self._service(mem, pid) for pid in self._live_ids()])

    def _live_ids(self) -> list[int]:
        """Ports, plus removed ports whose transmitq still holds a popped chain."""
        orphans = {port_of_queue(q)[0] for q in self._tx_held}
        return sorted(set(self.ports) | orphans)

    def host_interest(self) -> list[tuple[int, HostEndpoint, bool, bool]]:
        """(port id, endpoint, watch for reading, watch for writing) of every port, derived from
        the state: reading only while the guest has a receive buffer waiting (or to accept)."""
        with self.lock:
            return [(pid, p.endpoint, self._wants_read(p), self._wants_write(p))
                    for pid, p in self.ports.items()]

    def pending_bytes(self, port_id: int) -> int:
        """Guest bytes popped from the port's transmitq that the endpoint has not taken yet
        (they are still in guest memory) plus emergency bytes waiting."""
        with self.lock:
            held = self._tx_held.get(spec.transmitq_index(port_id))
            port = self.ports.get(port_id)
            emerg = len(port.emerg) if port is not None else 0
            return (held[0].readable_len - held[1] if held else 0) + emerg

    def fire_deferred(self) -> None:
        """Send the interrupts that :attr:`defer_interrupts` held back."""
        with self.lock:
            irqs, self._deferred = self._deferred, set()
        for index in sorted(irqs):
            self.interrupt(Interrupt(index))

    def _active(self) -> bool:
        if self.requires_driver_ok:
            return self.driver_ok
        return not self.status & DeviceStatus.DEVICE_NEEDS_RESET

    def _run(self, mem: GuestMemory, step: Callable[[], object], own: Optional[int] = None) -> bool:
        fault = None
        with self.lock:
            if self._active():
                try:
                    step()
                    for port in self.ports.values():
                        self._sync_host_open(port)
                    self._flush_control(mem)
                except (DriverFault, GuestMemoryError, QueueBroken) as exc:
                    fault = exc
            irqs, self._irq = self._irq, set()
            signal_own = own in irqs
            irqs.discard(own)
            if self.defer_interrupts:
                self._deferred |= irqs
                irqs = set()
        if fault is not None and self.requires_driver_ok:
            self.needs_reset(fault)
        for index in sorted(irqs):
            self.interrupt(Interrupt(index))
        self.wakeup()
        if fault is not None and not self.requires_driver_ok:
            log.warning("console: a queue broke: %s", fault)  # the others go on
            if own is not None:
                raise fault  # the transport marks its ring (vhost-user: the err fd)
        return signal_own

    # --- kicks ----------------------------------------------------------------------------------

    def _on_kick(self, mem: GuestMemory, index: int) -> None:
        if index == spec.CONTROL_TRANSMITQ and self.multiport:
            self._handle_control_tx(mem)
        elif index >= spec.CONTROL_RECEIVEQ and not self.multiport:
            log.warning("console: kick on queue %d without MULTIPORT", index)
        elif index != spec.CONTROL_RECEIVEQ:
            pid, tx = port_of_queue(index)
            (self._pump_tx if tx else self._pump_rx)(mem, pid)

    def _service(self, mem: GuestMemory, pid: int) -> None:
        port = self.ports.get(pid)
        if port is None:
            self._pump_tx(mem, pid)  # a removed port: consume what the guest still sends
            return
        if not port.endpoint.connected and port.endpoint.listening:
            self._guard(port, port.endpoint.accept)
        self._pump_tx(mem, pid)
        self._pump_rx(mem, pid)

    def _usable(self, index: int) -> Optional[SplitDeviceQueue]:
        queue = self.queues[index] if index < len(self.queues) else None
        if queue is None or not queue.ready or queue.broken or not self.queue_gate(index):
            return None
        return queue

    def _pop(self, mem: GuestMemory, queue: SplitDeviceQueue) -> Optional[DescriptorChain]:
        """Next chain; when the ring is empty, re-enable kicks and look once more (2.7.10)."""
        chain = queue.pop_descriptor_chain(mem)
        if chain is None and queue.enable_notification(mem):
            chain = queue.pop_descriptor_chain(mem)
        return chain

    def _used(self, mem: GuestMemory, queue: SplitDeviceQueue, chain: DescriptorChain, n: int) -> None:
        queue.add_used(mem, chain.head_index, n)

    def _guard(self, port: DevicePort, call: Callable, *args):
        """Run an endpoint call; an OS error other than "try later" disconnects the endpoint."""
        try:
            return call(*args)
        except OSError as exc:
            log.warning("console: port %d endpoint %s failed: %s", port.id, port.endpoint.describe(), exc)
            port.endpoint.connected = False
            return 0

    def _signal(self, mem: GuestMemory, queue: SplitDeviceQueue) -> None:
        if queue.needs_notification(mem):
            self._irq.add(queue.index)

    # --- host -> guest (receiveq) ---------------------------------------------------------------

    def _deliverable(self, port: Optional[DevicePort]) -> bool:
        if port is None or not port.endpoint.connected:
            return False
        return not self.multiport or (port.ready and port.guest_open)

    def _pump_rx(self, mem: GuestMemory, pid: int) -> None:
        port = self.ports.get(pid)
        queue = self._usable(spec.receiveq_index(pid))
        if queue is None:
            return
        if not self._deliverable(port):
            if queue.index not in self._rx_held:  # still read the ring: a broken one shows now
                chain = self._pop(mem, queue)
                if chain is not None:
                    self._rx_held[queue.index] = chain
            return
        filled = False
        while True:
            chain = self._rx_held.pop(queue.index, None) or self._pop(mem, queue)
            if chain is None:
                break  # no guest buffer: the bytes wait in the endpoint
            if not chain.writable_len:
                log.warning("console: port %d receive buffer is not device-writable (5.3.6.1)", pid)
                self._used(mem, queue, chain, 0)
                filled = True
                continue
            n = self._guard(port, port.endpoint.read_into, chain.writable_views())
            if not n:
                self._rx_held[queue.index] = chain  # nothing now (None) or the host hung up (0)
                break
            self._used(mem, queue, chain, n)
            port.stats["rx_bytes"] += n
            filled = True
        if filled:
            self._signal(mem, queue)

    # --- guest -> host (transmitq) --------------------------------------------------------------

    def _pump_tx(self, mem: GuestMemory, pid: int) -> None:
        queue = self._usable(spec.transmitq_index(pid))
        if queue is None:
            return
        port = self.ports.get(pid)
        if port is not None and port.emerg:
            self._flush_emerg(port)
        done = False
        while True:
            held = self._tx_held.get(queue.index)
            if held is None:
                chain = self._pop(mem, queue)
                if chain is None:
                    break
                held = self._tx_held[queue.index] = [chain, 0]
            if not self._write_held(port, held):
                break  # the endpoint is full: keep the chain, finish it when it drains
            del self._tx_held[queue.index]
            self._used(mem, queue, held[0], 0)
            done = True
        if done:
            self._signal(mem, queue)

    def _write_held(self, port: Optional[DevicePort], held: list) -> bool:
        """Give the endpoint what it takes of a held chain; True when the chain is all gone."""
        chain, offset = held
        if port is not None and port.endpoint.connected:
            if port.emerg:
                return False  # emergency bytes go first
            left = chain.readable_len - offset
            n = self._guard(port, port.endpoint.write_from, chain.readable_views(offset, left)) if left else 0
            held[1] += n
            port.stats["tx_bytes"] += n
            if held[1] >= chain.readable_len:
                return True
            if port.endpoint.connected:
                return False  # full for now: finish the chain when the endpoint drains
        if port is not None:  # no host peer (any more): the data is dropped, as QEMU does
            port.stats["tx_dropped"] += chain.readable_len - held[1]
        return True

    def _flush_emerg(self, port: DevicePort) -> None:
        if port.emerg and port.endpoint.connected:
            with memoryview(port.emerg) as view:
                n = self._guard(port, port.endpoint.write_from, [view])
            del port.emerg[:n]
        elif port.emerg:
            port.stats["emerg_dropped"] += len(port.emerg)
            port.emerg.clear()

    def _wants_read(self, port: DevicePort) -> bool:
        ep = port.endpoint
        if not ep.connected:
            return ep.listening
        return self._deliverable(port) and spec.receiveq_index(port.id) in self._rx_held

    def _wants_write(self, port: DevicePort) -> bool:
        held = spec.transmitq_index(port.id) in self._tx_held
        return port.endpoint.connected and (held or bool(port.emerg))

    def close(self) -> None:
        for port in list(self.ports.values()):
            port.endpoint.close()


def _check_name(name: Optional[str]) -> None:
    if name is None:
        return
    raw = name.encode()
    if not raw or len(raw) > MAX_NAME_BYTES or b"\0" in raw:
        raise UsageError(f"port name {name!r} must be 1..{MAX_NAME_BYTES} UTF-8 bytes without NUL")


__all__ = ["ConsoleDevice", "ConsoleControlError", "DevicePort", "NullEndpoint", "PortSpec",
           "parse_control", "port_of_queue"]
