"""Each side treats the other as hostile (DESIGN.md "The virtqueue").

Device side: every malformed ring raises DriverFault, leaves the queue broken (every later call
raises QueueBroken), consumes nothing and writes nothing to the used ring.  Driver side: every
lying used ring raises DeviceFault and breaks the queue the same way.  No test may hang: an alarm
turns a hang into a failure.
"""

from __future__ import annotations

import signal

import pytest

from pyvirtio.errors import DeviceFault, DriverFault, QueueBroken, VirtioError
from pyvirtio.memory import GuestMemory
from pyvirtio.testing import MockSplitDriver, make_device_queue
from pyvirtio.testing.mock_driver import F_INDIRECT, F_NEXT, F_WRITE
from pyvirtio.virtq import SplitDeviceQueue, SplitDriverQueue, SplitRingLayout

U64 = 1 << 64


@pytest.fixture(autouse=True)
def no_hang():
    def fail(signum, frame):
        raise AssertionError("hung: a hostile ring must end in an error, not a loop")

    old = signal.signal(signal.SIGALRM, fail)
    signal.setitimer(signal.ITIMER_REAL, 20)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def _device_calls(q):
    return [
        ("pop_descriptor_chain", q.pop_descriptor_chain),
        ("pop_many", q.pop_many),
        ("has_available", q.has_available),
        ("avail_idx", q.avail_idx),
        ("add_used", lambda m: q.add_used(m, 0, 0)),
        ("add_used_batch", lambda m: q.add_used_batch(m, [(0, 0)])),
        ("needs_notification", q.needs_notification),
        ("enable_notification", q.enable_notification),
        ("disable_notification", q.disable_notification),
        ("drain", lambda m: q.drain(m, lambda c: 0)),
    ]


def assert_driver_fault(mock, q, match=None, call=None, consumed=0):
    """``call`` (default: pop) raises DriverFault; afterwards the queue is broken for good.
    ``consumed``: good chains the call may pop before it reaches the bad one."""
    mem = mock.mem
    used_before = mock.mem.read(mock.used_ring + 2, 2 + 8 * mock.size)  # idx and elements
    next_avail = q.next_avail
    with pytest.raises(DriverFault, match=match) as exc:
        (call or q.pop_descriptor_chain)(mem)
    assert q.broken and q.fault is exc.value
    assert q.next_avail == next_avail + consumed, "a malformed chain must not be consumed"
    for name, later in _device_calls(q):
        with pytest.raises(QueueBroken):
            later(mem)
    assert mock.mem.read(mock.used_ring + 2, 2 + 8 * mock.size) == used_before
    return exc.value


# --- the avail ring ---------------------------------------------------------------------------------


def test_avail_idx_more_than_size_ahead():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock)
    mock.set_avail_idx(9)
    assert_driver_fault(mock, q, "more than 8 ahead")


def test_avail_idx_moving_backwards():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock)
    mock.add_request(out=[b"x"])
    mock.add_request(out=[b"y"])
    q.pop_many(mock.mem)
    mock.set_avail_idx(1)
    assert_driver_fault(mock, q, "ahead")


def test_avail_idx_jump_across_the_wrap():
    mock = MockSplitDriver(4, base=0xFFFE)
    q = make_device_queue(mock)
    mock.set_avail_idx(3)  # 0xfffe -> 3 is 5 entries: one too many
    assert_driver_fault(mock, q)


@pytest.mark.parametrize("head", [8, 9, 0xFFFF])
def test_head_index_out_of_range(head):
    mock = MockSplitDriver(8)
    q = make_device_queue(mock)
    mock.add_head(head)
    assert_driver_fault(mock, q, "head index")


def test_head_out_of_range_for_a_smaller_queue_than_max():
    mock = MockSplitDriver(4)
    q = make_device_queue(mock, max_size=64)
    mock.add_request(out=[b"fine"])
    q.pop_descriptor_chain(mock.mem)
    mock.add_head(4)
    assert_driver_fault(mock, q, "head index 4")


def test_avail_ring_read_during_drain_breaks_the_queue():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock)
    mock.add_request(out=[b"ok"])
    mock.add_head(100)
    handled = []
    assert_driver_fault(mock, q, call=lambda m: q.drain(m, lambda c: handled.append(c) and 0),
                        consumed=1)
    assert len(handled) == 1  # the good chain before it was handled; the queue is dead anyway


# --- direct chains ----------------------------------------------------------------------------------


@pytest.mark.parametrize("nxt", [8, 9, 0xFFFF])
def test_next_index_out_of_range(nxt):
    mock = MockSplitDriver(8)
    q = make_device_queue(mock)
    mock.write_desc(0, mock.alloc(4), 4, F_NEXT, nxt)
    mock.add_head(0)
    assert_driver_fault(mock, q, "next index")


def test_chain_loop_between_two_descriptors():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock)
    a = mock.alloc(4)
    mock.write_desc(0, a, 4, F_NEXT, 1)
    mock.write_desc(1, a, 4, F_NEXT, 0)
    mock.add_head(0)
    assert_driver_fault(mock, q, "loops")


def test_chain_loop_on_itself_with_zero_length():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock)
    mock.write_desc(3, 0, 0, F_NEXT, 3)
    mock.add_head(3)
    assert_driver_fault(mock, q, "loops")


def test_chain_through_every_descriptor_then_back():
    size = 64
    mock = MockSplitDriver(size)
    q = make_device_queue(mock)
    a = mock.alloc(1)
    for i in range(size):
        mock.write_desc(i, a, 1, F_NEXT, (i + 1) % size)
    mock.add_head(0)
    assert_driver_fault(mock, q, "loops")


def test_chain_of_exactly_size_descriptors_is_fine():
    mock = MockSplitDriver(16)
    q = make_device_queue(mock)
    a = mock.alloc(1)
    mock.add_chain([(a, 1, 0)] * 16)
    assert q.pop_descriptor_chain(mock.mem).readable_len == 16


def test_readable_after_writable():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock)
    a = mock.alloc(8)
    mock.add_chain([(a, 4, 0), (a, 4, F_WRITE), (a, 4, 0)])
    assert_driver_fault(mock, q, "after a writable")


@pytest.mark.parametrize("addr,length", [
    (0x1000000, 4),  # past the end of memory
    (0xfffc, 8),  # crosses the end of memory
    (U64 - 4, 16),  # wraps past 2**64
    (U64 - 16, 16),  # top of the address space, unmapped
])
def test_buffer_outside_guest_memory(addr, length):
    mock = MockSplitDriver(8, regions=((0, 0x10000),))
    q = make_device_queue(mock)
    mock.add_chain([(addr, length, F_WRITE)])
    assert_driver_fault(mock, q, "outside guest memory|2\\*\\*64")


@pytest.mark.parametrize("addr,length", [(0x18000, 4), (0x1fff0, 0x20), (0xfff0, 0x20)])
def test_buffer_in_or_across_a_hole(addr, length):
    mock = MockSplitDriver(8, regions=((0, 0x10000), (0x20000, 0x10000)))
    q = make_device_queue(mock)
    mock.add_chain([(0x8000, 4, 0), (addr, length, F_WRITE)])
    assert_driver_fault(mock, q, "descriptor buffer")


def test_buffer_across_adjacent_regions_is_fine():
    mock = MockSplitDriver(8, regions=((0, 0x10000), (0x10000, 0x10000)))
    q = make_device_queue(mock)
    mock.add_chain([(0xfff0, 0x20, 0)])
    assert len(q.pop_descriptor_chain(mock.mem).readable) == 2


def test_huge_lengths_in_small_memory():
    """Many descriptors of 0xffffffff bytes at one address: the memory check stops the walk."""
    mock = MockSplitDriver(8)
    q = make_device_queue(mock)
    mock.add_chain([(0x8000, 0xFFFFFFFF, 0)] * 8)
    assert_driver_fault(mock, q)


@pytest.fixture(scope="module")
def sparse_mem():
    """A 3 GiB memfd: sparse, so only the pages the ring touches cost memory."""
    mem = GuestMemory.memfd(0xC000_0000)
    yield mem
    mem.close()


def test_chain_over_2_32_bytes(sparse_mem):
    mock = MockSplitDriver(4, mem=sparse_mem, data_addr=0x10000)
    q = make_device_queue(mock)
    mock.add_chain([(0x10000, 0x6000_0000, 0)] * 3)  # 4.5 GiB of views over one 1.5 GiB range
    assert_driver_fault(mock, q, "2\\*\\*32")


def test_chain_just_under_2_32_bytes_is_fine_and_2_32_is_not(sparse_mem):
    mock = MockSplitDriver(4, mem=sparse_mem, data_addr=0x10000)
    q = make_device_queue(mock)
    mock.add_chain([(0x10000, 0x8000_0000, 0), (0x10000, 0x7FFF_FFFF, F_WRITE)])
    chain = q.pop_descriptor_chain(mock.mem)
    assert (chain.readable_len, chain.writable_len) == (1 << 31, (1 << 31) - 1)
    q.add_used(mock.mem, chain.head_index, chain.writable_len)  # the largest u32 length
    mock.add_chain([(0x10000, 0x8000_0000, 0), (0x10000, 0x8000_0000, F_WRITE)])
    with pytest.raises(DriverFault, match="2\\*\\*32"):
        q.pop_descriptor_chain(mock.mem)


# --- indirect tables ---------------------------------------------------------------------------------


def _indirect(mock, descs, *, table_len=None, flags=F_INDIRECT, link=True):
    table = mock.alloc(16 * max(1, len(descs)))
    n = mock.write_table(table, descs, link=link)
    mock.write_desc(0, table, n if table_len is None else table_len, flags)
    mock.add_head(0)
    return table


def test_indirect_without_the_feature():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock, indirect=False)
    _indirect(mock, [(mock.alloc(4), 4, 0)])
    assert_driver_fault(mock, q, "INDIRECT_DESC")


def test_indirect_inside_an_indirect_table():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock, indirect=True)
    inner = mock.alloc(16)
    mock.write_table(inner, [(mock.alloc(4), 4, 0)])
    _indirect(mock, [(mock.alloc(4), 4, 0), (inner, 16, F_INDIRECT)])
    assert_driver_fault(mock, q, "inside an indirect")


def test_indirect_and_next_both_set():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock, indirect=True)
    _indirect(mock, [(mock.alloc(4), 4, 0)], flags=F_INDIRECT | F_NEXT)
    assert_driver_fault(mock, q, "INDIRECT and NEXT")


@pytest.mark.parametrize("table_len", [0, 8, 24, 33])
def test_indirect_length_not_a_multiple_of_16(table_len):
    mock = MockSplitDriver(8)
    q = make_device_queue(mock, indirect=True)
    _indirect(mock, [(mock.alloc(4), 4, 0)] * 3, table_len=table_len)
    assert_driver_fault(mock, q, "multiple of 16")


def test_indirect_next_beyond_the_table():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock, indirect=True)
    table = mock.alloc(32)
    a = mock.alloc(4)
    mock.write_desc_at(table, 0, a, 4, F_NEXT, 2)  # the table has 2 entries
    mock.write_desc(0, table, 32, F_INDIRECT)
    mock.add_head(0)
    assert_driver_fault(mock, q, "next index 2")


def test_indirect_table_loop():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock, indirect=True)
    table = mock.alloc(32)
    a = mock.alloc(4)
    mock.write_desc_at(table, 0, a, 4, F_NEXT, 1)
    mock.write_desc_at(table, 1, a, 4, F_NEXT, 0)
    mock.write_desc(0, table, 32, F_INDIRECT)
    mock.add_head(0)
    assert_driver_fault(mock, q, "loops")


def test_indirect_readable_after_writable():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock, indirect=True)
    a = mock.alloc(8)
    _indirect(mock, [(a, 4, F_WRITE), (a, 4, 0)])
    assert_driver_fault(mock, q, "after a writable")


def test_direct_writable_then_indirect_readable():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock, indirect=True)
    a = mock.alloc(8)
    table = mock.alloc(16)
    mock.write_table(table, [(a, 4, 0)])
    mock.add_chain([(a, 4, F_WRITE), (table, 16, F_INDIRECT)])
    assert_driver_fault(mock, q, "after a writable")


@pytest.mark.parametrize("table", [0x30000, 0xfff0, U64 - 16])
def test_indirect_table_outside_memory_or_across_a_hole(table):
    mock = MockSplitDriver(8, regions=((0, 0x10000), (0x10000 + 0x1000, 0x1000)))
    q = make_device_queue(mock, indirect=True)
    mock.write_desc(0, table, 32, F_INDIRECT)
    mock.add_head(0)
    assert_driver_fault(mock, q)


def test_indirect_buffer_outside_memory():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock, indirect=True)
    _indirect(mock, [(0x8000, 4, 0), (0x7000_0000, 4, F_WRITE)])
    assert_driver_fault(mock, q, "descriptor buffer")


def test_indirect_table_over_2_32_bytes(sparse_mem):
    """The byte limit holds inside a table as on a direct chain (the table walk checks it once,
    after the walk: three 1.5 GiB views of one range, no copy)."""
    mock = MockSplitDriver(4, mem=sparse_mem, data_addr=0x10000)
    q = make_device_queue(mock, indirect=True)
    _indirect(mock, [(0x10000, 0x6000_0000, 0)] * 3)
    assert_driver_fault(mock, q, "2\\*\\*32")


def test_indirect_buffers_in_several_regions_are_each_translated():
    """A table's buffers in the region of the last translation, in another region, and across
    the boundary of two: each gets exactly its bytes (the table walk slices the first kind
    itself and hands the others to ``GuestMemory.views``)."""
    mock = MockSplitDriver(8, regions=[(0, 0x10000), (0x10000, 0x10000), (0x40000, 0x10000)])
    q = make_device_queue(mock, indirect=True)
    pieces = [(0x8000, b"near"), (0x40100, b"far-region"), (0xFFFC, b"straddle")]
    for addr, data in pieces:
        mock.mem.write(addr, data)
    out = 0x41000  # device-writable, in the far region
    _indirect(mock, [(a, len(d), 0) for a, d in pieces] + [(out, 3, F_WRITE)])
    chain = q.pop_descriptor_chain(mock.mem)
    assert chain.read() == b"".join(d for _, d in pieces)
    assert [len(v) for v in chain.readable] == [4, 10, 4, 4]  # the straddling buffer: two views
    assert (chain.readable_len, chain.writable_len, chain.descriptors) == (22, 3, 4)
    chain.write(b"abc")
    assert mock.mem.read(out, 3) == b"abc"


@pytest.mark.parametrize("indirect", [False, True])
@pytest.mark.parametrize("addr", [0x20000, 0x3FFF0, 0x7000_0000, U64 - 2])
def test_buffer_after_good_ones_outside_memory(indirect, addr):
    """A buffer in a hole, running into one, far out or wrapping past 2**64, after buffers that
    are fine (the walk slices inside its window by then, GuestMemory.window): a DriverFault."""
    mock = MockSplitDriver(8, regions=[(0, 0x10000), (0x10000, 0x10000), (0x40000, 0x10000)])
    q = make_device_queue(mock, indirect=indirect)
    descs = [(0x8000, 4, 0), (0x40100, 4, 0), (addr, 32, F_WRITE)]
    if indirect:
        _indirect(mock, descs)
    else:
        mock.add_chain(descs)
    assert_driver_fault(mock, q, "descriptor buffer")


def test_a_huge_indirect_table_is_walked_within_bounds():
    """A 64 Ki-entry table whose entries all chain onward ends with a typed error, in bounded
    time: refused from its length alone (more than MAX_CHAIN_SEGMENTS, pyvirtio.limits)."""
    mock = MockSplitDriver(4, regions=((0, 0x200000),))
    q = make_device_queue(mock, indirect=True)
    n = 0x10000
    table = mock.alloc(16 * n)
    a = mock.alloc(1)
    import struct
    entry = struct.Struct("<QIHH")
    blob = bytearray(16 * n)
    for i in range(n):
        entry.pack_into(blob, 16 * i, a, 1, F_NEXT, (i + 1) % n)
    mock.write(table, bytes(blob))
    mock.write_desc(0, table, 16 * n, F_INDIRECT)
    mock.add_head(0)
    assert_driver_fault(mock, q, "would exceed 1024")


# --- the ring itself ----------------------------------------------------------------------------


@pytest.mark.parametrize("desc,avail,used", [
    (0x20000, 0x200, 0x400),  # descriptor table in the hole
    (0, 0xfffe, 0x400),  # avail ring runs into the hole
    (0, 0x200, 0x10000),  # used ring in the hole
    (0, 0x200, 0x2fff8),  # used ring runs past the end
    (U64 - 0x80, 0x200, 0x400),  # descriptor table wraps past 2**64
])
def test_ring_outside_memory_at_activate(desc, avail, used):
    mem = GuestMemory.from_buffers((0, bytearray(0x10000)), (0x28000, bytearray(0x8000)))
    q = SplitDeviceQueue(8)
    q.set_addresses(desc, avail, used)
    with pytest.raises(DriverFault, match="ring outside guest memory"):
        q.activate(mem)
    assert q.broken and not q.ready
    with pytest.raises(QueueBroken):
        q.pop_descriptor_chain(mem)


def test_ring_unmapped_after_activate():
    mock = MockSplitDriver(8, regions=((0, 0x10000), (0x20000, 0x1000)))
    q = make_device_queue(mock)
    mock.mem.remove_region(0, 0x10000)
    with pytest.raises(DriverFault, match="ring outside"):
        q.pop_descriptor_chain(mock.mem)
    assert q.broken
    with pytest.raises(QueueBroken):
        q.add_used(mock.mem, 0, 0)


def test_reset_after_a_fault_recovers():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock)
    mock.set_avail_idx(100)
    assert_driver_fault(mock, q)
    q.reset()
    fresh = MockSplitDriver(8)
    q.set_size(8)
    q.set_addresses(fresh.desc_table, fresh.avail_ring, fresh.used_ring)
    q.activate(fresh.mem)
    fresh.add_request(out=[b"alive"])
    assert q.pop_descriptor_chain(fresh.mem).read() == b"alive"


def test_driver_faults_are_queue_scoped_virtio_errors():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock)
    mock.set_avail_idx(100)
    err = assert_driver_fault(mock, q)
    assert isinstance(err, VirtioError) and err.scope.value == "queue"
    assert "queue 0" in str(err)


# --- hostile device, driver side ------------------------------------------------------------------


class DriverSide:
    def __init__(self, size=8):
        self.mem = GuestMemory.anonymous(0x20000)
        self.layout = SplitRingLayout.contiguous(0, size)
        self.size = size
        self.drv = SplitDriverQueue(self.layout)
        self.drv.setup(self.mem)

    def add(self, n_out=1, in_len=8, token="t"):
        return self.drv.add(self.mem, [(0x10000, 4)] * n_out, [(0x11000, in_len)] if in_len else [],
                            token)

    def put_used(self, slot, head, length, idx=None):
        base = self.layout.used_ring
        self.mem.store32(base + 4 + 8 * (slot % self.size), head)
        self.mem.store32(base + 8 + 8 * (slot % self.size), length)
        self.mem.store16(base + 2, slot + 1 if idx is None else idx)


def assert_device_fault(side, match):
    d = side.drv
    last_used, num_free = d.last_used, d.num_free
    with pytest.raises(DeviceFault, match=match) as exc:
        d.get_buf(side.mem)
    assert d.broken and d.fault is exc.value
    assert (d.last_used, d.num_free) == (last_used, num_free)
    calls = [d.get_buf, d.get_bufs, d.has_used, d.kick_prepare, d.enable_cb, d.disable_cb,
             lambda m: d.add(m, [(0x10000, 1)], [], "late")]
    for call in calls:
        with pytest.raises(QueueBroken):
            call(side.mem)


def test_used_idx_jumps_more_than_size():
    side = DriverSide(8)
    head = side.add()
    side.put_used(0, head, 0, idx=9)
    assert_device_fault(side, "used idx")


def test_used_idx_moves_backwards():
    side = DriverSide(8)
    head = side.add()
    side.put_used(0, head, 0)
    assert side.drv.get_buf(side.mem) == ("t", 0)
    side.mem.store16(side.layout.used_ring + 2, 0)
    assert_device_fault(side, "used idx")


@pytest.mark.parametrize("bad", [8, 9, 0xFFFF, 0xFFFFFFFF])
def test_used_id_out_of_range(bad):
    side = DriverSide(8)
    side.add()
    side.put_used(0, bad, 0)
    assert_device_fault(side, "not an outstanding head")


def test_used_id_returned_twice():
    side = DriverSide(8)
    head = side.add(token="once")
    side.put_used(0, head, 4)
    assert side.drv.get_buf(side.mem) == ("once", 4)
    side.put_used(1, head, 4)
    assert_device_fault(side, "not an outstanding head")


def test_used_id_never_made_available():
    side = DriverSide(8)
    side.add()
    side.put_used(0, 5, 0)
    assert_device_fault(side, "not an outstanding head")


def test_used_id_in_the_middle_of_a_chain():
    side = DriverSide(8)
    head = side.add(n_out=3)
    middle = side.mem.load16(side.layout.desc_table + 16 * head + 14)  # head's next
    assert middle != head
    side.put_used(0, middle, 0)
    assert_device_fault(side, "not an outstanding head")


@pytest.mark.parametrize("in_len,used_len", [(8, 9), (8, 0xFFFFFFFF)])
def test_used_len_above_writable_bytes(in_len, used_len):
    side = DriverSide(8)
    head = side.add(in_len=in_len)
    side.put_used(0, head, used_len)
    assert_device_fault(side, "used len")


def test_used_len_on_a_chain_without_writable_bytes_reads_as_zero():
    """QEMU 7.2's virtio-input credits the bytes it read from a statusq buffer (8); with nothing
    writable nothing can be read back, as the packed ring already treats DPDK's transmit."""
    side = DriverSide(8)
    head = side.add(in_len=0)
    side.put_used(0, head, 1)
    assert side.drv.get_buf(side.mem) == ("t", 0)


def test_used_len_equal_to_writable_bytes_is_fine():
    side = DriverSide(8)
    head = side.add(in_len=8)
    side.put_used(0, head, 8)
    assert side.drv.get_buf(side.mem) == ("t", 8)


def test_indirect_chain_used_len_counts_the_table_buffers():
    mem = GuestMemory.anonymous(0x20000)
    layout = SplitRingLayout.contiguous(0, 4)
    drv = SplitDriverQueue(layout, indirect_area=0x8000, max_indirect=4)
    drv.setup(mem)
    head = drv.add(mem, [(0x10000, 4)], [(0x11000, 3), (0x12000, 3)], "ind")
    mem.store32(layout.used_ring + 4, head)
    mem.store32(layout.used_ring + 8, 7)
    mem.store16(layout.used_ring + 2, 1)
    with pytest.raises(DeviceFault, match="used len 7 > 6"):
        drv.get_buf(mem)
    assert drv.broken
