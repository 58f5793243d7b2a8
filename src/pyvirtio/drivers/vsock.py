"""vsock driver (VIRTIO 1.3, 5.10): stream sockets of the guest side, over any transport.

The driver plays the guest: it reads its CID from the config space, keeps receive buffers
posted on rx (each a header and ``rx_buf_size`` payload bytes, one device-writable buffer), sends
packets on tx as a header buffer and a payload buffer (as Linux does), keeps a few buffers on the
event queue, and runs the same sans-I/O :class:`~pyvirtio.vsock.core.VsockCore` as the device
(local CID: ours; the peer: any CID, the host being 2).  On TRANSPORT_RESET every connection is
reset and the CID is read again (5.10.6.7).

    driver = VsockDriver.probe(transport)
    stream = driver.connect(1234)            # to the host (CID 2), port 1234
    stream.sendall(b"hello"); stream.recv(5)
    listener = driver.listen(5000)
    peer = listener.accept(timeout=5)        # a host-initiated connection
    seq = driver.connect(1235, seqpacket=True)   # VIRTIO_VSOCK_F_SEQPACKET, when offered
    seq.send_message(b"one message"); seq.recv_message()

Receive bytes wait in the stream's buffer, which the credit bounds (buf_alloc); a reader that
does not read stops the peer.  Every method may be called from any thread: one lock guards the
core and the queues, and the waiter that holds none of the work runs the transport's
``wait_for_interrupt`` (vhost-user delivers interrupts only there).

QEMU's own devices over qtest: QEMU 7.2's ``vhost-vsock-pci`` does not start without the host
kernel's back-end ("vhost-vsock: failed to open vhost device: No such file or directory": no
/dev/vhost-vsock on these machines), and QEMU has no userspace vsock device model; its
``vhost-user-vsock-pci`` does start under qtest (memfd memory), and this driver drives it —
QEMU's virtio-pci function, its config space (the CID it fetched with GET_CONFIG) and its own
event queue — with the rx/tx rings served by a vhost-user back-end (ours, in the tests).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, TypeVar

from ..driver import DriverQueue, Pending, VirtioDriver
from ..errors import UsageError
from ..spec.ids import DeviceType
from ..spec.vsock import (EVENTQ, RXQ, TXQ, VSOCK_CID_HOST, VSOCK_CONFIG, VSOCK_CONFIG_SIZE,
                          VSOCK_EVENT, VSOCK_HDR_SIZE, VsockEventId, VsockFeature, VsockSeqFlag,
                          VsockShutdown, VsockType)
from ..vsock.core import (Closed, Connected, Connection, CreditUpdate, Data, Event, PeerShutdown,
                          Requested, Reset, State, VsockCore, VsockPacketError)

POLL_INTERVAL = 0.05
T = TypeVar("T")


class VsockError(ConnectionError):
    """A vsock stream was refused or reset."""


class VsockDriver(VirtioDriver):
    """The socket driver (VIRTIO 1.3, 5.10): stream connections to and from the host by port
    (:meth:`connect`, :meth:`listen`), with credit-based flow control."""

    id_table = (DeviceType.VSOCK,)
    features = (1 << VsockFeature.STREAM) | (1 << VsockFeature.SEQPACKET)
    queue_size = 128

    def __init__(self, transport, *, rx_buffers: int = 64, rx_buf_size: int = 16384):
        super().__init__(transport)
        self.rx_buffers, self.rx_buf_size = rx_buffers, rx_buf_size
        self.guest_cid = 0
        self.core = VsockCore(0)
        self.transport_resets = 0
        self.bad_packets = 0
        self._lock = threading.RLock()
        self._transport_lock = threading.Lock()
        self._tx: deque[Pending] = deque()
        self._listeners: dict[int, "VsockListener"] = {}
        self._q: dict[int, DriverQueue] = {}

    # --- initialisation ---------------------------------------------------------------------------

    def setup(self) -> None:
        self._read_cid()
        types = {VsockType.STREAM}
        if self.has_feature(VsockFeature.SEQPACKET):
            types.add(VsockType.SEQPACKET)
        self.core.types = frozenset(types)
        self._q = {i: self.create_queue(i) for i in (RXQ, TXQ, EVENTQ)}
        self.queues = list(self._q.values())
        rx = self._q[RXQ]
        for _ in range(min(self.rx_buffers, rx.vq.size)):
            rx.submit([], [VSOCK_HDR_SIZE + self.rx_buf_size], kick=False)
        ev = self._q[EVENTQ]
        for _ in range(min(4, ev.vq.size)):
            ev.submit([], [VSOCK_EVENT.size], kick=False)

    def _initialise(self) -> None:
        super()._initialise()
        self._q[RXQ].kick()  # after DRIVER_OK: a device ignores kicks before it
        self._q[EVENTQ].kick()

    def _read_cid(self) -> None:
        (cid,) = VSOCK_CONFIG.unpack(self.read_config(0, VSOCK_CONFIG_SIZE))
        self.guest_cid = cid & 0xFFFFFFFF  # 5.10.4: the upper 32 bits are reserved
        self.core.local_cid = self.guest_cid

    def remove(self) -> None:
        with self._lock:
            for conn in self.core.reset_all():
                _stream(conn).gone("driver removed")
            super().remove()
            self._q.clear()

    # --- public API -------------------------------------------------------------------------------

    @property
    def seqpacket(self) -> bool:
        """Whether SEQPACKET sockets were negotiated (VIRTIO_VSOCK_F_SEQPACKET)."""
        return VsockType.SEQPACKET in self.core.types

    def connect(self, port: int, cid: int = VSOCK_CID_HOST, *, seqpacket: bool = False,
                timeout: float | None = 10.0) -> "VsockStream":
        """A stream (or, with ``seqpacket``, a SEQPACKET socket) to ``cid:port``; raises
        VsockError when refused."""
        with self._lock:
            stream = VsockStream(self)
            stream.conn = self.core.connect(cid, port, app=stream,
                                            type=VsockType.SEQPACKET if seqpacket else VsockType.STREAM)
        self._until(lambda: stream if stream.conn.state is not State.CONNECTING else None, timeout)
        if stream.error is not None:
            raise VsockError(f"vsock connection to {cid}:{port}: {stream.error}")
        return stream

    def listen(self, port: int, backlog: int = 16) -> "VsockListener":
        """Accept connections the host makes to ``port`` (at most ``backlog`` waiting); a
        :class:`VsockListener`."""
        with self._lock:
            if port in self._listeners:
                raise UsageError(f"vsock port {port} is listened on already")
            listener = self._listeners[port] = VsockListener(self, port, backlog)
            self.core.listen(port)
        return listener

    def poll(self) -> None:
        """Process what the device sent and send what is owed."""
        with self._lock:
            self._service()

    # --- waiting ------------------------------------------------------------------------------------

    def _until(self, attempt: Callable[[], T | None], timeout: float | None) -> T:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                self._service()
                result = attempt()
            if result is not None:
                return result
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"vsock: not done within {timeout}s")
            wait = POLL_INTERVAL if left is None else min(left, POLL_INTERVAL)
            if self._transport_lock.acquire(timeout=wait):
                try:
                    self.transport.wait_for_interrupt(wait)
                finally:
                    self._transport_lock.release()

    # --- servicing the queues (lock held) -------------------------------------------------------

    def _service(self) -> None:
        if not self._q:
            return
        self._reclaim_tx()
        self._collect_events()
        self._collect_rx()
        for event in self.core.expire(time.monotonic()):
            self._on_event(event)
        self._flush_control()

    def _reclaim_tx(self) -> None:
        txq = self._q[TXQ]
        txq.poll()
        while self._tx and self._tx[0].done:
            txq.release(self._tx.popleft())

    def _collect_events(self) -> None:
        ev = self._q[EVENTQ]
        done = ev.poll()
        for pending in done:
            data = ev.read_in(pending)
            if len(data) >= VSOCK_EVENT.size and VSOCK_EVENT.unpack_from(data)[0] == VsockEventId.TRANSPORT_RESET:
                self.transport_resets += 1
                for conn in self.core.reset_all():
                    _stream(conn).gone("transport reset")
                self._read_cid()
            ev.submit_buffers([], pending.in_bufs, owned=pending.owned, kick=False)
        if done:
            ev.kick()

    def _collect_rx(self) -> None:
        rx = self._q[RXQ]
        while done := rx.poll():
            for pending in done:
                self._rx_packet(rx.read_in(pending))
                rx.submit_buffers([], pending.in_bufs, owned=pending.owned, kick=False)
            rx.kick()

    def _rx_packet(self, packet: bytes) -> None:
        try:
            event = self.core.receive(packet[:VSOCK_HDR_SIZE], max(0, len(packet) - VSOCK_HDR_SIZE))
        except VsockPacketError:
            self.bad_packets += 1
            return
        if isinstance(event, Data):
            stream = _stream(event.conn)
            if stream.rd_shut:
                self.core.consumed(event.conn, event.length)  # nobody reads: dropped
            else:
                stream.inbox += packet[VSOCK_HDR_SIZE:]
                if event.flags & VsockSeqFlag.EOM:
                    stream.messages.append(len(stream.inbox) - sum(stream.messages))
        elif event is not None:
            self._on_event(event)

    def _on_event(self, event: Event) -> None:
        conn = event.conn
        if isinstance(event, Requested):
            listener = self._listeners.get(conn.local_port)
            if listener is None or len(listener.backlog) >= listener.max_backlog:
                self.core.reset(conn)
                return
            stream = VsockStream(self)
            stream.conn = conn
            self.core.accept(conn, stream)
            listener.backlog.append(stream)
        elif isinstance(event, (Reset, Closed)):
            _stream(conn).gone(event.why if isinstance(event, Reset) else "closed")
        elif isinstance(event, PeerShutdown):
            _stream(conn).peer_flags = event.flags
        elif isinstance(event, (Connected, CreditUpdate)):
            pass  # waiters look at the state and the window

    def _flush_control(self) -> None:
        txq = self._q[TXQ]
        sent = False
        while (header := self.core.pop_control()) is not None:
            self._tx.append(txq.submit([header], [], kick=False))
            sent = True
        if sent:
            txq.kick()

    def _send_message(self, conn: Connection, data: memoryview) -> bool:
        """Send all of ``data`` as one SEQPACKET message once the credit covers it (lock held)."""
        if len(data) > conn.peer_buf_alloc:
            raise UsageError(f"a {len(data)}-byte message never fits the peer's {conn.peer_buf_alloc}-byte "
                             "buffer (Linux: EMSGSIZE)")
        if self.core.credit(conn) < max(1, len(data)):
            if conn.state is State.CONNECTED:
                self.core.want_credit(conn)
            return False
        txq, offset = self._q[TXQ], 0
        while True:
            n = min(len(data) - offset, self.core.send_window(conn))
            last = offset + n == len(data)
            header = self.core.data_header(conn, n, VsockSeqFlag.EOM if last else 0)
            self._tx.append(txq.submit([header, bytes(data[offset:offset + n])], [], kick=last))
            offset += n
            if last:
                return True

    def _send_data(self, conn: Connection, data: memoryview) -> int:
        """Send what the window allows of ``data`` (lock held); the bytes sent."""
        n = min(len(data), self.core.send_window(conn))
        if n <= 0:
            if conn.state is State.CONNECTED:
                self.core.want_credit(conn)
            return 0
        header = self.core.data_header(conn, n)
        self._tx.append(self._q[TXQ].submit([header, bytes(data[:n])], [], kick=True))
        return n


def _stream(conn: Connection) -> "VsockStream":
    return conn.app


class VsockStream:
    """One connected stream (blocking; any thread)."""

    def __init__(self, driver: VsockDriver):
        self.driver = driver
        self.conn: Connection = None  # type: ignore[assignment]  # set right after
        self.inbox = bytearray()
        self.messages: deque[int] = deque()  # SEQPACKET: the sizes of the whole messages in inbox
        self.error: str | None = None
        self.peer_flags = 0
        self.rd_shut = False

    @property
    def local_port(self) -> int:
        """This end's port."""
        return self.conn.local_port

    @property
    def peer(self) -> tuple[int, int]:
        """The other end's ``(cid, port)``."""
        return self.conn.peer_cid, self.conn.peer_port

    def gone(self, why: str) -> None:
        """The connection ended (``why``: reset, shut down, the device reset ...); readers and
        writers are woken."""
        if self.error is None:
            self.error = why

    def send(self, data: bytes | memoryview, timeout: float | None = 30.0) -> int:
        """Send some of ``data`` (waits for credit); the bytes sent."""
        view = memoryview(data)

        def attempt() -> int | None:
            if self.error is not None and self.conn.state is State.CLOSED:
                raise VsockError(f"vsock stream {self.peer}: {self.error}")
            if self.conn.local_shutdown & VsockShutdown.SEND:
                raise UsageError("send after shutdown")
            n = self.driver._send_data(self.conn, view)
            return n or None
        return self.driver._until(attempt, timeout)

    def sendall(self, data: bytes, timeout: float | None = 30.0) -> None:
        """Send all of ``data``, waiting for the peer's credit up to ``timeout`` seconds."""
        view = memoryview(data)
        while view:
            view = view[self.send(view, timeout):]

    def recv(self, n: int = 65536, timeout: float | None = 30.0) -> bytes:
        """Up to ``n`` bytes; b"" at end of stream (the peer shut down sending, or closed)."""
        def attempt() -> bytes | None:
            if self.inbox:
                data = bytes(self.inbox[:n])
                del self.inbox[:n]
                if self.conn.state is not State.CLOSED:
                    event = self.driver.core.consumed(self.conn, len(data))
                    if event is not None:
                        self.driver._on_event(event)
                return data
            if self.peer_flags & VsockShutdown.SEND or self.conn.state is State.CLOSED:
                return b""
            return None
        return self.driver._until(attempt, timeout)

    def send_message(self, data: bytes, timeout: float | None = 30.0) -> None:
        """SEQPACKET: send ``data`` as one message (waits until the peer's credit covers it)."""
        view = memoryview(data)

        def attempt() -> bool | None:
            if self.conn.state is State.CLOSED:
                raise VsockError(f"vsock socket {self.peer}: {self.error}")
            return self.driver._send_message(self.conn, view) or None
        self.driver._until(attempt, timeout)

    def recv_message(self, timeout: float | None = 30.0) -> bytes | None:
        """SEQPACKET: the next whole message; None at the end of the stream."""
        def attempt():
            if self.messages:
                size = self.messages.popleft()
                data = bytes(self.inbox[:size])
                del self.inbox[:size]
                if self.conn.state is not State.CLOSED:
                    event = self.driver.core.consumed(self.conn, size)
                    if event is not None:
                        self.driver._on_event(event)
                return (data,)
            if self.peer_flags & VsockShutdown.SEND or self.conn.state is State.CLOSED:
                return (None,)
            return None
        return self.driver._until(attempt, timeout)[0]

    def recv_exactly(self, n: int, timeout: float | None = 30.0) -> bytes:
        """Exactly ``n`` bytes, waiting up to ``timeout`` seconds; raises when the stream ends
        first."""
        out = bytearray()
        while len(out) < n:
            chunk = self.recv(n - len(out), timeout)
            if not chunk:
                raise VsockError(f"vsock stream {self.peer}: ended after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    def shutdown(self, flags: int = VsockShutdown.SEND) -> None:
        """Tell the peer this end sends (or receives) no more (VIRTIO_VSOCK_OP_SHUTDOWN)."""
        with self.driver._lock:
            if flags & VsockShutdown.RECEIVE:
                self.rd_shut = True
            self.driver.core.shutdown(self.conn, flags, time.monotonic())
            self.driver._service()

    def close(self) -> None:
        """Shut the connection down both ways and forget it."""
        with self.driver._lock:
            self.rd_shut = True
            self.driver.core.close(self.conn, time.monotonic())
            self.driver._service()

    def __enter__(self) -> "VsockStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VsockListener:
    """Connections the peer opened to ``port``, accepted as they come (at most ``backlog`` wait)."""

    def __init__(self, driver: VsockDriver, port: int, backlog: int):
        self.driver, self.port, self.max_backlog = driver, port, backlog
        self.backlog: deque[VsockStream] = deque()

    def accept(self, timeout: float | None = 30.0) -> VsockStream:
        """The next connection the host made, waiting up to ``timeout`` seconds."""
        return self.driver._until(lambda: self.backlog.popleft() if self.backlog else None, timeout)

    def close(self) -> None:
        """Stop listening; connections not yet accepted are reset."""
        with self.driver._lock:
            self.driver.core.unlisten(self.port)
            self.driver._listeners.pop(self.port, None)


__all__ = ["VsockDriver", "VsockError", "VsockListener", "VsockStream"]
