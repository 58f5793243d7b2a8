"""Console device (VIRTIO 1.3, 5.3): port 0 as the console, more ports with MULTIPORT.

Each port is bridged to a :class:`~pyvirtio.devices.console_endpoints.HostEndpoint`.  The device
runs on the engine (:mod:`pyvirtio.engine`) as one queue group, so everything it does happens in
that group's worker or under its lock, and it needs no lock of its own.  The worker serves kicks
(:meth:`ConsoleDevice.process_queue`), watches the endpoint fds the device asks for
(:meth:`ConsoleDevice.host_fds`: a port's read fd while the guest has a receive buffer waiting,
its write fd while a transmit chain is held) and calls :meth:`ConsoleDevice.host_ready` when they
fire; an endpoint without fds wakes the worker through its ``waker``.  Every turn returns the
queues to notify.  Host code in other threads (add, remove or resize a port, an emergency write)
goes through :attr:`~pyvirtio.device.VirtioDevice.host_call` and returns once the turn after it
has told the driver.

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
from dataclasses import dataclass, field
from select import POLLIN, POLLOUT
from typing import Callable, Generic, Iterable, TypeVar, cast

from ..device import VirtioDevice
from ..errors import DriverFault, GuestMemoryError, QueueBroken, UsageError
from ..memory import GuestMemory
from ..spec import console as spec
from ..spec.ids import DeviceType
from ..spec.status import DeviceStatus
from ..virtq import DescriptorChain, DeviceQueue
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
#: How long a host call waits for the device's worker to take it (longer is a bug: logged, raised).
CALL_TIMEOUT = 10.0
#: How long it then waits for the turn that tells the driver (none comes while no memory is mapped).
TURN_TIMEOUT = 2.0
T = TypeVar("T")


@dataclass
class DevicePort:
    """One port as the device sees it."""

    id: int
    endpoint: HostEndpoint
    name: str | None = None
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
    name: str | None = None
    port_id: int | None = None
    console: bool = False


def port_of_queue(index: int) -> tuple[int, bool]:
    """(port id, is transmitq) of a data queue index (5.3.2); control queues are not data queues."""
    if index < 2:
        return 0, index == 1
    return (index - 2) // 2, bool(index & 1)


class _HostCall(Generic[T]):
    """Host code's call into the device: ``ran`` once ``fn`` ran where the device's code runs,
    ``done`` once the turn after it has told the driver (at once when no turn follows)."""

    def __init__(self, fn: Callable[[], T]):
        self.fn = fn
        self.caller = threading.get_ident()
        self.ran = threading.Event()
        self.done = threading.Event()
        self.result: T | None = None
        self.error: Exception | None = None

    def run(self) -> bool:
        """Run ``fn`` (never raises: a worker must go on); True if it is done with that."""
        try:
            self.result = self.fn()
        except Exception as exc:
            self.error = exc
        self.ran.set()
        if self.error is not None or threading.get_ident() == self.caller:
            self.done.set()  # it failed, or ran inline: no turn of a worker follows
        return self.done.is_set()

    def wait(self) -> T:
        if not self.ran.wait(CALL_TIMEOUT):
            raise TimeoutError(f"console: the device's worker did not take a host call within "
                               f"{CALL_TIMEOUT:.0f} s")
        self.done.wait(TURN_TIMEOUT)  # no turn comes while no guest memory is mapped
        if self.error is not None:
            raise self.error
        return cast(T, self.result)


class ConsoleDevice(VirtioDevice):
    """A virtio console with up to ``max_nr_ports`` ports, each bridged to a host endpoint."""

    device_type = DeviceType.CONSOLE
    #: No periodic look: what to watch is derived from the state on every turn, and fd-less
    #: endpoints wake the worker through their waker.
    idle_interval: float | None = None

    def __init__(self, console: HostEndpoint | None = None, ports: Iterable[PortSpec] = (), *,
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
        self.cols, self.rows = size
        self.ports: dict[int, DevicePort] = {}
        self.multiport = False  # negotiated
        self.device_ready = False  # the driver sent DEVICE_READY 1
        self.stats = {"control_errors": 0, "control_dropped": 0}
        self.control = ControlQueues(self)
        self._rx_held: dict[int, DescriptorChain] = {}  # rx queue -> popped, unfilled chain
        self._tx_held: dict[int, list] = {}  # tx queue -> [chain, bytes already written]
        self._irq: set[int] = set()  # queues to notify at the end of the turn
        self._look_all = False  # the next host turn serves every port
        self._waiting: list[_HostCall] = []  # host calls waiting for the turn after them
        self._worker: threading.Thread | None = None  # the thread of the last host turn
        #: The transport may veto touching a queue it has stopped (vhost-user ring enable).
        self.queue_gate: Callable[[int], bool] = lambda index: True
        #: vhost-user keeps the status apart (no DRIVER_OK here): its glue clears this flag and
        #: lets :attr:`queue_gate` decide.
        self.requires_driver_ok = True
        if console is not None:
            self._add_port(console, None, 0, True)
        for p in ports:
            _check_name(p.name)
            self._add_port(p.endpoint, p.name, p.port_id, p.console)

    # --- config space (5.3.4) -------------------------------------------------------------------

    def config_bytes(self) -> bytes:
        return spec.CONSOLE_CONFIG.pack(self.cols, self.rows, self.max_nr_ports, 0)

    def write_config(self, offset: int, data: bytes) -> None:
        """Only emerg_wr is writable: its low byte goes out on port 0 (5.3.5.1), at any time.
        The transport's control path calls this with the device held still: it writes here."""
        at = spec.ConsoleConfigOffset.EMERG_WR - offset
        if self.device_features & (1 << _F.EMERG_WRITE) and 0 <= at < len(data):
            self._emergency(data[at])

    def emergency_write(self, byte: int) -> None:
        """Host code: write ``byte`` on the console as the driver's emerg_wr would."""
        self._call(lambda: self._emergency(byte))

    def _emergency(self, byte: int) -> None:
        port = self.ports.get(0)
        if port is None or not port.endpoint.connected:
            self.guest_log.info("console emergency write %r with no console attached", chr(byte))
            return
        if len(port.emerg) >= EMERG_BUFFER:
            port.stats["emerg_dropped"] += 1
            return
        port.emerg.append(byte)
        self._flush_emerg(port)
        if port.emerg:
            self._ask_turn()  # the endpoint is full: the worker watches for room

    # --- features, reset ------------------------------------------------------------------------

    def on_features(self, features: int) -> None:
        self.multiport = bool(features & (1 << _F.MULTIPORT))

    def on_reset(self) -> None:
        self.multiport = self.device_ready = False
        self.control.reset()
        self._rx_held.clear()
        self._tx_held.clear()
        self._irq.clear()
        self._worker = None  # a new front-end brings new workers
        for port in self.ports.values():
            port.announced = port.ready = port.guest_open = port.host_open = False

    def on_driver_ok(self) -> None:
        self._ask_turn()  # host bytes may wait for receive buffers posted before DRIVER_OK

    # --- host API: any thread; each call runs in the device's worker ----------------------------

    def add_port(self, endpoint: HostEndpoint, name: str | None = None, *,
                 port_id: int | None = None, console: bool = False) -> int:
        """Add a port (at start or while the driver runs); returns its id once a running
        driver has been sent the DEVICE_ADD."""
        _check_name(name)
        return self._call(lambda: self._add_port(endpoint, name, port_id, console))

    def remove_port(self, port_id: int, *, close: bool = True) -> HostEndpoint:
        """Unplug a port: DEVICE_REMOVE to the guest, its held transmit data is returned to the
        guest's ring as consumed; the endpoint is closed unless ``close`` is False."""
        return self._call(lambda: self._remove_port(port_id, close))

    def resize(self, cols: int, rows: int, *, port_id: int = 0) -> None:
        """The console got a new size.  Port 0: the config space changes (config interrupt,
        5.3.6 item 3); a ready console port also gets a RESIZE message with MULTIPORT."""
        if not (0 <= cols <= 0xFFFF and 0 <= rows <= 0xFFFF):
            raise UsageError(f"size {cols}x{rows} does not fit le16 fields")
        self._call(lambda: self._resize(cols, rows, port_id))

    def poll(self) -> None:
        """Look at every port now — after host code changed an endpoint behind the device's back
        (its ``connected`` flag, say) — and return once that turn is over."""
        self._call(_nothing)

    def pending_bytes(self, port_id: int) -> int:
        """Guest bytes popped from the port's transmitq that the endpoint has not taken yet
        (they are still in guest memory) plus emergency bytes waiting.  From another thread
        than the worker's it is a snapshot."""
        held = self._tx_held.get(spec.transmitq_index(port_id))
        port = self.ports.get(port_id)
        emerg = len(port.emerg) if port is not None else 0
        return (held[0].readable_len - held[1] if held else 0) + emerg

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` where the device's code runs (its worker; here when nothing serves the
        device or this is the worker) and return once the turn after it told the driver."""
        call = _HostCall(fn)
        if threading.current_thread() is self._worker:
            call.run()
        else:
            self.host_call(lambda: self._begin(call), 0)
        return call.wait()

    def _begin(self, call: _HostCall) -> None:
        if not call.run():
            self._look_all = True
            self._waiting.append(call)

    def _ask_turn(self) -> None:
        """Ask the worker for a turn that serves every port (any thread; never waits)."""
        self.host_call(self._want_look, 0)

    def _want_look(self) -> None:
        self._look_all = True

    def _add_port(self, endpoint: HostEndpoint, name: str | None, port_id: int | None,
                  console: bool) -> int:
        pid = self._free_id() if port_id is None else port_id
        if not 0 <= pid < self.max_nr_ports or pid in self.ports:
            raise UsageError(f"port id {pid} is in use or not below max_nr_ports {self.max_nr_ports}")
        port = self.ports[pid] = DevicePort(pid, endpoint, name, console or pid == 0)
        endpoint.waker = self._ask_turn
        if self.device_ready:
            self.control.announce(port)
        return pid

    def _remove_port(self, port_id: int, close: bool) -> HostEndpoint:
        port = self.ports.pop(port_id, None)
        if port is None:
            raise UsageError(f"no port {port_id}")
        if port.announced and self.multiport:
            self.control.send(port_id, _E.DEVICE_REMOVE)
        port.endpoint.waker = _nothing
        if close:
            port.endpoint.close()
        return port.endpoint

    def _resize(self, cols: int, rows: int, port_id: int) -> None:
        port = self.ports.get(port_id)
        if port is None and port_id != 0:
            raise UsageError(f"no port {port_id}")
        if port_id == 0:
            self.cols, self.rows = cols, rows
        if port is not None:
            port.size = (cols, rows)
            if port.ready and port.console and self.multiport:
                self.control.send(port_id, _E.RESIZE, 0, spec.CONSOLE_RESIZE.pack(cols, rows))
        if port_id == 0:
            self.config_changed()

    def _free_id(self) -> int:
        for pid in range(1, self.max_nr_ports):
            if pid not in self.ports:
                return pid
        raise UsageError(f"all {self.max_nr_ports} ports are in use")

    # --- the engine's entry points (one queue group: the worker's thread or under its lock) -----

    def host_fds(self, group: int) -> list[tuple[int, int]]:
        """Each endpoint's read fd while the guest has a receive buffer waiting (or while it
        listens), its write fd while a transmit chain or emergency bytes are held."""
        want: dict[int, int] = {}
        for port in list(self.ports.values()):
            ep = port.endpoint
            if self._wants_read(port) and ep.read_fd >= 0:
                want[ep.read_fd] = want.get(ep.read_fd, 0) | POLLIN
            if self._wants_write(port) and ep.write_fd >= 0:
                want[ep.write_fd] = want.get(ep.write_fd, 0) | POLLOUT
        return list(want.items())

    def process_queue(self, mem: GuestMemory, queue: DeviceQueue) -> bool:
        """The guest kicked ``queue``; returns whether to notify it.  Other queues the kick
        filled (control messages, a port opened) are notified by a host turn it asks for."""
        self._run(mem, lambda: self._on_kick(mem, queue.index), own=queue.index)
        own = queue.index in self._irq
        self._irq.discard(queue.index)
        if self._irq:
            self._ask_turn()
        return own

    def host_ready(self, mem: GuestMemory, group: int, events: list[tuple[int, int]]) -> set[int]:
        """Endpoints' fds fired (serve those ports) or a look was asked for (serve every port,
        control messages out); returns the queues to notify."""
        self._worker = threading.current_thread()
        look_all, self._look_all = self._look_all or not events, False
        pids = self._live_ids() if look_all else self._ports_of(events)
        try:
            self._run(mem, lambda: self._serve(mem, pids))
        finally:
            waiting, self._waiting = self._waiting, []
            for call in waiting:  # host calls that ran before this turn: the driver was told
                call.done.set()
        irqs, self._irq = self._irq, set()
        return irqs

    def _serve(self, mem: GuestMemory, pids: Iterable[int]) -> None:
        for pid in pids:
            self.service(mem, pid)

    def _ports_of(self, events: list[tuple[int, int]]) -> list[int]:
        by_fd = {}
        for pid, port in self.ports.items():
            for fd in (port.endpoint.read_fd, port.endpoint.write_fd):
                if fd >= 0:
                    by_fd[fd] = pid
        return sorted({by_fd[fd] for fd, _ in events if fd in by_fd})

    def _live_ids(self) -> list[int]:
        """Ports, plus removed ports whose transmitq still holds a popped chain."""
        orphans = {port_of_queue(q)[0] for q in self._tx_held}
        return sorted(set(self.ports) | orphans)

    def _active(self) -> bool:
        if self.requires_driver_ok:
            return self.driver_ok
        return not self.status & DeviceStatus.DEVICE_NEEDS_RESET

    def _run(self, mem: GuestMemory, step: Callable[[], None], own: int | None = None) -> None:
        """One turn's work, then the driver is told what changed (PORT_OPEN, control messages).

        A fault ends the turn and goes to the engine, which marks the device (needs reset) or,
        over vhost-user, the kicked ring (its err fd); there a ring found broken in a host turn
        is logged and the other rings go on."""
        try:
            if self._active():
                step()
                for port in list(self.ports.values()):
                    self.control.sync_host_open(port)
                self.control.flush(mem)
        except (DriverFault, GuestMemoryError, QueueBroken) as exc:
            if self.requires_driver_ok or own is not None:
                raise
            self.guest_log.warning("console: a queue broke: %s", exc)

    # --- kicks ----------------------------------------------------------------------------------

    def _on_kick(self, mem: GuestMemory, index: int) -> None:
        if index == spec.CONTROL_TRANSMITQ and self.multiport:
            self.control.receive(mem)
        elif index >= spec.CONTROL_RECEIVEQ and not self.multiport:
            self.guest_log.warning("console: kick on queue %d without MULTIPORT", index)
        elif index != spec.CONTROL_RECEIVEQ:
            pid, tx = port_of_queue(index)
            (self._pump_tx if tx else self._pump_rx)(mem, pid)

    def service(self, mem: GuestMemory, pid: int) -> None:
        """Move what can move on port ``pid`` both ways (accept a waiting client first)."""
        port = self.ports.get(pid)
        if port is None:
            self._pump_tx(mem, pid)  # a removed port: consume what the guest still sends
            return
        if not port.endpoint.connected and port.endpoint.listening:
            self._guard(port, port.endpoint.accept)
        self._pump_tx(mem, pid)
        self._pump_rx(mem, pid)

    def usable(self, index: int) -> DeviceQueue | None:
        """Queue ``index`` if the device may touch it now."""
        queue = self.queues[index] if index < len(self.queues) else None
        if queue is None or not queue.ready or queue.broken or not self.queue_gate(index):
            return None
        return queue

    def pop(self, mem: GuestMemory, queue: DeviceQueue) -> DescriptorChain | None:
        """Next chain; when the ring is empty, re-enable kicks and look once more (2.7.10)."""
        chain = queue.pop_descriptor_chain(mem)
        if chain is None and queue.enable_notification(mem):
            chain = queue.pop_descriptor_chain(mem)
        return chain

    def signal(self, mem: GuestMemory, queue: DeviceQueue) -> None:
        """Used entries were added to ``queue``: notify it at the end of the turn if wanted."""
        if queue.needs_notification(mem):
            self._irq.add(queue.index)

    def _guard(self, port: DevicePort, call: Callable, *args):
        """Run an endpoint call; an OS error other than "try later" disconnects the endpoint."""
        try:
            return call(*args)
        except OSError as exc:
            log.warning("console: port %d endpoint %s failed: %s", port.id, port.endpoint.describe(), exc)
            port.endpoint.connected = False
            return 0

    # --- host -> guest (receiveq) ---------------------------------------------------------------

    def _deliverable(self, port: DevicePort) -> bool:
        if not port.endpoint.connected:
            return False
        return not self.multiport or (port.ready and port.guest_open)

    def _pump_rx(self, mem: GuestMemory, pid: int) -> None:
        port = self.ports.get(pid)
        queue = self.usable(spec.receiveq_index(pid))
        if queue is None:
            return
        if port is None or not self._deliverable(port):
            if queue.index not in self._rx_held:  # still read the ring: a broken one shows now
                chain = self.pop(mem, queue)
                if chain is not None:
                    self._rx_held[queue.index] = chain
            return
        filled = False
        while True:
            chain = self._rx_held.pop(queue.index, None) or self.pop(mem, queue)
            if chain is None:
                break  # no guest buffer: the bytes wait in the endpoint
            if not chain.writable_len:
                self.guest_log.warning("console: port %d receive buffer is not device-writable (5.3.6.1)", pid)
                queue.add_used(mem, chain.head_index, 0)
                filled = True
                continue
            n = self._guard(port, port.endpoint.read_into, chain.writable_views())
            if not n:
                self._rx_held[queue.index] = chain  # nothing now (None) or the host hung up (0)
                break
            queue.add_used(mem, chain.head_index, n)
            port.stats["rx_bytes"] += n
            filled = True
        if filled:
            self.signal(mem, queue)

    # --- guest -> host (transmitq) --------------------------------------------------------------

    def _pump_tx(self, mem: GuestMemory, pid: int) -> None:
        queue = self.usable(spec.transmitq_index(pid))
        if queue is None:
            return
        port = self.ports.get(pid)
        if port is not None and port.emerg:
            self._flush_emerg(port)
        done = False
        while True:
            held = self._tx_held.get(queue.index)
            if held is None:
                chain = self.pop(mem, queue)
                if chain is None:
                    break
                held = self._tx_held[queue.index] = [chain, 0]
            if not self._write_held(port, held):
                break  # the endpoint is full: keep the chain, finish it when it drains
            del self._tx_held[queue.index]
            queue.add_used(mem, held[0].head_index, 0)
            done = True
        if done:
            self.signal(mem, queue)

    def _write_held(self, port: DevicePort | None, held: list) -> bool:
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
        """Close every endpoint (after the transport stopped serving the device)."""
        for port in list(self.ports.values()):
            port.endpoint.waker = _nothing
            port.endpoint.close()


def _nothing() -> None:
    pass


def _check_name(name: str | None) -> None:
    if name is None:
        return
    raw = name.encode()
    if not raw or len(raw) > MAX_NAME_BYTES or b"\0" in raw:
        raise UsageError(f"port name {name!r} must be 1..{MAX_NAME_BYTES} UTF-8 bytes without NUL")


__all__ = ["ConsoleDevice", "ConsoleControlError", "DevicePort", "NullEndpoint", "PortSpec",
           "parse_control", "port_of_queue"]


def attach(device: ConsoleDevice, endpoint) -> None:
    """Fit ``device`` to a vhost-user ``endpoint`` (``VhostUserServer.add``'s result), which serves its queues
    and, through the engine, its ports' endpoints.  vhost-user keeps the device status to itself
    (no DRIVER_OK reaches the device), so the device touches a queue while its ring is active."""
    device.requires_driver_ok = False
    device.queue_gate = lambda index: _ring_active(endpoint, index)


def _ring_active(endpoint, index: int) -> bool:
    session = endpoint.session
    if session is None:
        return False
    vrings = session.conn.vrings
    return index < len(vrings) and vrings[index].active
