"""Guest memory that lives in QEMU: a local shadow kept coherent with QEMU's RAM over qtest.

**Why a shadow.**  The driver-side ring code (:class:`~pyvirtio.virtq.SplitDriverQueue`,
:class:`~pyvirtio.driver.DriverQueue`) reads and writes rings through ``memoryview`` casts, as it
would over shared memory.  QEMU's RAM is only reachable through qtest requests, so the driver
works on a local bytearray (the *shadow*) and the two are reconciled at well-defined points.

**What the device may write.**  Only the used rings and device-writable buffers (2.7); the
driver writes everything else.  A second bytearray, *synced*, holds what QEMU's RAM contained
the last time a byte was exchanged.  ``shadow != synced`` marks bytes the driver changed locally
and has not yet published.

**Publishing (driver → QEMU)** writes exactly the locally changed byte runs of each live
allocation, never a byte the driver did not change (it might be one QEMU is writing).  The
``idx`` field of every avail ring goes last, so QEMU cannot see a new index before the
descriptors and data it covers — the ordering a write barrier gives on real memory.  Publishing
happens before every MMIO or port write (the platform calls it: on x86 an uncached write is
ordered after earlier stores), before waiting for an interrupt, and whenever the ring code looks
at a used ring.

**Acquiring (QEMU → driver)** reads a range back and takes QEMU's value for every bit the
driver has not changed locally, keeping the driver's unpublished changes (a three-way merge
against *synced*).  It happens for the used rings whenever the ring code looks at them, and for
any range the driver reads with :meth:`read` or :meth:`views` (the device-writable buffers of a
completed request).  A used ring is acquired before the buffers it reports, the order in which
QEMU wrote them.

**When the ring code looks.**  ``SplitDriverQueue`` re-resolves its cached views whenever
``memory.generation`` changed since it last looked — the hook meant for memory whose layout
moves.  This memory answers a new ``generation`` on every read, so each ring operation (``add``,
``kick_prepare``, ``get_buf``, ``enable_cb`` …) starts by asking for its views again, and the
request for the used ring's view publishes and acquires.  ``kick_prepare`` therefore reads the
device's ``avail_event`` fresh, after the new avail index was published: the store/fence/load
sequence of the event-index protocol (2.7.10) holds, and no kick is lost.

**Fresh allocations.**  A range just handed out by the allocator may hold bytes QEMU wrote for
an earlier owner that were never acquired, so "unchanged since the last sync" means nothing
there.  :meth:`fresh` records it: the next publish writes it whole, and no acquire overwrites it
before then.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Iterable

from ..memory import GuestMemory, Region
from ..virtq.layout import SplitRingLayout, used_ring_size
from .client import QtestClient

_RUNS = re.compile(rb"[^\x00]+")


@dataclass(frozen=True)
class _Ring:
    layout: SplitRingLayout

    @property
    def used(self) -> tuple[int, int]:
        return self.layout.used_ring, self.layout.used_ring + used_ring_size(self.layout.size)

    @property
    def avail_idx(self) -> tuple[int, int]:
        return self.layout.avail_ring + 2, self.layout.avail_ring + 4


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
        super().__init__([Region(base, size, memoryview(self._shadow), _owner=self._shadow)])
        self.stats = {"publish_runs": 0, "publish_bytes": 0, "acquires": 0, "acquire_bytes": 0}

    # --- "re-resolve your views every time" -----------------------------------------------------

    @property
    def generation(self) -> int:
        self._gen += 1
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

    def add_ring(self, layout: SplitRingLayout) -> None:
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
        """Write every locally changed byte to QEMU, avail indexes last; returns bytes written."""
        runs: list[tuple[int, int]] = []
        for start in self._alloc_starts:
            lo, hi = self._local(start, self._allocs[start])
            runs.extend([(lo, hi)] if start in self._fresh else self._changed_runs(lo, hi))
        self._fresh.clear()
        if not runs:
            return 0
        idx_fields = [(lo - self._base, hi - self._base) for lo, hi in (r.avail_idx for r in self._rings)]
        first, last = [], []
        for lo, hi in runs:
            (last if any(lo < fhi and flo < hi for flo, fhi in idx_fields) else first).append((lo, hi))
        commands = [self._client.write_commands(self._base + lo, bytes(self._shadow[lo:hi]))
                    for lo, hi in first + last]
        self._client.pipeline(commands)
        written = 0
        for lo, hi in runs:
            self._synced[lo:hi] = self._shadow[lo:hi]
            written += hi - lo
        self.stats["publish_runs"] += len(runs)
        self.stats["publish_bytes"] += written
        return written

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
        """Acquire the used rings (those overlapping ``ranges`` if given); True if any moved."""
        changed = False
        for ring in self._rings:
            u_lo, u_hi = ring.used
            if ranges is not None and not any(lo < u_hi and u_lo < hi for lo, hi in ranges):
                continue
            changed |= self.acquire(u_lo, u_hi - u_lo)
        return changed

    def _touches_used_ring(self, addr: int, length: int) -> bool:
        return any(addr < r.used[1] and r.used[0] < addr + length for r in self._rings)

    # --- the GuestMemory interface, with coherence points ---------------------------------------

    def view(self, addr: int, length: int) -> memoryview:
        if self._touches_used_ring(addr, length):
            self.publish()
            self.acquire_rings([(addr, addr + length)])
        return super().view(addr, length)

    def views(self, addr: int, length: int) -> list[memoryview]:
        self.acquire(addr, length)
        return super().views(addr, length)

    def read(self, addr: int, length: int) -> bytes:
        self.acquire(addr, length)
        return b"".join(bytes(v) for v in super().views(addr, length))

    def write(self, addr: int, data: bytes) -> None:
        pos = 0
        for v in super().views(addr, len(data)):  # local only: published at the next sync point
            v[:] = data[pos:pos + len(v)]
            pos += len(v)
