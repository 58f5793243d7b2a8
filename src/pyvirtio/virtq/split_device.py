"""The device side of a split virtqueue (VIRTIO 1.3, 2.7), as a sans-I/O core.

The device pops descriptor chains the driver made available, fills their buffers, returns them
in the used ring, and decides whether the driver wants an interrupt.  The driver is untrusted:
every index, descriptor and length is checked, and any violation raises
:class:`~pyvirtio.errors.DriverFault` and marks the queue broken (every later call raises
:class:`~pyvirtio.errors.QueueBroken` until :meth:`reset`).

Host byte order: the ring views are native ``memoryview.cast`` arrays, which are little-endian
on every host pyvirtio supports (x86-64, aarch64); an import-time check enforces it.
"""

from __future__ import annotations

import array
import itertools
import sys
from operator import add, itemgetter, sub
from typing import Any, Callable, Iterable, Sequence

from ..errors import DriverFault, GuestMemoryError, UsageError
from ..fence import mb, rmb, wmb
from ..limits import MAX_CHAIN_BYTES, MAX_CHAIN_SEGMENTS
from ..memory import GuestMemory
from ..spec import ring
from ..stats import QueueCounters
from .base import DeviceRingSide
from .chain import DescriptorChain, append_table, view_addresses, walk_window
from .batch import readable_views
from .drain import drain_queue
from .event import vring_need_event
from .layout import (avail_ring_size, desc_table_size, descriptor_table_fields, is_valid_split_size,
                     used_ring_size)

if sys.byteorder != "little":  # pragma: no cover
    raise ImportError("pyvirtio's ring views assume a little-endian host")

_DESC = ring.VIRTQ_DESC
_F_NEXT = ring.VIRTQ_DESC_F_NEXT
_F_WRITE = ring.VIRTQ_DESC_F_WRITE
_F_INDIRECT = ring.VIRTQ_DESC_F_INDIRECT


_NO_VIEW = memoryview(bytearray(0))  # the ring views before _bind (never read: _check binds first)


#: Indirect tables at least this long are first tried by :func:`_usual_table`.
_BULK_TABLE = 8
_NEXTS: dict[int, tuple[int, ...]] = {}  # per table length: (1, 2, ..., count - 1)
_F_NEXT_WRITE = _F_NEXT | _F_WRITE


def _walked(head: int, readable: list, writable: list, rlen: int, wlen: int, descriptors: int,
            addrs: list[int] | None) -> DescriptorChain:
    """The chain a walk from ``head`` found, after the checks every walk makes once at its end
    (the walk's loop bounds what grew meanwhile): its bytes fit the used ring's u32 length, and
    its views number at most MAX_CHAIN_SEGMENTS.  Raises DriverFault."""
    if rlen + wlen > MAX_CHAIN_BYTES:
        raise DriverFault("chain is 2**32 bytes or longer (the used length is a u32)")
    if len(readable) + len(writable) > MAX_CHAIN_SEGMENTS:
        raise DriverFault(f"chain from head {head} maps to more than {MAX_CHAIN_SEGMENTS} buffers")
    return DescriptorChain(head, readable, writable, rlen, wlen, descriptors, addrs)


def _usual_table(fields: tuple[int, ...], count: int) -> int:
    """How many descriptors of an indirect table of the usual shape are device-readable, found
    with sequence operations over the whole table instead of the walk's loop per descriptor;
    -1 when it is not of that shape: the loop then walks it (and says what is wrong, if
    anything is).  (:func:`~pyvirtio.virtq.chain.append_table` then checks the buffers.)

    The usual shape (Linux writes its tables so): descriptor ``i``'s next is ``i + 1``; every
    flags field but the last is NEXT or NEXT|WRITE, the last 0 or WRITE; no readable one after
    a writable one.  Every check the loop makes of the table's flags and nexts: no INDIRECT
    inside (2.7.5.3.1), readable before writable (2.7.4.2), every next inside the table, no
    loop.  The caller has checked that no writable descriptor came before the table."""
    nexts = _NEXTS.get(count)
    if nexts is None:
        nexts = _NEXTS[count] = tuple(range(1, count))
    if fields[3:4 * count - 4:4] != nexts:
        return -1
    flags = fields[2::4]
    nr = flags.count(_F_NEXT)  # readable ones but the last
    last = flags[-1]
    if last == 0:
        if nr != count - 1:
            return -1  # the last is readable: so must all be (else another flag, or W before R)
        return count
    if last != _F_WRITE or nr + flags.count(_F_NEXT_WRITE) != count - 1 or flags[:nr].count(_F_NEXT) != nr:
        return -1  # another flag, or a readable one after a writable one
    return nr


class SplitDeviceQueue(DeviceRingSide):
    """Device-side state of one split virtqueue: addresses, indices, notification state."""

    _desc: memoryview
    _avail16: memoryview
    _used16: memoryview
    _used32: memoryview
    #: numpy views of the bound ring (pyvirtio.virtq.vector), made there on first use
    _vec: Any

    packed = False
    #: VIRTIO_F_IN_ORDER negotiated (the device sets it once features are settled): only
    #: :meth:`add_used_heads` uses it, to return a batch with one used entry.
    in_order = False

    def __init__(self, max_size: int = 256, *, index: int = 0):
        if not is_valid_split_size(max_size):
            raise UsageError(f"max queue size {max_size} is not a power of two <= 32768")
        self.index = index
        self.max_size = max_size
        self.event_idx = False  # VIRTIO_F_EVENT_IDX negotiated
        self.indirect = False  # VIRTIO_F_INDIRECT_DESC negotiated
        #: Indirect tables of the usual shape checked a table at a time (_usual_table, append_table);
        #: False walks every one descriptor by descriptor (the same checks, slower).
        self.bulk_tables = True
        #: Counters (pyvirtio.stats); not reset with the ring: the device carries them over.
        self.stats = QueueCounters()
        self.reset()

    # --- configuration --------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the state after device reset (2.7; queue_reset in 4.1.4.3.2)."""
        self.size = self.max_size
        self.desc_table = 0
        self.avail_ring = 0
        self.used_ring = 0
        self.ready = False
        self.next_avail = 0
        self.next_used = 0
        self.signalled_used = 0  # used idx at the last notification decision
        self._signalled_valid = False  # False until the first decision (then EVENT_IDX applies)
        self.notifications_enabled = True
        self.broken = False
        self.fault: Exception | None = None
        #: vhost-user inflight tracking (pyvirtio.vhost_user.backend.inflight): told of every pop and
        #: every used-idx publish; ``resubmit`` heads are popped again before the avail ring.
        self.inflight: Any = None
        self.resubmit: list[int] = []
        self._drop_views()

    def set_size(self, size: int) -> None:
        """The queue size the driver chose (a power of two for split rings, 2.7; any up to max_size
        for packed)."""
        if not is_valid_split_size(size) or size > self.max_size:
            raise DriverFault(f"queue {self.index}: size {size} is not a power of two <= {self.max_size}")
        self.size = size
        self._drop_views()

    def set_addresses(self, desc_table: int, avail_ring: int, used_ring: int) -> None:
        """Where the ring's three parts live in guest memory (split: descriptor table, available
        and used rings; packed: descriptor ring, driver and device event areas)."""
        self.desc_table, self.avail_ring, self.used_ring = desc_table, avail_ring, used_ring
        self._drop_views()

    def set_features(self, event_idx: bool, indirect: bool) -> None:
        """The negotiated ring features: VIRTIO_F_EVENT_IDX and VIRTIO_F_INDIRECT_DESC."""
        self.event_idx, self.indirect = event_idx, indirect

    def activate(self, mem: GuestMemory) -> None:
        """Check the ring fits guest memory and its alignment (2.7), then mark the queue ready.

        Raises DriverFault for a ring the driver placed badly."""
        if self.desc_table % ring.VIRTQ_DESC_ALIGN or self.avail_ring % ring.VIRTQ_AVAIL_ALIGN \
                or self.used_ring % ring.VIRTQ_USED_ALIGN:
            raise DriverFault(f"queue {self.index}: ring parts are misaligned (2.7)")
        self._bind(mem)
        self.ready = True

    def set_base(self, next_avail: int) -> None:
        """Where to start consuming the avail ring (vhost-user SET_VRING_BASE)."""
        self.next_avail = next_avail & 0xFFFF

    def sync_used_from_ring(self, mem: GuestMemory) -> None:
        """Take ``next_used`` from the ring's used idx (a ring handed over mid-flight)."""
        self._bind(mem)
        self.next_used = self._used16[1]
        self.signalled_used = self.next_used
        self._signalled_valid = False

    # --- ring views ------------------------------------------------------------------------------

    def _drop_views(self) -> None:
        self._mem = None
        self._gen = -1
        self._desc = self._avail16 = self._used16 = self._used32 = _NO_VIEW
        self._daddr = self._dlen = self._dflags = _NO_VIEW
        self._vec = None

    def _bind(self, mem: GuestMemory) -> None:
        if mem is self._mem and mem.generation == self._gen:
            return
        size = self.size
        try:
            desc = mem.view(self.desc_table, desc_table_size(size))
            avail = mem.view(self.avail_ring, avail_ring_size(size))
            used = mem.view(self.used_ring, used_ring_size(size))
        except GuestMemoryError as exc:
            self._break(DriverFault(f"queue {self.index}: ring outside guest memory: {exc}"))
        self._desc = desc
        # Strided views of the descriptor table, one per field: element h is descriptor h's
        # addr, len or flags (the batch pop gathers a field for a batch in one C-level call).
        self._daddr = desc.cast("Q")[0::2]
        self._dlen = desc.cast("I")[2::4]
        self._dflags = desc.cast("H")[6::8]
        self._avail16 = avail.cast("H")
        self._used16 = used.cast("H")
        self._used32 = used[:4 + 8 * size].cast("I")
        self._mem, self._gen = mem, mem.generation
        self._vec = None



    # --- consuming available buffers ------------------------------------------------------------

    def avail_idx(self, mem: GuestMemory) -> int:
        """The driver's available index as the ring holds it now (2.7.6)."""
        self._check(mem)
        return self._avail16[1]

    def has_available(self, mem: GuestMemory) -> bool:
        """Whether the driver has made a chain available that was not popped yet."""
        if self.broken or not self.ready or mem is not self._mem or mem.generation != self._gen:
            self._check(mem)  # (its test written out: blk asks after every O_DIRECT request)
        return self._avail16[1] != self.next_avail

    def pop_descriptor_chain(self, mem: GuestMemory) -> DescriptorChain | None:
        """Take the next available chain, or None when the driver has made nothing new available.

        2.7.13.1: the avail idx may not move more than the queue size ahead of what we consumed;
        the head must be a valid descriptor index."""
        if self.broken or not self.ready or mem is not self._mem or mem.generation != self._gen:
            self._check(mem)  # (its test written out: this method is on every request's path)
        if self.resubmit:
            return self._pop_resubmitted(mem)
        avail16 = self._avail16
        avail_idx = avail16[1]
        next_avail = self.next_avail
        if avail_idx == next_avail:
            return None
        if (avail_idx - next_avail) & 0xFFFF > self.size:
            self._break(DriverFault(
                f"queue {self.index}: avail idx {avail_idx} is more than {self.size} ahead of {next_avail}"))
        rmb()  # the avail idx, then the entries and descriptors it made available (2.7.6)
        head = avail16[2 + (next_avail & (self.size - 1))]
        chain = self._walk(mem, head)
        if self.inflight is not None:
            self.inflight.popped(head)
        self.next_avail = (next_avail + 1) & 0xFFFF
        stats = self.stats
        stats.chains += 1
        stats.bytes_read += chain.readable_len
        return chain

    def _pop_resubmitted(self, mem: GuestMemory) -> DescriptorChain:
        """A chain a previous back-end had in flight (still marked in the inflight region)."""
        chain = self._walk(mem, self.resubmit.pop(0))
        self.stats.chains += 1
        self.stats.bytes_read += chain.readable_len
        return chain

    def pop_many(self, mem: GuestMemory, limit: int = 1 << 30) -> list[DescriptorChain]:
        """Pop up to ``limit`` chains in one go (the batch of one kick)."""
        self._check(mem)  # a broken queue refuses even an empty batch
        out: list[DescriptorChain] = []
        while len(out) < limit:
            chain = self.pop_descriptor_chain(mem)
            if chain is None:
                break
            out.append(chain)
        return out

    def _avail_heads(self, limit: int) -> list[int]:
        """The heads of up to ``limit`` chains the driver made available from ``next_avail`` on,
        read with one slice (two across the ring's end), not popped; an avail idx more than the
        queue size ahead breaks the queue (2.7.13.1).  The batch pops' first step."""
        size, next_avail, avail16 = self.size, self.next_avail, self._avail16
        ahead = (avail16[1] - next_avail) & 0xFFFF
        if ahead > size:
            self._break(DriverFault(
                f"queue {self.index}: avail idx {avail16[1]} is more than {size} ahead of {next_avail}"))
        n = min(ahead, limit)
        if n <= 0:
            return []
        rmb()  # the avail idx, then the entries and descriptors it made available (2.7.6)
        start = next_avail & (size - 1)
        heads = avail16[2 + start:2 + min(start + n, size)].tolist()
        if len(heads) < n:  # the batch wraps around the ring
            heads += avail16[2:2 + n - len(heads)].tolist()
        return heads

    def pop_direct(self, mem: GuestMemory, limit: int) -> tuple[list[int], list[int], list[memoryview]]:
        """Pop up to ``limit`` chains that are each one device-readable descriptor (no NEXT,
        WRITE or INDIRECT flag): the batch fast path of a transmit queue, with no per-chain
        DescriptorChain.  Returns ``(heads, lengths, views)``, a view of each chain's buffer.
        Stops before the first chain of another shape, or whose buffer crosses from one memory
        region into the next (``pop_descriptor_chain`` takes that one).

        Every descriptor is checked as ``pop_descriptor_chain`` checks it (2.7.13.1, 2.7.5): the
        avail idx, each head index, each buffer translated through guest memory
        (:func:`~pyvirtio.virtq.batch.readable_views`); a violation breaks the queue."""
        self._check(mem)
        if self.resubmit:  # those go first, through pop_descriptor_chain
            return [], [], []
        size, next_avail = self.size, self.next_avail
        heads = self._avail_heads(limit)
        if not heads:
            return heads, [], []
        if max(heads) >= size:
            self._break(DriverFault(f"queue {self.index}: head index {max(heads)} >= queue size {size}"))
        # One C-level read per field over the strided views of the descriptor table (_bind:
        # element h of ``_dflags`` is descriptor h's flags), no bytecode per chain: a slice when
        # the heads are consecutive descriptors, else a gather (itemgetter).
        first, count = heads[0], len(heads)
        flags: Sequence[int]
        addrs: Sequence[int]
        if heads[-1] == first + count - 1 and heads == list(range(first, first + count)):
            flags = self._dflags[first:first + count].tolist()
            lengths = self._dlen[first:first + count].tolist()
            addrs = self._daddr[first:first + count].tolist()
        else:
            get = itemgetter(*heads) if count > 1 else (lambda seq: (seq[first],))
            flags, lengths, addrs = get(self._dflags), list(get(self._dlen)), get(self._daddr)
        if any(flags):  # another shape: the general path checks it
            keep = next(i for i, f in enumerate(flags) if f)
            del heads[keep:], lengths[keep:]
        try:
            bufs = readable_views(mem, addrs[:len(heads)], lengths)
        except GuestMemoryError as exc:
            self._break(DriverFault(f"queue {self.index}: descriptor buffer {exc}"))
        if len(bufs) < len(heads):
            del heads[len(bufs):], lengths[len(bufs):]
        if self.inflight is not None:
            for head in heads:
                self.inflight.popped(head)
        self.next_avail = (next_avail + len(heads)) & 0xFFFF
        stats = self.stats
        stats.chains += len(heads)
        stats.bytes_read += sum(lengths)
        return heads, lengths, bufs

    def pop_single(self, mem: GuestMemory, limit: int, *, writable: bool = False
                   ) -> tuple[list[int], list[int], list[int], memoryview]:
        """Pop up to ``limit`` chains that are each one descriptor, device-writable if
        ``writable`` (flags exactly WRITE) else device-readable (flags 0): the batch path, with
        no DescriptorChain and no view per chain.

        Returns ``(heads, lengths, offsets, buf)``: chain ``i``'s buffer is
        ``buf[offsets[i]:offsets[i] + lengths[i]]`` — ``buf`` is the host buffer of the one guest
        memory region every buffer of the batch lies in, so the device slices a view only of a
        buffer it touches.  The batch ends before the first chain of another shape, or whose
        buffer is not wholly inside that region (in another region, or crossing into the next);
        an empty batch means the next chain is for :meth:`pop_descriptor_chain` (or nothing is
        available).

        Every descriptor is checked as :meth:`pop_descriptor_chain` checks it (2.7.13.1, 2.7.5):
        the avail idx at most the queue size ahead, each head below the queue size, each flags
        field, each buffer inside guest memory — checked for the batch at once with C-level
        ``min``/``max`` over its addresses and ends against the region's bounds.  A buffer outside
        guest memory (or wrapping past 2**64), or a head out of range, breaks the queue with the
        general path's :class:`~pyvirtio.errors.DriverFault` when it comes first in a batch: the
        chains before it are handed out first, as the general path hands them out one by one."""
        self._check(mem)
        if self.resubmit:  # those go first, through pop_descriptor_chain
            return [], [], [], _NO_VIEW
        size, next_avail = self.size, self.next_avail
        heads = self._avail_heads(limit)
        if not heads:
            return [], [], [], _NO_VIEW
        n = len(heads)
        if max(heads) >= size:  # the batch ends before it; first in the batch, it breaks the queue
            n = next(i for i, h in enumerate(heads) if h >= size)
            if not n:
                self._break(DriverFault(f"queue {self.index}: head index {heads[0]} >= queue size {size}"))
            del heads[n:]
        # One C-level read per field over the strided table views (_bind), no bytecode per chain:
        # a slice when the heads are consecutive descriptors (a driver's free list, in order),
        # else a gather.
        first = heads[0]
        flags: Sequence[int]
        addrs: Sequence[int]
        if n > 1 and heads[-1] == first + n - 1 and heads == list(range(first, first + n)):
            end_ = first + n
            flags, lengths = self._dflags[first:end_].tolist(), self._dlen[first:end_].tolist()
            addrs = self._daddr[first:end_].tolist()
        elif n > 1:
            get = itemgetter(*heads)
            flags, lengths, addrs = get(self._dflags), list(get(self._dlen)), get(self._daddr)
        else:
            flags, lengths, addrs = (self._dflags[first],), [self._dlen[first]], (self._daddr[first],)
        want = _F_WRITE if writable else 0
        if flags.count(want) != n:  # another shape (chained, indirect, other direction)
            n = next(i for i, f in enumerate(flags) if f != want)
            if not n:
                return [], [], [], _NO_VIEW
            del heads[n:], lengths[n:]
            addrs = addrs[:n]
        try:
            region = mem.region_at(addrs[0])
        except GuestMemoryError:
            region = None
        if region is not None:
            gpa, end = region.gpa, region.end
            if min(addrs) < gpa or (max(addrs) + max(lengths) > end  # (a quick bound, then exact)
                                    and max(map(add, addrs, lengths)) > end):  # not all in the region
                n = next(i for i, (a, ln) in enumerate(zip(addrs, lengths)) if a < gpa or a + ln > end)
        else:
            n = 0
        if not n:  # the first buffer is not in one region: outside memory, or crossing regions
            try:
                mem.check(addrs[0], lengths[0])
            except GuestMemoryError as exc:
                self._break(DriverFault(f"queue {self.index}: descriptor buffer {exc}"))
            return [], [], [], _NO_VIEW  # mapped (or empty): the general path takes it
        if n < len(heads):
            del heads[n:], lengths[n:]
            addrs = addrs[:n]
        assert region is not None  # n > 0: the batch lies in the first buffer's region
        offsets = list(addrs) if not region.gpa else list(map(sub, addrs, itertools.repeat(region.gpa, n)))
        buf = region.buf if len(region.buf) == region.size else region.buf[:region.size]
        if self.inflight is not None:
            for head in heads:
                self.inflight.popped(head)
        self.next_avail = (next_avail + n) & 0xFFFF
        stats = self.stats
        stats.chains += n
        if not writable:
            stats.bytes_read += sum(lengths)
        return heads, lengths, offsets, buf

    def _walk(self, mem: GuestMemory, head: int) -> DescriptorChain:
        """Follow a chain from ``head`` (2.7.5), entering at most one indirect table (2.7.5.3).

        A chain may not be longer than the queue size (2.7.5.3.1) nor than MAX_CHAIN_SEGMENTS
        descriptors or buffers (:mod:`pyvirtio.limits`); an indirect table's length says how many
        descriptors it holds, so a table too long is refused before it is mapped or walked."""
        size = self.size
        if head >= size:
            self._break(DriverFault(f"queue {self.index}: head index {head} >= queue size {size}"))
        table = self._desc
        addr, length, flags, nxt = _DESC.unpack_from(table, head << 4)  # the loop's first too
        if (flags & _F_INDIRECT and not flags & _F_NEXT and self.indirect and length and not length & 15
                and length >> 4 <= MAX_CHAIN_SEGMENTS):
            # A driver with indirect descriptors: the head names the whole chain's table.  The
            # loop below would make these same checks of it first, then go there.
            try:
                return self._walk_table(mem, head, addr, length, [], [], 0, 0, False, 0, [], walk_window(mem))
            except DriverFault as exc:
                self._break(DriverFault(f"queue {self.index}: {exc}"))
            except GuestMemoryError as exc:
                self._break(DriverFault(f"queue {self.index}: descriptor buffer {exc}"))
        idx, seen, total = head, 0, 0
        readable: list = []
        writable: list = []
        rlen = wlen = 0
        seen_write = False
        views, unpack = mem.views, _DESC.unpack_from
        # A buffer inside the window is sliced here, at host address ``at + off`` (GuestMemory.
        # window); any other goes through views (and then the window is looked at again).
        gpa, end, buf, at = walk_window(mem)
        addrs: list[int] | None = []  # each view's host address (None: one has none)
        # Until the loop returns at an indirect table, every descriptor seen is a segment
        # (``seen == total``): one test per descriptor covers both bounds.
        limit = size if size < MAX_CHAIN_SEGMENTS else MAX_CHAIN_SEGMENTS
        try:
            while True:
                seen += 1
                if seen > limit:
                    if seen > size:
                        raise DriverFault(f"chain from head {head} loops or exceeds {size} descriptors")
                    raise DriverFault(f"chain from head {head} has more than {MAX_CHAIN_SEGMENTS} "
                                      "descriptors")
                total = seen
                if flags & _F_INDIRECT:
                    if not self.indirect:
                        raise DriverFault("indirect descriptor without VIRTIO_F_INDIRECT_DESC")
                    if flags & _F_NEXT:
                        raise DriverFault("descriptor sets both INDIRECT and NEXT (2.7.5.3.1)")
                    if length == 0 or length & 15:
                        raise DriverFault(f"indirect table length {length} is not a multiple of 16")
                    total -= 1  # the descriptor pointing at the table is not a segment
                    if total + (length >> 4) > MAX_CHAIN_SEGMENTS:
                        raise DriverFault(f"indirect table of {length >> 4} descriptors: the chain "
                                          f"would exceed {MAX_CHAIN_SEGMENTS}")
                    # Without NEXT, the table ends the chain.
                    return self._walk_table(mem, head, addr, length, readable, writable, rlen, wlen,
                                            seen_write, total, addrs, (gpa, end, buf, at))
                off = addr - gpa
                if flags & _F_WRITE:
                    seen_write = True
                    if length:
                        if 0 <= off and off + length <= end:
                            writable.append(buf[off:off + length])
                            if addrs is not None:
                                addrs.append(at + off)
                        else:
                            more = views(addr, length)
                            writable += more
                            addrs = view_addresses(addrs, more)
                            gpa, end, buf, at = walk_window(mem)
                        wlen += length
                else:
                    if seen_write:
                        raise DriverFault("device-readable descriptor after a writable one (2.7.4.2)")
                    if length:
                        if 0 <= off and off + length <= end:
                            readable.append(buf[off:off + length])
                            if addrs is not None:
                                addrs.append(at + off)
                        else:
                            more = views(addr, length)
                            readable += more
                            addrs = view_addresses(addrs, more)
                            gpa, end, buf, at = walk_window(mem)
                        rlen += length
                if not flags & _F_NEXT:
                    break
                idx = nxt
                if idx >= size:
                    raise DriverFault(f"next index {idx} >= table size {size}")
                addr, length, flags, nxt = unpack(table, idx << 4)
            # Checked once, after the walk (as _walk_table does): at most ``limit`` descriptors
            # of at most 2**32 - 1 bytes each, each mapped to one view per region it crosses, so
            # nothing grew without bound meanwhile.
            return _walked(head, readable, writable, rlen, wlen, total, addrs)
        except DriverFault as exc:
            self._break(DriverFault(f"queue {self.index}: {exc}"))
        except GuestMemoryError as exc:
            self._break(DriverFault(f"queue {self.index}: descriptor buffer {exc}"))

    def _walk_table(self, mem: GuestMemory, head: int, addr: int, length: int, readable: list,
                    writable: list, rlen: int, wlen: int, seen_write: bool, total: int,
                    addrs: list[int] | None, window: tuple[int, int, memoryview, int]) -> DescriptorChain:
        """The rest of a chain from ``head``: the indirect table of ``length`` bytes at ``addr``,
        after the chain's descriptors so far (``readable`` … ``total``, and the views' host
        addresses ``addrs`` or None; ``window``: the walk's, :func:`walk_window`).  The same
        checks as :meth:`_walk`'s loop, made per descriptor, and the same translation (the
        window of the table's region first).  Raises DriverFault / GuestMemoryError (``_walk``
        breaks the queue)."""
        count = length >> 4
        gpa, end, buf, at = window
        off = addr - gpa
        if 0 <= off and off + length <= end:  # the table lies in the walk's window (most often)
            fields = descriptor_table_fields(buf[off:off + length], count)
        else:
            fields = descriptor_table_fields(mem.view(addr, length), count)
            gpa, end, buf, at = walk_window(mem)
        if count >= _BULK_TABLE and self.bulk_tables and not seen_write:
            nr = _usual_table(fields, count)
            got = append_table(fields, nr, gpa, end, buf, at, readable, writable, addrs) if nr >= 0 else None
            if got is not None:  # the usual table: checked and sliced a table at a time
                return _walked(head, readable, writable, rlen + got[0], wlen + got[1], total + count, addrs)
        views = mem.views
        i = seen = 0
        while True:
            seen += 1
            if seen > count:
                raise DriverFault(f"chain from head {head} loops or exceeds {count} descriptors")
            # (total + count <= MAX_CHAIN_SEGMENTS was checked before the table was mapped.)
            j = i << 2
            addr, length, flags = fields[j], fields[j + 1], fields[j + 2]
            if flags & _F_INDIRECT:
                raise DriverFault("indirect descriptor inside an indirect table (2.7.5.3.1)")
            off = addr - gpa
            if flags & _F_WRITE:
                seen_write = True
                if length:
                    if 0 <= off and off + length <= end:
                        writable.append(buf[off:off + length])
                        if addrs is not None:
                            addrs.append(at + off)
                    else:
                        more = views(addr, length)
                        writable += more
                        addrs = view_addresses(addrs, more)
                        gpa, end, buf, at = walk_window(mem)
                    wlen += length
            else:
                if seen_write:
                    raise DriverFault("device-readable descriptor after a writable one (2.7.4.2)")
                if length:
                    if 0 <= off and off + length <= end:
                        readable.append(buf[off:off + length])
                        if addrs is not None:
                            addrs.append(at + off)
                    else:
                        more = views(addr, length)
                        readable += more
                        addrs = view_addresses(addrs, more)
                        gpa, end, buf, at = walk_window(mem)
                    rlen += length
            if not flags & _F_NEXT:
                break
            i = fields[j + 3]
            if i >= count:
                raise DriverFault(f"next index {i} >= table size {count}")
        # Checked once, after the walk: at most ``count`` descriptors of at most 2**32 - 1 bytes,
        # each mapped to one buffer per region it crosses, so nothing grew without bound meanwhile.
        return _walked(head, readable, writable, rlen, wlen, total + seen, addrs)

    # --- returning used buffers -----------------------------------------------------------------

    def add_used(self, mem: GuestMemory, head_index: int, length: int) -> None:
        """Put one chain in the used ring with the number of bytes the device wrote (2.7.8)."""
        self._check(mem)
        if not (0 <= head_index < self.size and 0 <= length <= 0xFFFFFFFF):
            raise UsageError(f"queue {self.index}: add_used({head_index}, {length}) out of range")
        slot = (self.next_used & (self.size - 1)) * 2
        used32 = self._used32
        used32[1 + slot] = head_index
        used32[2 + slot] = length
        inflight = self.inflight
        if inflight is not None:
            inflight.batch((head_index,))
        wmb()  # the used element before the used idx that publishes it (2.7.8)
        self.next_used = (self.next_used + 1) & 0xFFFF
        self._used16[1] = self.next_used
        self.stats.bytes_written += length
        if inflight is not None:
            inflight.published((head_index,), self.next_used)

    def add_used_batch(self, mem: GuestMemory, elems: Iterable[tuple[int, int]]) -> None:
        """Put several chains in the used ring and publish them with one index update."""
        if self.broken or not self.ready or mem is not self._mem or mem.generation != self._gen:
            self._check(mem)  # (its test written out: this method is on every request's path)
        if type(elems) is list and len(elems) <= 12:  # the usual few (up to ~12 the loop is quicker): no array built
            size = self.size
            try:
                for head, length in elems:
                    if not (0 <= head < size and 0 <= length <= 0xFFFFFFFF):
                        raise TypeError
            except (TypeError, ValueError):
                raise UsageError(f"queue {self.index}: add_used_batch with an element out of range") from None
            used32, next_used, mask = self._used32, self.next_used, size - 1
            written = 0
            for head, length in elems:
                slot = (next_used & mask) << 1
                used32[1 + slot] = head
                used32[2 + slot] = length
                next_used = (next_used + 1) & 0xFFFF
                written += length
            self.stats.bytes_written += written
            inflight = self.inflight
            if inflight is not None:
                heads = [head for head, _ in elems]
                inflight.batch(heads)
            wmb()  # the used elements before the used idx that publishes them (2.7.8)
            self.next_used = next_used
            self._used16[1] = next_used
            if inflight is not None:
                inflight.published(heads, next_used)
            return
        try:
            flat = array.array("I", itertools.chain.from_iterable(elems))  # id, len, id, len ...
        except (OverflowError, TypeError):
            flat = None
        if flat is None or len(flat) % 2 or (flat and max(flat[0::2]) >= self.size):
            raise UsageError(f"queue {self.index}: add_used_batch with an element out of range")
        self._publish_used(flat)

    def add_used_heads(self, mem: GuestMemory, heads: Sequence[int], length: int = 0) -> None:
        """Put chains that each got ``length`` bytes written (a transmit queue's: 0) in the used
        ring with one index update — ``add_used_batch`` without a tuple per chain.

        With VIRTIO_F_IN_ORDER (``in_order``) and ``length`` 0 — chains with nothing
        device-writable, as :meth:`pop_direct` returns them, popped in this order — one used
        entry stands for the batch (2.7.9): the id of its last chain, at the slot of its first;
        the used idx moves by the batch size."""
        self._check(mem)
        try:
            ids = array.array("I", heads)
            flat = array.array("I", (length,)) * (2 * len(ids))
        except (OverflowError, TypeError):
            ids = None
        if ids is None or (ids and max(ids) >= self.size):
            raise UsageError(f"queue {self.index}: add_used_heads with an element out of range")
        if self.in_order and length == 0 and len(ids) > 1:
            self._publish_in_order(ids)
            return
        flat[0::2] = ids
        self._publish_used(flat)

    def add_used_lengths(self, mem: GuestMemory, heads: Sequence[int], lengths: Sequence[int]) -> None:
        """Put chains ``heads`` in the used ring, chain ``i`` with ``lengths[i]`` bytes written,
        with one index update: the used side of :meth:`pop_single` (``add_used_batch`` without a
        tuple per chain)."""
        self._check(mem)
        try:
            ids = array.array("I", heads)
            lens = array.array("I", lengths)
        except (OverflowError, TypeError):
            raise UsageError(f"queue {self.index}: add_used_lengths with an element out of range") from None
        if len(ids) != len(lens) or (ids and max(ids) >= self.size):
            raise UsageError(f"queue {self.index}: add_used_lengths with an element out of range")
        flat = array.array("I", (0,)) * (2 * len(ids))
        flat[0::2] = ids
        flat[1::2] = lens
        self._publish_used(flat)

    def _publish_in_order(self, ids: array.array) -> None:
        """One used entry for the batch ``ids`` (IN_ORDER, nothing written), then the index."""
        slot = (self.next_used & (self.size - 1)) * 2
        self._used32[1 + slot] = ids[-1]
        self._used32[2 + slot] = 0
        inflight = self.inflight
        if inflight is not None:
            inflight.batch(ids)
        wmb()  # the used element before the used idx that publishes it (2.7.8)
        self.next_used = (self.next_used + len(ids)) & 0xFFFF
        self._used16[1] = self.next_used
        if inflight is not None:
            inflight.published(ids, self.next_used)

    def _publish_used(self, flat: array.array) -> None:
        """Write ``id, len`` pairs at the used ring's next slots, then the index."""
        count, slot = len(flat) // 2, self.next_used & (self.size - 1)
        first = min(count, self.size - slot)
        self._used32[1 + 2 * slot:1 + 2 * (slot + first)] = flat[:2 * first]
        if count > first:  # wrapped around the ring
            self._used32[1:1 + 2 * (count - first)] = flat[2 * first:]
        inflight = self.inflight
        if inflight is not None:
            inflight.batch(flat[0::2])
        wmb()  # the used elements before the used idx that publishes them (2.7.8)
        self.next_used = (self.next_used + count) & 0xFFFF
        self._used16[1] = self.next_used
        self.stats.bytes_written += sum(flat[1::2])
        if inflight is not None:
            inflight.published(flat[0::2], self.next_used)

    # --- notification suppression (2.7.7, 2.7.10) -----------------------------------------------

    def needs_notification(self, mem: GuestMemory) -> bool:
        """Whether the driver wants a used-buffer notification for what was added since the last
        one.  Call after add_used; a True answer is remembered as sent."""
        if self.broken or not self.ready or mem is not self._mem or mem.generation != self._gen:
            self._check(mem)  # (its test written out: this method is on every request's path)
        new = self.next_used
        old = self.signalled_used
        if old == new:
            return False  # nothing added since the last decision
        mb()  # our used idx store must be visible before we read used_event / flags
        self.signalled_used = new
        if self.event_idx:
            if not self._signalled_valid:
                self._signalled_valid = True
                return True  # no earlier decision to measure used_event against
            used_event = self._avail16[2 + self.size]
            return vring_need_event(used_event, new, old)
        return not self._avail16[0] & ring.VIRTQ_AVAIL_F_NO_INTERRUPT

    def disable_notification(self, mem: GuestMemory) -> None:
        """Ask the driver not to kick while we are draining the ring."""
        if self.broken or not self.ready or mem is not self._mem or mem.generation != self._gen:
            self._check(mem)  # (its test written out: this method is on every request's path)
        self.notifications_enabled = False
        if not self.event_idx:  # with EVENT_IDX, leaving avail_event behind suppresses kicks
            self._used16[0] = ring.VIRTQ_USED_F_NO_NOTIFY

    def enable_notification(self, mem: GuestMemory) -> bool:
        """Ask the driver to kick again.  Returns True if buffers arrived meanwhile (then drain
        again before sleeping)."""
        if self.broken or not self.ready or mem is not self._mem or mem.generation != self._gen:
            self._check(mem)  # (its test written out: this method is on every request's path)
        self.notifications_enabled = True
        if self.event_idx:
            self._used16[2 + 4 * self.size] = self.next_avail  # avail_event
        else:
            self._used16[0] = 0
        mb()  # publish avail_event/flags before re-reading the avail idx (lost wake-up)
        return self._avail16[1] != self.next_avail

    def drain(self, mem: GuestMemory, handle: Callable[[DescriptorChain], int | None],
              settle: Callable[[], bool | None] | None = None, notify: Callable[[], None] | None = None) -> bool:
        """The "disable, drain, re-enable, re-check" loop (see :func:`drain_queue`)."""
        return drain_queue(self, mem, handle, settle, notify)

    def in_flight(self) -> int:
        """How many chains were popped but not yet returned."""
        return (self.next_avail - self.next_used) & 0xFFFF

    def describe(self, mem: GuestMemory, window: int = 8) -> dict[str, Any]:
        """The ring as both sides see it now, for a person (``pyvirtio ctl PATH ring N``):
        the device's indices, the driver's (read from the ring), who asked whom for
        notifications, and the heads of up to ``window`` chains the driver made available that
        the device has not taken.  Only reads; a ring that cannot be read says why."""
        out = self._described("split", next_avail=self.next_avail, next_used=self.next_used,
                              in_flight=self.in_flight())
        if not self.ready:
            return out
        size = self.size
        try:  # views of its own: binding the queue's could break it (a diagnostic must not)
            avail16 = mem.view(self.avail_ring, avail_ring_size(size)).cast("H")
            used16 = mem.view(self.used_ring, used_ring_size(size)).cast("H")
            avail_idx = avail16[1]
            waiting = (avail_idx - self.next_avail) & 0xFFFF
            out.update({
                "driver": {"avail_idx": avail_idx, "waiting": waiting,
                           "heads": [avail16[2 + (self.next_avail + k) % size]
                                     for k in range(min(waiting, window, size))],
                           "interrupts": ("used_event %d" % avail16[2 + size]) if self.event_idx
                           else ("off" if avail16[0] & ring.VIRTQ_AVAIL_F_NO_INTERRUPT else "on")},
                "device": {"used_idx": used16[1],
                           "kicks": ("avail_event %d" % used16[2 + 4 * size]) if self.event_idx
                           else ("off" if used16[0] & ring.VIRTQ_USED_F_NO_NOTIFY else "on")},
            })
        except (DriverFault, GuestMemoryError) as exc:
            out["unreadable"] = str(exc)
        return out
