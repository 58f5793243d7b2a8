"""A split ring driven by hand from the driver side, for device tests (rust-vmm ``MockSplitQueue``).

:class:`MockSplitDriver` owns guest memory (bytearray regions, holes allowed), lays out a split
ring (VIRTIO 1.3, 2.7) and writes descriptors, avail entries and event fields *directly* — it does
not go through :class:`~pyvirtio.virtq.SplitDriverQueue` and checks nothing, so a test can build
any ring a guest could build, legal or hostile::

    mock = MockSplitDriver(size=8)
    req = mock.add_request(out=[b"hello"], in_lens=[16])
    q = make_device_queue(mock, event_idx=True)
    chain = q.pop_descriptor_chain(mock.mem)
    q.add_used(mock.mem, chain.head_index, chain.write(b"world"))
    assert mock.take_used() == [(req.head, 5)]

Descriptor indices are handed out round-robin from a cursor; the mock does not track which are
still in use (reusing one the device holds is the test's business, as in a hostile guest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..errors import GuestMemoryError, UsageError
from ..memory import GuestMemory
from ..spec import ring
from ..virtq.layout import SplitRingLayout, align_up
from ..virtq.split_device import SplitDeviceQueue

F_NEXT = ring.VIRTQ_DESC_F_NEXT
F_WRITE = ring.VIRTQ_DESC_F_WRITE
F_INDIRECT = ring.VIRTQ_DESC_F_INDIRECT

#: One descriptor as a test writes it: ``(addr, len, flags)``.
Desc = tuple[int, int, int]


@dataclass
class MockRequest:
    """What :meth:`MockSplitDriver.add_request` made available: the head and the buffers."""

    head: int
    readable: list[tuple[int, int]] = field(default_factory=list)  # (addr, len), device-readable
    writable: list[tuple[int, int]] = field(default_factory=list)  # (addr, len), device-writable


class MockSplitDriver:
    """The driver half of a split ring, written by hand.

    ``regions``: ``(gpa, size)`` pairs of bytearray regions (gaps between them are holes); the
    default is one 64 KiB region at 0 (grown if the ring needs it).  ``mem``: use this memory
    instead.  ``ring_addr``: where the descriptor table starts (default: the first region's start).
    ``data_addr``: start of the area :meth:`alloc` hands out (default: the page after the ring;
    it ends with the region it starts in).  ``base``: the avail and used indices start here
    (e.g. ``0xfff0`` to cross the u16 wrap soon); :func:`make_device_queue` starts the device there.
    """

    def __init__(self, size: int = 16, *, regions: Sequence[tuple[int, int]] | None = None,
                 mem: GuestMemory | None = None, ring_addr: int | None = None,
                 data_addr: int | None = None, base: int = 0):
        if mem is None:
            if regions is None:
                regions = ((0, max(0x10000, 2 * SplitRingLayout.bytes_needed(size) + 0x1000)),)
            mem = GuestMemory.from_buffers(*((gpa, bytearray(n)) for gpa, n in regions))
        if not mem.regions:
            raise UsageError("guest memory has no regions")
        self.mem = mem
        self.size = size
        self.layout = SplitRingLayout.contiguous(mem.regions[0].gpa if ring_addr is None else ring_addr,
                                                 size)
        self.mem.write(self.layout.desc_table, bytes(self.layout.end - self.layout.desc_table))
        if data_addr is None:
            data_addr = align_up(self.layout.end, 0x1000)
        self.data_addr = data_addr
        self._data_cursor = data_addr
        try:
            self._data_end = self.mem.region_at(data_addr).end
        except GuestMemoryError:
            self._data_end = data_addr  # no data area: alloc() refuses, explicit addresses work
        self._desc_cursor = 0
        self.base = base & 0xFFFF
        self.next_slot = self.base  # avail ring index the next add_chain writes (published or not)
        self.last_used = self.base  # how far take_used() consumed the used ring
        self.set_avail_idx(self.base)
        self.set_used_idx(self.base)

    # --- addresses ----------------------------------------------------------------------------

    @property
    def desc_table(self) -> int:
        return self.layout.desc_table

    @property
    def avail_ring(self) -> int:
        return self.layout.avail_ring

    @property
    def used_ring(self) -> int:
        return self.layout.used_ring

    def alloc(self, length: int, align: int = 16) -> int:
        """Hand out ``length`` bytes of the data area (never freed; a test is short)."""
        addr = align_up(self._data_cursor, align)
        if addr + length > self._data_end:
            raise UsageError(f"mock data area exhausted ({length} bytes at {addr:#x})")
        self._data_cursor = addr + length
        return addr

    def write(self, addr: int, data: bytes) -> None:
        self.mem.write(addr, data)

    def read(self, addr: int, length: int) -> bytes:
        return self.mem.read(addr, length)

    # --- descriptors --------------------------------------------------------------------------

    def write_desc(self, i: int, addr: int, length: int, flags: int = 0, next: int = 0) -> None:
        """Store descriptor ``i`` of the ring's table, unchecked (any u64/u32/u16 values)."""
        self.write_desc_at(self.desc_table, i, addr, length, flags, next)

    def read_desc(self, i: int) -> tuple[int, int, int, int]:
        """``(addr, len, flags, next)`` of ring descriptor ``i``."""
        return ring.VIRTQ_DESC.unpack(self.mem.read(self.desc_table + 16 * i, 16))

    def write_desc_at(self, table: int, i: int, addr: int, length: int, flags: int = 0,
                      next: int = 0) -> None:
        """Store entry ``i`` of the descriptor table at ``table`` (the ring's or an indirect one)."""
        self.mem.write(table + 16 * i, ring.VIRTQ_DESC.pack(
            addr & 0xFFFFFFFFFFFFFFFF, length & 0xFFFFFFFF, flags & 0xFFFF, next & 0xFFFF))

    def write_table(self, table: int, descs: Iterable[Desc], *, link: bool = True) -> int:
        """Write an indirect table at ``table``; with ``link`` each entry but the last gets NEXT
        and ``next = i + 1``.  Returns the table's length in bytes."""
        descs = list(descs)
        for i, (addr, length, flags) in enumerate(descs):
            nxt = 0
            if link and i + 1 < len(descs):
                flags, nxt = flags | F_NEXT, i + 1
            self.write_desc_at(table, i, addr, length, flags, nxt)
        return 16 * len(descs)

    def take_desc_indices(self, n: int) -> list[int]:
        """The next ``n`` descriptor indices, round-robin over the table."""
        out = [(self._desc_cursor + k) % self.size for k in range(n)]
        self._desc_cursor = (self._desc_cursor + n) % self.size
        return out

    # --- making chains available --------------------------------------------------------------

    def add_chain(self, descs: Sequence[Desc], *, indices: Sequence[int] | None = None,
                  link: bool = True, publish: bool = True) -> int:
        """Write ``descs`` as one chain and put its head in the avail ring; returns the head.

        ``indices`` picks the descriptor slots (default: round-robin); with ``link`` each
        descriptor but the last gets NEXT pointing at the following slot.  Flags are written as
        given otherwise (WRITE, INDIRECT, even nonsense).  ``publish=False`` leaves the avail idx
        alone (see :meth:`publish`)."""
        if not descs:
            raise UsageError("a chain needs at least one descriptor")
        ids = list(indices) if indices is not None else self.take_desc_indices(len(descs))
        if len(ids) != len(descs):
            raise UsageError("one index per descriptor")
        for k, (addr, length, flags) in enumerate(descs):
            nxt = 0
            if link and k + 1 < len(descs):
                flags, nxt = flags | F_NEXT, ids[k + 1]
            self.write_desc(ids[k], addr, length, flags, nxt)
        return self.add_head(ids[0], publish=publish)

    def add_indirect_chain(self, descs: Sequence[Desc], *, table_addr: int | None = None,
                           head: int | None = None, link: bool = True, publish: bool = True) -> int:
        """Write ``descs`` as an indirect table (2.7.5.3) and make a ring descriptor with
        INDIRECT point at it; returns the head."""
        descs = list(descs)
        if table_addr is None:
            table_addr = self.alloc(16 * max(1, len(descs)))
        length = self.write_table(table_addr, descs, link=link)
        if head is None:
            head = self.take_desc_indices(1)[0]
        self.write_desc(head, table_addr, length, F_INDIRECT, 0)
        return self.add_head(head, publish=publish)

    def add_request(self, out: Sequence[bytes] = (), in_lens: Sequence[int] = (), *,
                    indirect: bool = False, publish: bool = True) -> MockRequest:
        """Allocate buffers, fill the device-readable ones with ``out``, add them as a chain."""
        req = MockRequest(-1)
        descs: list[Desc] = []
        for data in out:
            addr = self.alloc(max(1, len(data)))
            self.write(addr, data)
            req.readable.append((addr, len(data)))
            descs.append((addr, len(data), 0))
        for n in in_lens:
            addr = self.alloc(max(1, n))
            req.writable.append((addr, n))
            descs.append((addr, n, F_WRITE))
        adder = self.add_indirect_chain if indirect else self.add_chain
        req.head = adder(descs, publish=publish)
        return req

    def add_head(self, head: int, *, publish: bool = True) -> int:
        """Put ``head`` in the next avail ring slot (any value, even out of range)."""
        self.set_avail_entry(self.next_slot, head)
        self.next_slot = (self.next_slot + 1) & 0xFFFF
        if publish:
            self.publish()
        return head

    def publish(self) -> int:
        """Make every avail entry written so far visible: avail idx = :attr:`next_slot`."""
        self.set_avail_idx(self.next_slot)
        return self.next_slot

    # --- avail ring (driver-owned) ------------------------------------------------------------

    def set_avail_entry(self, slot: int, head: int) -> None:
        """``avail->ring[slot % size] = head`` (``slot`` is a free-running u16 index)."""
        self.mem.store16(self.avail_ring + ring.VIRTQ_AVAIL_RING_OFFSET + 2 * (slot % self.size), head)

    def avail_entry(self, slot: int) -> int:
        return self.mem.load16(self.avail_ring + ring.VIRTQ_AVAIL_RING_OFFSET + 2 * (slot % self.size))

    @property
    def avail_idx(self) -> int:
        return self.mem.load16(self.avail_ring + ring.VIRTQ_AVAIL_IDX_OFFSET)

    def set_avail_idx(self, idx: int) -> None:
        """Write the avail idx raw (a hostile guest may move it anywhere)."""
        self.mem.store16(self.avail_ring + ring.VIRTQ_AVAIL_IDX_OFFSET, idx)

    @property
    def avail_flags(self) -> int:
        return self.mem.load16(self.avail_ring + ring.VIRTQ_AVAIL_FLAGS_OFFSET)

    def set_avail_flags(self, flags: int) -> None:
        """E.g. ``VIRTQ_AVAIL_F_NO_INTERRUPT`` (honoured without EVENT_IDX, 2.7.7)."""
        self.mem.store16(self.avail_ring + ring.VIRTQ_AVAIL_FLAGS_OFFSET, flags)

    @property
    def used_event(self) -> int:
        return self.mem.load16(self._used_event_addr)

    def set_used_event(self, idx: int) -> None:
        """The driver's ``used_event`` (2.7.10): interrupt me once used idx passes ``idx``."""
        self.mem.store16(self._used_event_addr, idx)

    @property
    def _used_event_addr(self) -> int:
        return self.avail_ring + ring.VIRTQ_AVAIL_RING_OFFSET + 2 * self.size

    # --- used ring (device-owned; read here, written only to stage a hand-over) ---------------

    @property
    def used_idx(self) -> int:
        return self.mem.load16(self.used_ring + ring.VIRTQ_USED_IDX_OFFSET)

    def set_used_idx(self, idx: int) -> None:
        self.mem.store16(self.used_ring + ring.VIRTQ_USED_IDX_OFFSET, idx)

    @property
    def used_flags(self) -> int:
        return self.mem.load16(self.used_ring + ring.VIRTQ_USED_FLAGS_OFFSET)

    @property
    def avail_event(self) -> int:
        """The device's ``avail_event`` (2.7.10): kick me once avail idx passes it."""
        return self.mem.load16(self.used_ring + ring.VIRTQ_USED_RING_OFFSET + 8 * self.size)

    def used_elem(self, slot: int) -> tuple[int, int]:
        """``(id, len)`` at ``used->ring[slot % size]``."""
        addr = self.used_ring + ring.VIRTQ_USED_RING_OFFSET + 8 * (slot % self.size)
        return ring.VIRTQ_USED_ELEM.unpack(self.mem.read(addr, 8))

    def used_elems(self, start: int | None = None) -> list[tuple[int, int]]:
        """The used elements from ``start`` (default :attr:`last_used`) up to the used idx,
        without consuming them."""
        start = self.last_used if start is None else start
        count = (self.used_idx - start) & 0xFFFF
        return [self.used_elem(start + k) for k in range(count)]

    def take_used(self) -> list[tuple[int, int]]:
        """Like :meth:`used_elems`, and advance :attr:`last_used` past them."""
        elems = self.used_elems()
        self.last_used = (self.last_used + len(elems)) & 0xFFFF
        return elems

    # --- raw bytes (fuzzing) --------------------------------------------------------------------

    @property
    def ring_len(self) -> int:
        """Bytes from the descriptor table to the end of the used ring."""
        return self.layout.end - self.layout.desc_table

    def write_ring_bytes(self, data: bytes) -> None:
        """Overwrite the whole ring (descriptor table, avail and used rings) with ``data``."""
        self.mem.write(self.desc_table, bytes(data[:self.ring_len]).ljust(self.ring_len, b"\0"))


def make_device_queue(mock: MockSplitDriver, *, event_idx: bool = False, indirect: bool = False,
                      max_size: int | None = None, index: int = 0,
                      activate: bool = True) -> SplitDeviceQueue:
    """A :class:`SplitDeviceQueue` configured for ``mock``'s ring, starting at ``mock.base``,
    and (unless ``activate=False``) activated over ``mock.mem``."""
    q = SplitDeviceQueue(max_size or mock.size, index=index)
    q.set_size(mock.size)
    q.set_addresses(mock.desc_table, mock.avail_ring, mock.used_ring)
    q.set_features(event_idx=event_idx, indirect=indirect)
    if activate:
        q.activate(mock.mem)
        q.set_base(mock.base)
        q.sync_used_from_ring(mock.mem)
    return q
