"""Socket device, vsock (VIRTIO 1.3, 5.10): guest stream sockets bridged to host UNIX sockets.

Queues rx (0), tx (1), event (2); config ``guest_cid``; STREAM, and SEQPACKET when negotiated
(VIRTIO_VSOCK_F_SEQPACKET: one vsock message is one message on a ``SOCK_SEQPACKET`` UNIX
socket, see :mod:`pyvirtio.vsock.hybrid`).
The connection rules live in the sans-I/O :class:`~pyvirtio.vsock.core.VsockCore` (the device
plays the host, CID 2; its peer is the guest's CID); the host side is
:class:`~pyvirtio.vsock.hybrid.HybridHost` (``CONNECT <port>`` on a UNIX socket, ``UDS_P`` for
guest connections).  The device is one queue group on the engine: the worker serves kicks and
the host fds it asks for (the listening socket, clients sending their line, each connection's
socket while it may read or has bytes to write), and everything runs there, with no lock.

Flow, with nothing buffered beyond what credit allows:

* guest → host: an RW packet's payload goes from guest memory straight to the host socket;
  what the socket does not take is copied to the connection's :class:`Bridge` (at most
  ``buf_alloc``: the guest may not send more before our ``fwd_cnt`` moves), and ``fwd_cnt``
  moves only as the host socket takes bytes — a host program that never reads stops the guest,
  not the daemon's memory.
* host → guest: the host socket is read straight into a guest receive buffer, and only while
  the guest's credit allows and a receive buffer is there; otherwise the bytes stay in the
  host socket.

Control packets (RESPONSE, RST, SHUTDOWN, CREDIT_UPDATE) go into receive buffers before data.
TRANSPORT_RESET (5.10.6.7) goes on the event queue when host code calls
:meth:`VsockDevice.transport_reset`, and over vhost-user when a front-end's rings resume where a
driver left them (a front-end reconnecting to a running guest: the connections it had are
unknown here).  QEMU's ``vhost-user-vsock-pci`` keeps the event queue to itself (the back-end
sees rings 0 and 1 only) and sends its own after a migration.  When the rings stop (a guest
reset) every connection is closed on the host side.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from typing import Callable

from ..device import VirtioDevice
from ..errors import UsageError
from ..memory import GuestMemory
from ..spec.ids import DeviceType
from ..spec.status import DeviceStatus
from ..spec.vsock import (EVENTQ, RXQ, TXQ, VSOCK_CID_HOST, VSOCK_CONFIG, VSOCK_EVENT,
                          VSOCK_HDR_SIZE, VSOCK_RESERVED_CIDS, VsockEventId, VsockFeature,
                          VsockSeqFlag, VsockShutdown, VsockType)
from ..virtq import DescriptorChain, DeviceQueue
from ..vsock.core import (Closed, Connected, Connection, Data, Event, PeerShutdown, Requested,
                          Reset, State, VsockCore, VsockPacketError)
from ..vsock.hybrid import MAX_SEQ_MESSAGE, Bridge, HybridHost, SeqBridge

log = logging.getLogger(__name__)
POLLIN, POLLOUT = select.POLLIN, select.POLLOUT
#: Host-side ports of host-initiated connections start here (as Firecracker's do).
FIRST_HOST_PORT = 1 << 30
#: Packets handled per queue per turn at most, so one busy direction cannot starve the other.
BATCH = 256


def check_guest_cid(cid: int) -> int:
    """``cid`` if a guest may have it (3..2^32-2 and not reserved, 5.10.4); else
    :class:`~pyvirtio.errors.UsageError`."""
    if cid in VSOCK_RESERVED_CIDS or not 3 <= cid <= 0xFFFFFFFE:
        raise UsageError(f"guest CID {cid} is reserved or out of range (3..4294967294; 5.10.4)")
    return cid


class VsockDevice(VirtioDevice):
    """A virtio-vsock device whose guest connections go to ``host`` (None: every REQUEST from
    the guest is refused and nothing reaches the guest)."""

    device_type = DeviceType.VSOCK
    num_queues = 3
    device_specific_features = 1 << VsockFeature.STREAM
    #: No periodic look: the device never starts a close of its own (it passes the host's end of
    #: file on as SHUTDOWN SEND), so it has no close deadline to keep; closes the guest started
    #: end with the RST the device sends.
    idle_interval: float | None = None

    def __init__(self, guest_cid: int, host: HybridHost | None = None, *, queue_max_size: int = 256,
                 seqpacket: bool = True, clock: Callable[[], float] = time.monotonic):
        self.queue_max_size = queue_max_size
        if seqpacket:
            self.device_specific_features = (1 << VsockFeature.STREAM) | (1 << VsockFeature.SEQPACKET)
        super().__init__()
        self.guest_cid = check_guest_cid(guest_cid)
        self.host = host
        self.clock = clock
        self.core = VsockCore(VSOCK_CID_HOST, guest_cid, first_port=FIRST_HOST_PORT)
        self.core.listen_any = host is not None
        self._rx_held: DescriptorChain | None = None
        self._rx_starved = False  # the rx ring was empty: wait for a kick before reading hosts
        self._reset_event = False  # TRANSPORT_RESET owed on the event queue
        self._resume_checked = True  # vhost-user: whether the rings resumed mid-stream, looked at
        self._irq: set[int] = set()
        self.counters = {"bad_chains": 0, "transport_resets": 0, "host_bytes_buffered_max": 0,
                         "seqpacket_dropped": 0}
        #: The transport may veto touching a queue it has stopped (vhost-user ring state).
        self.queue_gate: Callable[[int], bool] = lambda index: True
        #: vhost-user keeps the status apart: its glue clears this and relies on queue_gate.
        self.requires_driver_ok = True

    # --- config, features, reset ----------------------------------------------------------------

    def config_bytes(self) -> bytes:
        return VSOCK_CONFIG.pack(self.guest_cid)

    def on_features(self, features: int) -> None:
        types = {VsockType.STREAM}
        if features & (1 << VsockFeature.SEQPACKET):
            types.add(VsockType.SEQPACKET)
        self.core.types = frozenset(types)

    def on_reset(self) -> None:
        self.core.types = frozenset({VsockType.STREAM})
        self._drop_all("device reset")
        self._rx_held = None
        self._rx_starved = False
        self._reset_event = False
        self._resume_checked = self.requires_driver_ok
        self._irq.clear()

    def on_driver_ok(self) -> None:
        self._rx_starved = False

    def transport_reset(self) -> None:
        """Host code (any thread): tell the driver that every connection is gone (5.10.6.7);
        the device's own are reset without a packet."""
        self.host_call(self._transport_reset, 0)

    def _transport_reset(self) -> None:
        self._drop_all("transport reset")
        self._reset_event = True

    def _check_resume(self) -> None:
        """Over vhost-user the device never sees the driver reset: rings that start where a
        driver left them (an index past 0) mean a front-end came back to a running guest — the
        connections it had are unknown here, so the driver is told (QEMU itself keeps the event
        queue and sends its own after a migration)."""
        if self._resume_checked:
            return
        rx, tx = self._usable(RXQ), self._usable(TXQ)
        if rx is None or tx is None:
            return
        self._resume_checked = True
        if getattr(rx, "next_avail", 0) or getattr(tx, "next_avail", 0):
            self._reset_event = True

    def quiesce(self, mem: GuestMemory | None, index: int | None = None,
                timeout: float = 30.0) -> bool:
        """A ring stops (vhost-user GET_VRING_BASE: the guest resets the device): the guest's
        connections are gone with it, and a held receive buffer goes back unused."""
        if index in (RXQ, TXQ):
            self._drop_all("the guest stopped the device")
            self._rx_held = None
            self._rx_starved = False
        return True

    def _drop_all(self, why: str) -> None:
        conns = self.core.reset_all()
        if conns:
            log.info("vsock: %s: %d connection(s) closed", why, len(conns))
        for conn in conns:
            self._close_bridge(conn)

    @property
    def stats(self) -> dict:
        """The device's counters and how many connections it holds."""
        out = dict(self.core.stats.as_dict(), **self.counters)
        out["connections"] = len(self.core.conns)
        out["host_bytes_buffered"] = sum(c.app.buffered for c in self.core.conns.values()
                                         if isinstance(c.app, Bridge))
        if self.host is not None:
            out.update(self.host.stats)
            out["handshakes"] = len(self.host.handshakes)
        return out

    # --- the engine's entry points ----------------------------------------------------------------

    def process_queue(self, mem: GuestMemory, queue: DeviceQueue) -> bool:
        if queue.index == RXQ:
            self._rx_starved = False
        self._turn(mem)
        own = queue.index in self._irq
        self._irq.discard(queue.index)
        if self._irq:  # other queues filled by this turn: a host turn notifies them
            self.host_call(_nothing, 0)
        return own

    def host_fds(self, group: int) -> list[tuple[int, int]]:
        if not self._active():
            return []
        want: dict[int, int] = {}
        host = self.host
        if host is not None:
            for fd in host.listen_fds:
                want[fd] = POLLIN
            for fd in host.handshakes:
                want[fd] = POLLIN
        for conn in self.core.conns.values():
            bridge = conn.app
            if not isinstance(bridge, Bridge) or bridge.fd < 0:
                continue
            events = POLLOUT if bridge.pending else 0
            if not bridge.rd_done and not bridge.readable and not self._rx_starved \
                    and conn.state is State.CONNECTED and self._may_read(conn, bridge):
                events |= POLLIN
            if events:
                want[bridge.fd] = events
        return list(want.items())

    def host_ready(self, mem: GuestMemory, group: int, events: list[tuple[int, int]]) -> set[int]:
        if not self._active():
            return set()
        if events:
            by_fd = {c.app.fd: c.app for c in self.core.conns.values() if isinstance(c.app, Bridge)}
            for fd, revents in events:
                bridge = by_fd.get(fd)
                if bridge is not None and revents & (POLLIN | select.POLLHUP | select.POLLERR):
                    bridge.readable = True
        self._turn(mem)
        irqs, self._irq = self._irq, set()
        return irqs

    def _may_read(self, conn: Connection, bridge: Bridge) -> bool:
        """Worth watching the host socket: the guest has credit (for a waiting SEQPACKET message:
        enough for all of it), or we have not asked it for more yet."""
        if isinstance(bridge, SeqBridge) and bridge.waiting_for:
            return self.core.credit(conn) >= bridge.waiting_for or not conn.credit_requested
        return bool(self.core.send_window(conn)) or not conn.credit_requested

    def _active(self) -> bool:
        if self.requires_driver_ok:
            return self.driver_ok
        return not self.status & DeviceStatus.DEVICE_NEEDS_RESET

    def _usable(self, index: int) -> DeviceQueue | None:
        queue = self.queues[index] if index < len(self.queues) else None
        if queue is None or not queue.ready or queue.broken or not self.queue_gate(index):
            return None
        return queue

    # --- one turn ---------------------------------------------------------------------------------

    def _turn(self, mem: GuestMemory) -> None:
        if not self._active():
            return
        self._check_resume()
        self._event_queue(mem)
        self._host_side()
        self._tx(mem)
        self._flush_bridges()
        for event in self.core.expire(self.clock()):
            self._on_event(event)
        self._rx(mem)

    def _host_side(self) -> None:
        host = self.host
        if host is None:
            return
        host.accept_all()
        for fd in list(host.handshakes):
            done = host.read_handshake(fd)
            if done is None:
                continue
            sock, port = done
            seq = sock.type == socket.SOCK_SEQPACKET
            bridge = SeqBridge(sock, client=True) if seq else Bridge(sock, client=True)
            try:
                conn = self.core.connect(self.guest_cid, port, app=bridge,
                                         type=VsockType.SEQPACKET if seq else VsockType.STREAM)
            except UsageError as exc:  # too many connections
                log.warning("vsock: host connection to guest port %d refused: %s", port, exc)
                sock.close()
                continue
            conn.app.readable = False  # nothing goes to the guest before it accepted

    # guest -> host

    def _tx(self, mem: GuestMemory) -> None:
        queue = self._usable(TXQ)
        if queue is None:
            return
        done = 0
        while done < BATCH:
            chain = self._pop(mem, queue)
            if chain is None:
                break
            self._tx_packet(chain)
            queue.add_used(mem, chain.head_index, 0)
            done += 1
        if done:
            self._signal(mem, queue)
            if done == BATCH:
                self.host_call(_nothing, 0)  # more may wait: another turn

    def _tx_packet(self, chain: DescriptorChain) -> None:
        if chain.readable_len < VSOCK_HDR_SIZE:
            self.counters["bad_chains"] += 1
            self.guest_log.warning("vsock: transmit buffer of %d bytes is shorter than the header",
                                   chain.readable_len)
            return
        try:
            event = self.core.receive(chain.read(0, VSOCK_HDR_SIZE), chain.readable_len - VSOCK_HDR_SIZE)
        except VsockPacketError as exc:
            self.guest_log.warning("vsock: packet from the guest dropped: %s", exc)
            return
        if isinstance(event, Data):
            views = chain.readable_views(VSOCK_HDR_SIZE, event.length) if event.length else []
            if isinstance(event.conn.app, SeqBridge):
                self._guest_message(event.conn, event.conn.app, views, event.flags)
            else:
                self._guest_data(event.conn, views)
        elif event is not None:
            self._on_event(event)

    def _guest_data(self, conn: Connection, views: list[memoryview]) -> None:
        bridge = conn.app
        if not isinstance(bridge, Bridge) or bridge.wr_shut:
            self.core.consumed(conn, sum(len(v) for v in views))  # nobody to take it: dropped
            return
        try:
            n = bridge.send_views(views)
        except OSError as exc:
            self._host_failed(conn, exc)
            return
        total = sum(len(v) for v in views)
        if n < total:
            for view in _slice(views, n):
                bridge.out += view
            self.counters["host_bytes_buffered_max"] = max(self.counters["host_bytes_buffered_max"],
                                                           bridge.pending)
        if n:
            self._consumed(conn, n)

    def _guest_message(self, conn: Connection, bridge: SeqBridge, views: list[memoryview],
                       flags: int) -> None:
        if bridge.wr_shut:
            self.core.consumed(conn, sum(len(v) for v in views))
            return
        bridge.add_fragment(views, bool(flags & VsockSeqFlag.EOM))
        self.counters["host_bytes_buffered_max"] = max(self.counters["host_bytes_buffered_max"],
                                                       bridge.buffered)
        try:
            n = bridge.write_out()
        except OSError as exc:
            self._host_failed(conn, exc)
            return
        if n:
            self._consumed(conn, n)

    def _flush_bridges(self) -> None:
        for conn in list(self.core.conns.values()):
            bridge = conn.app
            if not isinstance(bridge, Bridge) or not bridge.pending:
                continue
            try:
                n = bridge.write_out()
            except OSError as exc:
                self._host_failed(conn, exc)
                continue
            if n:
                self._consumed(conn, n)
            bridge.maybe_shut_write()

    def _consumed(self, conn: Connection, n: int) -> None:
        event = self.core.consumed(conn, n)
        if event is not None:
            self._on_event(event)

    # events from the guest

    def _on_event(self, event: Event) -> None:
        conn = event.conn
        if isinstance(event, Requested):
            self._guest_connects(conn)
        elif isinstance(event, Connected):
            bridge = conn.app
            if isinstance(bridge, Bridge):
                bridge.prefix = b"OK %d\n" % conn.local_port
                bridge.readable = True
        elif isinstance(event, PeerShutdown):
            bridge = conn.app
            if isinstance(bridge, Bridge):
                if event.flags & VsockShutdown.SEND:
                    bridge.peer_done_sending = True
                    bridge.maybe_shut_write()
                if event.flags & VsockShutdown.RECEIVE:
                    bridge.rd_done = True
        elif isinstance(event, (Reset, Closed)):
            if isinstance(event, Reset):
                log.debug("vsock: %r: %s", conn, event.why)
            self._close_bridge(conn)

    def _guest_connects(self, conn: Connection) -> None:
        seq = conn.type == VsockType.SEQPACKET
        sock = self.host.connect_guest_port(conn.local_port, seq) if self.host is not None else None
        if sock is None:
            self.core.reset(conn)
            return
        self.core.accept(conn, SeqBridge(sock) if seq else Bridge(sock))

    def _host_failed(self, conn: Connection, exc: OSError) -> None:
        log.debug("vsock: %r: host socket failed: %s", conn, exc)
        self.core.reset(conn)
        self._close_bridge(conn)

    def _close_bridge(self, conn: Connection) -> None:
        if isinstance(conn.app, Bridge):
            conn.app.close()

    # host -> guest

    def _rx(self, mem: GuestMemory) -> None:
        queue = self._usable(RXQ)
        if queue is None:
            return
        filled = 0
        while filled < BATCH:
            chain = self._rx_held or self._pop(mem, queue)
            self._rx_held = None
            if chain is None:
                self._rx_starved = True
                break
            if chain.writable_len < VSOCK_HDR_SIZE:
                self.counters["bad_chains"] += 1
                self.guest_log.warning("vsock: receive buffer of %d bytes is shorter than the header",
                                       chain.writable_len)
                queue.add_used(mem, chain.head_index, 0)
                filled += 1
                continue
            written = self._fill(chain)
            if not written:
                self._rx_held = chain  # nothing to send now: keep it for the next turn
                break
            queue.add_used(mem, chain.head_index, written)
            filled += 1
        if filled:
            self._signal(mem, queue)

    def _fill(self, chain: DescriptorChain) -> int:
        """One packet into ``chain``: a control packet first, else data from a host socket."""
        header = self.core.pop_control()
        if header is not None:
            chain.write(header, 0)
            return VSOCK_HDR_SIZE
        room = chain.writable_len - VSOCK_HDR_SIZE
        if room <= 0:
            return 0
        for conn in list(self.core.conns.values()):
            n = self._read_host(conn, chain, room)
            if n:
                # Round robin: the connection served goes to the back of the table.
                self.core.conns[conn.key] = self.core.conns.pop(conn.key)
                return n
            header = self.core.pop_control()  # reading may have ended a connection
            if header is not None:
                chain.write(header, 0)
                return VSOCK_HDR_SIZE
        return 0

    def _read_host(self, conn: Connection, chain: DescriptorChain, room: int) -> int:
        bridge = conn.app
        if isinstance(bridge, SeqBridge) and bridge.inbound is not None:
            return self._message_fragment(conn, bridge, chain, room)
        if not isinstance(bridge, Bridge) or bridge.rd_done or not bridge.readable or bridge.fd < 0:
            return 0
        if isinstance(bridge, SeqBridge):
            return self._read_message(conn, bridge, chain, room)
        window = self.core.send_window(conn)
        if not window:
            self.core.want_credit(conn)  # only a connected stream asks
            bridge.readable = False
            return 0
        views = chain.writable_views(VSOCK_HDR_SIZE, min(room, window))
        try:
            n = bridge.sock.recvmsg_into(views, 0, socket.MSG_DONTWAIT)[0]
        except BlockingIOError:
            bridge.readable = False
            return 0
        except OSError as exc:
            self._host_failed(conn, exc)
            return 0
        if n == 0:  # end of file: the host sends no more
            bridge.rd_done = True
            self.core.shutdown(conn, VsockShutdown.SEND, self.clock())
            return 0
        chain.write(self.core.data_header(conn, n), 0)
        return VSOCK_HDR_SIZE + n

    def _read_message(self, conn: Connection, bridge: SeqBridge, chain: DescriptorChain, room: int) -> int:
        """Take one host message whole once the guest's credit covers it, then its first fragment."""
        one = bytearray(1)
        try:
            size = bridge.sock.recv_into(one, 1, socket.MSG_PEEK | socket.MSG_TRUNC | socket.MSG_DONTWAIT)
        except BlockingIOError:
            bridge.readable = False
            return 0
        except OSError as exc:
            self._host_failed(conn, exc)
            return 0
        if size == 0:  # end of file (an empty message is not carried: it reads the same)
            bridge.rd_done = True
            self.core.shutdown(conn, VsockShutdown.SEND, self.clock())
            return 0
        if size > MAX_SEQ_MESSAGE or size > conn.peer_buf_alloc:
            bridge.sock.recv_into(one, 1, socket.MSG_DONTWAIT)  # never fits: dropped
            self.counters["seqpacket_dropped"] += 1
            log.info("vsock: %r: host message of %d bytes dropped (the guest's buffer is %d)",
                     conn, size, conn.peer_buf_alloc)
            return 0
        if self.core.credit(conn) < size:
            bridge.waiting_for = size
            self.core.want_credit(conn)
            bridge.readable = False
            return 0
        data = bytearray(size)
        got = bridge.sock.recv_into(data, size, socket.MSG_DONTWAIT)
        bridge.waiting_for = 0
        bridge.inbound = memoryview(data)[:got]
        return self._message_fragment(conn, bridge, chain, room)

    def _message_fragment(self, conn: Connection, bridge: SeqBridge, chain: DescriptorChain, room: int) -> int:
        inbound = bridge.inbound
        assert inbound is not None
        n = min(room, len(inbound), self.core.send_window(conn))
        if n <= 0:
            return 0
        last = n == len(inbound)
        chain.write(inbound[:n], VSOCK_HDR_SIZE)
        chain.write(self.core.data_header(conn, n, VsockSeqFlag.EOM if last else 0), 0)
        bridge.inbound = None if last else inbound[n:]
        return VSOCK_HDR_SIZE + n

    # the event queue

    def _event_queue(self, mem: GuestMemory) -> None:
        if not self._reset_event:
            return
        queue = self._usable(EVENTQ)
        if queue is None:
            return
        chain = self._pop(mem, queue)
        if chain is None:
            return
        self._reset_event = False
        written = chain.write(VSOCK_EVENT.pack(VsockEventId.TRANSPORT_RESET)) if chain.writable_len >= 4 else 0
        queue.add_used(mem, chain.head_index, written)
        self.counters["transport_resets"] += 1
        self._signal(mem, queue)

    # --- rings ------------------------------------------------------------------------------------

    def _pop(self, mem: GuestMemory, queue: DeviceQueue) -> DescriptorChain | None:
        """Next chain; when the ring is empty, re-enable kicks and look once more (2.7.10)."""
        chain = queue.pop_descriptor_chain(mem)
        if chain is None and queue.enable_notification(mem):
            chain = queue.pop_descriptor_chain(mem)
        return chain

    def _signal(self, mem: GuestMemory, queue: DeviceQueue) -> None:
        if queue.needs_notification(mem):
            self._irq.add(queue.index)

    def close(self) -> None:
        self._drop_all("device closed")
        if self.host is not None:
            self.host.close()


def _slice(views: list[memoryview], skip: int) -> list[memoryview]:
    out = []
    for view in views:
        if skip >= len(view):
            skip -= len(view)
            continue
        out.append(view[skip:])
        skip = 0
    return out


def _nothing() -> None:
    pass


def serve_on_vhost_user(device: VsockDevice, endpoint) -> None:
    """Fit ``device`` to ``endpoint`` (``VhostUserServer.add``'s result): the front-end keeps the
    status (no DRIVER_OK reaches the device), so a queue is touched while its ring is active."""
    device.requires_driver_ok = False
    device.queue_gate = lambda index: _ring_active(endpoint, index)
    device.on_reset()


def _ring_active(endpoint, index: int) -> bool:
    session = endpoint.session
    if session is None:
        return False
    vrings = session.conn.vrings
    return index < len(vrings) and vrings[index].active


__all__ = ["VsockDevice", "check_guest_cid", "serve_on_vhost_user"]
