"""The vhost-user back-end connection, sans I/O.

Feed it what the socket delivered — ``receive(data, fds)`` — and it returns what to send back
(:class:`Reply`: bytes and fds) and what it refused (:class:`Rejected`).  It never touches a
socket; it keeps the protocol state: negotiated (protocol) features, the memory table, and each
vring's addresses, fds and started/enabled state.  The I/O shell (``server.py``) watches the kick
fds, runs the queues through :meth:`BackendConnection.process_ring` and writes the call fds.

Every message is checked before its handler runs (vhost-user.rst is the rulebook):

* header: version 1 (else the stream is lost: :class:`FramingError`), no reserved flag bits, no
  REPLY bit on a request;
* the request is defined, implemented, and its protocol feature negotiated;
* the payload size fits the request, and so does the number of fds (with the NOFD bit of
  SET_VRING_KICK/CALL/ERR agreeing with them).

A message that fails is dropped with one log line naming the request and the reason; the fds
it brought are closed; with REPLY_ACK and NEED_REPLY the front-end gets a u64 1.  Only a broken
stream, or a failed request whose reply the front-end must wait for, ends the connection
(:class:`~pyvirtio.vhost_user.errors.ConnectionFatal`, raised).

The back-end request channel (``VHOST_USER_PROTOCOL_F_BACKEND_REQ``): the front-end hands over
one end of a UNIX stream socket with SET_BACKEND_REQ_FD (exactly one fd, checked to be a UNIX
stream socket; a later one replaces and closes the earlier one; it is closed at hang-up).  When
the device's config space changes (``device.config_changed()``: a blk resize, a net link change,
a console size) the shell asks :meth:`BackendConnection.config_change_message` for the bytes of
a ``CONFIG_CHANGE_MSG`` (only with CONFIG negotiated too, as vhost-user.rst says: the front-end
answers it with GET_CONFIG) and writes them.  The message never asks for a reply (no
NEED_REPLY): QEMU reads its back-end channel in its main loop, which may at that moment be
waiting for our answer on the main channel — a back-end that waited for the REPLY_ACK from the
thread that serves the main channel would wait for ever.  Nothing is lost by not asking: the
front-end's answer could only say that it re-read the config, and a front-end that cannot read
the message has hung up (the write fails).  BACKEND_SEND_FD is not offered: no message of ours
carries fds.  Ring errors are reported through each ring's err eventfd (SET_VRING_ERR), not with
``VRING_ERR`` on the channel: vhost-user.rst defines that message only with
INBAND_NOTIFICATIONS, and QEMU 7.2 does not handle it.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable, TypeAlias

from ...device import VirtioDevice
from ...errors import DriverFault, GuestMemoryError, QueueBroken, UsageError, VirtioError
from ...limits import MAX_MEM_SLOTS, PeerLog
from ...memory import GuestMemory, Region, release_region
from ...spec.features import Feature
from ...spec.status import DeviceStatus
from ...spec.vhost_user import BACKEND_REQUEST_PAYLOAD_SIZE
from ...virtq.layout import avail_ring_size, desc_table_size, is_valid_split_size, used_ring_size
from ...virtq.packed_device import is_valid_packed_size
from ...virtq.split_device import SplitDeviceQueue
from .. import errors as E
from . import inflight as I
from ..fdio import close_fds
from .inflight import PackedInflight, SplitInflight
from .memmap import InflightMapping, check_region, create_inflight, map_inflight, map_region
from .notifyfd import check_channel_fd, check_notify_fd
from ..protocol import (CONFIG_FLAG_MIGRATION, KNOWN_FLAGS, MAX_CONFIG_SIZE, MAX_FDS, VERSION,
                       VHOST_USER_F_PROTOCOL_FEATURES, VHOST_VRING_F_LOG, VRING_IDX_MASK,
                       VRING_NOFD_MASK, BackendReq, FrontendReq, HeaderFlag, ProtocolFeature,
                       DEFAULT_PROTOCOL_FEATURES, request_name)
from .vring import Vring
from ..wire import (U64, ConfigSpace, Framer, Inflight, MemoryRegion, MemoryTable, Message,
                   SingleMemoryRegion, VringAddr, VringState, encode, encode_reply)

log = logging.getLogger("pyvirtio.vhost_user")

R = FrontendReq
PF = ProtocolFeature

DEFAULT_MAX_MEM_SLOTS = MAX_MEM_SLOTS  # GET_MAX_MEM_SLOTS (pyvirtio.limits)


def protocol_features_for(device: VirtioDevice) -> int:
    """What a back-end offers for ``device``: the defaults, and INFLIGHT_SHMFD for a device that
    completes requests out of order and can be resubmitted them (``device.inflight_tracking``)."""
    extra = 1 << PF.INFLIGHT_SHMFD if getattr(device, "inflight_tracking", False) else 0
    return DEFAULT_PROTOCOL_FEATURES | extra


# --- outputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """Bytes (one whole message) to send to the front-end, with fds to pass along."""

    data: bytes
    fds: tuple[int, ...] = ()


@dataclass(frozen=True)
class Rejected:
    """A message that was dropped, and why."""

    request: int
    error: E.MessageRejected


Output = Reply | Rejected


# --- the request table -------------------------------------------------------------------------


#: What a request's handler returns: nothing, a reply's body, or a body and the fds sent with it
#: (GET_INFLIGHT_FD).
HandlerResult: TypeAlias = "bytes | tuple[bytes, tuple[int, ...]] | None"


@dataclass(frozen=True)
class Rule:
    """How a request is checked before its handler runs.

    ``size``: the exact payload size, or None when the handler's parser checks it.
    ``fds``: how many fds it may carry (min, max), or None when the handler checks.
    ``gate``: the protocol feature that must be negotiated.  ``replies``: the request is always
    answered with a body (so it cannot simply be dropped)."""

    handler: Callable[["BackendConnection", Message], HandlerResult]
    size: int | None = 0
    fds: tuple[int, int] | None = (0, 0)
    gate: ProtocolFeature | None = None
    replies: bool = False


_RULES: dict[int, Rule] = {}


def _rule(request: FrontendReq, **kw):
    def register(fn):
        _RULES[request] = Rule(fn, **kw)
        return fn
    return register


#: Control messages remembered per connection for the log (see BackendConnection.history).
HISTORY = 24


# --- the connection ----------------------------------------------------------------------------


class BackendConnection:
    """The back-end side of one vhost-user connection, for one :class:`VirtioDevice`."""

    def __init__(self, device: VirtioDevice, *, name: str = "vhost-user",
                 protocol_features: int | None = None,
                 max_mem_slots: int = DEFAULT_MAX_MEM_SLOTS,
                 map_region: Callable[[int, MemoryRegion], Region] = map_region,
                 check_notify_fd: Callable[[int, str], None] = check_notify_fd,
                 check_channel_fd: Callable[[int, str], None] = check_channel_fd,
                 create_inflight: Callable[[int], tuple[int, InflightMapping]] = create_inflight,
                 map_inflight: Callable[[int, int, int], InflightMapping] = map_inflight):
        self.device = device
        self._check_notify_fd = check_notify_fd
        self._check_channel_fd = check_channel_fd
        #: Our end of the back-end request channel (SET_BACKEND_REQ_FD), -1 while there is none.
        self.backend_fd = -1
        self.name = name
        self.offered_protocol_features = (protocol_features if protocol_features is not None
                                          else protocol_features_for(device))
        self._create_inflight, self._map_inflight = create_inflight, map_inflight
        #: The inflight buffer (GET/SET_INFLIGHT_FD) and its mapping, once the front-end gave one.
        self.inflight: I.InflightRegion | None = None
        self._inflight_map: InflightMapping | None = None
        #: Chains resubmitted from the inflight buffer on this connection (statistics).
        self.resubmitted = 0
        self.max_mem_slots = max_mem_slots
        self._map_region = map_region
        self._framer = Framer()
        self.memory = GuestMemory()
        self.vrings = [Vring(i, device) for i in range(len(device.queues))]
        self.acked_features: int | None = None  # None until SET_FEATURES
        self.acked_protocol_features = 0
        self.protocol_features_set = False  # SET_PROTOCOL_FEATURES was received
        self.owner = False
        self.status = 0  # the vhost-user device status (SET_STATUS/GET_STATUS)
        self.error: E.ConnectionFatal | None = None
        #: Rejections are logged through this: one front-end, LOG_LINES_PER_SECOND at most.
        self.log = PeerLog(log)
        self.closed = False
        #: The last control messages handled, named in the log when a ring breaks.
        self.history: deque[str] = deque(maxlen=HISTORY)

    # --- features ------------------------------------------------------------------------------

    @property
    def offered_features(self) -> int:
        return self.device.device_features | (1 << VHOST_USER_F_PROTOCOL_FEATURES)

    def has_protocol_feature(self, bit: ProtocolFeature) -> bool:
        return bool(self.acked_protocol_features & (1 << bit))

    @property
    def protocol_features_negotiated(self) -> bool:
        """VHOST_USER_F_PROTOCOL_FEATURES acked in SET_FEATURES (the ring-enable rule)."""
        return self.acked_features is not None and bool(
            self.acked_features & (1 << VHOST_USER_F_PROTOCOL_FEATURES))

    # --- input ---------------------------------------------------------------------------------

    def want(self) -> int:
        """Bytes still missing from the message being assembled: an I/O shell that reads exactly
        this much per ``recvmsg`` gets each message's fds with its own header."""
        return self._framer.want()

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete message held back (a front-end that hangs up mid-message)."""
        return self._framer.pending_bytes

    def receive(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> list[Output]:
        """Take bytes (and the fds that came with them) from the front-end; handle every message
        they complete; return the replies to send and the rejections.  Raises ConnectionFatal
        (the connection is then broken: every later call raises ConnectionBroken)."""
        if self.error is not None or self.closed:
            close_fds(fds)
            raise E.ConnectionBroken(f"{self.name}: connection is broken: {self.error or 'closed'}")
        self._framer.push(data, fds)
        out: list[Output] = []
        while True:
            try:
                msg = self._framer.next_message()
            except E.FramingError as exc:
                self._fail(exc)
            if msg is None:
                return out
            out += self._dispatch(msg)

    def _fail(self, exc: E.ConnectionFatal):
        self.error = exc
        close_fds(self._framer.take_all_fds())
        log.error("%s: connection broken: %s", self.name, exc)
        raise exc

    def _dispatch(self, msg: Message) -> list[Output]:
        name = request_name(msg.request)
        rule = _RULES.get(msg.request)
        try:
            body = self._run(msg, rule)
        except E.MessageRejected as exc:
            close_fds(msg.fds)
            if msg.request == R.GET_CONFIG:  # the one request with an error reply of its own
                self.log.warning("%s: GET_CONFIG refused (empty reply): %s", self.name, exc)
                return [Rejected(msg.request, exc), Reply(encode_reply(msg.request))]
            if rule is not None and rule.replies:
                self._fail(E.ReplyImpossible(f"{name} must be answered but was refused: {exc}"))
            # A size refused with REPLY_ACK is how a front-end learns the largest ring (pyvirtio
            # probe asks 32768, 16384, ...): an answer, not a fault of the peer.
            probing = msg.request == R.SET_VRING_NUM and self._ack_wanted(msg)
            self.log.log(logging.INFO if probing else logging.WARNING, "%s: rejected %s: %s",
                         self.name, name, exc)
            out: list[Output] = [Rejected(msg.request, exc)]
            if self._ack_wanted(msg):
                out.append(Reply(encode_reply(msg.request, U64(1).pack())))
            return out
        close_fds(msg.fds)  # fds the handler did not keep
        log.debug("%s: %s ok", self.name, name)
        self.history.append(f"{name}{_brief(msg)}")
        if isinstance(body, tuple):  # a body with fds (owned by the Reply: the shell closes them)
            return [Reply(encode_reply(msg.request, body[0]), body[1])]
        if body is not None:
            return [Reply(encode_reply(msg.request, body))]
        if self._ack_wanted(msg):
            return [Reply(encode_reply(msg.request, U64(0).pack()))]
        return []

    def _run(self, msg: Message, rule: Rule | None) -> HandlerResult:
        self._check(msg, rule)  # raises for a message no rule takes
        assert rule is not None
        try:
            return rule.handler(self, msg)
        except E.MessageRejected:
            raise
        except VirtioError as exc:  # the device refused (a hook raised): refuse the message
            raise E.InvalidValue(f"the device refused it: {exc}") from exc

    def _ack_wanted(self, msg: Message) -> bool:
        return msg.need_reply and self.has_protocol_feature(PF.REPLY_ACK)

    def _check(self, msg: Message, rule: Rule | None) -> None:
        if msg.flags & ~KNOWN_FLAGS:
            raise E.BadFlags(f"reserved header flag bits {msg.flags & ~KNOWN_FLAGS:#x} are set")
        if msg.flags & HeaderFlag.REPLY:
            raise E.BadFlags("a request has the REPLY flag set")
        if len(msg.fds) > MAX_FDS:
            raise E.BadFdCount(f"{len(msg.fds)} fds, more than any message may carry ({MAX_FDS})")
        if rule is None:
            if msg.request in FrontendReq._value2member_map_:
                raise E.UnsupportedRequest("pyvirtio does not implement it (its feature is never offered)")
            raise E.UnknownRequest(f"unknown request number {msg.request}")
        if rule.gate is not None and not self.has_protocol_feature(rule.gate):
            raise E.NotNegotiated(f"needs protocol feature {rule.gate.name}, not negotiated")
        if rule.size is not None and len(msg.payload) != rule.size:
            raise E.BadPayloadSize(f"payload is {len(msg.payload)} bytes, expected {rule.size}")
        if rule.fds is not None and not rule.fds[0] <= len(msg.fds) <= rule.fds[1]:
            raise E.BadFdCount(f"{len(msg.fds)} fds, expected {_range(rule.fds)}")

    # --- helpers for handlers ------------------------------------------------------------------

    def _ring(self, index: int) -> Vring:
        if not 0 <= index < len(self.vrings):
            raise E.InvalidValue(f"ring index {index}, but the device has {len(self.vrings)} queues")
        return self.vrings[index]

    def _translate(self, ring: Vring, addr: VringAddr) -> tuple[int, int, int]:
        """Front-end addresses → guest-physical (desc, avail, used), checked against the table.
        Packed: the descriptor ring, the driver and the device event suppression areas (2.8.10)."""
        size = ring.queue.size
        mem = self.memory
        sizes = ((desc_table_size(size), 4, 4) if _packed(ring.queue) else
                 (desc_table_size(size), avail_ring_size(size), used_ring_size(size)))
        try:
            return (mem.uva_to_gpa(addr.desc, sizes[0]),
                    mem.uva_to_gpa(addr.avail, sizes[1]),
                    mem.uva_to_gpa(addr.used, sizes[2]))
        except GuestMemoryError as exc:
            raise E.BadRingAddress(f"ring {ring.index} (size {size}): {exc}") from None

    def _bind(self, ring: Vring) -> None:
        """Point the queue at the ring's guest-physical addresses (raises BadRingAddress)."""
        if ring.addr is None:  # only started rings are bound, and _start refuses one without
            raise E.WrongState(f"ring {ring.index} has no addresses (SET_VRING_ADDR) yet")
        desc, avail, used = self._translate(ring, ring.addr)
        ring.queue.set_addresses(desc, avail, used)
        try:
            ring.queue.activate(self.memory)
        except (DriverFault, GuestMemoryError) as exc:
            raise E.BadRingAddress(str(exc)) from None
        ring.mapped = True

    def _rebind_started(self) -> None:
        """After a memory change: re-translate the started rings (a ring whose addresses left the
        table is paused until a later change maps them again)."""
        for ring in self.vrings:
            if ring.started:
                try:
                    self._bind(ring)
                except E.BadRingAddress as exc:
                    ring.mapped = False
                    self.log.warning("%s: ring %d paused: %s", self.name, ring.index, exc)

    def _start(self, ring: Vring) -> None:
        if ring.addr is None:
            raise E.WrongState(f"ring {ring.index} has no addresses (SET_VRING_ADDR) yet")
        # A stopped ring that starts again was set up anew by the front-end (a guest reset, or
        # firmware that left the device running over memory the kernel then reused): whatever
        # broke it before is forgotten.
        ring.queue.clear_fault()
        self._bind(ring)
        ring.queue.set_base(ring.base)
        ring.queue.sync_used_from_ring(self.memory)
        self._track_inflight(ring)
        self._resume_lost_base(ring)
        ring.started = True
        ring.fault = None
        if not self.protocol_features_negotiated:
            ring.enabled = True  # "the ring starts directly in the enabled state"

    def _track_inflight(self, ring: Vring) -> None:
        """Attach the ring's inflight region (if the front-end gave a buffer): a fresh one is
        initialised; one a previous back-end filled says which chains to resubmit, oldest first,
        and where the avail ring resumes (the used idx plus what is in flight: every chain popped
        was either used or is still in flight — QEMU sends the used idx as the base after a
        crash).  Raises InflightRegionError for a region that cannot be trusted."""
        queue = ring.queue
        queue.inflight, queue.resubmit = None, []
        if self.inflight is None or ring.index >= self.inflight.num_queues:
            return
        if getattr(queue, "in_order", False) and _packed(queue):
            log.warning("%s: ring %d: IN_ORDER packed ring: requests in flight are not tracked",
                        self.name, ring.index)
            return
        resubmit: list
        tracker: SplitInflight | PackedInflight
        where = ""
        if _packed(queue):
            tracker = packed = self.inflight.packed_tracker(ring.index)
            resubmit, where = self._recover_packed(queue, packed)
        else:
            tracker = split = self.inflight.split_tracker(ring.index)
            resubmit = split.start(queue.size, queue.next_used)
            resume = (queue.next_used + len(resubmit)) & 0xFFFF
            if resume != queue.next_avail:
                where = (f"avail ring resumes at {resume} (base sent: {queue.next_avail}, used idx "
                         f"{queue.next_used})")
            queue.next_avail = resume
        if resubmit or where:
            log.info("%s: ring %d: resubmitting %d requests in flight at the last disconnect "
                     "(buffers %s)%s", self.name, ring.index, len(resubmit),
                     _short([r[0] if isinstance(r, tuple) else r for r in resubmit]),
                     f"; {where}" if where else "")
        # Always, even with nothing to resubmit: a back-end killed between publishing a used
        # entry and signalling it left the driver waiting for an interrupt that never came (the
        # guest's request would hang for ever).  A spurious interrupt costs the driver a look.
        ring.notify_once = True
        queue.resubmit = resubmit
        queue.inflight = tracker
        self.resubmitted += len(resubmit)

    def _resume_lost_base(self, ring: Vring) -> None:
        """A split ring started at a base it cannot be served from — its avail idx is more than
        the queue size ahead, which breaks the ring at the first look — while the used idx is a
        position it can be served from: a front-end that connected again without keeping the
        base (DPDK 22.11's virtio-user in server mode, when its back-end restarts, sends 0 for a
        split ring it has been driving all along).  A device that returns every chain in the
        order it came (``completes_in_order``) has consumed exactly the chains before the used
        idx, so the avail ring resumes there, as DPDK's vhost library and libvhost-user do for
        such devices (QEMU sends that idx itself after a back-end crash); a chain the old
        back-end had taken but not returned is taken again.  A ring with an inflight region was
        placed by it (:meth:`_track_inflight`); every other case keeps the base it was sent,
        and a ring that cannot be served from either breaks as before."""
        queue = ring.queue
        if not isinstance(queue, SplitDeviceQueue) or queue.inflight is not None \
                or not self.device.completes_in_order:
            return
        base, used = queue.next_avail, queue.next_used
        try:
            avail = queue.avail_idx(self.memory)
        except GuestMemoryError as exc:
            raise E.BadRingAddress(str(exc)) from None
        if (avail - base) & 0xFFFF > queue.size and (avail - used) & 0xFFFF <= queue.size:
            queue.next_avail = used
            self.log.warning("%s: ring %d: base %d sent with the avail idx at %d; resuming at the "
                             "used idx %d (the front-end did not keep its position)", self.name,
                             ring.index, base, avail, used)

    def _recover_packed(self, queue, tracker: PackedInflight) -> tuple[list, str]:
        """A packed ring has no used index in memory, and QEMU keeps no position after a crash:
        both positions come from the region (used, and used + the ring slots in flight)."""
        def flags_at(pos: int) -> int:
            return int.from_bytes(self.memory.view(queue.desc_table + 16 * pos + 14, 2), "little")
        try:
            chains, used, wrap, slots = tracker.start(queue.size, queue.next_used, queue.used_wrap,
                                                      flags_at)
        except GuestMemoryError as exc:
            raise E.BadRingAddress(str(exc)) from None
        avail, avail_wrap = used + slots, wrap
        if avail >= queue.size:
            avail, avail_wrap = avail - queue.size, wrap ^ 1
        before = queue.get_base()
        queue.next_used, queue.used_wrap = used, wrap
        queue.next_avail, queue.avail_wrap = avail, avail_wrap
        after = queue.get_base()
        return chains, f"base {after:#x} from the region (sent: {before:#x})" if after != before else ""

    def _stop(self, ring: Vring) -> None:
        self._quiesce(ring.index)  # requests in flight on the host finish before the base is read
        ring.started = False
        ring.base = _base(ring.queue)  # a restart without SET_VRING_BASE resumes here
        ring.set_fd("kick", -1)
        ring.set_fd("call", -1)

    def _stopped(self, ring: Vring, what: str) -> None:
        if ring.started:
            raise E.WrongState(f"{what} on ring {ring.index}, which is started")

    # --- ring processing (called by the shell, one thread per ring at a time) -------------------

    def process_ring(self, index: int) -> tuple[bool, str | None]:
        """Drain ring ``index`` through the device if it is active.  Returns (whether to signal
        the call fd, the fault that just broke the ring or None)."""
        ring = self.vrings[index]
        queue = self.device.queues[index]  # ring.queue, and ring.active below, written out
        if not (ring.started and ring.enabled and ring.mapped) or queue.broken:
            return False, None
        before = queue.stats.chains
        try:
            notify = self.device.process_queue(self.memory, queue)
            if ring.notify_once:
                ring.notify_once, notify = False, True
            return notify, None
        except (DriverFault, GuestMemoryError, QueueBroken, UsageError) as exc:
            queue.stats.errors += 1
            ring.fault = str(exc)
            self.log.error("%s: ring %d broken by the driver: %s (ring %s; last messages: %s)", self.name,
                      index, exc, ring.describe(), ", ".join(self.history))
            return False, ring.fault
        finally:
            ring.chains += queue.stats.chains - before

    def host_fds(self, group: int) -> list[tuple[int, int]]:
        """The host fds the device wants watched for ``group`` (none while no memory is mapped)."""
        if not self.memory.mapped:
            return []
        return self.device.host_fds(group)

    def host_ready(self, group: int, events: list[tuple[int, int]]) -> set[int]:
        """Let the device serve its host side (completions, a back-end); queues to notify.
        Notifications for rings that cannot take them now (stopped, disabled) are dropped."""
        if not self.memory.mapped:
            return set()
        try:
            notify = self.device.host_ready(self.memory, group, events)
        except (DriverFault, GuestMemoryError, QueueBroken) as exc:
            self.log.error("%s: queue group %d broken by the driver: %s", self.name, group, exc)
            self.device.needs_reset(exc)
            return set()
        return {i for i in notify if 0 <= i < len(self.vrings) and self.vrings[i].started}

    def _quiesce(self, index: int | None) -> None:
        """Finish host I/O still in flight (one ring, or all) before a ring stops or the memory
        under it changes; its used entries are published while the memory is still there."""
        mem = self.memory if self.memory.mapped else None
        if not self.device.quiesce(mem, index):
            log.error("%s: requests of %s still in flight after the timeout", self.name,
                      "every ring" if index is None else f"ring {index}")

    # --- the back-end request channel (the shell writes what these build) ----------------------

    def backend_request(self, request: BackendReq, payload: bytes = b"") -> bytes | None:
        """The bytes of one back-end request for the channel, or None when there is no channel
        (BACKEND_REQ not negotiated, no SET_BACKEND_REQ_FD yet, or the connection is over).
        Never with NEED_REPLY: see the module docstring (the deadlock it would risk)."""
        size = BACKEND_REQUEST_PAYLOAD_SIZE.get(request)
        if size is not None and len(payload) != size:
            raise UsageError(f"{request.name} takes a {size}-byte payload, not {len(payload)}")
        if self.closed or self.backend_fd < 0 or not self.has_protocol_feature(PF.BACKEND_REQ):
            return None
        return encode(request, payload, flags=VERSION)

    def config_change_message(self) -> bytes | None:
        """CONFIG_CHANGE_MSG, when the front-end can take it: the channel is there and CONFIG is
        negotiated (it answers with GET_CONFIG; vhost-user.rst sends the message only then)."""
        if not self.has_protocol_feature(PF.CONFIG):
            return None
        return self.backend_request(BackendReq.CONFIG_CHANGE_MSG)

    def drop_backend_channel(self) -> None:
        """Forget (and close) the channel: the front-end hung up its end, or stopped reading it."""
        fd, self.backend_fd = self.backend_fd, -1
        close_fds((fd,))

    # --- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """The front-end is gone: stop every ring, close every fd, unmap the memory, reset the
        device (it serves the next connection from scratch).  Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._quiesce(None)
        for ring in self.vrings:
            ring.reset()
        close_fds(self._framer.take_all_fds())
        self.drop_backend_channel()
        self.memory.close()
        self.device.reset()
        self._drop_inflight()

    def _drop_inflight(self) -> None:
        for ring in self.vrings:
            ring.queue.inflight = None
        if self.inflight is not None:
            self.inflight.release()
            self.inflight = None
        if self._inflight_map is not None:
            self._inflight_map.close()
            self._inflight_map = None

    # --- handlers ------------------------------------------------------------------------------

    @_rule(R.GET_FEATURES, replies=True)
    def _get_features(self, msg: Message) -> bytes:
        return U64(self.offered_features).pack()

    @_rule(R.SET_FEATURES, size=8)
    def _set_features(self, msg: Message) -> None:
        features = U64.unpack(msg.payload).value
        extra = features & ~self.offered_features
        if extra:
            raise E.InvalidValue(f"features {extra:#x} were not offered")
        if any(r.started for r in self.vrings) and features != self.acked_features:
            raise E.WrongState("features changed while rings are started")
        if features != self.acked_features:
            log.info("%s: features %#x negotiated (%s)", self.name, features, _ring_features(features))
        self.acked_features = features
        self.device.set_driver_features(features & ~(1 << VHOST_USER_F_PROTOCOL_FEATURES))
        self.device.apply_features()  # may replace the queue objects (split <-> packed)
        for ring in self.vrings:  # what the front-end said about a ring holds for the new one
            if ring.num is not None and ring.queue.size != ring.num:
                ring.queue.set_size(ring.num)
        if not self.protocol_features_negotiated:
            for ring in self.vrings:  # without protocol features every ring is enabled
                ring.enabled = True

    @_rule(R.GET_PROTOCOL_FEATURES, replies=True)
    def _get_protocol_features(self, msg: Message) -> bytes:
        return U64(self.offered_protocol_features).pack()

    @_rule(R.SET_PROTOCOL_FEATURES, size=8)
    def _set_protocol_features(self, msg: Message) -> None:
        features = U64.unpack(msg.payload).value
        extra = features & ~self.offered_protocol_features
        if extra:
            raise E.InvalidValue(f"protocol features {extra:#x} were not offered")
        self.acked_protocol_features = features
        self.protocol_features_set = True

    @_rule(R.SET_OWNER)
    def _set_owner(self, msg: Message) -> None:
        self.owner = True

    @_rule(R.RESET_OWNER)
    def _reset_owner(self, msg: Message) -> None:
        for ring in self.vrings:  # deprecated; vhost-user.rst: ignore it or disable all rings
            ring.enabled = False

    @_rule(R.RESET_DEVICE, gate=PF.RESET_DEVICE)
    def _reset_device(self, msg: Message) -> None:
        for ring in self.vrings:
            ring.reset()
        self.device.reset()
        self.acked_features = None
        self.status = 0

    @_rule(R.GET_QUEUE_NUM, gate=PF.MQ, replies=True)
    def _get_queue_num(self, msg: Message) -> bytes:
        return U64(len(self.vrings)).pack()

    # memory table

    @_rule(R.SET_MEM_TABLE, size=None, fds=None)
    def _set_mem_table(self, msg: Message) -> None:
        table = MemoryTable.unpack(msg.payload)
        if len(msg.fds) != len(table.regions):
            raise E.BadFdCount(f"{len(msg.fds)} fds for {len(table.regions)} regions")
        for r in table.regions:
            check_region(r)
        new = GuestMemory()
        try:
            for i, r in enumerate(table.regions):
                region = self._map_region(msg.fds[i], r)
                msg.take_fd(i)
                _add(new, region)
        except BaseException:
            new.close()
            raise
        self._quiesce(None)  # host I/O in flight may point into the old mappings
        old, self.memory = self.memory, new
        self._rebind_started()
        old.close()

    @_rule(R.GET_MAX_MEM_SLOTS, gate=PF.CONFIGURE_MEM_SLOTS, replies=True)
    def _get_max_mem_slots(self, msg: Message) -> bytes:
        return U64(self.max_mem_slots).pack()

    @_rule(R.ADD_MEM_REG, size=SingleMemoryRegion.size(), fds=(1, 1), gate=PF.CONFIGURE_MEM_SLOTS)
    def _add_mem_reg(self, msg: Message) -> None:
        r = SingleMemoryRegion.unpack(msg.payload).region
        if len(self.memory.regions) >= self.max_mem_slots:
            raise E.BadMemoryRegion(f"all {self.max_mem_slots} memory slots are in use")
        region = self._map_region(msg.fds[0], r)
        msg.take_fd(0)
        _add(self.memory, region)
        self._rebind_started()

    @_rule(R.REM_MEM_REG, size=SingleMemoryRegion.size(), fds=(0, 1), gate=PF.CONFIGURE_MEM_SLOTS)
    def _rem_mem_reg(self, msg: Message) -> None:
        r = SingleMemoryRegion.unpack(msg.payload).region  # an fd, if any, is closed unused
        for region in self.memory.regions:
            if (region.gpa, region.size, region.userspace_addr) == (
                    r.guest_phys_addr, r.memory_size, r.userspace_addr):
                self._quiesce(None)
                self.memory.remove_region(region.gpa, region.size)
                self._rebind_started()
                release_region(region)
                return
        raise E.BadMemoryRegion(f"no region at gpa {r.guest_phys_addr:#x} size {r.memory_size:#x} "
                                f"uva {r.userspace_addr:#x}")

    # vrings

    @_rule(R.SET_VRING_NUM, size=8)
    def _set_vring_num(self, msg: Message) -> None:
        state = VringState.unpack(msg.payload)
        ring = self._ring(state.index)
        self._stopped(ring, "SET_VRING_NUM")
        if _packed(ring.queue):  # any size up to the maximum (2.8)
            if not is_valid_packed_size(state.num) or state.num > ring.queue.max_size:
                raise E.InvalidValue(f"ring {ring.index}: packed size {state.num} is not in "
                                     f"1..{ring.queue.max_size}")
        elif not is_valid_split_size(state.num) or state.num > ring.queue.max_size:
            raise E.InvalidValue(f"ring {ring.index}: size {state.num} is not a power of two "
                                 f"<= {ring.queue.max_size}")
        ring.queue.set_size(state.num)
        ring.num = state.num
        ring.mapped = False

    @_rule(R.SET_VRING_ADDR, size=VringAddr.size())
    def _set_vring_addr(self, msg: Message) -> None:
        addr = VringAddr.unpack(msg.payload)
        ring = self._ring(addr.index)
        if addr.flags & ~VHOST_VRING_F_LOG:
            raise E.InvalidValue(f"unknown vring address flags {addr.flags:#x}")
        if addr.flags & VHOST_VRING_F_LOG:
            raise E.InvalidValue("dirty logging (VHOST_VRING_F_LOG) was not offered")
        if addr.desc % 16 or addr.avail % 2 or addr.used % 4:
            raise E.BadRingAddress(f"ring {ring.index}: misaligned (desc {addr.desc:#x} needs 16, "
                                   f"avail {addr.avail:#x} 2, used {addr.used:#x} 4)")
        if not self.memory.regions:
            raise E.BadRingAddress(f"ring {ring.index}: no memory table yet")
        self._translate(ring, addr)
        previous, ring.addr = ring.addr, addr
        if ring.started:
            try:
                self._bind(ring)
            except E.BadRingAddress:
                ring.addr = previous
                raise

    @_rule(R.SET_VRING_BASE, size=8)
    def _set_vring_base(self, msg: Message) -> None:
        state = VringState.unpack(msg.payload)
        ring = self._ring(state.index)
        self._stopped(ring, "SET_VRING_BASE")
        # vhost-user.rst, "vring descriptor index/indices": split rings take a 16-bit avail
        # index; packed rings both positions and both wrap counters (PackedDeviceQueue.set_base).
        if not _packed(ring.queue) and state.num > 0xFFFF:
            raise E.InvalidValue(f"ring {ring.index}: base {state.num:#x} does not fit a split ring")
        try:
            ring.queue.set_base(state.num)
        except DriverFault as exc:
            ring.queue.clear_fault()
            raise E.InvalidValue(f"ring {ring.index}: base {state.num:#x}: {exc}") from None
        ring.base = state.num

    @_rule(R.GET_VRING_BASE, size=8, replies=True)
    def _get_vring_base(self, msg: Message) -> bytes:
        ring = self._ring(VringState.unpack(msg.payload).index)
        self._stop(ring)
        return VringState(ring.index, ring.base).pack()

    def _fd_request(self, msg: Message, what: str) -> tuple[Vring, int]:
        """The ring and the fd (-1: NOFD) of SET_VRING_KICK/CALL/ERR; the fd must be an eventfd
        (:mod:`.notifyfd`)."""
        value = U64.unpack(msg.payload).value
        if value & ~(VRING_IDX_MASK | VRING_NOFD_MASK):
            raise E.InvalidValue(f"unknown bits {value & ~(VRING_IDX_MASK | VRING_NOFD_MASK):#x}")
        nofd = bool(value & VRING_NOFD_MASK)
        if len(msg.fds) != (0 if nofd else 1):
            raise E.BadFdCount(f"{len(msg.fds)} fds with the NOFD bit {'set' if nofd else 'clear'}")
        ring = self._ring(value & VRING_IDX_MASK)
        if not nofd:
            self._check_notify_fd(msg.fds[0], f"ring {ring.index}: {what}")
        return ring, (-1 if nofd else msg.fds[0])

    @_rule(R.SET_VRING_KICK, size=8, fds=None)
    def _set_vring_kick(self, msg: Message) -> None:
        ring, fd = self._fd_request(msg, "kick")
        if not ring.started:
            self._start(ring)
        ring.set_fd("kick", msg.take_fd() if fd >= 0 else -1)
        ring.polling = fd < 0

    @_rule(R.SET_VRING_CALL, size=8, fds=None)
    def _set_vring_call(self, msg: Message) -> None:
        ring, fd = self._fd_request(msg, "call")
        ring.set_fd("call", msg.take_fd() if fd >= 0 else -1)

    @_rule(R.SET_VRING_ERR, size=8, fds=None)
    def _set_vring_err(self, msg: Message) -> None:
        ring, fd = self._fd_request(msg, "err")
        ring.set_fd("err", msg.take_fd() if fd >= 0 else -1)

    @_rule(R.SET_VRING_ENABLE, size=8)
    def _set_vring_enable(self, msg: Message) -> None:
        state = VringState.unpack(msg.payload)
        ring = self._ring(state.index)
        if not (self.protocol_features_negotiated or self.protocol_features_set):
            raise E.NotNegotiated("needs VHOST_USER_F_PROTOCOL_FEATURES, not negotiated")
        if state.num not in (0, 1):
            raise E.InvalidValue(f"ring {ring.index}: enable value {state.num} is not 0 or 1")
        ring.enabled = bool(state.num)

    # the back-end request channel

    @_rule(R.SET_BACKEND_REQ_FD, fds=(1, 1), gate=PF.BACKEND_REQ)
    def _set_backend_req_fd(self, msg: Message) -> None:
        self._check_channel_fd(msg.fds[0], "SET_BACKEND_REQ_FD")
        self.drop_backend_channel()  # a second channel replaces the first
        self.backend_fd = msg.take_fd()
        log.info("%s: back-end request channel set up (config changes reach the front-end)",
                 self.name)

    # config space and status

    @_rule(R.GET_CONFIG, size=None, gate=PF.CONFIG, replies=True)
    def _get_config(self, msg: Message) -> bytes:
        cfg = self._config_request(ConfigSpace.unpack(msg.payload))
        data = self.device.config_bytes()[cfg.offset:cfg.offset + cfg.size]
        return ConfigSpace(cfg.offset, cfg.size, cfg.flags, data.ljust(cfg.size, b"\0")).pack()

    @_rule(R.SET_CONFIG, size=None, gate=PF.CONFIG)
    def _set_config(self, msg: Message) -> None:
        cfg = self._config_request(ConfigSpace.unpack(msg.payload))
        self.device.write_config(cfg.offset, cfg.data)

    @staticmethod
    def _config_request(cfg: ConfigSpace) -> ConfigSpace:
        if cfg.flags > CONFIG_FLAG_MIGRATION:
            raise E.InvalidValue(f"config flags {cfg.flags:#x} are neither 0 nor 1")
        if cfg.size == 0 or cfg.offset + cfg.size > MAX_CONFIG_SIZE:
            raise E.InvalidValue(f"config access [{cfg.offset}, +{cfg.size}) is outside "
                                 f"0..{MAX_CONFIG_SIZE}")
        return cfg

    @_rule(R.SET_STATUS, size=8, gate=PF.STATUS)
    def _set_status(self, msg: Message) -> None:
        # The vhost-user status is kept apart from the device's: QEMU sends SET_STATUS 0 *before*
        # GET_VRING_BASE when it stops a device, so a reset here would lose the ring indices.
        value = U64.unpack(msg.payload).value
        if value > 0xFF:
            raise E.InvalidValue(f"status {value:#x} does not fit 8 bits")
        added = value & ~self.status
        if added & DeviceStatus.FEATURES_OK:
            features = (self.acked_features or 0) & ~(1 << VHOST_USER_F_PROTOCOL_FEATURES)
            if not self.device.features_acceptable(features):
                value &= ~DeviceStatus.FEATURES_OK  # the front-end reads it back refused
        self.status = value

    # inflight I/O tracking ("Inflight I/O tracking")

    @_rule(R.GET_INFLIGHT_FD, size=Inflight.size(), gate=PF.INFLIGHT_SHMFD, replies=True)
    def _get_inflight_fd(self, msg: Message) -> tuple[bytes, tuple[int, ...]]:
        want = Inflight.unpack(msg.payload)
        I.check_description(want.num_queues, want.queue_size, len(self.vrings))
        size = I.region_size(want.num_queues, want.queue_size)
        try:
            fd, mapping = self._create_inflight(size)
        except OSError as exc:
            raise I.InflightRegionError(f"cannot make an inflight buffer: {exc}") from None
        self._use_inflight(mapping, want.num_queues, want.queue_size)
        log.info("%s: inflight buffer made: %d queues of %d (%d bytes)", self.name,
                 want.num_queues, want.queue_size, size)
        return Inflight(size, 0, want.num_queues, want.queue_size).pack(), (fd,)

    @_rule(R.SET_INFLIGHT_FD, size=Inflight.size(), fds=(1, 1), gate=PF.INFLIGHT_SHMFD)
    def _set_inflight_fd(self, msg: Message) -> None:
        info = Inflight.unpack(msg.payload)
        if any(r.started for r in self.vrings):
            raise E.WrongState("SET_INFLIGHT_FD while rings are started")
        I.check_description(info.num_queues, info.queue_size, len(self.vrings))
        need = I.region_size(info.num_queues, info.queue_size)
        if info.mmap_size < need:
            raise I.InflightRegionError(f"inflight buffer of {info.mmap_size} bytes; {info.num_queues} "
                                        f"queues of {info.queue_size} need {need}")
        mapping = self._map_inflight(msg.fds[0], info.mmap_size, info.mmap_offset)
        self._use_inflight(mapping, info.num_queues, info.queue_size)

    def _use_inflight(self, mapping: InflightMapping, num_queues: int, queue_size: int) -> None:
        try:
            region = I.InflightRegion(mapping.view, num_queues, queue_size, len(self.vrings))
        except I.InflightRegionError:
            mapping.close()
            raise
        self._drop_inflight()
        self.inflight, self._inflight_map = region, mapping

    @_rule(R.GET_STATUS, gate=PF.STATUS, replies=True)
    def _get_status(self, msg: Message) -> bytes:
        return U64(self.status).pack()


def _ring_features(features: int) -> str:
    """The ring-related feature bits of ``features`` by name, for the log (split if not packed)."""
    names = [f.name for f in (Feature.RING_PACKED, Feature.IN_ORDER, Feature.EVENT_IDX,
                              Feature.INDIRECT_DESC, Feature.NOTIFICATION_DATA) if features >> f & 1]
    return " ".join(names if features >> Feature.RING_PACKED & 1 else ["SPLIT", *names])


def _packed(queue) -> bool:
    return getattr(queue, "packed", False)


def _base(queue) -> int:
    """The GET_VRING_BASE value: split, the next avail index; packed, both positions and wraps."""
    return queue.get_base() if _packed(queue) else queue.next_avail


def _add(memory: GuestMemory, region: Region) -> None:
    """Add a mapped region (owning its fd); on overlap release it and refuse."""
    try:
        memory.add_region(region)
    except UsageError as exc:
        release_region(region)
        raise E.BadMemoryRegion(str(exc)) from None


def _brief(msg: Message) -> str:
    """A message's ring index and value, for the history (8-byte ring/u64 payloads only)."""
    if len(msg.payload) == 8:
        return f"({int.from_bytes(msg.payload[:4], 'little')}, {int.from_bytes(msg.payload[4:], 'little'):#x})"
    return ""


def _short(heads: list[int]) -> str:
    return str(heads) if len(heads) <= 16 else f"{heads[:16]}..."


def _range(r: tuple[int, int]) -> str:
    return str(r[0]) if r[0] == r[1] else f"{r[0]}..{r[1]}"


__all__ = ["BackendConnection", "Reply", "Rejected", "Rule", "DEFAULT_PROTOCOL_FEATURES",
           "request_name"]
