"""The vhost-user driver-side transport: pyvirtio's drivers over a vhost-user back-end process.

The driver side owns everything a VMM would: guest memory (memfd-backed regions, shared with the
back-end through the memory table), the rings in it, and the kick/call/err eventfds.  The
back-end process does the device work.  How the virtio device model (VIRTIO 1.3, 2 and 3.1.1)
maps onto vhost-user:

========================  =======================================================================
virtio                    vhost-user
========================  =======================================================================
device type               none on the wire: given by the caller, else :func:`.identify.
                          infer_device_type` (a documented heuristic)
device features           GET_FEATURES, without vhost's own bits (PROTOCOL_FEATURES, LOG_ALL)
driver features           SET_FEATURES when the driver sets FEATURES_OK, with
                          VHOST_USER_F_PROTOCOL_FEATURES added when the back-end offers it
status                    kept here; mirrored with SET_STATUS when STATUS is negotiated, and
                          FEATURES_OK read back with GET_STATUS (else it stands unless REPLY_ACK
                          refuses SET_FEATURES).  A lost back-end or an err eventfd sets
                          DEVICE_NEEDS_RESET
reset (status 0)          GET_VRING_BASE on every started ring (stops it), RESET_DEVICE when
                          negotiated, SET_STATUS 0 when STATUS was used
config space              GET_CONFIG / SET_CONFIG (CONFIG protocol feature).  Reads always start
                          at offset 0 (as QEMU's do; some back-ends ignore the offset).  A read
                          past the end of the back-end's config space reads zeros (its size is
                          found once by bisection when a read is refused).  The generation
                          counts the back-end's CONFIG_CHANGE_MSGs (0 without a channel)
queue count               GET_QUEUE_NUM (MQ), else the device type's fixed queue count
queue maximum size        not on the wire either: the largest power of two up to
                          ``max_queue_size`` that SET_VRING_NUM accepts (REPLY_ACK), else the cap
setup_queue               SET_VRING_NUM, SET_VRING_BASE 0 (packed: 0x80008000, both
                          wrap counters set), SET_VRING_ADDR (our virtual
                          addresses), SET_VRING_CALL, SET_VRING_ERR, SET_VRING_KICK (starts the
                          ring), SET_VRING_ENABLE 1 (with PROTOCOL_FEATURES)
notify                    write the ring's kick eventfd
interrupts                ``wait_for_interrupt`` polls the call and err eventfds and the socket,
                          and calls the handler with ``Interrupt(queue)`` per signalled ring
config change interrupt   the back-end request channel (BACKEND_REQ, in the default
                          ``protocol_features``): SET_BACKEND_REQ_FD hands the back-end one
                          end of a socket pair; a CONFIG_CHANGE_MSG on it (answered with
                          REPLY_ACK when asked) bumps the config generation and calls the handler
                          with ``CONFIG_CHANGE``; the driver re-reads the config (GET_CONFIG: no
                          copy is kept here).  Other back-end requests are refused (logged, a
                          non-zero REPLY_ACK when asked), the connection goes on
========================  =======================================================================

**Reconnect** (``reconnect=True``, off by default).  The transport asks for
VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD; when the back-end grants it, the first ``setup_queue`` gets
the inflight buffer with GET_INFLIGHT_FD (``num_queues()`` rings of that ring's size: every ring
must then have that size) and hands it back with SET_INFLIGHT_FD before the ring starts, as
QEMU's vhost-user-blk does on every start.  The buffer's fd is kept until reset or close.  When
the back-end goes away — the socket hangs up, or a request meets a hang-up, also while a driver
waits in ``wait_for_interrupt`` — the transport connects to the same socket path again (50 ms
back-off doubling to 1 s, up to ``reconnect_timeout`` seconds, then :class:`ReconnectFailed`)
and replays the set-up: the handshake (features, protocol features, owner), SET_FEATURES, the
memory table (the same memfd regions), a new back-end request channel, SET_INFLIGHT_FD with the
kept buffer, and per ring
SET_VRING_NUM/BASE/ADDR/CALL/ERR/KICK (the same eventfds: they are ours) and ENABLE, then
SET_STATUS.  The vring base is what QEMU 7.2 sends after a crash (hw/virtio/vhost.c,
``vhost_virtqueue_stop``: GET_VRING_BASE cannot be asked, so ``virtio_queue_restore_last_avail_idx``):
split, the used ring's idx read from memory (the back-end resumes at used idx + the requests it
resubmits); packed, the base the ring was started with (QEMU's packed restore keeps its old
value; the back-end takes both positions from the inflight buffer).  Then every ring is kicked
(a kick the dead back-end consumed is not lost) and, in ``wait_for_interrupt``, every ring gets
an ``Interrupt`` so drivers look at their used rings.  The back-end resubmits what was in
flight, so the drivers' pending requests complete.
"""

from __future__ import annotations

import logging
import os
import select
import time
from dataclasses import dataclass
from typing import Sequence

from ...alloc import GuestAllocator
from ...errors import Scope, TransportError, UsageError
from ...interrupt import CONFIG_CHANGE, Interrupt, InterruptHandler
from ...memory import GuestMemory, Region, memfd_region
from ...spec.status import DeviceStatus
from ...spec.features import Feature
from ...transport import DriverTransport
from ...virtq.kinds import RingLayout
from .client import DEFAULT_TIMEOUT, VhostUserClient
from .connection import PROTOCOL_FEATURES_BIT
from .errors import (BackendError, BackendHungUp, BackendUnreachable, ConfigReadFailed,
                              FrontendBroken, ReconnectFailed, RequestNacked)
from .identify import DEFAULT_QUEUES, infer_device_type
from ..protocol import DEFAULT_PROTOCOL_FEATURES, VHOST_F_LOG_ALL, ProtocolFeature
from ..wire import Inflight, MemoryRegion

log = logging.getLogger("pyvirtio.vhost_user.frontend.transport")

PF = ProtocolFeature
S = DeviceStatus
DEFAULT_MEMORY = 16 << 20
DEFAULT_GPA = 0x1_0000_0000
#: The largest queue size offered to drivers unless told otherwise (QEMU's virtio-net default;
#: its and libvhost-user's VIRTQUEUE_MAX_SIZE is 1024).
DEFAULT_MAX_QUEUE_SIZE = 256
#: Bits of GET_FEATURES that are vhost's, not the device's.
VHOST_ONLY_FEATURES = PROTOCOL_FEATURES_BIT | (1 << VHOST_F_LOG_ALL)
#: Protocol features the transport asks for: the front-end's, and the back-end request channel
#: (config-change notifications).
DEFAULT_TRANSPORT_PROTOCOL_FEATURES = DEFAULT_PROTOCOL_FEATURES
#: GET_CONFIG's largest access (libvhost-user's VHOST_USER_MAX_CONFIG_SIZE).
MAX_CONFIG_SIZE = 256
#: How long a ``reconnect=True`` transport tries to reach a back-end again after a hang-up.
DEFAULT_RECONNECT_TIMEOUT = 30.0
_BACKOFF_FIRST, _BACKOFF_MAX = 0.05, 1.0


# --- guest memory the driver side owns -----------------------------------------------------------


def memfd_memory(sizes: Sequence[int], gpa: int = DEFAULT_GPA, hole: int = 1 << 20,
                 name: str = "pyvirtio-vhost-user") -> GuestMemory:
    """Guest memory of one memfd-backed region per size, at ``gpa`` upwards with ``hole`` bytes
    unmapped between regions (so a back-end that confuses regions or offsets fails loudly)."""
    mem = GuestMemory()
    try:
        for size in sizes:
            region = memfd_region(gpa, size, name)
            mem.add_region(region)
            gpa += region.size + hole
    except BaseException:
        mem.close()
        raise
    return mem


class RegionAllocator:
    """First-fit over several regions: one :class:`GuestAllocator` per region, tried in order, so
    no allocation crosses a region boundary."""

    def __init__(self, memory: GuestMemory):
        self._parts = [GuestAllocator(r.gpa, r.size) for r in memory.regions]

    def alloc(self, size: int, align: int = 16) -> int:
        """``size`` bytes aligned to ``align`` from the first region with room."""
        last: UsageError | None = None
        for part in self._parts:
            try:
                return part.alloc(size, align)
            except UsageError as exc:
                last = exc
        raise last or UsageError("no guest memory")

    def free(self, addr: int) -> None:
        """Give back the block at ``addr`` to its region."""
        for part in self._parts:
            if part.base <= addr < part.base + part.size:
                part.free(addr)
                return
        raise UsageError(f"free of {addr:#x}, which is in no region")

    @property
    def free_bytes(self) -> int:
        """How many bytes are free over every region."""
        return sum(p.free_bytes for p in self._parts)


def probe_config_size(client: VhostUserClient, limit: int = MAX_CONFIG_SIZE) -> int:
    """The longest GET_CONFIG from offset 0 the back-end answers (bisection; 0 if none).
    Assumes a back-end that answers a read also answers every shorter one."""
    lo, hi = 0, limit  # lo: answered (0 trivially); reads longer than hi are refused
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            client.get_config(0, mid)
            lo = mid
        except ConfigReadFailed:
            hi = mid - 1
    return lo


def memory_region(region: Region) -> MemoryRegion:
    """The vhost-user memory-table entry that describes ``region``."""
    return MemoryRegion(region.gpa, region.size, region.userspace_addr, region.mmap_offset)


# --- the transport -------------------------------------------------------------------------------


@dataclass
class _Ring:
    index: int
    kick: int
    call: int
    err: int
    layout: RingLayout | None = None
    base: int = 0  # the SET_VRING_BASE it started with
    packed: bool = False
    ready: bool = False  # set up on the back-end (a reconnect replays it)

    def close(self) -> None:
        for name in ("kick", "call", "err"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


class VhostUserTransport(DriverTransport):
    """Driver-side transport to a vhost-user back-end listening on ``socket_path``."""

    def __init__(self, socket_path: str | None = None, *, client: VhostUserClient | None = None,
                 device_type: int | None = None, memory_size: int = DEFAULT_MEMORY,
                 regions: int | Sequence[int] = 1, gpa: int = DEFAULT_GPA,
                 max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE, timeout: float = DEFAULT_TIMEOUT,
                 protocol_features: int = DEFAULT_TRANSPORT_PROTOCOL_FEATURES,
                 split_only: bool = False, reconnect: bool = False,
                 reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT):
        #: Survive a back-end restart (see the module docstring); needs ``socket_path``.
        self.reconnect = reconnect
        self.reconnect_timeout = reconnect_timeout
        #: Successful reconnects so far.
        self.reconnects = 0
        self._timeout = timeout
        self._inflight: tuple[Inflight, int] | None = None  # GET_INFLIGHT_FD's answer
        if reconnect:
            if socket_path is None:
                raise UsageError("reconnect=True needs a socket_path to connect to again")
            protocol_features |= 1 << PF.INFLIGHT_SHMFD
        self._protocol_features = protocol_features
        if socket_path is not None and client is None:
            self.path = socket_path
            self.client = VhostUserClient.connect(socket_path, timeout=timeout,
                                                  protocol_features=protocol_features)
        elif client is not None and socket_path is None:
            self.path, self.client = client.name, client
        else:
            raise UsageError("give exactly one of socket_path and client")
        self.conn = self.client.conn
        sizes = _region_sizes(memory_size, regions)
        try:
            self.memory = memfd_memory(sizes, gpa)
            self.allocator = RegionAllocator(self.memory)
            self.client.handshake()
            self.client.open_backend_channel()
        except BaseException:
            self.close()
            raise
        self.max_queue_size = max_queue_size
        #: Hide VIRTIO_F_RING_PACKED from the drivers (split rings, e.g. for comparisons).
        self.split_only = split_only
        self._rings: dict[int, _Ring] = {}
        self._max_sizes: dict[int, int] = {}
        self._status = 0
        self._driver_features = 0
        self._committed_features: int | None = None  # what SET_FEATURES sent
        self._mem_sent = False
        self._configured = False  # something to undo at reset
        self._config_size: int | None = None
        self._needs_reset: str | None = None
        self._handler: InterruptHandler | None = None
        self._poller: select.poll | None = None
        self._fd_roles: dict[int, tuple[str, int]] = {}
        self._generation = 0  # CONFIG_CHANGE_MSGs seen (config_generation)
        self._config_pending = False  # a config change the driver has not been told of
        if device_type is None:
            device_type, self.device_type_reason = self._infer_type()
        else:
            self.device_type_reason = "given by the caller"
        self._device_type = int(device_type) if device_type is not None else 0

    # --- identity ------------------------------------------------------------------------------

    @property
    def device_type(self) -> int:
        return self._device_type

    def describe(self) -> str:
        return f"vhost-user:{self.path}"

    def _infer_type(self):
        config_size = self.config_size() if self.conn.has_protocol_feature(PF.CONFIG) else None
        return infer_device_type(self.conn.backend_features or 0,
                                 self.conn.backend_protocol_features or 0, self.conn.queue_num,
                                 config_size)

    # --- status and features ------------------------------------------------------------------

    def get_status(self) -> int:
        return self._status | (S.DEVICE_NEEDS_RESET if self._needs_reset else 0)

    def set_status(self, status: int) -> None:
        status &= 0xFF
        if status == 0:
            self._reset()
            return
        added = status & ~self._status
        if added & S.FEATURES_OK and not self._commit_features():
            status &= ~S.FEATURES_OK
        if self.conn.has_protocol_feature(PF.STATUS):
            self._call(self.client.set_status, status & ~S.DEVICE_NEEDS_RESET)
            if added & S.FEATURES_OK and status & S.FEATURES_OK:
                if not self._call(self.client.get_status) & S.FEATURES_OK:
                    status &= ~S.FEATURES_OK  # the back-end refused the features
        self._status = status & ~S.DEVICE_NEEDS_RESET

    def get_device_features(self) -> int:
        features = (self.conn.backend_features or 0) & ~VHOST_ONLY_FEATURES
        return features & ~(1 << Feature.RING_PACKED) if self.split_only else features

    def set_driver_features(self, features: int) -> None:
        self._driver_features = features

    def _commit_features(self) -> bool:
        """SET_FEATURES with the driver's features (and PROTOCOL_FEATURES when offered), then
        the memory table.  False if the back-end refused them (REPLY_ACK)."""
        features = self._driver_features & ~VHOST_ONLY_FEATURES
        if self.conn.offers_protocol_features:
            features |= PROTOCOL_FEATURES_BIT
        self._configured = True
        try:
            self._call(self.client.set_features, features)
        except RequestNacked as exc:
            log.warning("%s: features %#x refused: %s", self.path, features, exc)
            return False
        self._committed_features = features
        self._send_memory_table()
        return True

    def _send_memory_table(self) -> None:
        if not self._mem_sent:
            self._call(self._memory_table_to_backend)

    def _memory_table_to_backend(self) -> None:
        regions = self.memory.regions
        table = [memory_region(r) for r in regions]
        slots = self.conn.max_mem_slots
        if self.conn.has_protocol_feature(PF.CONFIGURE_MEM_SLOTS) and (slots is None or len(table) <= slots):
            for region, r in zip(table, regions):
                self.client.add_mem_reg(region, r.fd)
        else:
            self.client.set_mem_table(table, [r.fd for r in regions])
        self._mem_sent = True

    def _reset(self) -> None:
        """Stop every ring (GET_VRING_BASE), reset the back-end, forget the negotiation."""
        try:
            for index in sorted(self._rings):
                if self.conn.ring(index).started:
                    self._call(self.client.get_vring_base, index)
            if self._configured and self.conn.has_protocol_feature(PF.RESET_DEVICE):
                self._call(self.client.reset_device)
            if self.conn.status is not None:
                self._call(self.client.set_status, 0)
        finally:
            for ring in self._rings.values():
                ring.close()
            self._rings.clear()
            self._drop_inflight()  # a reset device starts with no requests in flight
            self._poller = None
            self._status = 0
            self._driver_features = 0
            self._committed_features = None
            self._configured = False
            self._config_size = None

    # --- config space --------------------------------------------------------------------------

    def read_config(self, offset: int, size: int) -> bytes:
        if not self.conn.has_protocol_feature(PF.CONFIG):
            raise TransportError(f"{self.path}: the back-end does not offer the CONFIG protocol "
                                 "feature: it has no config space to read")
        if size <= 0 or offset < 0:
            return bytes(max(size, 0))
        end = min(offset + size, MAX_CONFIG_SIZE)
        data = b""
        if end > offset:
            try:  # from offset 0, as QEMU reads: qemu-storage-daemon 7.2 ignores the offset
                data = self._call(self.client.get_config, 0, end)
            except ConfigReadFailed:
                known = self.config_size()
                data = self._call(self.client.get_config, 0, known) if known else b""
        return data[offset:offset + size].ljust(size, b"\0")

    @property
    def has_config_space(self) -> bool:
        """Whether the back-end serves a config space (the CONFIG protocol feature).  Without it
        a driver uses the defaults its device type allows (see ``drivers.net``)."""
        return self.conn.has_protocol_feature(PF.CONFIG)

    def config_size(self) -> int:
        """The back-end's config space size: the longest read from offset 0 it answers (found
        by bisection, cached until reset).  0 if it refuses every read."""
        if self._config_size is None:
            self._config_size = self._call(probe_config_size, self.client)
        return self._config_size

    def write_config(self, offset: int, data: bytes) -> None:
        if not self.conn.has_protocol_feature(PF.CONFIG):
            raise TransportError(f"{self.path}: the back-end does not offer the CONFIG protocol "
                                 "feature: its config space cannot be written")
        self._call(self.client.set_config, offset, bytes(data))

    def config_generation(self) -> int:
        """vhost-user has no generation counter: this one counts the back-end's config changes,
        so a read that a CONFIG_CHANGE_MSG overtook (it is read while GET_CONFIG waits) is
        read again."""
        self._take_config_changes()
        return self._generation

    def _take_config_changes(self) -> bool:
        """Collect the config changes the client saw; whether the driver must hear of one."""
        if self.client.take_config_changes():
            self._generation = (self._generation + 1) & 0xFF
            self._config_pending = True
        return self._config_pending

    # --- queues --------------------------------------------------------------------------------

    def num_queues(self) -> int:
        if self.conn.queue_num is not None:
            return self.conn.queue_num
        return DEFAULT_QUEUES.get(self._device_type, 1)

    def queue_max_size(self, index: int) -> int:
        if not 0 <= index < self.num_queues():
            return 0
        if index not in self._max_sizes:
            self._max_sizes[index] = self._probe_max_size(index)
        return self._max_sizes[index]

    def _probe_max_size(self, index: int) -> int:
        """The largest power of two <= max_queue_size that SET_VRING_NUM accepts (needs
        REPLY_ACK to tell; the ring is stopped, and setup_queue sets the real size later)."""
        size = 1 << (self.max_queue_size.bit_length() - 1)
        if not self.conn.has_protocol_feature(PF.REPLY_ACK) or self.conn.ring(index).started:
            return size
        while size > 1:
            try:
                self._call(self.client.set_vring_num, index, size)
                return size
            except RequestNacked:
                size //= 2
        return size

    def setup_queue(self, index: int, layout: RingLayout) -> None:
        self._send_memory_table()
        if index in self._rings:
            raise UsageError(f"queue {index} is already set up (reset first)")
        if self._inflight is not None and layout.size != self._inflight[0].queue_size:
            raise UsageError(f"queue {index} of size {layout.size}: with reconnect every ring has "
                             f"the inflight buffer's size {self._inflight[0].queue_size}")
        packed = bool(self._driver_features & (1 << Feature.RING_PACKED))
        ring = _Ring(index, _eventfd(), _eventfd(), _eventfd(), layout, self._start_base(), packed)
        self._rings[index] = ring
        self._poller = None
        self._configured = True
        if self.reconnect and self._inflight is None:
            self._call(self._get_inflight, layout.size)
        self._call(self._start_ring, ring)
        ring.ready = True

    def _get_inflight(self, queue_size: int) -> None:
        """GET_INFLIGHT_FD (when negotiated), then SET_INFLIGHT_FD with it (as QEMU does)."""
        if not self.conn.has_protocol_feature(PF.INFLIGHT_SHMFD):
            log.warning("%s: the back-end does not offer INFLIGHT_SHMFD: requests in flight "
                        "when it dies are lost", self.path)
            return
        self._inflight = self.client.request(self.conn.get_inflight_fd(self.num_queues(), queue_size))
        self._set_inflight()

    def _set_inflight(self) -> None:
        if self._inflight is not None:
            info, fd = self._inflight
            self.client.request(self.conn.set_inflight_fd(info, fd))

    def _start_ring(self, ring: _Ring, base: int | None = None) -> None:
        """The requests that set a ring up and start it (no retry inside: a unit for _call)."""
        c, layout, uva = self.client, ring.layout, self.memory.gpa_to_uva
        assert layout is not None
        c.set_vring_num(ring.index, layout.size)
        c.set_vring_base(ring.index, ring.base if base is None else base)
        c.set_vring_addr(ring.index, uva(layout.desc_table), uva(layout.used_ring),
                         uva(layout.avail_ring))
        c.set_vring_call(ring.index, ring.call)
        c.set_vring_err(ring.index, ring.err)
        c.set_vring_kick(ring.index, ring.kick)
        if self.conn.protocol_features_negotiated:
            c.set_vring_enable(ring.index, True)

    def _start_base(self) -> int:
        """SET_VRING_BASE for a fresh ring: split, avail index 0; packed (vhost-user.rst, "vring
        descriptor indices for packed virtqueues"), positions 0 with both wrap counters 1, as
        QEMU sends it."""
        return 0x8000_8000 if self._driver_features & (1 << Feature.RING_PACKED) else 0

    def stop_queue(self, index: int) -> int:
        """GET_VRING_BASE: stop ring ``index``; returns the next avail index it would process
        (packed: both positions and wrap counters, bits 0-15 avail and 16-31 used)."""
        base = self._call(self.client.get_vring_base, index)
        ring = self._rings.pop(index, None)
        if ring is not None:
            ring.close()
            self._poller = None
        return base

    def notify(self, index: int, position: int | None = None) -> None:
        # ``position`` never comes: this transport does not carry VIRTIO_F_NOTIFICATION_DATA.
        ring = self._rings.get(index)
        if ring is None:
            raise UsageError(f"queue {index} is not set up")
        os.eventfd_write(ring.kick, 1)

    # --- interrupts ----------------------------------------------------------------------------

    def set_interrupt_handler(self, handler: InterruptHandler) -> None:
        self._handler = handler

    def _build_poller(self) -> select.poll:
        poller = select.poll()
        roles: dict[int, tuple[str, int]] = {self.client.fileno(): ("socket", -1)}
        poller.register(self.client.fileno(), select.POLLIN)
        channel = self.client.channel_fileno()
        if channel >= 0:
            poller.register(channel, select.POLLIN)
            roles[channel] = ("channel", -1)
        for ring in self._rings.values():
            for role, fd in (("call", ring.call), ("err", ring.err)):
                poller.register(fd, select.POLLIN)
                roles[fd] = (role, ring.index)
        self._poller, self._fd_roles = poller, roles
        return poller

    def wait_for_interrupt(self, timeout: float | None) -> bool:
        """Wait on the call and err eventfds; dispatch one Interrupt per signalled ring.  Raises
        BackendHungUp (and sets DEVICE_NEEDS_RESET) when the back-end goes away."""
        if self._deliver_config_change():  # announced while a request waited for its answer
            return True
        poller = self._poller or self._build_poller()
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        got = False
        for fd, _events in poller.poll(ms):
            role, index = self._fd_roles.get(fd, ("gone", -1))
            if role == "channel":
                self.client.service_channel()
                if self.client.channel_fileno() != fd:
                    self._poller = None  # the channel was closed
                got = self._deliver_config_change() or got
                continue
            if role == "socket":
                before = self.reconnects
                self._call(self.client.check_alive)
                if self.reconnects != before:  # a new back-end: the fds polled are stale
                    for i in sorted(self._rings):
                        self._dispatch(Interrupt(i))
                    return True
                continue
            if role == "gone" or not _drain(fd):
                continue
            got = True
            if role == "err":
                self._needs_reset = f"the back-end signalled an error on ring {index}"
                log.warning("%s: %s", self.path, self._needs_reset)
                self._dispatch(CONFIG_CHANGE)
            else:
                self._dispatch(Interrupt(index))
        return got

    def _deliver_config_change(self) -> bool:
        """Tell the driver of a config change the back-end announced (once for any number)."""
        if not self._take_config_changes():
            return False
        self._config_pending = False
        self._dispatch(CONFIG_CHANGE)
        return True

    def _dispatch(self, info: Interrupt) -> None:
        if self._handler is not None:
            self._handler(info)

    def ring_fds(self, index: int) -> tuple[int, int]:
        """(kick, call) eventfds of a set-up ring, for callers that run their own loop (they then
        kick and wait themselves instead of notify() and wait_for_interrupt())."""
        ring = self._rings.get(index)
        if ring is None:
            raise UsageError(f"queue {index} is not set up")
        return ring.kick, ring.call

    # --- plumbing ------------------------------------------------------------------------------

    def _call(self, method, *args):
        """Run a request (or a unit of requests: a method of ours that uses ``self.client``).
        With reconnect, a hang-up reconnects, replays the set-up and runs it again; else a
        connection-scope failure marks the device DEVICE_NEEDS_RESET.  A back-end that hangs up
        on the same request after every reconnect gets ``reconnect_timeout`` seconds in all
        (backing off between tries), then :class:`ReconnectFailed`."""
        deadline, delay = None, _BACKOFF_FIRST
        while True:
            try:
                return method(*args)
            except BackendError as exc:
                if not self._hung_up(exc):
                    if exc.scope is Scope.CONNECTION and not self._needs_reset:
                        self._needs_reset = str(exc)
                    raise
                if deadline is None:
                    deadline = time.monotonic() + self.reconnect_timeout
                elif time.monotonic() >= deadline:
                    self._needs_reset = f"the back-end hangs up on every retry: {exc}"
                    raise ReconnectFailed(f"{self.path}: the back-end hung up again after every "
                                          f"reconnect for {self.reconnect_timeout:.1f}s "
                                          f"(last: {exc})") from None
                else:
                    time.sleep(delay)
                    delay = min(delay * 2, _BACKOFF_MAX)
                old = self.client
                self._reconnect(exc)
            if getattr(method, "__self__", None) is old:  # a client method: the new client's
                method = getattr(self.client, method.__name__)
            args = tuple(self.client if a is old else a for a in args)

    def _hung_up(self, exc: BackendError) -> bool:
        """Whether ``exc`` is a back-end gone away that a reconnect may cure."""
        if not self.reconnect or isinstance(exc, ReconnectFailed):
            return False
        if isinstance(exc, FrontendBroken):
            return isinstance(self.client.conn.error, BackendHungUp)
        return isinstance(exc, BackendHungUp)

    # --- reconnect -----------------------------------------------------------------------------

    def _reconnect(self, why: BackendError) -> None:
        """Connect to ``self.path`` again and replay the set-up; back off while nobody answers
        (or the new back-end dies during the replay).  Raises ReconnectFailed after the timeout."""
        log.warning("%s: %s; reconnecting", self.path, why)
        self.client.close()
        self._poller = None
        deadline = time.monotonic() + self.reconnect_timeout
        delay, last = _BACKOFF_FIRST, str(why)
        while True:
            try:
                self._replay(VhostUserClient.connect(self.path, timeout=self._timeout,
                                                     protocol_features=self._protocol_features))
                break
            except (BackendUnreachable, BackendHungUp) as exc:
                last = str(exc)
            left = deadline - time.monotonic()
            if left <= 0:
                self._needs_reset = f"no back-end at {self.path} for {self.reconnect_timeout:.0f}s"
                raise ReconnectFailed(f"{self.path}: no back-end took over within "
                                      f"{self.reconnect_timeout:.1f}s (last: {last})")
            time.sleep(min(delay, left))
            delay = min(delay * 2, _BACKOFF_MAX)
        self.reconnects += 1
        for ring in self._rings.values():
            if ring.ready:
                os.eventfd_write(ring.kick, 1)  # the dead back-end may have eaten a kick
        log.warning("%s: reconnected (%d so far)", self.path, self.reconnects)

    def _replay(self, client: VhostUserClient) -> None:
        """Bring a new back-end to where the old one was (module docstring, "Reconnect")."""
        self.client, self.conn = client, client.conn
        try:
            client.handshake()
            client.open_backend_channel()
            if self._committed_features is not None:
                client.set_features(self._committed_features)
            if self._mem_sent:
                self._memory_table_to_backend()
            if self._inflight is not None and not self.conn.has_protocol_feature(PF.INFLIGHT_SHMFD):
                log.warning("%s: the new back-end does not offer INFLIGHT_SHMFD: requests in "
                            "flight are lost", self.path)
            elif self._rings:
                self._set_inflight()
            for index in sorted(self._rings):
                ring = self._rings[index]
                if ring.ready:
                    self._start_ring(ring, self._resume_base(ring))
            if self._status and self.conn.has_protocol_feature(PF.STATUS):
                client.set_status(self._status)
        except BaseException:
            client.close()
            raise

    def _resume_base(self, ring: _Ring) -> int:
        """SET_VRING_BASE after a crash, as QEMU 7.2 sends it: split, the used idx (in memory);
        packed, the base the ring started with."""
        if ring.packed or ring.layout is None:
            return ring.base
        return int.from_bytes(self.memory.read(ring.layout.used_ring + 2, 2), "little")

    def _drop_inflight(self) -> None:
        if self._inflight is not None:
            os.close(self._inflight[1])
            self._inflight = None

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if getattr(self, "_inflight", None) is not None:
            self._drop_inflight()
        for ring in getattr(self, "_rings", {}).values():
            ring.close()
        if getattr(self, "memory", None) is not None:
            self.memory.close()


def _drain(fd: int) -> bool:
    try:
        os.eventfd_read(fd)
        return True
    except (BlockingIOError, InterruptedError):
        return False


def _region_sizes(memory_size: int, regions) -> list[int]:
    if isinstance(regions, int):
        if not 1 <= regions <= 64:
            raise UsageError(f"regions={regions}: must be 1..64")
        share = -(-memory_size // regions)
        return [share] * regions
    sizes = list(regions)
    if not sizes or any(s <= 0 for s in sizes):
        raise UsageError(f"bad region sizes {sizes}")
    return sizes


def open_transport(socket_path: str, type_name_or_id: str | None = None, **kw) -> VhostUserTransport:
    """A transport for a ``--socket-path`` / ``--type`` pair from the command line."""
    from .identify import parse_type
    device_type = parse_type(type_name_or_id) if type_name_or_id else None
    return VhostUserTransport(socket_path, device_type=device_type, **kw)


__all__ = ["VhostUserTransport", "memfd_memory", "RegionAllocator", "open_transport",
           "probe_config_size", "memory_region",
           "DEFAULT_MEMORY", "DEFAULT_MAX_QUEUE_SIZE", "DEFAULT_RECONNECT_TIMEOUT",
           "DEFAULT_TRANSPORT_PROTOCOL_FEATURES"]
