"""The device side of a packed virtqueue (VIRTIO 1.3, 2.8), as a sans-I/O core.

Same calls as :class:`~pyvirtio.virtq.split_device.SplitDeviceQueue`, so devices and transports
do not care which ring the driver negotiated (VIRTIO_F_RING_PACKED).  The three addresses are
the descriptor ring, the driver event suppression area ("driver area") and the device event
suppression area ("device area").  Positions run over ``[0, size)`` with a wrap counter each for
avail and used; the queue size need not be a power of two (2.8).

The driver is untrusted: a chain longer than the ring, a buffer id already in flight, a chain
whose later descriptors are not available, nested indirect tables, or a buffer outside guest
memory raise :class:`~pyvirtio.errors.DriverFault` and mark the queue broken.

With VIRTIO_F_IN_ORDER (``in_order``, set by the device once features are settled) buffers must
come back in the order they were popped; :meth:`add_used_batch` then writes one used descriptor
for each run of buffers the driver can account for without one (2.8.21: the id of the run's last
buffer, where its first was; the used position skips the whole run).  A buffer is left inside a
run only if the device filled all its writable bytes — what a driver reports for it (Linux does
so; a transmit buffer has none) — so no length is lost.
"""

from __future__ import annotations

import array
import struct
from itertools import islice, repeat
from operator import add, sub
from typing import Any, Callable, Iterable, Sequence

from ..errors import DriverFault, GuestMemoryError, UsageError
from ..fence import mb, rmb, wmb
from ..limits import MAX_CHAIN_BYTES, MAX_CHAIN_SEGMENTS
from ..memory import GuestMemory
from ..spec import ring
from ..stats import QueueCounters
from .base import DeviceRingSide
from .batch import readable_views
from .chain import DescriptorChain, append_table, view_addresses, walk_window
from .drain import drain_queue
from .event import vring_need_event
from .layout import descriptor_table_fields, unpack_descriptor_table

_DESC = ring.PVIRTQ_DESC
_F_NEXT = ring.VIRTQ_DESC_F_NEXT
_F_WRITE = ring.VIRTQ_DESC_F_WRITE
_F_INDIRECT = ring.VIRTQ_DESC_F_INDIRECT
_F_AVAIL = ring.VIRTQ_DESC_F_AVAIL
_F_USED = ring.VIRTQ_DESC_F_USED
#: Indirect tables at least this long are first tried by :func:`_usual_table`.
_BULK_TABLE = 8
_EV_ENABLE = ring.RING_EVENT_FLAGS_ENABLE
_EV_DISABLE = ring.RING_EVENT_FLAGS_DISABLE
_EV_DESC = ring.RING_EVENT_FLAGS_DESC
_LEN_ID = struct.Struct("<IH")  # pvirtq_desc.len and .id, at offset 8
_NO_VIEW = memoryview(bytes(0))  # the buffer of an empty batch


def is_valid_packed_size(size: int) -> bool:
    """Whether a packed ring may have ``size`` descriptors (1..32768: any size, 2.8)."""
    return 0 < size <= ring.PACKED_QUEUE_MAX_SIZE


def packed_need_event(off_wrap: int, wrap: int, new: int, added: int, size: int) -> bool:
    """Whether moving ``added`` positions up to ``new`` (at wrap counter ``wrap``) crossed the
    other side's event ``off_wrap`` (2.8.10, as Linux computes it)."""
    if added >= size:
        return True  # the whole ring went by: certainly crossed
    event = off_wrap & 0x7FFF
    if off_wrap >> 15 != wrap:
        event -= size
    return vring_need_event(event & 0xFFFF, new, (new - added) & 0xFFFF)


def leading_run(flags: memoryview, expected: int) -> int:
    """How many of the 16-bit ``flags`` (a strided view of the descriptors' flags words) from the
    first equal ``expected``.  The words are copied once (one snapshot: the caller reads every
    flags word before any other field), then compared as bytes: the whole run at once, else a
    binary search over prefixes — a few ``memcmp`` calls, no bytecode per word."""
    got = flags.tobytes()
    pattern = expected.to_bytes(2, "little") * (len(got) >> 1)
    if got == pattern:
        return len(got) >> 1
    lo, hi = 0, len(got) >> 1  # the first lo words match; the first hi words do not all match
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if got[2 * lo:2 * mid] == pattern[2 * lo:2 * mid]:
            lo = mid
        else:
            hi = mid
    return lo


def store_flags(desc16: memoryview, first: int, count: int, value: int) -> None:
    """Write ``value`` into the flags words of ``count`` descriptors from ring position ``first``
    on (no wrap: the caller splits at the ring's end), in ring order, each with one 16-bit store.

    Never a strided slice assignment: CPython copies each item of one with ``memcpy``, and glibc
    copies 2 bytes as a 16-bit store followed by a store of the first byte again.  The flags word
    is the one word both sides of a packed ring write: between those two stores the peer can see
    the descriptor, reclaim it and make it available again, and the late byte store then puts
    back the old AVAIL bit over the peer's — a descriptor lost to both sides for good (DPDK's
    virtio-user transmit ring stalled within seconds, one run in two).  Memoryview item
    assignment stores the word at once."""
    for word in range(8 * first + 7, 8 * (first + count), 8):
        desc16[word] = value


def flags_state(flags: int) -> str:
    """A packed descriptor's flags word for a person: "avail w1" (made available in a lap whose
    wrap counter is 1: AVAIL set, USED clear), "avail w0", "used w1" (both set), "used w0"
    (both clear), then NEXT, WRITE, INDIRECT and any other bit."""
    a, u = bool(flags & _F_AVAIL), bool(flags & _F_USED)
    words = [f"avail w{int(a)}" if a != u else f"used w{int(a)}"]
    words += [name for bit, name in ((_F_NEXT, "NEXT"), (_F_WRITE, "WRITE"), (_F_INDIRECT, "INDIRECT"))
              if flags & bit]
    other = flags & ~(_F_AVAIL | _F_USED | _F_NEXT | _F_WRITE | _F_INDIRECT)
    if other:
        words.append(f"+{other:#x}")
    return " ".join(words)


def _event_state(off_wrap: int, flags: int) -> str:
    """An event suppression area (2.8.10) for a person."""
    if flags == _EV_ENABLE:
        return "enable"
    if flags == _EV_DISABLE:
        return "disable"
    if flags == _EV_DESC:
        return f"desc {off_wrap & 0x7FFF} w{off_wrap >> 15}"
    return f"reserved flags {flags}"


def _usual_table(fields: tuple[int, ...], count: int) -> int:
    """How many entries of a packed ring's indirect table of the usual shape are
    device-readable, found with sequence operations over the whole table instead of the walk's
    loop per entry; -1 when it is not of that shape: the loop then walks it (and says what is
    wrong, if anything is).  (:func:`~pyvirtio.virtq.chain.append_table` then checks the
    buffers.)

    The usual shape (Linux writes its packed tables so): every flags field 0 (readable) or
    WRITE, the readable ones first.  Every check the loop makes of the table's flags: no
    INDIRECT inside (2.8.7), readable before writable (2.8.4).  The caller has checked that no
    writable descriptor came before the table."""
    flags = fields[3::4]  # packed: addr, len, id, flags
    nr = flags.count(0)
    if flags[:nr].count(0) != nr or nr + flags.count(_F_WRITE) != count:
        return -1  # another flag (NEXT, which the loop ignores, too), or W before R
    return nr


class PackedDeviceQueue(DeviceRingSide):
    """Device-side state of one packed virtqueue."""

    packed = True

    def __init__(self, max_size: int = 256, *, index: int = 0):
        if not is_valid_packed_size(max_size):
            raise UsageError(f"max queue size {max_size} is not in 1..32768")
        self.index = index
        self.max_size = max_size
        self.event_idx = False
        self.indirect = False
        self.in_order = False
        #: Indirect tables of the usual shape checked a table at a time (_usual_table, append_table);
        #: False walks every one descriptor by descriptor (the same checks, slower).
        self.bulk_tables = True
        #: Counters (pyvirtio.stats); not reset with the ring: the device carries them over.
        self.stats = QueueCounters()
        self.reset()

    # --- configuration --------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the ring (a device or queue reset): size, addresses, indices and fault."""
        self.size = self.max_size
        self.desc_table = self.avail_ring = self.used_ring = 0
        self.ready = False
        self.next_avail, self.avail_wrap = 0, 1
        self.next_used, self.used_wrap = 0, 1
        self._pending: dict[int, int] = {}  # buffer id -> ring descriptors it holds (pop order)
        #: IN_ORDER: buffer id -> its device-writable bytes, for the buffers in flight that have
        #: any (none: 0 — a transmit ring's buffers are never booked here)
        self._wlen: dict[int, int] = {}
        self._added_since_signal = 0
        self.broken = False
        self.fault: Exception | None = None
        self._mem, self._gen = None, -1
        #: numpy views of the bound ring (pyvirtio.virtq.vector), made there on first use
        self._vec: Any = None
        #: vhost-user inflight tracking (pyvirtio.vhost_user.backend.inflight): told of every pop and
        #: used descriptor; ``resubmit`` chains, (buffer id, [(addr, len, flags)...]), go first.
        self.inflight: Any = None
        self.resubmit: list = []

    def set_size(self, size: int) -> None:
        """The queue size the driver chose (a power of two for split rings, 2.7; any up to max_size
        for packed)."""
        if not is_valid_packed_size(size) or size > self.max_size:
            raise DriverFault(f"queue {self.index}: packed size {size} is not in 1..{self.max_size}")
        self.size = size
        self._mem = None

    def set_addresses(self, desc_ring: int, driver_area: int, device_area: int) -> None:
        """Where the ring's three parts live in guest memory (split: descriptor table, available
        and used rings; packed: descriptor ring, driver and device event areas)."""
        self.desc_table, self.avail_ring, self.used_ring = desc_ring, driver_area, device_area
        self._mem = None

    def set_features(self, event_idx: bool, indirect: bool) -> None:
        """The negotiated ring features: VIRTIO_F_EVENT_IDX and VIRTIO_F_INDIRECT_DESC."""
        self.event_idx, self.indirect = event_idx, indirect

    def activate(self, mem: GuestMemory) -> None:
        """Check the ring fits ``mem`` and start serving it (the driver enabled the queue)."""
        if self.desc_table % ring.PVIRTQ_DESC_ALIGN or self.avail_ring % 4 or self.used_ring % 4:
            raise DriverFault(f"queue {self.index}: packed ring parts are misaligned (2.8.10)")
        self._bind(mem)
        self.ready = True

    def set_base(self, base: int) -> None:
        """vhost-user SET_VRING_BASE for packed rings ("vring descriptor indices for packed
        virtqueues"): bits 0-14 the next avail position, bit 15 the driver's (avail) wrap counter,
        bits 16-30 the next used position, bit 31 the device's (used) wrap counter.  Upper half
        zero means "used = avail" (DPDK's virtio-user sends only 0x8000 at start, and our own
        16-bit callers mean that).  A position past the ring is the front-end's fault (found by
        fuzz/virtq_packed.py)."""
        self.next_avail, self.avail_wrap = base & 0x7FFF, (base >> 15) & 1
        used = (base >> 16) & 0xFFFF
        if used:
            self.next_used, self.used_wrap = used & 0x7FFF, used >> 15
        else:
            self.next_used, self.used_wrap = self.next_avail, self.avail_wrap
        self._check_position()

    def _check_position(self) -> None:
        for what, pos in (("ring", self.next_avail), ("used", self.next_used)):
            if pos >= self.size:
                self._break(DriverFault(f"queue {self.index}: {what} position {pos} is "
                                        f"not below the queue size {self.size}"))

    def get_base(self) -> int:
        """vhost-user GET_VRING_BASE: both positions with their wrap counters (see set_base)."""
        return (self.next_avail | (self.avail_wrap << 15)
                | (self.next_used | (self.used_wrap << 15)) << 16)

    def sync_used_from_ring(self, mem: GuestMemory) -> None:
        """A packed ring has no used index in memory: the used position is the one SET_VRING_BASE
        gave (:meth:`set_base`); only the in-flight book is forgotten."""
        self._pending.clear()

    def _bind(self, mem: GuestMemory) -> None:
        try:
            desc = mem.view(self.desc_table, 16 * self.size)
            driver = mem.view(self.avail_ring, 4)
            device = mem.view(self.used_ring, 4)
        except GuestMemoryError as exc:
            self._break(DriverFault(f"queue {self.index}: ring outside guest memory: {exc}"))
        self._check_position()  # the size may have shrunk since SET_VRING_BASE
        self._desc, self._desc16 = desc, desc.cast("H")
        self._desc32, self._desc64 = desc.cast("I"), desc.cast("Q")
        self._driver16, self._device16 = driver.cast("H"), device.cast("H")
        self._mem, self._gen = mem, mem.generation
        self._vec = None



    # --- consuming available buffers ------------------------------------------------------------

    def _is_avail(self, flags: int, wrap: int) -> bool:
        return bool(flags & _F_AVAIL) == bool(wrap) and bool(flags & _F_USED) != bool(wrap)

    def has_available(self, mem: GuestMemory) -> bool:
        """Whether the driver has made a chain available that was not popped yet."""
        self._check(mem)
        return self._is_avail(self._desc16[self.next_avail * 8 + 7], self.avail_wrap)

    def pop_descriptor_chain(self, mem: GuestMemory) -> DescriptorChain | None:
        """The next available chain (indirect tables followed, every bound checked), or None; a
        malformed chain breaks the queue with a :class:`~pyvirtio.errors.DriverFault`."""
        self._check(mem)
        if self.resubmit:
            return self._pop_resubmitted(mem)
        # Read the head's flags first, and the rest after: the driver writes the head flags last.
        flags, wrap = self._desc16[self.next_avail * 8 + 7], self.avail_wrap
        if (not flags & _F_AVAIL) != (not wrap) or (not flags & _F_USED) == (not wrap):
            return None
        rmb()  # the head's flags, then the chain they made available (2.8.6)
        try:
            chain, pos, wrap, count = self._walk(mem)
        except DriverFault as exc:
            self._break(DriverFault(f"queue {self.index}: {exc}"))
        except GuestMemoryError as exc:
            self._break(DriverFault(f"queue {self.index}: descriptor buffer {exc}"))
        if chain.head_index in self._pending:
            self._break(DriverFault(f"queue {self.index}: buffer id {chain.head_index} is already in flight"))
        self._pending[chain.head_index] = count
        if self.in_order and chain.writable_len:
            self._wlen[chain.head_index] = chain.writable_len
        if self.inflight is not None:
            self.inflight.popped(self._desc, self.next_avail, count)
        self.next_avail, self.avail_wrap = pos, wrap
        stats = self.stats
        stats.chains += 1
        stats.bytes_read += chain.readable_len
        return chain

    def _pop_resubmitted(self, mem: GuestMemory) -> DescriptorChain:
        """A chain a previous back-end had in flight, walked from the inflight region's copies of
        its descriptors, laid out as a ring of their own (so every check of ``_walk`` applies)."""
        buf_id, descs = self.resubmit.pop(0)
        scratch = bytearray(16 * len(descs))
        for i, (addr, length, flags) in enumerate(descs):
            _DESC.pack_into(scratch, 16 * i, addr, length, buf_id, (flags | _F_AVAIL) & ~_F_USED)
        saved = self._desc, self._desc16, self.size, self.next_avail, self.avail_wrap
        self._desc = memoryview(scratch)
        self._desc16, self.size, self.next_avail, self.avail_wrap = self._desc.cast("H"), len(descs), 0, 1
        try:
            chain = self._walk(mem)[0]
        except (DriverFault, GuestMemoryError) as exc:
            fault: str | None = str(exc)
        else:
            fault = None if buf_id not in self._pending else f"buffer id {buf_id} is already in flight"
        finally:
            self._desc, self._desc16, self.size, self.next_avail, self.avail_wrap = saved
        if fault is not None:
            self._break(DriverFault(f"queue {self.index}: resubmitted chain: {fault}"))
        self._pending[buf_id] = len(descs)
        if self.in_order and chain.writable_len:
            self._wlen[buf_id] = chain.writable_len
        self.stats.chains += 1
        self.stats.bytes_read += chain.readable_len
        return chain

    def pop_many(self, mem: GuestMemory, limit: int = 1 << 30) -> list[DescriptorChain]:
        """Up to ``limit`` available chains in one go."""
        self._check(mem)
        out: list[DescriptorChain] = []
        while len(out) < limit and (chain := self.pop_descriptor_chain(mem)) is not None:
            out.append(chain)
        return out

    def _took(self, ids: list[int], lengths: list[int], writable: bool, total: int | None = None) -> None:
        """The batch pops' last step: buffers ``ids`` (one descriptor each, from ``next_avail``
        on) are in flight — booked, told to inflight tracking, counted — and ``next_avail`` moves
        past them (the wrap counter flips at the ring's end).  ``total``: the lengths' sum, if
        the caller has it."""
        size, pos, count = self.size, self.next_avail, len(ids)
        self._pending.update(dict.fromkeys(ids, 1))  # (in order: IN_ORDER reads the book in order)
        if self.in_order and writable:
            self._wlen.update(zip(ids, lengths))
        if self.inflight is not None:
            for k in range(count):
                self.inflight.popped(self._desc, (pos + k) % size, 1)
        pos += count
        if pos >= size:
            pos, self.avail_wrap = pos - size, self.avail_wrap ^ 1
        self.next_avail = pos
        stats = self.stats
        stats.chains += count
        if not writable:
            stats.bytes_read += sum(lengths) if total is None else total

    def pop_direct(self, mem: GuestMemory, limit: int) -> tuple[list[int], list[int], list[memoryview]]:
        """Pop up to ``limit`` chains that are each one device-readable descriptor: the batch fast
        path of a transmit queue, as :meth:`SplitDeviceQueue.pop_direct
        <pyvirtio.virtq.split_device.SplitDeviceQueue.pop_direct>`.  Returns ``(ids, lengths,
        views)``, a view of each chain's buffer.

        Takes the run of descriptors from ``next_avail`` whose flags say "available in this lap"
        and nothing else (no NEXT, WRITE or INDIRECT), across the ring's end (the wrap counter
        flips there); stops before the first other one — not available yet, of another shape,
        or with a buffer crossing from one memory region into the next — which
        :meth:`pop_descriptor_chain` then takes or refuses.  All flags are read before any other
        field (the driver writes each descriptor's flags last, 2.8.6).  Every descriptor is
        checked as the general path checks it: its buffer id not in flight already (nor twice
        in the batch), its buffer translated through guest memory; a violation breaks the queue."""
        self._check(mem)
        if self.resubmit:  # those go first, through pop_descriptor_chain
            return [], [], []
        size, desc16, pos, wrap = self.size, self._desc16, self.next_avail, self.avail_wrap
        limit = min(limit, size)
        first = min(limit, size - pos)
        n = leading_run(desc16[8 * pos + 7:8 * (pos + first):8], _F_AVAIL if wrap else _F_USED)
        n2 = 0
        if n == first < limit:  # up to the ring's end: the next lap, with the other wrap counter
            n2 = leading_run(desc16[7:8 * (limit - n):8], _F_USED if wrap else _F_AVAIL)
        if not n:
            return [], [], []
        rmb()  # every flags word read, then the descriptors they made available (2.8.6)
        q64, d32 = self._desc.cast("Q"), self._desc.cast("I")
        ids = desc16[8 * pos + 6:8 * (pos + n):8].tolist()
        lengths = d32[4 * pos + 2:4 * (pos + n):4].tolist()
        addrs = q64[2 * pos:2 * (pos + n):2].tolist()
        if n2:
            ids += desc16[6:8 * n2:8].tolist()
            lengths += d32[2:4 * n2:4].tolist()
            addrs += q64[0:2 * n2:2].tolist()
        pending = self._pending
        if len(set(ids)) != len(ids) or not pending.keys().isdisjoint(ids):
            dup = next(i for k, i in enumerate(ids) if i in pending or i in ids[:k])
            self._break(DriverFault(f"queue {self.index}: buffer id {dup} is already in flight"))
        try:
            bufs = readable_views(mem, addrs, lengths)
        except GuestMemoryError as exc:
            self._break(DriverFault(f"queue {self.index}: descriptor buffer {exc}"))
        count = len(bufs)
        if count < len(ids):
            del ids[count:], lengths[count:]
        self._took(ids, lengths, False)
        return ids, lengths, bufs

    def pop_single(self, mem: GuestMemory, limit: int, *, writable: bool = False
                   ) -> tuple[list[int], list[int], list[int], memoryview]:
        """Pop up to ``limit`` chains that are each one descriptor, device-writable if
        ``writable`` else device-readable: the batch path, as :meth:`SplitDeviceQueue.pop_single
        <pyvirtio.virtq.split_device.SplitDeviceQueue.pop_single>` — ``(ids, lengths, offsets,
        buf)``, chain ``i``'s buffer ``buf[offsets[i]:offsets[i] + lengths[i]]`` in the one guest
        memory region ``buf`` of the batch.

        Takes the run of descriptors from ``next_avail`` whose flags are exactly "available in
        this lap" (plus WRITE if ``writable``), across the ring's end; all flags are read before
        any other field (2.8.6).  The batch ends before the first descriptor of another shape,
        whose buffer id is in flight or repeated in the batch, or whose buffer is not inside the
        first buffer's region; coming first, a buffer outside guest memory or an id in flight
        breaks the queue with the general path's :class:`~pyvirtio.errors.DriverFault` (in that
        order, as :meth:`pop_descriptor_chain` checks them), and a buffer crossing regions is
        left to :meth:`pop_descriptor_chain` (an empty batch)."""
        self._check(mem)
        if self.resubmit:  # those go first, through pop_descriptor_chain
            return [], [], [], _NO_VIEW
        size, desc16, pos, wrap = self.size, self._desc16, self.next_avail, self.avail_wrap
        limit = min(limit, size)
        if limit <= 0:
            return [], [], [], _NO_VIEW
        bit = _F_WRITE if writable else 0
        first = min(limit, size - pos)
        n = leading_run(desc16[8 * pos + 7:8 * (pos + first):8], (_F_AVAIL if wrap else _F_USED) | bit)
        n2 = 0
        if n == first < limit:  # up to the ring's end: the next lap, with the other wrap counter
            n2 = leading_run(desc16[7:8 * (limit - n):8], (_F_USED if wrap else _F_AVAIL) | bit)
        if not n:
            return [], [], [], _NO_VIEW
        rmb()  # every flags word read, then the descriptors they made available (2.8.6)
        q64, d32 = self._desc64, self._desc32
        ids = desc16[8 * pos + 6:8 * (pos + n):8].tolist()
        lengths = d32[4 * pos + 2:4 * (pos + n):4].tolist()
        addrs = q64[2 * pos:2 * (pos + n):2].tolist()
        if n2:
            ids += desc16[6:8 * n2:8].tolist()
            lengths += d32[2:4 * n2:4].tolist()
            addrs += q64[0:2 * n2:2].tolist()
        count = len(ids)
        pending = self._pending
        fresh = count  # ids before the first in flight or repeated
        if len(set(ids)) != count or not pending.keys().isdisjoint(ids):
            fresh = next(k for k, i in enumerate(ids) if i in pending or i in ids[:k])
        try:
            region = mem.region_at(addrs[0])
        except GuestMemoryError:
            region = None
        inside = 0  # buffers from the first inside the first one's region
        if region is not None:
            gpa, end = region.gpa, region.end
            if min(addrs) >= gpa and (max(addrs) + max(lengths) <= end
                                      or max(map(add, addrs, lengths)) <= end):
                inside = count
            else:
                inside = next(k for k, (a, ln) in enumerate(zip(addrs, lengths)) if a < gpa or a + ln > end)
        if not inside:  # the first buffer: outside memory (a fault), or crossing regions
            try:
                mem.check(addrs[0], lengths[0])
            except GuestMemoryError as exc:
                self._break(DriverFault(f"queue {self.index}: descriptor buffer {exc}"))
            return [], [], [], _NO_VIEW
        if not fresh:
            self._break(DriverFault(f"queue {self.index}: buffer id {ids[0]} is already in flight"))
        assert region is not None
        count = min(fresh, inside)
        if count < len(ids):
            del ids[count:], lengths[count:], addrs[count:]
        offsets = addrs if not region.gpa else list(map(sub, addrs, repeat(region.gpa, count)))
        buf = region.buf if len(region.buf) == region.size else region.buf[:region.size]
        self._took(ids, lengths, writable)
        return ids, lengths, offsets, buf

    def _walk(self, mem: GuestMemory):
        """Follow the chain at ``next_avail`` (2.8.6, 2.8.7).  It may not be longer than the ring
        nor than MAX_CHAIN_SEGMENTS descriptors or buffers (:mod:`pyvirtio.limits`); an indirect
        table too long is refused before it is mapped or walked."""
        size, desc16, desc = self.size, self._desc16, self._desc
        pos, wrap, count = self.next_avail, self.avail_wrap, 0
        readable: list = []
        writable: list = []
        rlen = wlen = segs = 0  # readable bytes, writable bytes, descriptors (segments) so far
        seen_write = False
        views, unpack = mem.views, _DESC.unpack_from
        # A buffer inside the window is sliced here, at host address ``at + off`` (GuestMemory.
        # window); any other goes through views (and then the window is looked at again).
        gpa, end, buf, at = walk_window(mem)
        addrs: list[int] | None = []  # each view's host address (None: one has none)
        while True:
            flags = desc16[pos * 8 + 7]
            if count and ((not flags & _F_AVAIL) != (not wrap) or (not flags & _F_USED) == (not wrap)):
                raise DriverFault(f"descriptor {pos} of a chain is not available (2.8.6)")
            addr, length, buf_id, _ = unpack(desc, pos * 16)
            count += 1
            if count > size:
                raise DriverFault(f"chain is longer than the ring ({size})")
            pos += 1
            if pos == size:
                pos, wrap = 0, wrap ^ 1
            if flags & _F_INDIRECT:
                if not self.indirect:
                    raise DriverFault("indirect descriptor without VIRTIO_F_INDIRECT_DESC")
                if flags & _F_NEXT:
                    raise DriverFault("descriptor sets both INDIRECT and NEXT (2.8.7)")
                if length == 0 or length & 15:
                    raise DriverFault(f"indirect table length {length} is not a multiple of 16")
                if segs + (length >> 4) > MAX_CHAIN_SEGMENTS:
                    raise DriverFault(f"indirect table of {length >> 4} descriptors: the chain would "
                                      f"exceed {MAX_CHAIN_SEGMENTS}")
                table, n = mem.view(addr, length), length >> 4
                gpa, end, buf, at = walk_window(mem)  # the table's region: most often its buffers
                if n >= _BULK_TABLE and self.bulk_tables and not seen_write:
                    fields = descriptor_table_fields(table, n)
                    nr = _usual_table(fields, n)
                    got = append_table(fields, nr, gpa, end, buf, at, readable, writable, addrs) if nr >= 0 else None
                    if got is not None:  # the usual table: checked and sliced a table at a time
                        rlen += got[0]
                        wlen += got[1]
                        segs += n  # (at most MAX_CHAIN_SEGMENTS: checked before the table was mapped)
                        if rlen + wlen > MAX_CHAIN_BYTES:
                            raise DriverFault("chain is 2**32 bytes or longer (the used length is a u32)")
                        if len(readable) + len(writable) > MAX_CHAIN_SEGMENTS:
                            raise DriverFault(f"chain maps to more than {MAX_CHAIN_SEGMENTS} buffers")
                        # An indirect descriptor ends its chain (INDIRECT with NEXT was refused).
                        return DescriptorChain(buf_id, readable, writable, rlen, wlen, segs, addrs), pos, wrap, count
                entries = unpack_descriptor_table(table, n)  # (another shape: the loop says what is wrong)
            else:
                entries = [(addr, length, buf_id, flags)]
            for a, n, _, f in entries:
                if f & _F_INDIRECT:  # only a table's entry gets here with it
                    raise DriverFault("indirect descriptor inside an indirect table (2.8.7)")
                segs += 1
                if segs > MAX_CHAIN_SEGMENTS:
                    raise DriverFault(f"chain has more than {MAX_CHAIN_SEGMENTS} descriptors")
                off = a - gpa
                if f & _F_WRITE:
                    seen_write = True
                    if n:
                        if 0 <= off and off + n <= end:
                            writable.append(buf[off:off + n])
                            if addrs is not None:
                                addrs.append(at + off)
                        else:
                            more = views(a, n)
                            writable += more
                            addrs = view_addresses(addrs, more)
                            gpa, end, buf, at = walk_window(mem)
                        wlen += n
                else:
                    if seen_write:
                        raise DriverFault("device-readable descriptor after a writable one (2.8.4)")
                    if n:
                        if 0 <= off and off + n <= end:
                            readable.append(buf[off:off + n])
                            if addrs is not None:
                                addrs.append(at + off)
                        else:
                            more = views(a, n)
                            readable += more
                            addrs = view_addresses(addrs, more)
                            gpa, end, buf, at = walk_window(mem)
                        rlen += n
                if rlen + wlen > MAX_CHAIN_BYTES:
                    raise DriverFault("chain is 2**32 bytes or longer (the used length is a u32)")
                if len(readable) + len(writable) > MAX_CHAIN_SEGMENTS:
                    raise DriverFault(f"chain maps to more than {MAX_CHAIN_SEGMENTS} buffers")
            if not flags & _F_NEXT:
                return DescriptorChain(buf_id, readable, writable, rlen, wlen, segs, addrs), pos, wrap, count

    # --- returning used buffers -----------------------------------------------------------------

    def add_used(self, mem: GuestMemory, head_index: int, length: int) -> None:
        """Write one used descriptor for buffer id ``head_index`` (2.8.9)."""
        self._check(mem)
        if not 0 <= length <= 0xFFFFFFFF:
            raise UsageError(f"queue {self.index}: used length {length} out of range")
        if self.in_order and self._pending and next(iter(self._pending)) != head_index:
            raise UsageError(f"queue {self.index}: buffer id {head_index} used out of order "
                             "with VIRTIO_F_IN_ORDER")
        count = self._pending.pop(head_index, None)
        if count is None:
            raise UsageError(f"queue {self.index}: buffer id {head_index} is not in flight")
        self._wlen.pop(head_index, None)
        self._write_used(head_index, length, count)

    def _write_used(self, head_index: int, length: int, count: int) -> None:
        """The used descriptor at ``next_used``; then skip ``count`` ring positions."""
        pos = self.next_used
        inflight = self.inflight
        if inflight is not None:
            inflight.batch(head_index, count)
        _LEN_ID.pack_into(self._desc, pos * 16 + 8, length, head_index)  # flags untouched
        used_flags = (_F_AVAIL | _F_USED) if self.used_wrap else 0
        wmb()  # id and length before the flags that publish the used descriptor (2.8.9)
        self._desc16[pos * 8 + 7] = used_flags
        if inflight is not None:
            inflight.published(head_index)
        pos += count
        if pos >= self.size:
            pos -= self.size
            self.used_wrap ^= 1
        self.next_used = pos
        self._added_since_signal += count
        self.stats.bytes_written += length

    def add_used_batch(self, mem: GuestMemory, elems: Iterable[tuple[int, int]]) -> None:
        """Return many ``(head, length)`` chains, published with one index update."""
        self._check(mem)
        if not self.in_order:
            pending, wlen = self._pending, self._wlen
            for head_index, length in elems:  # as add_used, one after another
                if not 0 <= length <= 0xFFFFFFFF:
                    raise UsageError(f"queue {self.index}: used length {length} out of range")
                count = pending.pop(head_index, None)
                if count is None:
                    raise UsageError(f"queue {self.index}: buffer id {head_index} is not in flight")
                if wlen:
                    wlen.pop(head_index, None)
                self._write_used(head_index, length, count)
            return
        elems = list(elems)
        ids = [head for head, _ in elems]
        if ids != list(islice(self._pending, len(ids))):
            raise UsageError(f"queue {self.index}: buffers {ids[:8]} are not the oldest in flight "
                             "(VIRTIO_F_IN_ORDER)")
        if any(not 0 <= length <= 0xFFFFFFFF for _, length in elems):
            raise UsageError(f"queue {self.index}: a used length out of range")
        pending, wlen, run = self._pending, self._wlen, 0
        last = len(elems) - 1
        for i, (head, length) in enumerate(elems):
            run += pending.pop(head)
            if i == last or length != wlen.pop(head, 0):
                wlen.pop(head, None)
                self._write_used(head, length, run)  # closes the run (2.8.21)
                run = 0

    def add_used_heads(self, mem: GuestMemory, heads: Sequence[int], length: int = 0) -> None:
        """Return buffers that each got ``length`` bytes written (a transmit queue's: 0), as
        :meth:`add_used_batch` would, without a tuple per buffer.  With VIRTIO_F_IN_ORDER,
        buffers the driver can account for without a used descriptor (all their writable bytes
        written: for :meth:`pop_direct`'s, none) share one (2.8.21); otherwise buffers of one
        ring position each get their used descriptors written together."""
        self._check(mem)
        heads = list(heads)
        if not heads:
            return
        if not 0 <= length <= 0xFFFFFFFF:
            raise UsageError(f"queue {self.index}: used length {length} out of range")
        pending, in_order = self._pending, self.in_order
        if in_order:
            if heads != list(islice(pending, len(heads))):
                raise UsageError(f"queue {self.index}: buffers {heads[:8]} are not the oldest in "
                                 "flight (VIRTIO_F_IN_ORDER)")
        elif len(unique := set(heads)) != len(heads) or not pending.keys() >= unique:
            raise UsageError(f"queue {self.index}: add_used_heads with a buffer not in flight")
        counts = list(map(pending.pop, heads))
        if self.inflight is not None:  # it records one completion at a time
            for head, count in zip(heads, counts):
                self._wlen.pop(head, None)
                self._write_used(head, length, count)
        elif in_order:
            wlen = self._wlen
            filled = list(map(wlen.pop, heads, repeat(0))) if wlen else [0] * len(heads)
            if filled[:-1].count(length) == len(heads) - 1:
                self._write_used(heads[-1], length, sum(counts))  # one for the run (2.8.21)
                return
            run = 0
            for i, head in enumerate(heads):
                run += counts[i]
                if i == len(heads) - 1 or filled[i] != length:
                    self._write_used(head, length, run)
                    run = 0
        elif counts.count(1) == len(counts):
            self._write_used_ones(heads, length)
        else:
            for head, count in zip(heads, counts):
                self._write_used(head, length, count)

    def add_used_lengths(self, mem: GuestMemory, heads: Sequence[int], lengths: Sequence[int]) -> None:
        """Return buffers ``heads``, buffer ``i`` with ``lengths[i]`` bytes written, as
        :meth:`add_used_batch` would (runs with VIRTIO_F_IN_ORDER, one completion at a time with
        inflight tracking): the used side of :meth:`pop_single`.  Buffers of one ring position
        each, not in order, get their used descriptors written with one strided store per
        field."""
        self._check(mem)
        heads = list(heads)
        try:
            lens = array.array("I", lengths)
        except (OverflowError, TypeError):
            raise UsageError(f"queue {self.index}: add_used_lengths with a length out of range") from None
        if len(lens) != len(heads):
            raise UsageError(f"queue {self.index}: add_used_lengths needs one length per buffer")
        if not heads:
            return
        pending = self._pending
        if self.in_order or self.inflight is not None:
            self.add_used_batch(mem, list(zip(heads, lens)))
            return
        if len(unique := set(heads)) != len(heads) or not pending.keys() >= unique:
            raise UsageError(f"queue {self.index}: add_used_lengths with a buffer not in flight")
        counts = list(map(pending.pop, heads))
        if counts.count(1) == len(counts):
            self._write_used_ones(heads, lens)
        else:
            for head, length, count in zip(heads, lens, counts):
                self._write_used(head, length, count)

    def _write_used_ones(self, ids: list[int], length: int | array.array) -> None:
        """Used descriptors for buffers of one ring position each, from ``next_used`` on: ids
        and lengths first (one strided store per field), then the flags that publish them (one
        store per word, :func:`store_flags`) — a second round past the ring's end, with the
        flipped wrap counter."""
        pos, size, count = self.next_used, self.size, len(ids)
        desc16, d32 = self._desc16, self._desc.cast("I")
        first = min(count, size - pos)
        for at, lo, hi, wrap in ((pos, 0, first, self.used_wrap), (0, first, count, self.used_wrap ^ 1)):
            if hi > lo:
                n = hi - lo
                desc16[8 * at + 6:8 * (at + n):8] = array.array("H", ids[lo:hi])
                if isinstance(length, int):
                    d32[4 * at + 2:4 * (at + n):4] = array.array("I", (length,)) * n
                else:  # one length per buffer
                    d32[4 * at + 2:4 * (at + n):4] = length[lo:hi]
                wmb()  # ids and lengths before the flags that publish them (2.8.9)
                store_flags(desc16, at, n, (_F_AVAIL | _F_USED) if wrap else 0)
        pos += count
        if pos >= size:
            pos -= size
            self.used_wrap ^= 1
        self.next_used = pos
        self._added_since_signal += count
        self.stats.bytes_written += length * count if isinstance(length, int) else sum(length)

    # --- notification suppression (2.8.10) ------------------------------------------------------

    def needs_notification(self, mem: GuestMemory) -> bool:
        """Whether the driver wants a used-buffer notification for what was added since the last
        one (2.7.10, 2.8.10: event index or flags)."""
        self._check(mem)
        added = self._added_since_signal
        if not added:
            return False
        mb()  # used descriptors visible before reading the driver's event suppression
        self._added_since_signal = 0
        off_wrap, flags = self._driver16[0], self._driver16[1]
        if flags == _EV_DISABLE:
            return False
        if flags == _EV_DESC and self.event_idx:
            return packed_need_event(off_wrap, self.used_wrap, self.next_used, added, self.size)
        return True

    def disable_notification(self, mem: GuestMemory) -> None:
        """Ask the driver not to kick (it may still do so)."""
        self._check(mem)
        self._device16[1] = _EV_DISABLE

    def enable_notification(self, mem: GuestMemory) -> bool:
        """Ask the driver to kick again; True when chains raced in meanwhile (so the caller drains
        again, not sleeps)."""
        self._check(mem)
        if self.event_idx:
            self._device16[0] = self.next_avail | (self.avail_wrap << 15)
            self._device16[1] = _EV_DESC
        else:
            self._device16[1] = _EV_ENABLE
        mb()  # publish the suppression change before re-checking for new buffers
        return self._is_avail(self._desc16[self.next_avail * 8 + 7], self.avail_wrap)

    def drain(self, mem: GuestMemory, handle: Callable[[DescriptorChain], int | None],
              settle: Callable[[], bool | None] | None = None, notify: Callable[[], None] | None = None) -> bool:
        """The one notification loop (:mod:`pyvirtio.virtq.drain`): pop every chain, ``handle``
        each (the bytes written, or None to keep it), re-enable and re-check; True when
        the driver is to be notified.  ``settle``, ``notify``: see
        :func:`~pyvirtio.virtq.drain.drain_queue`."""
        return drain_queue(self, mem, handle, settle, notify)

    def in_flight(self) -> int:
        """How many chains were popped and not yet returned."""
        return len(self._pending)

    def describe(self, mem: GuestMemory, window: int = 8) -> dict[str, Any]:
        """The ring as both sides see it now, for a person (``pyvirtio ctl PATH ring N``): the
        device's positions and wrap counters, the buffer ids in flight, both event suppression
        areas, and the descriptors from ``window`` positions before ``next_used`` to ``window``
        after ``next_avail``, each flags word read as a state (:func:`flags_state`).  A
        descriptor the device waits for at ``next_avail`` that reads "used" there is one lost
        between the sides.  Only reads; a ring that cannot be read says why."""
        out = self._described("packed", next_avail=self.next_avail, avail_wrap=self.avail_wrap,
                              next_used=self.next_used, used_wrap=self.used_wrap,
                              in_flight=len(self._pending),
                              in_flight_ids=sorted(self._pending)[:4 * window])
        if not self.ready:
            return out
        size = self.size
        try:  # views of its own: binding the queue's could break it (a diagnostic must not)
            desc = mem.view(self.desc_table, 16 * size)
            desc16, d32 = desc.cast("H"), desc.cast("I")
            driver16 = mem.view(self.avail_ring, 4).cast("H")
            device16 = mem.view(self.used_ring, 4).cast("H")
            start = (self.next_used - window) % size
            count = min(size, (self.next_avail - start) % size + window + 1)
            out["descriptors"] = [
                {"pos": pos, "id": desc16[8 * pos + 6], "len": d32[4 * pos + 2],
                 "flags": flags, "state": flags_state(flags)}  # one read: the driver may write it
                for pos in ((start + k) % size for k in range(count))
                for flags in (desc16[8 * pos + 7],)]
            out["next_avail_ready"] = self._is_avail(desc16[8 * self.next_avail + 7], self.avail_wrap)
            out["driver_event"] = _event_state(driver16[0], driver16[1])
            out["device_event"] = _event_state(device16[0], device16[1])
        except (DriverFault, GuestMemoryError, IndexError) as exc:
            out["unreadable"] = str(exc)
        return out
