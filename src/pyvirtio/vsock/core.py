"""The vsock connection state machine (VIRTIO 1.3, 5.10.6), sans I/O, for either side.

Two rules, as in h11's ``_state.py``: everything that changes a connection's state lives in
this file, and this file does not know which side it plays.  The device (peer: the guest) and the
driver (peer: the host) each run one :class:`VsockCore`; packets go in as header bytes plus the
length of the payload that follows (:meth:`VsockCore.receive`, which returns at most one
:class:`Event`), packets come out as header bytes (:meth:`VsockCore.pop_control` for control
packets, :meth:`VsockCore.data_header` for RW), and the payload never passes through here: the
I/O shell moves it between guest memory and its sockets or buffers and tells the core how much
(:class:`Data` events in, :meth:`VsockCore.consumed` and :meth:`VsockCore.data_header` out).

Credit (5.10.6.3): every packet carries the sender's ``buf_alloc`` (its receive buffer) and
``fwd_cnt`` (bytes it has passed on to its application).  We may have at most
``peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`` bytes in flight (:meth:`VsockCore.send_window`), and
we advertise :data:`~pyvirtio.limits.VSOCK_BUF_ALLOC`: a peer that sends past it is reset (its
packet dropped), so no connection buffers more than that, and no core keeps more than
:data:`~pyvirtio.limits.VSOCK_MAX_CONNECTIONS` connections — REQUESTs past that get RST.

Control packets wait as per-connection flags (a connection owes at most one REQUEST, RESPONSE,
SHUTDOWN and CREDIT_UPDATE at a time), so a peer that posts no receive buffers costs nothing
per packet it sends; RSTs to addresses without a connection wait in a queue of at most
:data:`~pyvirtio.limits.VSOCK_MAX_PENDING_RST` (more are dropped and counted).  An RST is never
answered (5.10.6.4 would loop).

SEQPACKET (VIRTIO_VSOCK_F_SEQPACKET) connections exist once the application adds the type to
:attr:`VsockCore.types` (after negotiation); their RW packets carry EOM on a message's last
packet, passed on in :class:`Data`'s ``flags``, and :meth:`VsockCore.credit` says whether a
whole message fits.  A packet of the other type on a connection resets it.

Closing follows Linux (net/vmw_vsock/virtio_transport_common.c): :meth:`VsockCore.close` sends
SHUTDOWN with both flags and waits up to :data:`CLOSE_TIMEOUT` for the peer's RST; a side that
receives SHUTDOWN with both flags and has passed every byte on answers with RST.  Time comes
in as ``now`` (:meth:`VsockCore.expire`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from ..errors import UsageError
from ..limits import VSOCK_BUF_ALLOC, VSOCK_MAX_CONNECTIONS, VSOCK_MAX_PENDING_RST
from ..spec.vsock import VsockHdr, VsockOp, VsockSeqFlag, VsockShutdown, VsockType
from .packet import MAX_PKT_PAYLOAD, VsockPacketError, build_header, parse_header

_U32 = 0xFFFFFFFF
BOTH = VsockShutdown.RECEIVE | VsockShutdown.SEND
_SEQ_FLAGS = VsockSeqFlag.EOM | VsockSeqFlag.EOR
#: How long a closing connection waits for the peer's RST (Linux: VSOCK_CLOSE_TIMEOUT, 8 s).
CLOSE_TIMEOUT = 8.0
#: Ephemeral local ports for connect() are taken from here up (Linux: above 1023).
FIRST_EPHEMERAL_PORT = 1024
Key = tuple[int, int, int]  # (local port, peer cid, peer port)


class State(Enum):
    REQUESTED = "requested"  # the peer sent REQUEST; we have not answered
    CONNECTING = "connecting"  # we sent REQUEST; no RESPONSE yet
    CONNECTED = "connected"
    CLOSING = "closing"  # we sent SHUTDOWN with both flags; waiting for the peer's RST
    CLOSED = "closed"  # forgotten by the core


@dataclass(eq=False)
class Connection:
    """One stream connection: addresses, state and both directions' credit counters."""

    local_port: int
    peer_cid: int
    peer_port: int
    state: State
    type: int = VsockType.STREAM  # STREAM or SEQPACKET (negotiated: VIRTIO_VSOCK_F_SEQPACKET)
    buf_alloc: int = VSOCK_BUF_ALLOC
    fwd_cnt: int = 0  # bytes received from the peer and passed on (u32, wraps)
    rx_cnt: int = 0  # bytes received from the peer (u32, wraps)
    last_fwd_sent: int = 0  # the fwd_cnt the peer last heard from us
    peer_buf_alloc: int = 0
    peer_fwd_cnt: int = 0
    tx_cnt: int = 0  # bytes sent to the peer (u32, wraps)
    peer_shutdown: int = 0  # VsockShutdown flags the peer sent
    local_shutdown: int = 0  # flags we sent (or will)
    deadline: float | None = None  # CLOSING: when to give up waiting for the RST
    owe: int = 0  # control packets owed: _OWE_* bits
    owe_shutdown: int = 0  # the flags of the SHUTDOWN owed
    credit_requested: bool = False
    #: The I/O shell's object for this connection (a socket, a stream); the core never looks.
    app: Any = None

    @property
    def key(self) -> Key:
        return (self.local_port, self.peer_cid, self.peer_port)

    @property
    def rx_pending(self) -> int:
        """Bytes received and not yet passed on (at most ``buf_alloc``)."""
        return (self.rx_cnt - self.fwd_cnt) & _U32

    @property
    def in_flight(self) -> int:
        """Bytes sent that the peer has not passed on yet, as far as we know."""
        return (self.tx_cnt - self.peer_fwd_cnt) & _U32

    def __repr__(self) -> str:
        return (f"<vsock {self.local_port} <-> {self.peer_cid}:{self.peer_port} {self.state.value}>")


_OWE_REQUEST, _OWE_RESPONSE, _OWE_SHUTDOWN, _OWE_CREDIT, _OWE_CREDIT_REQUEST = 1, 2, 4, 8, 16
_OWED = ((_OWE_REQUEST, VsockOp.REQUEST), (_OWE_RESPONSE, VsockOp.RESPONSE),
         (_OWE_SHUTDOWN, VsockOp.SHUTDOWN), (_OWE_CREDIT, VsockOp.CREDIT_UPDATE),
         (_OWE_CREDIT_REQUEST, VsockOp.CREDIT_REQUEST))


# --- events: what one received packet means to the application ---------------------------------


@dataclass(frozen=True)
class Event:
    conn: Connection


@dataclass(frozen=True)
class Requested(Event):
    """The peer asks to connect to a port we listen on: :meth:`VsockCore.accept` or
    :meth:`VsockCore.reset` it."""


@dataclass(frozen=True)
class Connected(Event):
    """Our REQUEST was answered with RESPONSE."""


@dataclass(frozen=True)
class Data(Event):
    """``length`` payload bytes arrived for ``conn``: pass them on, then call ``consumed``.
    On a SEQPACKET connection ``flags`` has EOM on a message's last packet (and EOR if the
    sender marked a record end)."""

    length: int
    flags: int = 0


@dataclass(frozen=True)
class CreditUpdate(Event):
    """The peer's credit changed: more may be sent."""


@dataclass(frozen=True)
class PeerShutdown(Event):
    """The peer will send (SEND) or receive (RECEIVE) no more; ``flags`` is all it said so far."""

    flags: int


@dataclass(frozen=True)
class Reset(Event):
    """The connection is gone: the peer reset it (or refused it, while connecting), or it
    broke the protocol and we reset it.  ``why`` says which."""

    why: str
    refused: bool = False


@dataclass(frozen=True)
class Closed(Event):
    """The connection ended in order (both sides shut down, the RST exchanged)."""


@dataclass
class CoreStats:
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    bad_packets: int = 0
    rst_sent: int = 0
    rst_dropped: int = 0
    credit_violations: int = 0
    refused: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# --- the core ----------------------------------------------------------------------------------


class VsockCore:
    """All connections of one side.  ``local_cid``: our CID (packets must be addressed to it);
    ``peer_cid``: the one CID the peer may send from (the device's guest), or None (a driver
    hears from the host and, in principle, other CIDs)."""

    def __init__(self, local_cid: int, peer_cid: int | None = None, *,
                 buf_alloc: int = VSOCK_BUF_ALLOC, max_connections: int = VSOCK_MAX_CONNECTIONS,
                 max_pending_rst: int = VSOCK_MAX_PENDING_RST,
                 first_port: int = FIRST_EPHEMERAL_PORT):
        if not 0 < buf_alloc <= _U32:
            raise UsageError(f"buf_alloc {buf_alloc} does not fit a u32")
        self.local_cid = local_cid
        self.peer_cid = peer_cid
        self.buf_alloc = buf_alloc
        self.max_connections = max_connections
        self.max_pending_rst = max_pending_rst
        self.conns: dict[Key, Connection] = {}
        self.listening: set[int] = set()
        #: Accept a REQUEST to any port (the host bridge: every port may have a listener).
        self.listen_any = False
        #: Socket types in use: STREAM, and SEQPACKET once VIRTIO_VSOCK_F_SEQPACKET is
        #: negotiated (a REQUEST of another type gets RST).
        self.types: frozenset[int] = frozenset({VsockType.STREAM})
        self._owing: dict[Connection, None] = {}  # connections owing control packets, in order
        self._rst: deque[bytes] = deque()
        self._next_port = first_port
        self._first_port = first_port
        self.stats = CoreStats()
        self._handlers: dict[int, Callable[[Connection, VsockHdr], Event | None]] = {
            VsockOp.REQUEST: self._on_request_again,
            VsockOp.RESPONSE: self._on_response,
            VsockOp.RST: self._on_rst,
            VsockOp.SHUTDOWN: self._on_shutdown,
            VsockOp.RW: self._on_rw,
            VsockOp.CREDIT_UPDATE: self._on_credit_update,
            VsockOp.CREDIT_REQUEST: self._on_credit_request,
        }

    # --- packets in --------------------------------------------------------------------------------

    def receive(self, raw: bytes | memoryview, payload_len: int) -> Event | None:
        """One packet from the peer (header bytes; ``payload_len`` bytes follow it).  Raises
        :class:`VsockPacketError` for a packet that breaks 5.10.6 (drop it; any connection it
        named is reset); returns what it means, if anything."""
        self.stats.packets_in += 1
        try:
            hdr = parse_header(raw, payload_len)
            if self.peer_cid is not None and hdr.src_cid != self.peer_cid:
                raise VsockPacketError(f"src_cid {hdr.src_cid} is not the peer's CID {self.peer_cid}")
        except VsockPacketError:
            self.stats.bad_packets += 1
            raise
        if hdr.dst_cid != self.local_cid:
            self._reply_rst(hdr)  # a CID nobody here answers to
            return None
        conn = self.conns.get((hdr.dst_port, hdr.src_cid, hdr.src_port))
        if conn is None:
            return self._no_connection(hdr)
        if hdr.type != conn.type:
            return self._broken(conn, f"type {hdr.type} on a connection of type {conn.type}")
        if hdr.op != VsockOp.RST:
            conn.peer_buf_alloc, conn.peer_fwd_cnt = hdr.buf_alloc, hdr.fwd_cnt
        return self._handlers[hdr.op](conn, hdr)

    def _no_connection(self, hdr: VsockHdr) -> Event | None:
        if hdr.op == VsockOp.RST:
            return None
        if hdr.op != VsockOp.REQUEST or hdr.type not in self.types:
            self._reply_rst(hdr)
            return None
        if not (self.listen_any or hdr.dst_port in self.listening) \
                or len(self.conns) >= self.max_connections:
            self.stats.refused += 1
            self._reply_rst(hdr)
            return None
        conn = self._add(Connection(hdr.dst_port, hdr.src_cid, hdr.src_port, State.REQUESTED,
                                    hdr.type, buf_alloc=self.buf_alloc, peer_buf_alloc=hdr.buf_alloc,
                                    peer_fwd_cnt=hdr.fwd_cnt))
        return Requested(conn)

    def _on_request_again(self, conn: Connection, hdr: VsockHdr) -> Event | None:
        return self._broken(conn, "REQUEST on a connection that exists")

    def _on_response(self, conn: Connection, hdr: VsockHdr) -> Event | None:
        if conn.state != State.CONNECTING:
            return self._broken(conn, f"RESPONSE while {conn.state.value}")
        conn.state = State.CONNECTED
        return Connected(conn)

    def _on_rst(self, conn: Connection, hdr: VsockHdr) -> Event | None:
        was = conn.state
        self._forget(conn)
        if was == State.CLOSING:
            return Closed(conn)
        return Reset(conn, "refused by the peer" if was == State.CONNECTING else "reset by the peer",
                     refused=was == State.CONNECTING)

    def _on_shutdown(self, conn: Connection, hdr: VsockHdr) -> Event | None:
        if conn.state == State.CLOSING:
            if (conn.peer_shutdown | hdr.flags) & BOTH == BOTH:  # both closed at once: finish
                self.reset(conn)
                return Closed(conn)
            conn.peer_shutdown |= hdr.flags & BOTH
            return None
        if conn.state != State.CONNECTED:
            return self._broken(conn, f"SHUTDOWN while {conn.state.value}")
        conn.peer_shutdown |= hdr.flags & BOTH
        done = self._finish_if_done(conn)
        return done or PeerShutdown(conn, conn.peer_shutdown)

    def _on_rw(self, conn: Connection, hdr: VsockHdr) -> Event | None:
        if conn.state not in (State.CONNECTED, State.CLOSING):
            return self._broken(conn, f"RW while {conn.state.value}")
        if conn.peer_shutdown & VsockShutdown.SEND:
            return self._broken(conn, "RW after the peer's SHUTDOWN SEND")
        if conn.rx_pending + hdr.len > conn.buf_alloc:
            self.stats.credit_violations += 1
            return self._broken(conn, f"RW of {hdr.len} bytes past our credit ({conn.rx_pending} of "
                                      f"{conn.buf_alloc} buffered; 5.10.6.3)")
        conn.rx_cnt = (conn.rx_cnt + hdr.len) & _U32
        self.stats.bytes_in += hdr.len
        if conn.type == VsockType.SEQPACKET:
            return Data(conn, hdr.len, hdr.flags & _SEQ_FLAGS)  # an empty packet may end a message
        return Data(conn, hdr.len) if hdr.len else None

    def _on_credit_update(self, conn: Connection, hdr: VsockHdr) -> Event | None:
        conn.credit_requested = False
        return CreditUpdate(conn)

    def _on_credit_request(self, conn: Connection, hdr: VsockHdr) -> Event | None:
        if conn.state in (State.CONNECTED, State.CLOSING):
            self._owe(conn, _OWE_CREDIT)
        return CreditUpdate(conn)

    def _broken(self, conn: Connection, why: str) -> Event:
        """The peer broke the protocol on ``conn``: reset it (5.10.6.4)."""
        self.stats.bad_packets += 1
        self.reset(conn)
        return Reset(conn, why)

    # --- packets out -------------------------------------------------------------------------------

    def pop_control(self) -> bytes | None:
        """The header of the next control packet to send (no payload), or None."""
        while self._owing:
            conn = next(iter(self._owing))
            for bit, op in _OWED:
                if conn.owe & bit:
                    conn.owe &= ~bit
                    if not conn.owe:
                        del self._owing[conn]
                    flags = conn.owe_shutdown if op == VsockOp.SHUTDOWN else 0
                    return self._header(conn, op, 0, flags)
            del self._owing[conn]
        if self._rst:
            self.stats.packets_out += 1
            self.stats.rst_sent += 1
            return self._rst.popleft()
        return None

    @property
    def control_pending(self) -> bool:
        return bool(self._owing or self._rst)

    def send_window(self, conn: Connection) -> int:
        """Payload bytes that may be sent on ``conn`` now (0 while the peer's credit is spent)."""
        if (conn.state != State.CONNECTED or conn.local_shutdown & VsockShutdown.SEND
                or conn.peer_shutdown & VsockShutdown.RECEIVE):
            return 0
        in_flight = conn.in_flight
        if in_flight >= conn.peer_buf_alloc:  # a peer's fwd_cnt past our tx_cnt lands here too
            return 0
        return min(conn.peer_buf_alloc - in_flight, MAX_PKT_PAYLOAD)

    def credit(self, conn: Connection) -> int:
        """All the peer lets us send on ``conn`` now (a SEQPACKET message must fit whole)."""
        if self.send_window(conn) == 0:
            return 0
        return conn.peer_buf_alloc - conn.in_flight

    def data_header(self, conn: Connection, length: int, flags: int = 0) -> bytes:
        """The header of an RW packet carrying ``length`` bytes (at most :meth:`send_window`;
        SEQPACKET: ``flags`` EOM on a message's last packet, which may be empty)."""
        window = self.send_window(conn)
        empty_eom = length == 0 and conn.type == VsockType.SEQPACKET and flags & VsockSeqFlag.EOM
        if not (0 < length <= window or (empty_eom and window)):
            raise UsageError(f"RW of {length} bytes on {conn!r}: the window is {window}")
        conn.tx_cnt = (conn.tx_cnt + length) & _U32
        self.stats.bytes_out += length
        return self._header(conn, VsockOp.RW, length, flags & _SEQ_FLAGS if conn.type == VsockType.SEQPACKET else 0)

    def want_credit(self, conn: Connection) -> None:
        """We have data and no window: ask the peer once for a CREDIT_UPDATE (5.10.6.3)."""
        if not conn.credit_requested and conn.state == State.CONNECTED:
            conn.credit_requested = True
            self._owe(conn, _OWE_CREDIT_REQUEST)

    def _header(self, conn: Connection, op: int, length: int, flags: int = 0) -> bytes:
        self.stats.packets_out += 1
        conn.last_fwd_sent = conn.fwd_cnt
        if op != VsockOp.CREDIT_UPDATE:
            conn.owe &= ~_OWE_CREDIT  # every packet tells the peer our fwd_cnt
        return build_header(src_cid=self.local_cid, dst_cid=conn.peer_cid, src_port=conn.local_port,
                            dst_port=conn.peer_port, op=op, length=length, type=conn.type,
                            flags=flags, buf_alloc=conn.buf_alloc, fwd_cnt=conn.fwd_cnt)

    def _reply_rst(self, hdr: VsockHdr) -> None:
        """RST to the sender of a packet that has no connection here (never to an RST)."""
        if hdr.op == VsockOp.RST:
            return
        if len(self._rst) >= self.max_pending_rst:
            self.stats.rst_dropped += 1
            return
        self._rst.append(build_header(src_cid=hdr.dst_cid, dst_cid=hdr.src_cid, src_port=hdr.dst_port,
                                      dst_port=hdr.src_port, op=VsockOp.RST, type=hdr.type))

    def _owe(self, conn: Connection, bit: int) -> None:
        conn.owe |= bit
        self._owing[conn] = None

    # --- the application's calls -------------------------------------------------------------------

    def listen(self, port: int) -> None:
        self.listening.add(_port(port))

    def unlisten(self, port: int) -> None:
        self.listening.discard(port)

    def connect(self, peer_cid: int, peer_port: int, app: Any = None,
                local_port: int | None = None, type: int = VsockType.STREAM) -> Connection:
        """Open a connection: REQUEST goes out; :class:`Connected` or :class:`Reset` follows."""
        if type not in self.types:
            raise UsageError(f"socket type {type} is not negotiated (types: {sorted(self.types)})")
        if len(self.conns) >= self.max_connections:
            raise UsageError(f"{self.max_connections} vsock connections are open already")
        port = self._free_port() if local_port is None else _port(local_port)
        conn = Connection(port, peer_cid, _port(peer_port), State.CONNECTING, type,
                          buf_alloc=self.buf_alloc, app=app)
        if conn.key in self.conns:
            raise UsageError(f"{conn!r} exists already")
        self._add(conn)
        self._owe(conn, _OWE_REQUEST)
        return conn

    def accept(self, conn: Connection, app: Any = None) -> None:
        """Answer a :class:`Requested` connection with RESPONSE."""
        if conn.state != State.REQUESTED or self.conns.get(conn.key) is not conn:
            raise UsageError(f"accept of {conn!r}, which was not requested")
        conn.state = State.CONNECTED
        conn.app = app if app is not None else conn.app
        self._owe(conn, _OWE_RESPONSE)

    def consumed(self, conn: Connection, length: int) -> Event | None:
        """The application took ``length`` received bytes: credit goes back to the peer (a
        CREDIT_UPDATE when its view of our free space ran low, as Linux does)."""
        if not 0 <= length <= conn.rx_pending:
            raise UsageError(f"consumed {length} bytes of {conn.rx_pending} received on {conn!r}")
        conn.fwd_cnt = (conn.fwd_cnt + length) & _U32
        if self.conns.get(conn.key) is not conn:
            return None
        seen_free = conn.buf_alloc - ((conn.rx_cnt - conn.last_fwd_sent) & _U32)
        if conn.fwd_cnt != conn.last_fwd_sent and seen_free < min(MAX_PKT_PAYLOAD, conn.buf_alloc // 2) \
                and not conn.peer_shutdown & VsockShutdown.SEND:
            self._owe(conn, _OWE_CREDIT)
        return self._finish_if_done(conn)

    def shutdown(self, conn: Connection, flags: int, now: float = 0.0) -> None:
        """We will send (SEND) and/or receive (RECEIVE) no more; both flags start the close."""
        flags &= BOTH
        if conn.state not in (State.CONNECTED, State.CLOSING) or not flags & ~conn.local_shutdown:
            return
        conn.local_shutdown |= flags
        conn.owe_shutdown = conn.local_shutdown
        self._owe(conn, _OWE_SHUTDOWN)
        if conn.local_shutdown == BOTH and conn.state == State.CONNECTED:
            conn.state = State.CLOSING
            conn.deadline = now + CLOSE_TIMEOUT

    def close(self, conn: Connection, now: float = 0.0) -> None:
        """Close in order (connected), or reset (not connected yet)."""
        if conn.state in (State.CONNECTED, State.CLOSING):
            self.shutdown(conn, BOTH, now)
        elif conn.state != State.CLOSED:
            self.reset(conn)

    def reset(self, conn: Connection) -> None:
        """Send RST and forget ``conn`` (no event follows: the caller knows)."""
        if self.conns.get(conn.key) is not conn:
            return
        self._forget(conn)
        if len(self._rst) >= self.max_pending_rst:
            self.stats.rst_dropped += 1
            return
        self._rst.append(build_header(src_cid=self.local_cid, dst_cid=conn.peer_cid,
                                      src_port=conn.local_port, dst_port=conn.peer_port,
                                      op=VsockOp.RST, type=conn.type, buf_alloc=conn.buf_alloc,
                                      fwd_cnt=conn.fwd_cnt))

    def expire(self, now: float) -> list[Event]:
        """Connections whose close timed out are reset; their :class:`Closed` events."""
        late = [c for c in self.conns.values()
                if c.state == State.CLOSING and c.deadline is not None and c.deadline <= now]
        for conn in late:
            self.reset(conn)
        return [Closed(c) for c in late]

    def next_deadline(self) -> float | None:
        deadlines = [c.deadline for c in self.conns.values() if c.deadline is not None]
        return min(deadlines) if deadlines else None

    def reset_all(self) -> list[Connection]:
        """The transport was reset (5.10.6.7): forget every connection, send nothing."""
        conns = list(self.conns.values())
        for conn in conns:
            self._forget(conn)
        self._rst.clear()
        return conns

    # --- bookkeeping -------------------------------------------------------------------------------

    def _finish_if_done(self, conn: Connection) -> Event | None:
        """Both peer flags seen and every byte passed on: answer with RST (Linux does)."""
        if conn.peer_shutdown & BOTH == BOTH and conn.rx_pending == 0 and conn.state == State.CONNECTED:
            self.reset(conn)
            return Closed(conn)
        return None

    def _add(self, conn: Connection) -> Connection:
        self.conns[conn.key] = conn
        return conn

    def _forget(self, conn: Connection) -> None:
        if self.conns.get(conn.key) is conn:
            del self.conns[conn.key]
        self._owing.pop(conn, None)
        conn.owe = 0
        conn.state = State.CLOSED

    def _free_port(self) -> int:
        used = {c.local_port for c in self.conns.values()} | self.listening
        for _ in range(len(used) + 1):
            port = self._next_port
            self._next_port = port + 1 if port < _U32 - 1 else self._first_port
            if port not in used:
                return port
        raise UsageError("no free local vsock port")  # pragma: no cover - needs 2**32 ports


def _port(port: int) -> int:
    if not 0 <= port <= _U32:
        raise UsageError(f"vsock port {port} does not fit 32 bits")
    return port


__all__ = ["BOTH", "CLOSE_TIMEOUT", "Closed", "Connected", "Connection", "CoreStats", "CreditUpdate",
           "Data", "Event", "PeerShutdown", "Requested", "Reset", "State", "VsockCore",
           "VsockPacketError"]
