"""Packed virtqueue (2.8), both sides: round trips with wrap, suppression, hostile rings."""

import os

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from pyvirtio.errors import DeviceFault, DriverFault, QueueBroken, QueueFull, UsageError, VirtioError
from pyvirtio.memory import GuestMemory
from pyvirtio.spec import ring
from pyvirtio.virtq.packed_device import PackedDeviceQueue, packed_need_event
from pyvirtio.virtq.packed_driver import PackedDriverQueue, PackedRingLayout

EXAMPLES = int(os.environ.get("PYVIRTIO_HYPOTHESIS_EXAMPLES", "300"))
DATA = 0x40000


def pair(size=8, event_idx=False, indirect=False):
    mem = GuestMemory.anonymous(1 << 20)
    lay = PackedRingLayout.contiguous(0x1000, size)
    drv = PackedDriverQueue(lay, event_idx=event_idx, indirect_area=0x10000 if indirect else None,
                            max_indirect=4 if indirect else 0)
    drv.setup(mem)
    dev = PackedDeviceQueue(max(size, 8))
    dev.set_size(size)
    dev.set_addresses(lay.desc_table, lay.avail_ring, lay.used_ring)
    dev.set_features(event_idx, indirect)
    dev.activate(mem)
    return mem, drv, dev


def echo(chain):
    data = chain.read()[:chain.writable_len]
    return chain.write(data) if data else 0


@pytest.mark.parametrize("indirect", [False, True])
def test_round_trip_through_many_wraps(indirect):
    mem, drv, dev = pair(size=5, indirect=indirect)  # not a power of two: allowed for packed
    for i in range(200):
        mem.write(DATA, bytes([i % 256]) * 3)
        drv.add(mem, [(DATA, 3)], [(DATA + 0x100, 3)], token=i)
        assert drv.kick_prepare(mem)
        dev.drain(mem, echo)
        assert drv.get_buf(mem) == (i, 3)
        assert mem.read(DATA + 0x100, 3) == bytes([i % 256]) * 3
    assert drv.num_free == 5 and dev.in_flight() == 0


def test_out_of_order_completion_and_chain_lengths():
    mem, drv, dev = pair(size=8)
    drv.add(mem, [(DATA, 1), (DATA, 1)], [(DATA + 8, 2)], token="a")  # 3 descriptors
    drv.add(mem, [(DATA, 1)], [(DATA + 8, 1)], token="b")  # 2 descriptors
    a, b = dev.pop_descriptor_chain(mem), dev.pop_descriptor_chain(mem)
    assert (a.readable_len, a.writable_len, b.readable_len) == (2, 2, 1)
    dev.add_used(mem, b.head_index, 1)  # used ring positions follow completion order
    dev.add_used(mem, a.head_index, 2)
    assert drv.get_bufs(mem) == [("b", 1), ("a", 2)]
    assert drv.num_free == 8


def test_queue_full_by_descriptors():
    mem, drv, dev = pair(size=4)
    drv.add(mem, [(DATA, 1)] * 3, [], token=1)
    with pytest.raises(QueueFull):
        drv.add(mem, [(DATA, 1)] * 2, [], token=2)


def test_disable_notification_stops_kicks_enable_with_event_idx_asks_for_one():
    mem, drv, dev = pair(size=8, event_idx=True)
    dev.disable_notification(mem)
    drv.add(mem, [(DATA, 1)], [], token=1)
    assert not drv.kick_prepare(mem)
    assert dev.enable_notification(mem)  # the buffer raced in
    dev.drain(mem, echo)
    drv.add(mem, [(DATA, 1)], [], token=2)
    assert drv.kick_prepare(mem)  # event points at exactly this descriptor
    drv.add(mem, [(DATA, 1)], [], token=3)
    assert not drv.kick_prepare(mem)  # already past the event


def test_driver_event_suppression_controls_interrupts():
    mem, drv, dev = pair(size=8, event_idx=True)
    drv.disable_cb(mem)
    drv.add(mem, [(DATA, 1)], [], token=1)
    assert not dev.drain(mem, echo)
    assert drv.enable_cb(mem)  # the used buffer is already there
    drv.get_bufs(mem)
    drv.add(mem, [(DATA, 1)], [], token=2)
    assert dev.drain(mem, echo)


@given(st.integers(1, 64), st.data())
@settings(max_examples=EXAMPLES, deadline=None)
def test_packed_need_event_matches_a_brute_force_walk(size, data):
    wrap = data.draw(st.integers(0, 1))
    new = data.draw(st.integers(0, size - 1))
    added = data.draw(st.integers(1, size - 1)) if size > 1 else 1
    ev_pos = data.draw(st.integers(0, size - 1))
    ev_wrap = data.draw(st.integers(0, 1))
    # walk back `added` positions from (new, wrap): did we pass (ev_pos, ev_wrap)?
    pos, w, crossed = new, wrap, False
    for _ in range(added):
        pos -= 1
        if pos < 0:
            pos, w = size - 1, w ^ 1
        crossed |= (pos, w) == (ev_pos, ev_wrap)
    if added >= size:
        crossed = True
    assert packed_need_event(ev_pos | ev_wrap << 15, wrap, new, added, size) == crossed


def write_desc(mem, lay, i, addr, length, buf_id, flags):
    ring.PVIRTQ_DESC.pack_into(mem.view(lay.desc_table + 16 * i, 16), 0, addr, length, buf_id, flags)


AV = ring.VIRTQ_DESC_F_AVAIL


def hostile(size=4, indirect=False):
    mem, drv, dev = pair(size=size, indirect=indirect)
    return mem, drv.layout, dev


def assert_broken(dev, mem):
    with pytest.raises(DriverFault):
        dev.pop_descriptor_chain(mem)
    with pytest.raises(QueueBroken):
        dev.pop_descriptor_chain(mem)


def test_hostile_chain_longer_than_ring():
    mem, lay, dev = hostile()
    for i in range(4):
        write_desc(mem, lay, i, DATA, 1, 0, AV | ring.VIRTQ_DESC_F_NEXT)
    assert_broken(dev, mem)


def test_hostile_nested_indirect():
    mem, lay, dev = hostile(indirect=True)
    table = 0x20000
    ring.PVIRTQ_DESC.pack_into(mem.view(table, 16), 0, table, 16, 0, ring.VIRTQ_DESC_F_INDIRECT)
    write_desc(mem, lay, 0, table, 16, 0, AV | ring.VIRTQ_DESC_F_INDIRECT)
    assert_broken(dev, mem)


def test_hostile_indirect_without_feature_and_bad_length():
    mem, lay, dev = hostile()
    write_desc(mem, lay, 0, 0x20000, 16, 0, AV | ring.VIRTQ_DESC_F_INDIRECT)
    assert_broken(dev, mem)
    mem, lay, dev = hostile(indirect=True)
    write_desc(mem, lay, 0, 0x20000, 17, 0, AV | ring.VIRTQ_DESC_F_INDIRECT)
    assert_broken(dev, mem)


def test_hostile_buffer_outside_memory_and_duplicate_id():
    mem, lay, dev = hostile()
    write_desc(mem, lay, 0, 1 << 40, 16, 0, AV)
    assert_broken(dev, mem)
    mem, lay, dev = hostile()
    write_desc(mem, lay, 0, DATA, 1, 2, AV)
    write_desc(mem, lay, 1, DATA, 1, 2, AV)
    dev.pop_descriptor_chain(mem)
    assert_broken(dev, mem)


def _ring_of_four(mem, indirect):
    """A packed device queue of 4 descriptors at 0x1000 of ``mem``: (layout, queue)."""
    lay = PackedRingLayout.contiguous(0x1000, 4)
    dev = PackedDeviceQueue(8)
    dev.set_size(4)
    dev.set_addresses(lay.desc_table, lay.avail_ring, lay.used_ring)
    dev.set_features(False, indirect)
    dev.activate(mem)
    return lay, dev


def _three_regions(indirect):
    """A packed device queue over guest memory of three regions: 0-64 KiB (the ring),
    64-128 KiB and 256-320 KiB."""
    from pyvirtio.testing import MockSplitDriver
    mem = MockSplitDriver(4, regions=[(0, 0x10000), (0x10000, 0x10000), (0x40000, 0x10000)]).mem
    return (mem, *_ring_of_four(mem, indirect))


def _offer(mem, lay, descs, indirect, buf_id=7):
    """``descs`` (addr, len, flags) as one chain at ring position 0: in the ring, or in a table."""
    if indirect:
        table = 0x42000
        for i, (a, n, f) in enumerate(descs):
            ring.PVIRTQ_DESC.pack_into(mem.view(table + 16 * i, 16), 0, a, n, 0, f)
        write_desc(mem, lay, 0, table, 16 * len(descs), buf_id, AV | ring.VIRTQ_DESC_F_INDIRECT)
        return
    for i, (a, n, f) in enumerate(descs):
        nxt = ring.VIRTQ_DESC_F_NEXT if i + 1 < len(descs) else 0
        write_desc(mem, lay, i, a, n, buf_id, AV | f | nxt)


@pytest.mark.parametrize("indirect", [False, True])
def test_buffers_in_several_regions_are_each_translated(indirect):
    """A chain's buffers in the region of the last translation, in another region, and across
    the boundary of two: each gets exactly its bytes (the walk slices the first kind itself,
    GuestMemory.window, and hands the others to views)."""
    mem, lay, dev = _three_regions(indirect)
    pieces = [(0x8000, b"near"), (0x40100, b"far-region"), (0xFFFC, b"straddle")]
    for addr, data in pieces:
        mem.write(addr, data)
    _offer(mem, lay, [(a, len(d), 0) for a, d in pieces] + [(0x41000, 3, ring.VIRTQ_DESC_F_WRITE)],
           indirect)
    chain = dev.pop_descriptor_chain(mem)
    assert chain.read() == b"".join(d for _, d in pieces)
    assert [len(v) for v in chain.readable] == [4, 10, 4, 4]  # the straddling buffer: two views
    assert (chain.head_index, chain.readable_len, chain.writable_len) == (7, 22, 3)
    chain.write(b"abc")
    assert mem.read(0x41000, 3) == b"abc"


@pytest.mark.parametrize("indirect", [False, True])
@pytest.mark.parametrize("addr", [0x20000, 0x3FFF0, 0x7000_0000, (1 << 64) - 2])
def test_hostile_buffer_after_good_ones_outside_memory(indirect, addr):
    """A buffer in a hole, running into one, far out or wrapping past 2**64, after buffers that
    are fine (the walk has a window by then): a DriverFault, the queue broken."""
    mem, lay, dev = _three_regions(indirect)
    _offer(mem, lay, [(0x8000, 4, 0), (0x40100, 4, 0), (addr, 32, ring.VIRTQ_DESC_F_WRITE)], indirect)
    assert_broken(dev, mem)


def test_hostile_device_used_id_not_in_flight():
    mem, drv, dev = pair(size=4)
    drv.add(mem, [(DATA, 1)], [], token=1)
    write_desc(mem, drv.layout, 0, 0, 0, 3, ring.VIRTQ_DESC_F_AVAIL | ring.VIRTQ_DESC_F_USED)
    with pytest.raises(DeviceFault):
        drv.get_buf(mem)
    with pytest.raises(QueueBroken):
        drv.get_buf(mem)


@given(st.binary(min_size=16 * 4 + 8, max_size=16 * 4 + 8), st.booleans(), st.booleans())
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_arbitrary_ring_bytes_give_only_typed_errors(raw, indirect, event_idx):
    mem, lay, dev = hostile(size=4, indirect=indirect)
    dev.set_features(event_idx, indirect)
    mem.write(lay.desc_table, raw)
    try:
        for _ in range(10):
            chain = dev.pop_descriptor_chain(mem)
            if chain is None:
                break
            dev.add_used(mem, chain.head_index, 0)
            dev.needs_notification(mem)
        dev.enable_notification(mem)
    except VirtioError:
        pass


def test_drivers_negotiate_packed_rings_over_loopback(tmp_path):
    from pyvirtio.devices.blk import BlkDevice
    from pyvirtio.devices.rng import RngDevice
    from pyvirtio.drivers import BlkDriver, RngDriver
    from pyvirtio.loopback import LoopbackTransport
    from pyvirtio.spec.features import Feature

    rng_dev = RngDevice()
    rng_dev.offer_packed_ring()
    rng = RngDriver.probe(LoopbackTransport(rng_dev, memory_size=1 << 20))
    assert rng.has_feature(Feature.RING_PACKED)
    assert isinstance(rng_dev.queues[0], PackedDeviceQueue) and isinstance(rng.requestq.vq, PackedDriverQueue)
    assert len(rng.read(5000)) == 5000

    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    blk_dev = BlkDevice(str(image), num_queues=2)
    blk_dev.offer_packed_ring()
    blk = BlkDriver.probe(LoopbackTransport(blk_dev, memory_size=8 << 20))
    reqs = [blk.submit_write(i * 8, bytes([i]) * 4096) for i in range(100)]
    for r in reqs:
        blk.wait(r)
    assert all(blk.read(i * 8, 4096) == bytes([i]) * 4096 for i in range(100))
    blk.remove()
    assert not any(getattr(q, "packed", False) for q in blk_dev.queues)  # reset goes back to split


def test_used_len_on_a_buffer_without_writable_bytes_reads_as_zero():
    """DPDK's vhost leaves a transmit descriptor's len as the driver wrote it when it marks the
    buffer used; with nothing writable there is nothing to read back, so it counts as 0 — a
    buffer with writable bytes still may not be credited more than it has."""
    mem, drv, dev = pair(size=4)
    drv.add(mem, [(DATA, 76)], [], token="tx")
    drv.add(mem, [], [(DATA, 8)], token="rx")
    tx, rx = dev.pop_many(mem)
    dev.add_used(mem, tx.head_index, 76)
    assert drv.get_buf(mem) == ("tx", 0)
    dev.add_used(mem, rx.head_index, 9)
    with pytest.raises(DeviceFault, match="used len 9 > 8"):
        drv.get_buf(mem)


# --- the batch pop (pop_direct) and add_used_heads ------------------------------------------------

SHAPES = st.sampled_from(["direct", "direct", "direct", "chained", "writable"])


def add_shaped(mem, drv, shape, k, token):
    """A chain of ``shape`` whose readable bytes are unique to ``k``; returns them."""
    addr = DATA + (k % 64) * 256
    data = bytes([k & 0xFF, k >> 8 & 0xFF]) * (4 + k % 9)
    mem.write(addr, data)
    if shape == "direct":
        drv.add(mem, [(addr, len(data))], [], token)
    elif shape == "chained":
        drv.add(mem, [(addr, 3), (addr + 3, len(data) - 3)], [], token)
    else:
        drv.add(mem, [(addr, len(data))], [(addr + 128, 8)], token)
    return data


@given(size=st.integers(1, 12), in_order=st.booleans(), event_idx=st.booleans(),
       rounds=st.lists(st.tuples(st.lists(SHAPES, max_size=12), st.integers(1, 16)), min_size=1, max_size=12))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_pop_direct_agrees_with_the_general_path(size, in_order, event_idx, rounds):
    """Chains of any shape; the device takes one-descriptor ones in batches of up to ``limit``
    and any other through pop_descriptor_chain: every chain comes out once, in ring order, with
    the bytes the driver wrote, and the general path never gets a direct one.  Completed in
    order (add_used_heads for a batch), the driver gets every token back in order and with
    the right length, across many wraps of a ring of any size, with or without IN_ORDER."""
    mem = GuestMemory.anonymous(1 << 20)
    lay = PackedRingLayout.contiguous(0x1000, size)
    drv = PackedDriverQueue(lay, event_idx=event_idx, in_order=in_order)
    drv.setup(mem)
    dev = PackedDeviceQueue(16)
    dev.set_size(size)
    dev.set_addresses(lay.desc_table, lay.avail_ring, lay.used_ring)
    dev.set_features(event_idx, False)
    dev.in_order = in_order
    dev.activate(mem)
    k = 0
    for shapes, limit in rounds:
        expected, tokens = [], []
        for shape in shapes:
            if drv.num_free < (2 if shape != "direct" else 1):
                break
            expected.append((shape, add_shaped(mem, drv, shape, k, k)))
            tokens.append(k)
            k += 1
        got = []
        while True:
            ids, lengths, views = dev.pop_direct(mem, limit)
            assert len(ids) <= limit and lengths == [len(v) for v in views]
            if ids:
                got += [("direct", bytes(v)) for v in views]
                dev.add_used_heads(mem, ids)
                continue
            chain = dev.pop_descriptor_chain(mem)
            if chain is None:
                break
            got.append(("chained" if chain.writable_len == 0 else "writable", chain.read()))
            dev.add_used_batch(mem, [(chain.head_index, chain.writable_len)])
        assert got == expected
        assert drv.get_bufs(mem) == [(t, 8 if shape == "writable" else 0)
                                      for t, (shape, _) in zip(tokens, expected)]
        assert dev.in_flight() == 0 and drv.num_free == size


RAW_DESC = st.tuples(
    st.one_of(*[st.integers(DATA, DATA + 0x1000)] * 6, st.integers((1 << 20) - 0x100, (1 << 20) + 0x100),
              st.integers(0, (1 << 64) - 1)),
    st.one_of(*[st.integers(0, 0x200)] * 3, st.integers(0, 0xFFFFFFFF)),
    st.integers(0, 7),
    st.one_of(*[st.sampled_from([AV, ring.VIRTQ_DESC_F_USED])] * 6,
              st.sampled_from([AV | ring.VIRTQ_DESC_F_USED, 0, AV | ring.VIRTQ_DESC_F_NEXT, AV | ring.VIRTQ_DESC_F_WRITE]),
              st.integers(0, 0xFFFF)))


@given(st.lists(RAW_DESC, min_size=6, max_size=6), st.integers(1, 16), st.booleans(),
       st.integers(0, 5), st.integers(0, 1))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_pop_direct_over_arbitrary_ring_bytes(descs, limit, in_order, pos, wrap):
    """Any descriptor ring: pop_direct gives a DriverFault (and a broken queue) or chains each
    of which was a descriptor marked available in its lap with no other flag, whose buffer is in
    guest memory and is what the view shows, with ids never in flight twice."""
    mem, lay, dev = hostile(size=6)
    dev.in_order = in_order
    dev.set_base(pos | wrap << 15)
    for i, desc in enumerate(descs):
        write_desc(mem, lay, i, *desc)
    in_flight = set()
    for _ in range(4):
        pos, wrap = dev.next_avail, dev.avail_wrap
        try:
            ids, lengths, views = dev.pop_direct(mem, limit)
        except DriverFault:
            assert dev.broken
            with pytest.raises(QueueBroken):
                dev.pop_direct(mem, limit)
            event("a fault broke the queue")
            return
        for i, (buf_id, n, view) in enumerate(zip(ids, lengths, views)):
            p = pos + i
            lap = wrap if p < 6 else wrap ^ 1
            addr, length, desc_id, flags = ring.PVIRTQ_DESC.unpack_from(mem.view(lay.desc_table + 16 * (p % 6), 16))
            assert flags == (AV if lap else ring.VIRTQ_DESC_F_USED)
            assert (desc_id, length) == (buf_id, n) and bytes(view) == mem.read(addr, n)
            assert buf_id not in in_flight
            in_flight.add(buf_id)
            event("popped a direct chain")
        if not ids:
            break


def test_pop_direct_refuses_a_wild_buffer_and_a_duplicate_id():
    mem, lay, dev = hostile()
    write_desc(mem, lay, 0, DATA, 16, 0, AV)
    write_desc(mem, lay, 1, 1 << 40, 16, 1, AV)
    with pytest.raises(DriverFault, match="descriptor buffer"):
        dev.pop_direct(mem, 8)
    assert dev.broken and dev.next_avail == 0
    mem, lay, dev = hostile()
    write_desc(mem, lay, 0, DATA, 16, 5, AV)
    write_desc(mem, lay, 1, DATA, 16, 5, AV)
    with pytest.raises(DriverFault, match="already in flight"):
        dev.pop_direct(mem, 8)
    mem, lay, dev = hostile()
    write_desc(mem, lay, 0, DATA, 16, 5, AV)
    assert dev.pop_direct(mem, 8)[0] == [5]
    write_desc(mem, lay, 1, DATA, 16, 5, AV)  # id 5 is still in flight
    with pytest.raises(DriverFault, match="already in flight"):
        dev.pop_direct(mem, 8)


def test_add_used_heads_in_order_writes_one_used_descriptor():
    mem = GuestMemory.anonymous(1 << 20)
    lay = PackedRingLayout.contiguous(0x1000, 5)
    drv = PackedDriverQueue(lay, in_order=True)
    drv.setup(mem)
    dev = PackedDeviceQueue(8)
    dev.set_size(5)
    dev.set_addresses(lay.desc_table, lay.avail_ring, lay.used_ring)
    dev.in_order = True
    dev.activate(mem)
    for rnd in range(6):  # 6 x 4 through a ring of 5: wraps
        for i in range(4):
            drv.add(mem, [(DATA + 64 * i, 20)], [], (rnd, i))
        ids, _, _ = dev.pop_direct(mem, 8)
        first = dev.next_used
        dev.add_used_heads(mem, ids)
        _, length, used_id, _ = ring.PVIRTQ_DESC.unpack_from(mem.view(lay.desc_table + 16 * first, 16))
        assert used_id == ids[-1]  # one descriptor for the run: its last id, at its first position
        assert dev.next_used == (first + 4) % 5
        assert drv.get_bufs(mem) == [((rnd, i), 0) for i in range(4)]
    with pytest.raises(UsageError):
        dev.add_used_heads(mem, [0])  # not in flight


# --- indirect tables checked a table at a time (packed_device._usual_table, chain.append_table) -

_REGION_B = 0x200000  # a second region after a hole: (0, 1 MiB), (2 MiB, 1 MiB)
_TABLE_AT = 0x80000
_W, _N, _I = ring.VIRTQ_DESC_F_WRITE, ring.VIRTQ_DESC_F_NEXT, ring.VIRTQ_DESC_F_INDIRECT


@st.composite
def _packed_tables(draw):
    """A packed indirect table of the usual shape (what Linux writes: readable entries with
    flags 0, then writable ones with WRITE), or one with one to three entries off: another flag
    (NEXT, which the walk ignores in a table; INDIRECT; an unknown bit), a readable one after a
    writable one, a zero length, a buffer at a region's end, in the hole or in the other region."""
    n = draw(st.integers(8, 40))
    nread = draw(st.integers(0, n))
    descs = [[0x10000 + i * 0x1000, 0x1000, 0 if i < nread else _W] for i in range(n)]
    for i in draw(st.lists(st.integers(0, n - 1), max_size=3)):
        what = draw(st.integers(0, 2))
        if what == 0:
            descs[i][2] = draw(st.sampled_from((0, _W, _N, _N | _W, _I, _W | _I, 0x10, _W | 0x10)))
        elif what == 1:
            descs[i][1] = draw(st.sampled_from((0, 1, 0x100000, 0x200000)))
        else:
            descs[i][0] = draw(st.sampled_from((0xFF000, 0x100000 - 0x800, 0x180000, _REGION_B + 0x1000,
                                                _REGION_B + 0xFF800, 1 << 40)))
    return [tuple(d) for d in descs]


def _packed_table_chain(descs, bulk: bool, mem):
    """The chain a packed ring's indirect table ``descs`` gives (or the DriverFault it raises),
    walked with the table-at-a-time check allowed or not (``bulk_tables``)."""
    lay, dev = _ring_of_four(mem, True)
    dev.bulk_tables = bulk
    for i, (addr, length, flags) in enumerate(descs):
        ring.PVIRTQ_DESC.pack_into(mem.view(_TABLE_AT + 16 * i, 16), 0, addr, length, 0, flags)
    write_desc(mem, lay, 0, _TABLE_AT, 16 * len(descs), 7, AV | _I)
    try:
        chain = dev.pop_descriptor_chain(mem)
    except DriverFault as exc:
        return "fault", str(exc)
    return (chain.head_index, [bytes(v) for v in chain.readable], [len(v) for v in chain.writable],
            chain.readable_len, chain.writable_len, chain.descriptors, chain.addresses)


def _two_regions():
    mem = GuestMemory.from_buffers((0, bytearray(0x100000)), (_REGION_B, bytearray(0x100000)))
    mem.write(0x10000, os.urandom(0x30000))
    return mem


@settings(max_examples=EXAMPLES, deadline=None)
@given(_packed_tables())
def test_a_packed_table_checked_at_once_gives_what_the_loop_gives(descs):
    """Any packed indirect table — the usual shape or one thing off — gives the same chain
    (views, lengths, descriptor count, host addresses) or the same fault whether the walk may
    check it a table at a time or must take it entry by entry."""
    mem = _two_regions()  # one for both walks: the same host addresses
    assert _packed_table_chain(descs, True, mem) == _packed_table_chain(descs, False, mem)


def test_the_usual_packed_table_is_checked_at_once():
    """A table as Linux writes one is of the shape checked a table at a time; one with a
    readable entry after a writable one is not, and the walk refuses it as the loop does.
    (The helper is called directly: a compiled ring core calls it without looking it up.)"""
    from pyvirtio.virtq import packed_device
    from pyvirtio.virtq.chain import append_table, walk_window
    from pyvirtio.virtq.layout import descriptor_table_fields

    usual = [(0x10000 + i * 0x1000, 0x1000, 0 if i < 3 else _W) for i in range(10)]
    mem = _two_regions()

    def fields(descs):
        table = bytearray()
        for addr, length, flags in descs:
            table += ring.PVIRTQ_DESC.pack(addr, length, 0, flags)
        return descriptor_table_fields(table, len(descs))
    mem.views(0x10000, 0x1000)  # a translation: the window is the first region's
    gpa, end, buf, at = walk_window(mem)
    assert packed_device._usual_table(fields(usual), 10) == 3
    readable, writable = [], []
    assert append_table(fields(usual), 3, gpa, end, buf, at, readable, writable, None) == (3 * 0x1000, 7 * 0x1000)
    assert [len(v) for v in readable + writable] == [0x1000] * 10 and len(readable) == 3
    assert _packed_table_chain(usual, True, mem)[3:6] == (3 * 0x1000, 7 * 0x1000, 10)
    bad = list(usual)
    bad[5] = (bad[5][0], bad[5][1], 0)  # readable after writable ones
    assert packed_device._usual_table(fields(bad), 10) == -1
    fault = _packed_table_chain(bad, True, mem)
    assert fault[0] == "fault" and "2.8.4" in fault[1]
