"""Guest memory that lives in QEMU: a local shadow kept coherent with QEMU's RAM over qtest.

**Why a shadow.**  The driver-side ring code (:class:`~pyvirtio.virtq.SplitDriverQueue`,
:class:`~pyvirtio.driver.DriverQueue`) reads and writes rings through ``memoryview`` casts, as it
would over shared memory.  QEMU's RAM is only reachable through qtest requests, so the driver
works on a local bytearray (the *shadow*) and the two are reconciled at well-defined points.

**What the device may write.**  Split rings: only the used rings and device-writable buffers
(2.7).  Packed rings: the descriptor ring itself (the device writes used elements in place of the
descriptors it consumed) and the device event suppression area (2.8.10).  The driver writes
everything else.  A second bytearray, *synced*, holds what QEMU's RAM contained the last time a
byte was exchanged.  ``shadow != synced`` marks bytes the driver changed locally and has not yet
published.

**Publishing (driver → QEMU)** writes exactly the locally changed byte runs of each live
allocation, never a byte the driver did not change (it might be one QEMU is writing).  The
``idx`` field of every avail ring goes last, so QEMU cannot see a new index before the
descriptors and data it covers — the ordering a write barrier gives on real memory.  A packed
ring has no index: a chain becomes available when its head descriptor's ``flags`` change (2.8.6).
There the ``flags`` fields go last, in *reverse ring order* from where the previous publish
stopped: every chain's later descriptors are complete before its head, and a chain whose
predecessor's head is not yet written is simply not reached by the device (it consumes in ring
order), so no chain is ever seen half-written.  Publishing happens before every MMIO or port
write (the platform calls it: on x86 an uncached write is ordered after earlier stores), before
waiting for an interrupt, and whenever the ring code looks at a part of a ring the device writes.

**Acquiring (QEMU → driver)** reads a range back and takes QEMU's value for every bit the
driver has not changed locally, keeping the driver's unpublished changes (a three-way merge
against *synced*).  It happens for the device-written ring parts (split: the used ring; packed:
the descriptor ring and the device area, read in one request) whenever the ring code looks at
them, and for any range the driver reads with :meth:`read` or :meth:`views` (the device-writable
buffers of a completed request).  A used ring is acquired before the buffers it reports, the
order in which QEMU wrote them.

**When the ring code looks.**  The driver-side queues re-resolve their cached views whenever
``memory.generation`` changed since they last looked — the hook meant for memory whose layout
moves.  This memory answers a new ``generation`` on every read, so each ring operation (``add``,
``kick_prepare``, ``get_buf``, ``enable_cb`` …) starts by asking for its views again, and the
request for a device-written part's view publishes and acquires (once per operation: the views
of one operation share one snapshot, taken after its publish).  ``kick_prepare`` therefore reads
the device's ``avail_event`` (packed: its event suppression area) fresh, after the new chains
were published: the store/fence/load sequence of the event-index protocol (2.7.10, 2.8.10)
holds, and no kick is lost.

**Fresh allocations.**  A range just handed out by the allocator may hold bytes QEMU wrote for
an earlier owner that were never acquired, so "unchanged since the last sync" means nothing
there.  :meth:`fresh` records it: the next publish writes it whole, and no acquire overwrites it
before then.
"""

from __future__ import annotations

import bisect
import re
from typing import Iterable

from ..memory import GuestMemory, Region
from ..spec import ring
from ..virtq.kinds import RingLayout
from ..virtq.layout import used_ring_size
from ..virtq.packed_driver import PackedRingLayout
from .client import QtestClient

_RUNS = re.compile(rb"[^\x00]+")


#: A packed ring's device area is read together with its descriptor ring when the gap between
#: them is at most this many bytes (one qtest request instead of two).
_JOIN_GAP = 64
_FLAGS = 14  # offset of ``flags`` in a packed descriptor (2.8.13)


Span = tuple[int, int]  # [lo, hi) guest-physical


class _Ring:
    """What the memory must know about one ring the driver handed to QEMU."""

    #: What the device writes (a view touching it syncs first) and what one acquire reads.
    device_written: tuple[Span, ...]
    acquire_spans: tuple[Span, ...]

    def __init__(self, layout: RingLayout):
        self.layout = layout
        self.packed = isinstance(layout, PackedRingLayout)
        lay = layout
        if self.packed:
            desc = (lay.desc_table, lay.desc_table + ring.PVIRTQ_DESC_SIZE * lay.size)
            device = (lay.used_ring, lay.used_ring + ring.PVIRTQ_EVENT_SUPPRESS.size)
            self.device_written = (desc, device)
            if 0 <= device[0] - desc[1] <= _JOIN_GAP:
                self.acquire_spans = ((desc[0], device[1]),)
            else:
                self.acquire_spans = self.device_written
            self.next_flags = 0  # the ring position after the last flags field published
        else:
            used = (lay.used_ring, lay.used_ring + used_ring_size(lay.size))
            self.device_written = self.acquire_spans = (used,)
        self.acquired_at = -1  # the memory's epoch at the last acquire

    @property
    def avail_idx(self) -> tuple[int, int]:
        return self.layout.avail_ring + 2, self.layout.avail_ring + 4

    def touches(self, lo: int, hi: int) -> bool:
        return any(lo < d_hi and d_lo < hi for d_lo, d_hi in self.device_written)

    def flags_slots(self, lo: int, hi: int) -> range:
        """Ring positions whose ``flags`` field overlaps the absolute range ``[lo, hi)``."""
        base, n = self.layout.desc_table, self.layout.size
        first = max(0, (lo - base - 16) // 16 + 1)
        last = min(n - 1, (hi - 1 - base - _FLAGS) // 16)
        return range(first, last + 1)

    def flags_order(self, slots: set[int]) -> list[int]:
        """The order to publish changed ``flags`` fields in: slots outside the run that starts at
        ``next_flags`` first (they make nothing available: a reset ring, a stray write), then
        that run backwards, so each chain's head goes after the rest of the chain."""
        n, pos = self.layout.size, self.next_flags
        run: list[int] = []
        while pos in slots and len(run) < n:
            run.append(pos)
            pos = (pos + 1) % n
        self.next_flags = pos
        rest = sorted(slots.difference(run))
        return rest + run[::-1]


class QtestMemory(GuestMemory):
    """One region of QEMU guest RAM, shadowed locally."""

    def __init__(self, client: QtestClient, base: int, size: int):
        self._client = client
        self._base, self._size = base, size
        self._shadow = bytearray(size)
        self._synced = bytearray(size)
        self._gen = 0
        self._allocs: dict[int, int] = {}  # live allocations: start -> size
        self._fresh: dict[int, int] = {}  # allocations not yet published since they were handed out
        self._alloc_starts: list[int] = []
        self._rings: list[_Ring] = []
        #: Moves at every ``generation`` read and every publish: a ring acquired in the same epoch
        #: is not read again (the views of one ring operation share one snapshot, taken after the
        #: operation's publish).
        self._epoch = 0
        super().__init__([Region(base, size, memoryview(self._shadow), _owner=self._shadow)])
        self.stats = {"publish_runs": 0, "publish_bytes": 0, "acquires": 0, "acquire_bytes": 0}

    # --- "re-resolve your views every time" -----------------------------------------------------

    @property
    def generation(self) -> int:
        self._gen += 1
        self._epoch += 1
        return self._gen

    @generation.setter
    def generation(self, value: int) -> None:
        self._gen = value

    # --- bookkeeping from the transports --------------------------------------------------------

    def _local(self, addr: int, length: int) -> tuple[int, int]:
        return addr - self._base, addr - self._base + length

    def fresh(self, addr: int, size: int) -> None:
        """``[addr, +size)`` was just allocated: publish all of it next time, acquire none of it."""
        if addr not in self._allocs:
            bisect.insort(self._alloc_starts, addr)
        self._allocs[addr] = size
        self._fresh[addr] = size

    def forget(self, addr: int) -> None:
        """The allocation at ``addr`` was freed (its ring, if it held one, is gone)."""
        if self._allocs.pop(addr, None) is not None:
            self._alloc_starts.remove(addr)
        self._fresh.pop(addr, None)
        self._rings = [r for r in self._rings if r.layout.desc_table != addr]

    def add_ring(self, layout: RingLayout) -> None:
        self._rings = [r for r in self._rings if r.layout.desc_table != layout.desc_table]
        self._rings.append(_Ring(layout))

    # --- publishing ------------------------------------------------------------------------------

    def _changed_runs(self, lo: int, hi: int) -> list[tuple[int, int]]:
        a, b = self._shadow[lo:hi], self._synced[lo:hi]
        if a == b:
            return []
        x = (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(hi - lo, "little")
        return [(lo + m.start(), lo + m.end()) for m in _RUNS.finditer(x)]

    def publish(self) -> int:
        """Write every locally changed byte to QEMU, in the order that makes chains available
        last (split: avail ``idx``; packed: head ``flags``); returns bytes written."""
        runs: list[tuple[int, int]] = []
        for start in self._alloc_starts:
            lo, hi = self._local(start, self._allocs[start])
            runs.extend([(lo, hi)] if start in self._fresh else self._changed_runs(lo, hi))
        self._fresh.clear()
        if not runs:
            return 0
        first, last = self._order(runs)
        commands = [self._client.write_commands(self._base + lo, bytes(self._shadow[lo:hi]))
                    for lo, hi in first + last]
        self._client.pipeline(commands)
        written = 0
        for lo, hi in runs:
            self._synced[lo:hi] = self._shadow[lo:hi]
            written += hi - lo
        self._epoch += 1
        self.stats["publish_runs"] += len(runs)
        self.stats["publish_bytes"] += written
        return written

    def _order(self, runs: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Split local ``runs`` into what may go first and what must go last, in order."""
        base = self._base
        idx_fields = [(lo - base, hi - base) for lo, hi in (r.avail_idx for r in self._rings if not r.packed)]
        first: list[tuple[int, int]] = []
        last: list[tuple[int, int]] = []
        for lo, hi in runs:
            (last if any(lo < fhi and flo < hi for flo, fhi in idx_fields) else first).append((lo, hi))
        for r in self._rings:
            if r.packed:
                first, flags = self._carve_flags(r, first)
                last.extend(flags)
        return first, last

    def _carve_flags(self, r: _Ring, runs: list[tuple[int, int]]):
        """Take the ``flags`` fields of ``r``'s descriptors out of ``runs``; returns the runs left
        and those fields as runs of their own, in :meth:`_Ring.flags_order`."""
        base, desc = self._base, r.layout.desc_table
        slots: set[int] = set()
        for lo, hi in runs:
            slots.update(r.flags_slots(lo + base, hi + base))
        if not slots:
            return runs, []
        holes = sorted((desc - base + 16 * i + _FLAGS, desc - base + 16 * i + 16) for i in slots)
        rest = []
        for lo, hi in runs:
            for h_lo, h_hi in holes:
                if h_hi <= lo or h_lo >= hi:
                    continue
                if lo < h_lo:
                    rest.append((lo, h_lo))
                lo = max(lo, h_hi)
            if lo < hi:
                rest.append((lo, hi))
        fields = [(desc - base + 16 * i + _FLAGS, desc - base + 16 * i + 16) for i in r.flags_order(slots)]
        return rest, fields

    # --- acquiring -------------------------------------------------------------------------------

    def acquire(self, addr: int, length: int) -> bool:
        """Take QEMU's bytes for ``[addr, +length)`` except the ones changed locally; returns
        whether anything the driver sees changed."""
        start, end = max(addr, self._base), min(addr + length, self._base + self._size)
        if start >= end:
            return False
        lo, hi = start - self._base, end - self._base
        remote = self._client.read_bytes(self._base + lo, hi - lo)
        self.stats["acquires"] += 1
        self.stats["acquire_bytes"] += hi - lo
        shadow, synced = self._shadow[lo:hi], self._synced[lo:hi]
        if shadow == synced:
            self._shadow[lo:hi] = remote
            self._synced[lo:hi] = remote
        else:
            s, y, r = (int.from_bytes(v, "little") for v in (shadow, synced, remote))
            dirty = s ^ y
            keep = r & ~dirty
            self._shadow[lo:hi] = ((s & dirty) | keep).to_bytes(hi - lo, "little")
            self._synced[lo:hi] = ((y & dirty) | keep).to_bytes(hi - lo, "little")
        for start, size in self._fresh.items():  # unpublished allocations stay as the driver left them
            f_lo, f_hi = max(lo, start - self._base), min(hi, start - self._base + size)
            if f_lo < f_hi:
                self._shadow[f_lo:f_hi] = shadow[f_lo - lo:f_hi - lo]
        return self._shadow[lo:hi] != shadow

    def acquire_rings(self, ranges: Iterable[tuple[int, int]] | None = None) -> bool:
        """Acquire what the device writes in the rings (those overlapping ``ranges`` if given,
        unless acquired already in this epoch); True if any moved."""
        changed = False
        for r in self._rings:
            if ranges is not None:
                if r.acquired_at == self._epoch or not any(r.touches(lo, hi) for lo, hi in ranges):
                    continue
            for lo, hi in r.acquire_spans:
                changed |= self.acquire(lo, hi - lo)
            r.acquired_at = self._epoch
        return changed

    def _touches_device_written(self, addr: int, length: int) -> bool:
        return any(r.touches(addr, addr + length) for r in self._rings)

    # --- the GuestMemory interface, with coherence points ---------------------------------------

    def window(self) -> None:
        """None: every translation goes through :meth:`views`, which fetches the bytes first."""
        return None

    def view(self, addr: int, length: int) -> memoryview:
        if self._touches_device_written(addr, length):
            self.publish()
            self.acquire_rings([(addr, addr + length)])
        return super().view(addr, length)

    def views(self, addr: int, length: int) -> list[memoryview]:
        self.acquire(addr, length)
        return super().views(addr, length)

    def read(self, addr: int, length: int) -> bytes:
        self.acquire(addr, length)
        return b"".join(bytes(v) for v in super().views(addr, length))

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        pos = 0
        for v in super().views(addr, len(data)):  # local only: published at the next sync point
            v[:] = data[pos:pos + len(v)]
            pos += len(v)
