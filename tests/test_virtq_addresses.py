"""``DescriptorChain.addresses``: the host address of every view a walk hands out, when it knows
them — what the block device gives the kernel as iovecs (pyvirtio.aio).  A wrong address there
would send a disk's data somewhere else in the daemon's memory, so: for any chain, split or
packed, direct or indirect, over several regions, every address the walk reports is exactly where
its view starts — whether the walk sliced the view itself (GuestMemory.window) or had
GuestMemory.views make it (a first translation, another region, a buffer across two)."""

from __future__ import annotations

import ctypes

from hypothesis import given, settings, strategies as st

from pyvirtio.spec import ring
from pyvirtio.testing import MockSplitDriver, make_device_queue
from pyvirtio.testing.mock_driver import F_INDIRECT, F_WRITE
from pyvirtio.virtq.packed_device import PackedDeviceQueue
from pyvirtio.virtq.packed_driver import PackedRingLayout

REGIONS = [(0, 0x10000), (0x10000, 0x10000), (0x40000, 0x10000)]  # two adjacent, one apart
TABLE = 0x4F000  # indirect tables: in the last region


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def _check(chain, descs, mem):
    readable = [(a, n) for a, n, w in descs if not w and n]
    writable = [(a, n) for a, n, w in descs if w and n]
    views = chain.readable + chain.writable
    # Each buffer's first view starts at its guest address's host address (whatever the path).
    starts = []
    for a, n in readable + writable:
        region = next(r for r in mem.regions if r.gpa <= a < r.end)
        starts.append(region.host_address() + a - region.gpa)
    firsts, seen = [], 0
    for a, n in readable + writable:  # the views of one buffer follow each other
        firsts.append(_address(views[seen]))
        covered = 0
        while covered < n:
            covered += len(views[seen])
            seen += 1
    assert firsts == starts and seen == len(views)
    assert sum(map(len, chain.readable)) == sum(n for _, n in readable)
    assert sum(map(len, chain.writable)) == sum(n for _, n in writable)
    assert chain.addresses is not None  # every region here has a host address
    assert chain.addresses == [_address(v) for v in views]
    assert chain.readable_addresses() + chain.writable_addresses() == chain.addresses
    assert len(chain.readable_addresses()) == len(chain.readable)
    return True


# A buffer: somewhere in one of the regions (or straddling the first two), 0-300 bytes.
_buffer = st.one_of(
    st.tuples(st.integers(0x8000, 0xF000), st.integers(0, 300)),
    st.tuples(st.integers(0x10000, 0x1F000), st.integers(1, 300)),
    st.tuples(st.integers(0x40000, 0x4E000), st.integers(1, 300)),
    st.tuples(st.integers(0xFF00, 0xFFFF), st.integers(0x101, 0x200)),  # across 0x10000
)
_chain = st.lists(st.tuples(_buffer, st.booleans()), min_size=1, max_size=12).map(
    lambda bs: [(a, n, w) for (a, n), w in sorted(bs, key=lambda b: b[1])])  # readable first


@settings(max_examples=150, deadline=None)
@given(_chain, st.booleans())
def test_split_chain_addresses_are_where_the_views_are(descs, indirect):
    mock = MockSplitDriver(16, regions=REGIONS)
    q = make_device_queue(mock, indirect=True)
    flagged = [(a, n, F_WRITE if w else 0) for a, n, w in descs]
    if indirect:
        mock.write_table(TABLE, flagged)
        mock.write_desc(0, TABLE, 16 * len(flagged), F_INDIRECT)
        mock.add_head(0)
    else:
        mock.add_chain(flagged)
    _check(q.pop_descriptor_chain(mock.mem), descs, mock.mem)


def test_split_indirect_tables_in_and_out_of_the_walks_window():
    """An indirect table is sliced straight from the walk's window (the region of its last
    translation) when it lies there, else mapped through GuestMemory.view: the first chain's
    table is in another region than the ring, the second's in the region the first chain's
    last buffer left the window in.  Same views, addresses and descriptor counts either way,
    and a walk that ends before the table does counts only what it walked."""
    mock = MockSplitDriver(16, regions=REGIONS)
    q = make_device_queue(mock, indirect=True)
    first = [(0x8000, 16, False), (0x40100, 512, True), (0x4E000, 1, True)]
    second = [(0x10010, 16, False), (0x10400, 300, True)]
    for head, table, descs in ((0, TABLE, first), (1, TABLE + 0x100, second)):
        flagged = [(a, n, F_WRITE if w else 0) for a, n, w in descs]
        mock.write_table(table, flagged)
        # the second table holds one more entry than its chain links to
        length = 16 * len(flagged) + (16 if head else 0)
        mock.write_desc(head, table, length, F_INDIRECT)
        mock.add_head(head)
    chain = q.pop_descriptor_chain(mock.mem)
    assert mock.mem.window()[0] == 0x40000  # the last buffer's region
    _check(chain, first, mock.mem)
    assert chain.descriptors == 3
    chain = q.pop_descriptor_chain(mock.mem)
    _check(chain, second, mock.mem)
    assert chain.descriptors == 2


@settings(max_examples=150, deadline=None)
@given(_chain, st.booleans())
def test_packed_chain_addresses_are_where_the_views_are(descs, indirect):
    mem = MockSplitDriver(4, regions=REGIONS).mem
    lay = PackedRingLayout.contiguous(0x1000, 16)
    dev = PackedDeviceQueue(16)
    dev.set_size(16)
    dev.set_addresses(lay.desc_table, lay.avail_ring, lay.used_ring)
    dev.set_features(False, indirect)
    dev.activate(mem)
    av, nxt = ring.VIRTQ_DESC_F_AVAIL, ring.VIRTQ_DESC_F_NEXT
    if indirect:
        for i, (a, n, w) in enumerate(descs):
            ring.PVIRTQ_DESC.pack_into(mem.view(TABLE + 16 * i, 16), 0, a, n, 0, F_WRITE if w else 0)
        ring.PVIRTQ_DESC.pack_into(mem.view(lay.desc_table, 16), 0, TABLE, 16 * len(descs), 3,
                                   av | ring.VIRTQ_DESC_F_INDIRECT)
    else:
        for i, (a, n, w) in enumerate(descs):
            flags = av | (F_WRITE if w else 0) | (nxt if i + 1 < len(descs) else 0)
            ring.PVIRTQ_DESC.pack_into(mem.view(lay.desc_table + 16 * i, 16), 0, a, n, 3, flags)
    _check(dev.pop_descriptor_chain(mem), descs, mem)


def test_a_read_only_region_gives_no_addresses():
    """A region whose buffer cannot be written has no host address for the kernel to write to:
    its chains carry views only."""
    from pyvirtio.memory import GuestMemory
    ro = bytes(0x10000)
    mem = GuestMemory.from_buffers((0, bytearray(0x8000)), (0x8000, ro))
    assert mem.regions[1].host_address() is None
    assert mem.regions[0].host_address() == _address(mem.regions[0].buf)
