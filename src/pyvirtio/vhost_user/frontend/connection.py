"""The vhost-user front-end connection, sans I/O (the mirror of ``backend.py``).

A :class:`FrontendConnection` builds requests and checks replies; it never touches a socket.
Each request method returns an :class:`Outgoing` — the message bytes, the fds to pass with them
(borrowed: the caller still owns and closes them), and what reply to wait for.  Building a
request *is* sending it, as in h11: the connection's state moves when the request is built
(or, for a request that is answered, when its answer is accepted).  The I/O shell writes
``out.data`` with ``out.fds``, then feeds what the socket delivers to :meth:`receive` and takes
the answers from :meth:`next_result`.

The back-end is not trusted (vhost-user.rst, "Communication": "If front-end ... receives a wrong
reply it will close the connection"):

* every reply header must carry version 1 and the REPLY bit, no reserved bits, and the request
  number of the oldest request still waiting for an answer (:class:`WrongReplyType` …);
* its payload must be exactly the size of that request's reply type (:class:`BadReplySize`);
* a reply carries no fds (:class:`UnexpectedFds`; they are closed at once), except
  GET_INFLIGHT_FD's, which carries exactly one;
* GET_VRING_BASE must answer for the ring that was asked (:class:`BadReplyValue`).

Any of these ends the connection: every later call raises :class:`FrontendBroken`.  An orderly
refusal — a non-zero REPLY_ACK (:class:`RequestNacked`) or GET_CONFIG's empty reply
(:class:`ConfigReadFailed`) — fails only that request.

Protocol rules the front-end keeps for itself (a :class:`FrontendUsageError` when the caller
breaks one): GET/SET_PROTOCOL_FEATURES only when the back-end offers
VHOST_USER_F_PROTOCOL_FEATURES; every request gated by a protocol feature only once it is
negotiated; SET_VRING_ENABLE only with VHOST_USER_F_PROTOCOL_FEATURES; SET_MEM_TABLE with at
most 8 regions.  :meth:`raw` sends anything at all, for the conformance suite.

The back-end request channel: :meth:`set_backend_req_fd` hands the back-end one end of a socket
pair (BACKEND_REQ negotiated); what the back-end then sends on it is checked and answered by
:class:`~.frontend_channel.FrontendChannel`, a core of its own.

Inflight I/O tracking (vhost-user.rst, "Inflight I/O tracking"): :meth:`get_inflight_fd` asks the
back-end for the shared buffer (its answer's fd belongs to the caller, who keeps it for as long as
the device lives); :meth:`set_inflight_fd` hands that buffer to a back-end — a restarted one
reads from it which requests were in flight and resubmits them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Sequence

from ...spec.features import Feature
from ..fdio import close_fds
from ..errors import FramingError
from .errors import (BadReplyHeader, BadReplySize, BadReplyValue, BackendError,
                              ConfigReadFailed, FrontendBroken, FrontendUsageError,
                              RequestNacked, UnexpectedFds, UnsolicitedReply, WrongReplyType)
from ..protocol import (KNOWN_FLAGS, MEMORY_BASELINE_NREGIONS, VERSION, VERSION_MASK,
                       VHOST_USER_F_PROTOCOL_FEATURES, VRING_NOFD_MASK, FrontendReq, HeaderFlag,
                       ProtocolFeature, CORE_PROTOCOL_FEATURES, request_name)
from ..wire import (U64, ConfigSpace, Framer, Inflight, MemoryRegion, MemoryTable, Message,
                   SingleMemoryRegion, VringAddr, VringState, encode)

R = FrontendReq
PF = ProtocolFeature

#: Protocol features a bare FrontendConnection asks for when the back-end offers them (no
#: BACKEND_REQ: the transport, which reads the back-end's channel, adds it).
DEFAULT_FRONTEND_PROTOCOL_FEATURES = CORE_PROTOCOL_FEATURES
PROTOCOL_FEATURES_BIT = 1 << VHOST_USER_F_PROTOCOL_FEATURES


class Expect(Enum):
    """What answer a request waits for."""

    NONE = "none"  # no reply at all
    ACK = "ack"  # a REPLY_ACK u64: 0 success, non-zero refusal
    BODY = "body"  # the request's own reply payload (GET_*)


def _raw(msg: Message) -> Message:
    return msg


@dataclass(frozen=True, eq=False)
class Outgoing:
    """One request to write: ``data`` with ``fds`` (borrowed), and the answer it waits for."""

    request: int
    data: bytes
    fds: tuple[int, ...]
    expect: Expect
    parse: Callable[[Message], Any] = field(default=_raw, repr=False)  # the answer's decoder
    apply: Callable[[Any], None] | None = field(default=None, repr=False)
    reply_fds: int = 0  # fds the answer carries (GET_INFLIGHT_FD: 1)

    @property
    def name(self) -> str:
        return request_name(self.request)

    @property
    def need_reply(self) -> bool:
        return self.expect is not Expect.NONE


@dataclass(frozen=True)
class Completed:
    """The answer to one request: its parsed value, or the request-scope error it met."""

    out: Outgoing
    value: Any = None
    error: BackendError | None = None


@dataclass
class RingState:
    """What the front-end told the back-end about one vring."""

    index: int
    num: int | None = None
    base: int = 0
    addr: VringAddr | None = None
    kick: bool = False
    call: bool = False
    err: bool = False
    enabled: bool = False
    started: bool = False  # started by SET_VRING_KICK, stopped by GET_VRING_BASE


# --- reply parsers -------------------------------------------------------------------------------


def _exact(msg: Message, size: int, what: str) -> bytes:
    if len(msg.payload) != size:
        raise BadReplySize(f"{request_name(msg.request)} reply is {len(msg.payload)} bytes, "
                           f"{what} is {size}")
    return msg.payload


def _u64(msg: Message) -> int:
    return U64.unpack(_exact(msg, U64.size(), "a u64")).value


def _vring_state(msg: Message) -> VringState:
    return VringState.unpack(_exact(msg, VringState.size(), "a vring state"))


# --- the connection ------------------------------------------------------------------------------


class FrontendConnection:
    """The front-end side of one vhost-user connection."""

    def __init__(self, *, name: str = "vhost-user",
                 protocol_features: int = DEFAULT_FRONTEND_PROTOCOL_FEATURES,
                 reply_ack: bool = True):
        self.name = name
        self.wanted_protocol_features = protocol_features
        self.use_reply_ack = reply_ack
        self._framer = Framer()
        self._pending: deque[Outgoing] = deque()
        self._done: deque[Completed] = deque()
        self.error: BackendError | None = None
        self.closed = False
        self.backend_features: int | None = None  # GET_FEATURES
        self.backend_protocol_features: int | None = None  # GET_PROTOCOL_FEATURES
        self.protocol_features = 0  # what SET_PROTOCOL_FEATURES acked
        self.acked_features: int | None = None  # what SET_FEATURES sent
        self.owner = False
        self.queue_num: int | None = None
        self.max_mem_slots: int | None = None
        self.regions: list[MemoryRegion] = []
        self.rings: dict[int, RingState] = {}
        self.status: int | None = None  # last SET_STATUS
        self.backend_channel = False  # SET_BACKEND_REQ_FD was accepted

    # --- state queries -------------------------------------------------------------------------

    def has_protocol_feature(self, bit: int) -> bool:
        return bool(self.protocol_features & (1 << bit))

    @property
    def offers_protocol_features(self) -> bool:
        return self.backend_features is not None and bool(self.backend_features & PROTOCOL_FEATURES_BIT)

    @property
    def protocol_features_negotiated(self) -> bool:
        """VHOST_USER_F_PROTOCOL_FEATURES acked in SET_FEATURES (rings then need ENABLE)."""
        return self.acked_features is not None and bool(self.acked_features & PROTOCOL_FEATURES_BIT)

    @property
    def awaiting(self) -> int:
        """Requests still waiting for their answer."""
        return len(self._pending)

    def ring(self, index: int) -> RingState:
        if not 0 <= index <= 0xFF:
            raise FrontendUsageError(f"ring index {index} does not fit vhost-user's 8 bits")
        return self.rings.setdefault(index, RingState(index))

    # --- sending -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.error is not None or self.closed:
            raise FrontendBroken(f"{self.name}: connection is broken: {self.error or 'closed'}")

    def _gate(self, bit: ProtocolFeature, what: str) -> None:
        if not self.has_protocol_feature(bit):
            raise FrontendUsageError(f"{what} needs protocol feature {bit.name}, not negotiated")

    def _out(self, request: FrontendReq, payload: bytes = b"", fds: Sequence[int] = (), *,
             expect: Expect, parse: Callable[[Message], Any] = _raw, apply=None,
             flags: int = VERSION) -> Outgoing:
        self._check_open()
        if expect is Expect.ACK:
            flags |= HeaderFlag.NEED_REPLY
            parse = _ack_parser(request)
        out = Outgoing(int(request), encode(request, payload, flags=flags), tuple(fds), expect,
                       parse, apply)
        if expect is Expect.NONE:
            if apply is not None:
                apply(None)
        else:
            self._pending.append(out)
        return out

    def _body(self, request, payload=b"", *, parse, apply=None) -> Outgoing:
        return self._out(request, payload, expect=Expect.BODY, parse=parse, apply=apply)

    def _cmd(self, request, payload=b"", fds=(), *, apply=None, ack: bool | None = None) -> Outgoing:
        """A request with no reply of its own: with REPLY_ACK negotiated it asks for an ack."""
        if ack is None:
            ack = self.use_reply_ack and self.has_protocol_feature(PF.REPLY_ACK)
        return self._out(request, payload, fds, expect=Expect.ACK if ack else Expect.NONE,
                         apply=apply)

    # features and ownership

    def get_features(self) -> Outgoing:
        return self._body(R.GET_FEATURES, parse=_u64, apply=self._got_features)

    def _got_features(self, value: int) -> None:
        self.backend_features = value

    def set_features(self, features: int) -> Outgoing:
        def apply(_):
            self.acked_features = features
            if not features & PROTOCOL_FEATURES_BIT:
                for ring in self.rings.values():  # "the back-end must enable all rings"
                    ring.enabled = True
        return self._cmd(R.SET_FEATURES, U64(features).pack(), apply=apply)

    def get_protocol_features(self) -> Outgoing:
        self._needs_protocol_features("GET_PROTOCOL_FEATURES")
        return self._body(R.GET_PROTOCOL_FEATURES, parse=_u64, apply=self._got_protocol_features)

    def _got_protocol_features(self, value: int) -> None:
        self.backend_protocol_features = value

    def set_protocol_features(self, features: int | None = None) -> Outgoing:
        """Ack ``features`` (default: what we want of what the back-end offers).  Never asks
        for an ack: REPLY_ACK itself is only negotiated by this message."""
        self._needs_protocol_features("SET_PROTOCOL_FEATURES")
        if features is None:
            if self.backend_protocol_features is None:
                raise FrontendUsageError("GET_PROTOCOL_FEATURES first (or name the features)")
            features = self.backend_protocol_features & self.wanted_protocol_features

        def apply(_):
            self.protocol_features = features
        return self._out(R.SET_PROTOCOL_FEATURES, U64(features).pack(), expect=Expect.NONE,
                         apply=apply)

    def _needs_protocol_features(self, what: str) -> None:
        if not self.offers_protocol_features:
            raise FrontendUsageError(f"{what}: the back-end does not offer "
                                     "VHOST_USER_F_PROTOCOL_FEATURES (or GET_FEATURES not sent)")

    def set_owner(self) -> Outgoing:
        def apply(_):
            self.owner = True
        return self._cmd(R.SET_OWNER, apply=apply)

    def get_queue_num(self) -> Outgoing:
        self._gate(PF.MQ, "GET_QUEUE_NUM")

        def apply(value):
            if value < 1:
                raise BadReplyValue(f"GET_QUEUE_NUM answered {value} queues")
            self.queue_num = value
        return self._body(R.GET_QUEUE_NUM, parse=_u64, apply=apply)

    def reset_device(self) -> Outgoing:
        self._gate(PF.RESET_DEVICE, "RESET_DEVICE")

        def apply(_):
            self.acked_features = None
            self.status = None
            for index in list(self.rings):
                self.rings[index] = RingState(index)
        return self._cmd(R.RESET_DEVICE, apply=apply)

    # memory

    def set_mem_table(self, regions: Sequence[MemoryRegion], fds: Sequence[int]) -> Outgoing:
        if not 1 <= len(regions) <= MEMORY_BASELINE_NREGIONS:
            raise FrontendUsageError(f"SET_MEM_TABLE takes 1..{MEMORY_BASELINE_NREGIONS} regions, "
                                     f"not {len(regions)} (use ADD_MEM_REG)")
        if len(fds) != len(regions):
            raise FrontendUsageError(f"{len(fds)} fds for {len(regions)} regions")

        def apply(_):
            self.regions = list(regions)
        return self._cmd(R.SET_MEM_TABLE, MemoryTable(tuple(regions)).pack(), fds, apply=apply)

    def get_max_mem_slots(self) -> Outgoing:
        self._gate(PF.CONFIGURE_MEM_SLOTS, "GET_MAX_MEM_SLOTS")

        def apply(value):
            self.max_mem_slots = value
        return self._body(R.GET_MAX_MEM_SLOTS, parse=_u64, apply=apply)

    def add_mem_reg(self, region: MemoryRegion, fd: int) -> Outgoing:
        self._gate(PF.CONFIGURE_MEM_SLOTS, "ADD_MEM_REG")

        def apply(_):
            self.regions.append(region)
        return self._cmd(R.ADD_MEM_REG, SingleMemoryRegion.of(region).pack(), (fd,), apply=apply)

    def rem_mem_reg(self, region: MemoryRegion) -> Outgoing:
        self._gate(PF.CONFIGURE_MEM_SLOTS, "REM_MEM_REG")

        def apply(_):
            self.regions = [r for r in self.regions if r != region]
        return self._cmd(R.REM_MEM_REG, SingleMemoryRegion.of(region).pack(), apply=apply)

    # vrings

    def set_vring_num(self, index: int, num: int) -> Outgoing:
        ring = self.ring(index)

        def apply(_):
            ring.num = num
        return self._cmd(R.SET_VRING_NUM, VringState(index, num).pack(), apply=apply)

    def set_vring_base(self, index: int, base: int) -> Outgoing:
        ring = self.ring(index)

        def apply(_):
            ring.base = base
        return self._cmd(R.SET_VRING_BASE, VringState(index, base).pack(), apply=apply)

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int, *, flags: int = 0,
                       log: int = 0) -> Outgoing:
        """Ring addresses in the front-end's address space (the regions' ``userspace_addr``)."""
        ring = self.ring(index)
        addr = VringAddr(index, flags, desc, used, avail, log)

        def apply(_):
            ring.addr = addr
        return self._cmd(R.SET_VRING_ADDR, addr.pack(), apply=apply)

    def get_vring_base(self, index: int) -> Outgoing:
        """Stops the ring; the answer is the next avail index the back-end would process."""
        ring = self.ring(index)

        def parse(msg: Message) -> int:
            state = _vring_state(msg)
            if state.index != index:
                raise BadReplyValue(f"GET_VRING_BASE for ring {index} answered for ring {state.index}")
            self._check_base(ring, state.num)
            return state.num

        def apply(value: int) -> None:
            ring.started = False
            ring.base = value
            ring.kick = ring.call = ring.err = False
        return self._body(R.GET_VRING_BASE, VringState(index, 0).pack(), parse=parse, apply=apply)

    def _check_base(self, ring: RingState, base: int) -> None:
        """A ring position the back-end returns must exist: split, a 16-bit avail index;
        packed (vhost-user.rst, "vring descriptor indices for packed virtqueues"), avail and used
        positions (bits 0-14, 16-30) inside the ring."""
        packed = (self.acked_features or 0) >> Feature.RING_PACKED & 1
        positions = (base & 0x7FFF, base >> 16 & 0x7FFF) if packed else ()
        if (not packed and base > 0xFFFF) or any(p >= (ring.num or 0x8000) for p in positions):
            raise BadReplyValue(f"GET_VRING_BASE for ring {ring.index} answered {base:#x}, not a "
                                f"position in a {'packed' if packed else 'split'} ring of "
                                f"{ring.num} descriptors")

    def _vring_fd(self, request: FrontendReq, index: int, fd: int | None, flag: str) -> Outgoing:
        ring = self.ring(index)
        value = index | (VRING_NOFD_MASK if fd is None else 0)

        def apply(_):
            setattr(ring, flag, fd is not None)
            if request is R.SET_VRING_KICK:
                ring.started = True
        return self._cmd(request, U64(value).pack(), () if fd is None else (fd,), apply=apply)

    def set_vring_kick(self, index: int, fd: int | None) -> Outgoing:
        """Hand over the kick eventfd (None: the back-end polls).  Starts the ring."""
        return self._vring_fd(R.SET_VRING_KICK, index, fd, "kick")

    def set_vring_call(self, index: int, fd: int | None) -> Outgoing:
        return self._vring_fd(R.SET_VRING_CALL, index, fd, "call")

    def set_vring_err(self, index: int, fd: int | None) -> Outgoing:
        return self._vring_fd(R.SET_VRING_ERR, index, fd, "err")

    def set_vring_enable(self, index: int, enable: bool) -> Outgoing:
        if not self.offers_protocol_features:
            raise FrontendUsageError("SET_VRING_ENABLE needs VHOST_USER_F_PROTOCOL_FEATURES")
        ring = self.ring(index)

        def apply(_):
            ring.enabled = enable
        return self._cmd(R.SET_VRING_ENABLE, VringState(index, int(enable)).pack(), apply=apply)

    # config space and status

    def get_config(self, offset: int, size: int, flags: int = 0) -> Outgoing:
        self._gate(PF.CONFIG, "GET_CONFIG")
        if size <= 0:
            raise FrontendUsageError(f"GET_CONFIG of {size} bytes")

        def parse(msg: Message) -> bytes:
            if not msg.payload:
                raise ConfigReadFailed(f"GET_CONFIG [{offset}, +{size}): the back-end answered "
                                       "with an empty payload (its error reply)")
            _exact(msg, ConfigSpace.HEADER_SIZE + size, f"a config header + {size} bytes")
            cfg = ConfigSpace.unpack(msg.payload)
            if (cfg.offset, cfg.size) != (offset, size):
                raise BadReplyValue(f"GET_CONFIG [{offset}, +{size}) answered for "
                                    f"[{cfg.offset}, +{cfg.size})")
            return cfg.data
        return self._body(R.GET_CONFIG, ConfigSpace(offset, size, flags, bytes(size)).pack(),
                          parse=parse)

    def set_config(self, offset: int, data: bytes, flags: int = 0) -> Outgoing:
        self._gate(PF.CONFIG, "SET_CONFIG")
        return self._cmd(R.SET_CONFIG, ConfigSpace(offset, len(data), flags, bytes(data)).pack())

    def set_status(self, status: int) -> Outgoing:
        self._gate(PF.STATUS, "SET_STATUS")

        def apply(_):
            self.status = status
        return self._cmd(R.SET_STATUS, U64(status).pack(), apply=apply)

    def get_status(self) -> Outgoing:
        self._gate(PF.STATUS, "GET_STATUS")
        return self._body(R.GET_STATUS, parse=_u64)

    # the back-end request channel

    def set_backend_req_fd(self, fd: int) -> Outgoing:
        """Hand the back-end its end of the back-end request channel (``fd``: one end of a UNIX
        stream socket pair, borrowed; the caller reads the other end with a
        :class:`~.frontend_channel.FrontendChannel`)."""
        self._gate(PF.BACKEND_REQ, "SET_BACKEND_REQ_FD")

        def apply(_):
            self.backend_channel = True
        return self._cmd(R.SET_BACKEND_REQ_FD, b"", (fd,), apply=apply)

    # inflight I/O tracking

    def get_inflight_fd(self, num_queues: int, queue_size: int) -> Outgoing:
        """Ask for an inflight buffer for ``num_queues`` rings of ``queue_size``.  The answer is
        (:class:`~.wire.Inflight`, fd): the fd is the caller's to keep and close."""
        self._gate(PF.INFLIGHT_SHMFD, "GET_INFLIGHT_FD")
        if not (1 <= num_queues <= 0xFFFF and 1 <= queue_size <= 0xFFFF):
            raise FrontendUsageError(f"GET_INFLIGHT_FD for {num_queues} queues of {queue_size}")

        def parse(msg: Message) -> tuple[Inflight, int]:
            info = Inflight.unpack(_exact(msg, Inflight.size(), "an inflight description"))
            if info.mmap_size == 0 or (info.num_queues, info.queue_size) != (num_queues, queue_size):
                raise BadReplyValue(f"GET_INFLIGHT_FD for {num_queues} queues of {queue_size} "
                                    f"answered {info}")
            return info, msg.take_fd()
        out = Outgoing(int(R.GET_INFLIGHT_FD),
                       encode(R.GET_INFLIGHT_FD, Inflight(0, 0, num_queues, queue_size).pack()),
                       (), Expect.BODY, parse, None, reply_fds=1)
        self._check_open()
        self._pending.append(out)
        return out

    def set_inflight_fd(self, info: Inflight, fd: int) -> Outgoing:
        """Hand the inflight buffer ``fd`` (described by ``info``) to the back-end."""
        self._gate(PF.INFLIGHT_SHMFD, "SET_INFLIGHT_FD")
        return self._cmd(R.SET_INFLIGHT_FD, info.pack(), (fd,))

    # anything at all

    def raw(self, request: int, payload: bytes = b"", fds: Sequence[int] = (), *,
            flags: int = VERSION, expect: Expect = Expect.NONE) -> Outgoing:
        """Send any message (the conformance suite's probes).  An answered one comes back as the
        raw :class:`~pyvirtio.vhost_user.wire.Message` (ACK: the u64)."""
        self._check_open()
        parse: Callable[[Message], Any] = _ack_parser(request) if expect is Expect.ACK else _raw
        out = Outgoing(request, encode(request, payload, flags=flags), tuple(fds), expect, parse)
        if expect is not Expect.NONE:
            self._pending.append(out)
        return out

    # --- receiving -----------------------------------------------------------------------------

    def receive(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Take bytes (and fds) from the back-end; match every whole reply to its request.
        Raises a connection-scope :class:`BackendError` (the connection is then broken)."""
        if self.error is not None or self.closed:
            close_fds(fds)
            self._check_open()
        if not data:
            close_fds(fds)
            return
        self._framer.push(data, list(fds))
        while True:
            try:
                msg = self._framer.next_message()
            except FramingError as exc:
                self._fail(BadReplyHeader(str(exc)))
            if msg is None:
                return
            self._match(msg)

    def _match(self, msg: Message) -> None:
        try:
            self._match_reply(msg)
        finally:
            close_fds(msg.fds)  # every fd the reply's parser did not take

    def _match_reply(self, msg: Message) -> None:
        if not self._pending:
            self._fail(UnsolicitedReply(f"{request_name(msg.request)} message arrived while no "
                                        "request waits for an answer"))
        out = self._pending[0]
        if len(msg.fds) != out.reply_fds:
            self._fail(UnexpectedFds(f"{request_name(msg.request)} reply carried {len(msg.fds)} "
                                     f"fds, not {out.reply_fds} (closed)"))
        if msg.flags & ~KNOWN_FLAGS or msg.flags & VERSION_MASK != VERSION:
            self._fail(BadReplyHeader(f"{out.name} reply has flags {msg.flags:#x}"))
        if not msg.flags & HeaderFlag.REPLY:
            self._fail(BadReplyHeader(f"{out.name} reply lacks the REPLY flag (flags {msg.flags:#x})"))
        if msg.request != out.request:
            self._fail(WrongReplyType(f"waiting for the {out.name} reply, got a "
                                      f"{request_name(msg.request)} reply"))
        self._pending.popleft()
        try:
            value = out.parse(msg)
            if out.apply is not None:
                out.apply(value)
        except (RequestNacked, ConfigReadFailed) as exc:
            self._done.append(Completed(out, None, exc))
            return
        except BackendError as exc:
            self._fail(exc)
        self._done.append(Completed(out, value))

    def next_result(self) -> Completed | None:
        """The oldest answered request, or None.  A request-scope refusal is raised here."""
        if not self._done:
            if self.error is not None:
                raise FrontendBroken(f"{self.name}: connection is broken: {self.error}")
            return None
        done = self._done.popleft()
        if done.error is not None:
            raise done.error
        return done

    def fail(self, error: BackendError):
        """The shell saw the connection die (hang-up, timeout): refuse everything from now."""
        self._fail(error)

    def _fail(self, error: BackendError):
        if self.error is None:
            self.error = error
        close_fds(self._framer.take_all_fds())
        raise error

    def close(self) -> None:
        self.closed = True
        self._pending.clear()
        close_fds(self._framer.take_all_fds())


def _ack_parser(request: int) -> Callable[[Message], int]:
    def parse(msg: Message) -> int:
        value = _u64(msg)
        if value != 0:
            raise RequestNacked(request_name(request), value)
        return 0
    return parse


__all__ = ["FrontendConnection", "Outgoing", "Completed", "Expect", "RingState",
           "DEFAULT_FRONTEND_PROTOCOL_FEATURES", "PROTOCOL_FEATURES_BIT", "request_name"]
