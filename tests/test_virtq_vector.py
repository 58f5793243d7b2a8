"""The vectorised transmit batch (``pyvirtio.virtq.vector``, numpy): every check of the general
path made over a whole batch, and hostile rings handled as the general path handles them — the
same chains handed out, in the same order, with the same bytes, and the queue broken at the same
chain with the same kind of fault."""

import pytest
from hypothesis import given, settings, strategies as st

from pyvirtio.errors import DeviceFault, DriverFault, QueueBroken
from pyvirtio.memory import GuestMemory
from pyvirtio.net.null import MAX_LENGTH_GROUPS, NullBackend
from pyvirtio.virtq import (PackedDeviceQueue, PackedDriverQueue, PackedRingLayout, SplitDeviceQueue,
                            SplitDriverQueue, SplitRingLayout, vector)

np = pytest.importorskip("numpy", reason="the vectorised path needs numpy (the pure install has none)")

SIZE = 16
RING = 0x1000
BUFS = 0x4000
MEM = 0x20000  # two regions of MEM // 2 each: a buffer may cross from one into the other


def make_rings(in_order=False, two_regions=False, ring="split"):
    if two_regions:
        mem = GuestMemory.from_buffers((0, bytearray(MEM // 2)), (MEM // 2, bytearray(MEM // 2)))
    else:
        mem = GuestMemory.anonymous(MEM)
    if ring == "packed":
        layout = PackedRingLayout.contiguous(RING, SIZE)
        drv = PackedDriverQueue(layout, in_order=in_order)
        dev = PackedDeviceQueue(SIZE)
    else:
        layout = SplitRingLayout.contiguous(RING, SIZE)
        drv = SplitDriverQueue(layout, in_order=in_order)
        dev = SplitDeviceQueue(SIZE)
    drv.setup(mem)
    dev.in_order = in_order
    dev.set_addresses(layout.desc_table, layout.avail_ring, layout.used_ring)
    dev.activate(mem)
    return mem, drv, dev


def last_desc(drv, head):
    """The guest address of the descriptor the driver just wrote for a one-buffer chain."""
    if isinstance(drv, PackedDriverQueue):
        return drv.layout.desc_table + 16 * ((drv.next_avail - 1) % SIZE)
    return drv.layout.desc_table + 16 * head


def put(mem, drv, i, length=None, addr=None):
    addr = BUFS + (i % 32) * 512 if addr is None else addr
    data = bytes([i & 0xFF]) * (length or 20 + i % 7)
    mem.write(addr, data)
    return drv.add(mem, [(addr, len(data))], [], i)


def drain_vector(dev, mem, limit=64):
    """What NetDevice does: the vector batch, the general path for what it leaves.  Returns
    [(head, bytes)] in the order handed out, and the fault that stopped it (or None)."""
    out = []
    try:
        for _ in range(4 * SIZE):  # bounded: a ring round holds at most SIZE chains
            batch = vector.pop_readable(dev, mem, limit)
            if batch is not None:
                out += zip(batch.heads.tolist(), map(bytes, batch.views()))
                vector.add_used(dev, mem, batch.heads)
                continue
            chain = dev.pop_descriptor_chain(mem)
            if chain is None:
                return out, None
            out.append((chain.head_index, chain.read(0, chain.readable_len)))
            dev.add_used(mem, chain.head_index, 0)
        raise AssertionError("the drain did not end: more chains than the ring holds")
    except DriverFault as exc:
        return out, exc


def drain_general(dev, mem):
    out = []
    try:
        for _ in range(4 * SIZE):  # bounded, as drain_vector
            if (chain := dev.pop_descriptor_chain(mem)) is None:
                return out, None
            out.append((chain.head_index, chain.read(0, chain.readable_len)))
            dev.add_used(mem, chain.head_index, 0)
        raise AssertionError("the drain did not end: more chains than the ring holds")
    except DriverFault as exc:
        return out, exc


def test_a_batch_is_every_available_chain_with_its_bytes():
    mem, drv, dev = make_rings()
    heads = [put(mem, drv, i) for i in range(5)]
    batch = vector.pop_readable(dev, mem, 64)
    assert batch.heads.tolist() == heads and batch.total == sum(20 + i for i in range(5))
    assert [bytes(v) for v in batch.views()] == [bytes([i]) * (20 + i) for i in range(5)]
    assert batch.bounds() == (20, 24)
    assert vector.pop_readable(dev, mem, 64) is None  # nothing more
    assert dev.stats.chains == 5 and dev.stats.bytes_read == batch.total
    vector.add_used(dev, mem, batch.heads)
    assert [t for t, _ in drv.get_bufs(mem)] == list(range(5))


@pytest.mark.parametrize("ring", ["split", "packed"])
def test_the_limit_and_the_ring_wrap(ring):
    """Batches of 1..SIZE through a ring of SIZE, limits of 5..11: split's avail and used rings
    wrap, packed's wrap counters flip many times."""
    mem, drv, dev = make_rings(ring=ring)
    seen = 0
    for round_ in range(30):
        n = 1 + round_ % SIZE
        for k in range(n):
            put(mem, drv, seen + k)
        got, limit = 0, 5 + round_ % 7
        for _ in range(n + 1):  # bounded: at most n batches, then None
            if (batch := vector.pop_readable(dev, mem, limit)) is None:
                break
            assert len(batch) <= limit
            assert [bytes(v)[0] for v in batch.views()] == [(seen + got + k) & 0xFF for k in range(len(batch))]
            vector.add_used(dev, mem, batch.heads)
            got += len(batch)
        assert got == n
        assert [t for t, _ in drv.get_bufs(mem)] == list(range(seen, seen + n))
        seen += n
    assert dev.stats.chains == seen
    if ring == "split":
        assert dev.next_avail == dev.next_used == seen


def test_in_order_returns_a_batch_with_one_used_entry():
    mem, drv, dev = make_rings(in_order=True)
    seen = 0
    for _ in range(7):
        for k in range(5):
            put(mem, drv, seen + k)
        batch = vector.pop_readable(dev, mem, 64)
        slot = dev.next_used & (SIZE - 1)
        vector.add_used(dev, mem, batch.heads)
        assert mem.load32(drv.layout.used_ring + 4 + 8 * slot) == batch.heads[-1]
        assert [t for t, _ in drv.get_bufs(mem)] == list(range(seen, seen + 5))
        seen += 5


def test_a_head_out_of_range_ends_the_batch_and_breaks_the_queue_at_it():
    mem, drv, dev = make_rings()
    for i in range(3):
        put(mem, drv, i)
    mem.store16(drv.layout.avail_ring + 4 + 2 * 2, SIZE + 3)  # the third entry points past the table
    batch = vector.pop_readable(dev, mem, 64)
    assert len(batch) == 2  # the chains before it are handed out first
    assert vector.pop_readable(dev, mem, 64) is None and not dev.broken  # the general path's to judge
    with pytest.raises(DriverFault, match="head"):
        dev.pop_descriptor_chain(mem)
    with pytest.raises(QueueBroken):
        vector.pop_readable(dev, mem, 64)


def test_an_avail_idx_too_far_ahead_is_left_to_the_general_path():
    mem, drv, dev = make_rings()
    put(mem, drv, 0)
    mem.store16(drv.layout.avail_ring + 2, SIZE + 5)
    assert vector.pop_readable(dev, mem, 64) is None and dev.next_avail == 0
    with pytest.raises(DriverFault, match="ahead"):
        dev.pop_descriptor_chain(mem)


@pytest.mark.parametrize("addr, length", [(1 << 40, 64), (MEM - 10, 64), ((1 << 64) - 8, 64),
                                          (2, (1 << 32) - 1)])
def test_a_buffer_outside_memory_breaks_the_queue(addr, length):
    """Outside every region, running past the end, wrapping past 2**64, longer than memory."""
    mem, drv, dev = make_rings()
    put(mem, drv, 0)
    drv.add(mem, [(addr, length)], [], "wild")
    batch = vector.pop_readable(dev, mem, 64)
    assert len(batch) == 1  # the good chain before it
    vector.add_used(dev, mem, batch.heads)
    assert vector.pop_readable(dev, mem, 64) is None
    with pytest.raises(DriverFault):
        dev.pop_descriptor_chain(mem)
    assert dev.broken


def test_a_buffer_across_two_regions_goes_to_the_general_path():
    mem, drv, dev = make_rings(two_regions=True)
    put(mem, drv, 0)
    mem.write(MEM // 2 - 8, bytes(range(16)))
    drv.add(mem, [(MEM // 2 - 8, 16)], [], "across")  # valid: mapped, but not in one region
    put(mem, drv, 1)
    assert len(vector.pop_readable(dev, mem, 64)) == 1
    assert vector.pop_readable(dev, mem, 64) is None and not dev.broken
    assert dev.pop_descriptor_chain(mem).read(0, 16) == bytes(range(16))
    assert bytes(vector.pop_readable(dev, mem, 64).views()[0]) == bytes([1]) * 21


def test_one_length_batches_are_checked_against_their_own_region():
    """A batch of one length is checked with the bound its region and length give, kept from
    the batch before: changing the length or the region, or a buffer one byte past the end
    (split and the general path alike) is caught each time."""
    mem, drv, dev = make_rings(two_regions=True)
    half = MEM // 2
    cases = [(BUFS, 64, True), (BUFS, 64, True), (half - 64, 64, True), (half - 63, 64, False),
             (half - 100, 100, True), (half, 100, True), (MEM - 100, 100, True),
             (MEM - 200, 200, True), (BUFS, 200, True), (MEM - 99, 100, False)]
    for addr, length, fits in cases:
        mem.write(addr, bytes([length & 0xFF]) * min(length, MEM - addr))
        drv.add(mem, [(addr, length)], [], "a")
        drv.add(mem, [(addr, length)], [], "b")
        batch = vector.pop_readable(dev, mem, 64)
        if fits:
            assert len(batch) == 2 and batch.bounds() == (length, length)
            assert [bytes(v) for v in batch.views()] == [bytes([length & 0xFF]) * length] * 2
            vector.add_used(dev, mem, batch.heads)
        else:
            assert batch is None
            if addr + length <= MEM:  # across the two regions: the general path takes it
                for _ in range(2):
                    chain = dev.pop_descriptor_chain(mem)
                    assert chain.readable_len == length
                    dev.add_used(mem, chain.head_index, 0)
            else:
                with pytest.raises(DriverFault):
                    dev.pop_descriptor_chain(mem)
                return
        drv.get_bufs(mem)
    raise AssertionError("the last case breaks the queue")


def test_other_shapes_end_the_batch():
    mem, drv, dev = make_rings()
    put(mem, drv, 0)
    drv.add(mem, [(BUFS, 10), (BUFS + 100, 10)], [], "chained")
    drv.add(mem, [], [(BUFS, 64)], "writable")
    put(mem, drv, 1)
    assert len(vector.pop_readable(dev, mem, 64)) == 1
    assert vector.pop_readable(dev, mem, 64) is None
    assert dev.pop_descriptor_chain(mem).readable_len == 20
    assert vector.pop_readable(dev, mem, 64) is None
    assert dev.pop_descriptor_chain(mem).writable_len == 64
    assert len(vector.pop_readable(dev, mem, 64)) == 1


def test_the_batch_keeps_what_it_checked():
    """The heads and descriptors are copied out of the ring: a driver that rewrites the table
    after the pop does not change the batch."""
    mem, drv, dev = make_rings()
    heads = [put(mem, drv, i) for i in range(4)]
    batch = vector.pop_readable(dev, mem, 64)
    for h in heads:
        mem.store64(drv.layout.desc_table + 16 * h, 1 << 40)
        mem.store16(drv.layout.avail_ring + 4 + 2 * h, SIZE + 1)
    assert batch.heads.tolist() == heads
    assert [bytes(v)[0] for v in batch.views()] == [0, 1, 2, 3]


# kinds of chain a hostile driver may put on a transmit ring ("head": split, an avail entry past
# the table; "dup": packed, the id of the descriptor before it — twice in a batch, or in flight)
KINDS = ["good", "good", "good", "chained", "writable", "wild", "wrap", "across", "zero"]


@settings(max_examples=150, deadline=None)
@given(ring=st.sampled_from(["split", "packed"]), data=st.data(), limit=st.integers(1, 20),
       two_regions=st.booleans())
def test_the_vector_drain_matches_the_general_path(ring, data, limit, two_regions):
    """Any mix of chains, drained by the vector batch (then the general path for what it
    leaves) and by the general path alone on an identical ring: the same chains with the same
    bytes in the same order, and the same fault at the same chain."""
    kinds = data.draw(st.lists(st.sampled_from(KINDS + ["head" if ring == "split" else "dup"]),
                               min_size=1, max_size=40))
    results = []
    for drain in (lambda d, m: drain_vector(d, m, limit), drain_general):
        mem, drv, dev = make_rings(two_regions=two_regions, ring=ring)
        out, fault = [], None
        for start in range(0, len(kinds), SIZE // 2):  # at most two descriptors each: what fits
            last_id = None
            for i, kind in enumerate(kinds[start:start + SIZE // 2], start):
                if kind == "good":
                    head = put(mem, drv, i)
                elif kind == "zero":
                    head = drv.add(mem, [(BUFS, 1)], [], i)
                    mem.store32(last_desc(drv, head) + 8, 0)  # a zero-length buffer
                elif kind == "chained":
                    head = drv.add(mem, [(BUFS, 10), (BUFS + 64, 10)], [], i)
                elif kind == "writable":
                    head = drv.add(mem, [], [(BUFS, 32)], i)
                elif kind == "head":
                    head = put(mem, drv, i)
                    idx = (drv.avail_idx_shadow - 1) % SIZE
                    mem.store16(drv.layout.avail_ring + 4 + 2 * idx, SIZE + i % 7)
                elif kind == "dup":
                    head = put(mem, drv, i)
                    if last_id is not None:
                        mem.store16(last_desc(drv, head) + 12, last_id)
                elif kind == "wild":
                    head = drv.add(mem, [(1 << 40, 64)], [], i)
                elif kind == "wrap":
                    head = drv.add(mem, [((1 << 64) - 16, 64)], [], i)
                else:  # across: mapped in two regions, or running past the end of one
                    mem_end = MEM // 2 if two_regions else MEM
                    head = drv.add(mem, [(mem_end - 8, 16)], [], i)
                last_id = head
            got, fault = drain(dev, mem)
            out += got
            if fault is not None:
                break
            try:
                drv.get_bufs(mem)
            except DeviceFault:  # a "dup" taken after its twin came back: the driver's own book
                break
        results.append((out, type(fault), dev.broken, dev.next_avail))
    assert results[0] == results[1]


def test_packed_ids_in_flight_or_twice_end_the_batch():
    mem, drv, dev = make_rings(ring="packed")
    heads = [put(mem, drv, i) for i in range(4)]
    mem.store16(last_desc(drv, heads[-1]) + 12, heads[1])  # the fourth names the second's id
    batch = vector.pop_readable(dev, mem, 64)
    assert batch.heads.tolist() == heads[:3]
    assert vector.pop_readable(dev, mem, 64) is None and not dev.broken  # its id is in flight
    with pytest.raises(DriverFault, match="in flight"):
        dev.pop_descriptor_chain(mem)


def test_packed_in_order_one_used_descriptor_for_the_batch():
    mem, drv, dev = make_rings(ring="packed", in_order=True)
    seen = 0
    for _ in range(7):
        for k in range(5):
            put(mem, drv, seen + k)
        batch = vector.pop_readable(dev, mem, 64)
        assert len(batch) == 5
        vector.add_used(dev, mem, batch.heads)
        assert [t for t, _ in drv.get_bufs(mem)] == list(range(seen, seen + 5))
        seen += 5


def test_null_backend_copies_a_batch_by_length():
    mem, drv, dev = make_rings()
    lengths = [30, 40, 30, 50, 40, 30]
    for i, n in enumerate(lengths):
        put(mem, drv, i, length=n)
    batch = vector.pop_readable(dev, mem, 64)
    null = NullBackend()
    assert null.send_readable(batch, 2) == 6
    assert null.frames == b"".join(bytes([i]) * (n - 2) for i, n in enumerate(lengths))
    assert null.stats["tx_frames"] == 6


def test_null_backend_copies_many_lengths_as_views():
    mem, drv, dev = make_rings()
    lengths = [20 + i for i in range(MAX_LENGTH_GROUPS + 3)]
    for i, n in enumerate(lengths):
        put(mem, drv, i, length=n)
    batch = vector.pop_readable(dev, mem, 64)
    null = NullBackend()
    assert null.send_readable(batch, 0) == len(lengths)
    assert null.frames == b"".join(bytes([i]) * n for i, n in enumerate(lengths))


def test_a_region_released_with_its_arrays():
    mem = GuestMemory.memfd(1 << 16)
    region = mem.region_at(0)
    region.buf[:12] = bytes(range(12))
    rows = vector.gather_rows(region, np.array([0, 8]), 4)
    assert len(rows) == 2 and list(map(bytes, rows)) == [bytes(range(4)), bytes(range(8, 12))]
    assert rows.view(np.uint8).reshape(-1, 4).shape == (2, 4)
    assert region._arrays is not None
    mem.close()
    assert region._arrays is None
