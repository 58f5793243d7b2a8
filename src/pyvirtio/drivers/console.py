"""Console driver (VIRTIO 1.3, 5.3): ports as byte streams over any transport.

It follows the Linux driver's protocol behaviour (``drivers/char/virtio_console.c``): with
MULTIPORT it fills the control receiveq, sends DEVICE_READY after DRIVER_OK, answers each
DEVICE_ADD with PORT_READY once the port's receive buffers are posted, answers CONSOLE_PORT with
PORT_OPEN 1, and sends PORT_OPEN 1/0 when a program opens/closes a port.  Without MULTIPORT port 0
is the console.  Data for a port nobody has open is dropped (as Linux does); an open port keeps
its receive buffers posted and re-posts each one once the reader has consumed it, so a slow reader
holds the device back instead of losing bytes.

Blocking use: ``driver.open_port("org.example.pipe")`` gives a :class:`ConsolePort` with
``read``/``write``/``drain``/``close``; ``driver.console`` is the console port; listeners added
with :meth:`ConsoleDriver.add_listener` get a :class:`PortEvent` for every hot-plug, name, open
and resize.  Asyncio use: :meth:`ConsolePort.aio` (``drivers/console_aio.py``).

Threads: every method may be called from any thread.  The interrupt handler only bumps a counter;
the work (collecting used buffers, control messages) happens in whichever caller waits, one
waiter at a time runs the transport's ``wait_for_interrupt`` (vhost-user delivers interrupts only
there), and listeners run outside the driver's lock.  :class:`ConsolePort` is in ``console_port.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Iterable, TypeVar

from ..driver import DriverQueue, VirtioDriver
from ..errors import DeviceFault, Scope, UsageError
from ..spec import console as spec
from ..spec.features import Feature
from ..spec.ids import DeviceType
from .console_port import ConsolePort, PortClosed, PortEvent, PortState

log = logging.getLogger(__name__)

_F = spec.ConsoleFeature
_E = spec.ConsoleEvent
_CTRL = spec.CONSOLE_CONTROL
CONTROL_BUF_SIZE = 2048
POLL_INTERVAL = 0.1  # waiters look again this often even without an interrupt
T = TypeVar("T")


class ConsoleProtocolError(DeviceFault):
    """A control message from the device that breaks 5.3.6.2 (dropped; the driver goes on)."""

    scope = Scope.REQUEST


class ConsoleDriver(VirtioDriver):
    """The console driver (VIRTIO 1.3, 5.3): the console port and, with VIRTIO_CONSOLE_F_MULTIPORT,
    named ports opened by name (:meth:`open_port`), added and removed by the device at any
    time."""

    id_table = (DeviceType.CONSOLE,)
    features = (1 << _F.SIZE) | (1 << _F.MULTIPORT) | (1 << _F.EMERG_WRITE)
    queue_size = 64

    def __init__(self, transport, *, rx_buffers: int | None = None, rx_buf_size: int = 4096,
                 tx_chunk: int = 4096, max_ports: int = 64, control_buffers: int = 16,
                 listeners: Iterable[Callable[[PortEvent], None]] = ()):
        super().__init__(transport)
        self.rx_buffers, self.rx_buf_size, self.tx_chunk = rx_buffers, rx_buf_size, tx_chunk
        self.max_ports, self.control_buffers = max_ports, control_buffers
        self.ports: dict[int, PortState] = {}
        self.multiport = False
        self.max_nr_ports = 1
        self.offered = 0
        self.cols = self.rows = 0
        self._q: dict[int, DriverQueue] = {}
        self._rx_bufs: dict[int, list[int]] = {}  # rx queue -> guest addresses of its buffers
        self._tx_inflight: dict[int, int] = {}
        self._ctrl_pending: deque[bytes] = deque()
        self._events: deque[PortEvent] = deque()
        self._listeners: list[Callable[[PortEvent], None]] = list(listeners)
        self._lock = threading.RLock()
        self._wake = threading.Condition(threading.Lock())
        self._seq = 0
        self._pumping = False
        self._transport_lock = threading.RLock()
        self._config_dirty = False
        self._dispatching = threading.RLock()

    # --- initialisation (3.1.1 step 7, then 5.3.5) ----------------------------------------------

    def negotiate(self, offered: int, accepted: int) -> int:
        self.offered = offered
        return accepted & ~(1 << Feature.INDIRECT_DESC)  # single-buffer chains: no indirect tables

    def setup(self) -> None:
        self.multiport = self.has_feature(_F.MULTIPORT)
        self._refresh_size()
        if self.multiport:
            wanted = spec.CONSOLE_CONFIG.unpack(self.read_config(0, spec.CONSOLE_CONFIG_SIZE))[2]
            self.max_nr_ports = max(1, min(wanted, self.max_ports))
        indices = [0, 1]
        if self.multiport:
            indices += list(range(2, 2 * self.max_nr_ports + 2))
        self._q = {i: self.create_queue(i) for i in indices}
        self.queues = list(self._q.values())
        if self.multiport:
            self._rx_bufs[spec.CONTROL_RECEIVEQ] = self._post_buffers(
                spec.CONTROL_RECEIVEQ, self.control_buffers, CONTROL_BUF_SIZE)

    def _initialise(self) -> None:
        super()._initialise()
        with self._lock:
            if self.multiport:  # after DRIVER_OK, as Linux (the device ignores kicks before it)
                self._q[spec.CONTROL_RECEIVEQ].kick()
                self._control(spec.CONSOLE_BAD_ID, _E.DEVICE_READY, 1)
            else:
                port = self._add_port(0)
                port.console = port.guest_open = port.host_connected = True
            self._service()
        self._dispatch()

    def _post_buffers(self, index: int, count: int, size: int) -> list[int]:
        q = self._q[index]
        count = max(1, min(count, q.vq.size))
        addrs = [self.transport.alloc(size, 8) for _ in range(count)]
        for addr in addrs:
            q.submit_buffers([], [(addr, size)], kick=False)
        q.kick()
        return addrs

    def remove(self) -> None:
        with self._lock:
            for port in self.ports.values():  # the rings go away: nothing is re-posted
                port.removed, port.host_connected, port.guest_open = True, False, False
                port.inbox.clear()
            self.ports.clear()
            super().remove()
            for addrs in self._rx_bufs.values():
                for addr in addrs:
                    self.transport.free(addr)
            self._rx_bufs.clear()
            self._q.clear()
            self._tx_inflight.clear()
            self._ctrl_pending.clear()

    # --- interrupts: only wake the waiters ------------------------------------------------------

    def on_queue_interrupt(self, index: int | None) -> None:
        self._poke()

    def on_config_change(self) -> None:
        self._config_dirty = True
        self._poke()

    def _poke(self) -> None:
        with self._wake:
            self._seq += 1
            self._wake.notify_all()

    # --- public API -----------------------------------------------------------------------------

    def queue(self, index: int) -> DriverQueue:
        """The driver queue at ``index`` (5.3.2 numbering), for tests and diagnostics."""
        return self._q[index]

    def add_listener(self, listener: Callable[[PortEvent], None]) -> None:
        """Call ``listener`` with every :class:`PortEvent` (a port added, opened, closed, removed,
        resized ...)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[PortEvent], None]) -> None:
        """Stop calling ``listener``."""
        self._listeners.remove(listener)

    def poll_events(self) -> None:
        """Process what the device sent (control messages, data) and run the listeners."""
        self._until(lambda: True, 0)

    def list_ports(self) -> list[PortState]:
        """The ports the device announced, by id (events processed first)."""
        self.poll_events()
        with self._lock:
            return [p for _, p in sorted(self.ports.items())]

    def wait_for_port(self, name: str | None = None, *, port_id: int | None = None,
                      timeout: float | None = 5.0) -> PortState:
        """Wait until a port with this name (or id) is added and named."""
        return self._until(lambda: self._find(name, port_id), timeout)

    def open_port(self, name: str | None = None, *, port_id: int | None = None,
                  timeout: float | None = 5.0) -> "ConsolePort":
        """Open a (non-console) port by name or id, waiting up to ``timeout`` for it to appear;
        sends PORT_OPEN 1.  One opener at a time (Linux: EMFILE)."""
        return self._until(lambda: self._open(self._find(name, port_id)), timeout)

    @property
    def console(self) -> "ConsolePort":
        """The console port (port 0, or the first port the device nominated)."""
        def attempt():
            consoles = sorted(p.id for p in self.ports.values() if p.console)
            return self._handle(self.ports[consoles[0]]) if consoles else None
        return self._until(attempt, 5.0)

    @property
    def console_size(self) -> tuple[int, int] | None:
        """(cols, rows) of port 0 from the config space (SIZE) or the last RESIZE message."""
        self.poll_events()
        port = self.ports.get(0)
        if port is not None and port.size is not None:
            return port.size
        return (self.cols, self.rows) if self.has_feature(_F.SIZE) else None

    def emergency_write(self, data: bytes) -> None:
        """Write bytes through emerg_wr (5.3.5), one config write per byte; works even when the
        queues are broken."""
        if not self.offered & (1 << _F.EMERG_WRITE):
            raise UsageError("the device does not offer VIRTIO_CONSOLE_F_EMERG_WRITE")
        with self._transport_lock:
            for byte in data:
                self.transport.write_config(spec.ConsoleConfigOffset.EMERG_WR, bytes((byte, 0, 0, 0)))

    # --- waiting --------------------------------------------------------------------------------

    def _until(self, attempt: Callable[[], T | None], timeout: float | None) -> T:
        """Service the queues and try ``attempt`` (under the lock) until it returns non-None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            seq = self._seq
            with self._lock:
                self._service()
                result = attempt()
            self._dispatch()
            if result is not None:
                return result
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"console: not done within {timeout}s")
            self._wait(seq, POLL_INTERVAL if left is None else min(left, POLL_INTERVAL))

    def _wait(self, seq: int, timeout: float) -> None:
        """Sleep until an interrupt (or ``timeout``).  One waiter at a time runs the transport's
        ``wait_for_interrupt`` (vhost-user delivers interrupts only there); the rest wait for it."""
        with self._wake:
            if self._seq != seq:
                return
            if self._pumping:
                self._wake.wait(timeout)
                return
            self._pumping = True
        try:
            with self._transport_lock:
                self.transport.wait_for_interrupt(timeout)
        finally:
            with self._wake:
                self._pumping = False
                self._wake.notify_all()

    def read_config(self, offset: int, size: int) -> bytes:
        with self._transport_lock:  # a socket transport serves one request at a time
            return super().read_config(offset, size)

    def _dispatch(self) -> None:
        with self._dispatching:
            while True:
                with self._lock:
                    if not self._events:
                        return
                    event = self._events.popleft()
                for listener in list(self._listeners):
                    try:
                        listener(event)
                    except Exception:
                        log.exception("console: port listener failed on %s", event)

    # --- servicing the queues (lock held) -------------------------------------------------------

    def _service(self) -> None:
        if self._config_dirty:
            self._config_dirty = False
            self._refresh_size(announce=True)
        if self.multiport:
            self._service_control()
        for port in list(self.ports.values()):
            self._collect_rx(port)
        for index in list(self._tx_inflight):
            self._reclaim_tx(index)

    def _refresh_size(self, announce: bool = False) -> None:
        cols, rows = spec.CONSOLE_CONFIG.unpack(self.read_config(0, spec.CONSOLE_CONFIG_SIZE))[:2]
        if (cols, rows) != (self.cols, self.rows):
            self.cols, self.rows = cols, rows
            port = self.ports.get(0)
            if announce and port is not None and self.has_feature(_F.SIZE):
                self._resized(port, (cols, rows))

    def _resized(self, port: PortState, size: tuple[int, int]) -> None:
        if size != port.size:  # the config space and a RESIZE message may both tell us
            port.size = size
            self._events.append(PortEvent("resize", port.id, port.name, size))

    def _service_control(self) -> None:
        rxq, txq = self._q[spec.CONTROL_RECEIVEQ], self._q[spec.CONTROL_TRANSMITQ]
        for pending in txq.poll():
            txq.release(pending)
        self._flush_control()
        while done := rxq.poll():
            for pending in done:
                try:
                    self._on_control(rxq.read_in(pending))
                except ConsoleProtocolError as exc:
                    log.warning("console: bad control message from the device dropped: %s", exc)
                rxq.submit_buffers([], pending.in_bufs, kick=False)
            rxq.kick()

    def _collect_rx(self, port: PortState) -> None:
        q = self._q[spec.receiveq_index(port.id)]
        reposted = False
        for pending in q.poll():
            if port.guest_open and pending.written:
                port.inbox.append([pending, 0])
            elif pending.in_bufs:  # nobody has the port open: dropped (Linux discard_port_data)
                q.submit_buffers([], pending.in_bufs, kick=False)
                reposted = True
            else:
                q.release(pending)  # not one of our receive buffers
        if reposted:
            q.kick()

    def _reclaim_tx(self, index: int) -> None:
        q = self._q[index]
        for pending in q.poll():
            q.release(pending)
            self._tx_inflight[index] -= 1
        if not self._tx_inflight[index]:
            del self._tx_inflight[index]

    # --- control messages (5.3.6.2) -------------------------------------------------------------

    def _control(self, port_id: int, event: int, value: int) -> None:
        self._ctrl_pending.append(_CTRL.pack(port_id, event, value))
        self._flush_control()

    def _flush_control(self) -> None:
        q = self._q[spec.CONTROL_TRANSMITQ]
        while self._ctrl_pending and q.vq.num_free:
            q.submit([self._ctrl_pending.popleft()], [], kick=False)
        q.kick()

    def _on_control(self, data: bytes) -> None:
        if len(data) < spec.CONSOLE_CONTROL_SIZE:
            raise ConsoleProtocolError(f"control message of {len(data)} bytes")
        msg = spec.ConsoleControl(*_CTRL.unpack_from(data))
        payload = data[spec.CONSOLE_CONTROL_SIZE:]
        if msg.event == _E.DEVICE_ADD:
            return self._ctl_add(msg)
        port = self.ports.get(msg.id)
        if port is None:
            log.debug("console: control event %d for unknown port %d dropped", msg.event, msg.id)
            return None
        handler = _DEVICE_EVENTS.get(msg.event)
        if handler is None:
            raise ConsoleProtocolError(f"event {msg.event} is not one a device sends")
        return handler(self, port, msg.value, payload)

    def _ctl_add(self, msg: spec.ConsoleControl) -> None:
        if msg.id in self.ports:
            self._control(msg.id, _E.PORT_READY, 1)  # "already added": Linux answers again
        elif msg.id >= self.max_nr_ports:
            log.warning("console: device adds port %d, max is %d", msg.id, self.max_nr_ports - 1)
        else:
            self._add_port(msg.id)
            self._control(msg.id, _E.PORT_READY, 1)
            self._events.append(PortEvent("add", msg.id))

    def _add_port(self, port_id: int) -> PortState:
        port = self.ports[port_id] = PortState(port_id)
        if port_id == 0 and self.has_feature(_F.SIZE):
            port.size = (self.cols, self.rows)
        rxq = spec.receiveq_index(port_id)
        if rxq not in self._rx_bufs:  # buffers stay posted across unplug and re-add
            count = self.rx_buffers or self._q[rxq].vq.size
            self._rx_bufs[rxq] = self._post_buffers(rxq, count, self.rx_buf_size)
        return port

    def _ctl_remove(self, port: PortState, value: int, payload: bytes) -> None:
        del self.ports[port.id]
        self._drop_port(port)
        self._events.append(PortEvent("remove", port.id, port.name))

    def _drop_port(self, port: PortState) -> None:
        port.removed, port.host_connected, port.guest_open = True, False, False
        self._collect_rx(port)  # used buffers not yet collected go back too (Linux discards)
        self._discard_inbox(port)

    def _ctl_console(self, port: PortState, value: int, payload: bytes) -> None:
        if not value or port.console:
            return
        port.console = port.guest_open = True  # hvc keeps the console open
        self._control(port.id, _E.PORT_OPEN, 1)  # 5.3.6.2.2: MUST answer with PORT_OPEN 1
        self._events.append(PortEvent("console", port.id, port.name))

    def _ctl_resize(self, port: PortState, value: int, payload: bytes) -> None:
        if len(payload) < spec.CONSOLE_RESIZE_SIZE:
            raise ConsoleProtocolError(f"RESIZE for port {port.id} without its size")
        if port.console:  # spec order {cols, rows}; Linux read {rows, cols} until 2025
            self._resized(port, tuple(spec.CONSOLE_RESIZE.unpack_from(payload)))

    def _ctl_open(self, port: PortState, value: int, payload: bytes) -> None:
        port.host_connected = bool(value)
        self._events.append(PortEvent("open", port.id, port.name, port.host_connected))

    def _ctl_name(self, port: PortState, value: int, payload: bytes) -> None:
        if port.name is None:  # Linux keeps the first name
            port.name = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
            self._events.append(PortEvent("name", port.id, port.name))

    # --- ports (lock held) ----------------------------------------------------------------------

    def _find(self, name: str | None, port_id: int | None) -> PortState | None:
        if (name is None) == (port_id is None):
            raise UsageError("give a port name or a port id")
        for port in self.ports.values():
            if port.id == port_id or (name is not None and port.name == name):
                return port
        return None

    def _open(self, port: PortState | None) -> "ConsolePort" | None:
        if port is None:
            return None
        if port.console:
            raise UsageError(f"port {port.id} is a console port: use driver.console")
        if port.guest_open:
            raise UsageError(f"port {port.id} is already open")
        port.guest_open = True
        self._control(port.id, _E.PORT_OPEN, 1)
        return self._handle(port, fresh=True)

    def _handle(self, port: PortState, fresh: bool = False) -> "ConsolePort":
        if fresh or port.handle is None:
            port.handle = ConsolePort(self, port)
        return port.handle

    def _close(self, port: PortState) -> None:
        if port.removed or port.console or not port.guest_open:
            return
        port.guest_open = False
        self._control(port.id, _E.PORT_OPEN, 0)
        self._discard_inbox(port)

    def _discard_inbox(self, port: PortState) -> None:
        q = self._q.get(spec.receiveq_index(port.id))
        if q is None:  # the port's receiveq was never set up: nothing came in
            return
        while port.inbox:
            q.submit_buffers([], port.inbox.popleft()[0].in_bufs, kick=False)
        q.kick()

    def _take(self, port: PortState, n: int) -> bytes:
        q = self._q[spec.receiveq_index(port.id)]
        out = bytearray()
        while port.inbox and len(out) < n:
            item = port.inbox[0]
            pending, used = item
            k = min(n - len(out), pending.written - used)
            out += q.mem.read(pending.in_bufs[0][0] + used, k)
            item[1] += k
            if item[1] >= pending.written:
                port.inbox.popleft()
                q.submit_buffers([], pending.in_bufs, kick=False)  # consumed: post it again
        q.kick()
        return bytes(out)

    def _send(self, port: PortState, data: memoryview) -> int:
        """Queue as much of ``data`` as the transmitq has room for; returns the bytes queued."""
        index = spec.transmitq_index(port.id)
        q = self._q[index]
        if index in self._tx_inflight:
            self._reclaim_tx(index)
        sent = 0
        while sent < len(data) and q.vq.num_free:
            chunk = data[sent:sent + self.tx_chunk]
            addr = self.transport.alloc(len(chunk), 8)
            q.mem.write(addr, chunk)
            q.submit_buffers([(addr, len(chunk))], [], owned=[addr], kick=False)
            self._tx_inflight[index] = self._tx_inflight.get(index, 0) + 1
            sent += len(chunk)
        q.kick()
        return sent

    def _readable(self, port: PortState) -> bool:
        return bool(port.inbox) or port.removed or not port.host_connected

    def _writable(self, port: PortState) -> bool:
        return port.removed or port.host_connected or port.console


_DEVICE_EVENTS: dict[int, Callable[[ConsoleDriver, PortState, int, bytes], None]] = {
    _E.DEVICE_REMOVE: ConsoleDriver._ctl_remove,
    _E.CONSOLE_PORT: ConsoleDriver._ctl_console,
    _E.RESIZE: ConsoleDriver._ctl_resize,
    _E.PORT_OPEN: ConsoleDriver._ctl_open,
    _E.PORT_NAME: ConsoleDriver._ctl_name,
}


__all__ = ["ConsoleDriver", "ConsolePort", "ConsoleProtocolError", "PortClosed", "PortEvent",
           "PortState"]
