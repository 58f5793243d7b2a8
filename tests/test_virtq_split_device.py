"""The device side of a split virtqueue, driven by a hand-written ring (MockSplitDriver)."""

from __future__ import annotations

import pytest

from pyvirtio.errors import DriverFault, UsageError
from pyvirtio.memory import GuestMemory, Region
from pyvirtio.spec import ring
from pyvirtio.testing import MockSplitDriver, make_device_queue
from pyvirtio.testing.mock_driver import F_INDIRECT, F_NEXT, F_WRITE
from pyvirtio.virtq import SplitDeviceQueue

NO_INTERRUPT = ring.VIRTQ_AVAIL_F_NO_INTERRUPT
NO_NOTIFY = ring.VIRTQ_USED_F_NO_NOTIFY


# --- popping chains -------------------------------------------------------------------------------


def test_empty_ring_pops_nothing():
    mock = MockSplitDriver(4)
    q = make_device_queue(mock)
    assert q.pop_descriptor_chain(mock.mem) is None
    assert not q.has_available(mock.mem)
    assert q.avail_idx(mock.mem) == 0
    assert q.pop_many(mock.mem) == []
    assert q.in_flight() == 0


def test_pop_direct_chain_readable_then_writable():
    mock = MockSplitDriver(8)
    req = mock.add_request(out=[b"head", b"er"], in_lens=[3, 7])
    q = make_device_queue(mock)
    assert q.has_available(mock.mem) and q.avail_idx(mock.mem) == 1
    chain = q.pop_descriptor_chain(mock.mem)
    assert chain.head_index == req.head == 0
    assert (chain.readable_len, chain.writable_len) == (6, 10)
    assert [bytes(v) for v in chain.readable] == [b"head", b"er"]
    assert [len(v) for v in chain.writable] == [3, 7]
    chain.writable[1][:2] = b"ok"  # the views are guest memory itself
    assert mock.read(req.writable[1][0], 2) == b"ok"
    assert q.next_avail == 1 and q.in_flight() == 1
    assert q.pop_descriptor_chain(mock.mem) is None


def test_pop_follows_next_fields_in_any_order():
    mock = MockSplitDriver(8)
    a, b, c = (mock.alloc(4) for _ in range(3))
    mock.write(a, b"AAAA")
    mock.write(b, b"BBBB")
    mock.add_chain([(a, 4, 0), (b, 4, 0), (c, 4, F_WRITE)], indices=[5, 2, 7])
    q = make_device_queue(mock)
    chain = q.pop_descriptor_chain(mock.mem)
    assert chain.head_index == 5 and chain.read() == b"AAAABBBB" and chain.writable_len == 4


def test_only_readable_and_only_writable_chains():
    mock = MockSplitDriver(8)
    mock.add_request(out=[b"xyz"])
    mock.add_request(in_lens=[9])
    q = make_device_queue(mock)
    first, second = q.pop_many(mock.mem)
    assert (first.readable_len, first.writable_len, first.writable) == (3, 0, [])
    assert (second.readable_len, second.writable_len, second.readable) == (0, 9, [])


def test_pop_indirect_chain():
    mock = MockSplitDriver(8)
    req = mock.add_request(out=[b"in", b"direct"], in_lens=[5], indirect=True)
    q = make_device_queue(mock, indirect=True)
    assert mock.read_desc(req.head)[2] == F_INDIRECT
    chain = q.pop_descriptor_chain(mock.mem)
    assert chain.head_index == req.head
    assert chain.read() == b"indirect" and chain.writable_len == 5


def test_pop_indirect_table_with_its_own_next_order():
    mock = MockSplitDriver(4)
    table = mock.alloc(48)
    a, b = mock.alloc(3), mock.alloc(2)
    mock.write(a, b"one")
    # table: entry 0 -> entry 2 -> entry 1 (writable)
    mock.write_desc_at(table, 0, a, 3, F_NEXT, 2)
    mock.write_desc_at(table, 2, a, 1, F_NEXT, 1)
    mock.write_desc_at(table, 1, b, 2, F_WRITE, 0)
    mock.write_desc(3, table, 48, F_INDIRECT)
    mock.add_head(3)
    q = make_device_queue(mock, indirect=True)
    chain = q.pop_descriptor_chain(mock.mem)
    assert chain.head_index == 3 and chain.read() == b"oneo" and chain.writable_len == 2


def test_direct_descriptors_then_an_indirect_table():
    mock = MockSplitDriver(8)
    a = mock.alloc(4)
    mock.write(a, b"pre:")
    table = mock.alloc(32)
    b = mock.alloc(4)
    mock.write(b, b"tail")
    mock.write_table(table, [(b, 4, 0), (b, 4, F_WRITE)])
    mock.add_chain([(a, 4, 0), (table, 32, F_INDIRECT)])
    q = make_device_queue(mock, indirect=True)
    chain = q.pop_descriptor_chain(mock.mem)
    assert chain.read() == b"pre:tail" and chain.writable_len == 4


def test_pop_many_respects_limit_and_order():
    mock = MockSplitDriver(8)
    heads = [mock.add_request(out=[bytes([n])]).head for n in range(5)]
    q = make_device_queue(mock)
    assert [c.head_index for c in q.pop_many(mock.mem, limit=2)] == heads[:2]
    assert [c.read() for c in q.pop_many(mock.mem)] == [b"\2", b"\3", b"\4"]
    assert q.in_flight() == 5


def test_unpublished_entries_are_not_popped():
    mock = MockSplitDriver(4)
    mock.add_request(out=[b"a"], publish=False)
    q = make_device_queue(mock)
    assert q.pop_descriptor_chain(mock.mem) is None
    mock.publish()
    assert q.pop_descriptor_chain(mock.mem).read() == b"a"


def test_a_full_ring_of_chains():
    mock = MockSplitDriver(4)
    for n in range(4):
        mock.add_request(out=[bytes([n])])
    q = make_device_queue(mock)
    assert (mock.avail_idx - q.next_avail) & 0xFFFF == 4  # exactly size ahead is legal
    assert [c.read() for c in q.pop_many(mock.mem)] == [b"\0", b"\1", b"\2", b"\3"]


# --- used ring ------------------------------------------------------------------------------------


def test_add_used_writes_element_then_index():
    mock = MockSplitDriver(4)
    reqs = [mock.add_request(in_lens=[8]) for _ in range(3)]
    q = make_device_queue(mock)
    chains = q.pop_many(mock.mem)
    q.add_used(mock.mem, chains[1].head_index, 5)
    assert mock.used_idx == 1 and q.next_used == 1
    assert mock.used_elems() == [(reqs[1].head, 5)]
    q.add_used(mock.mem, chains[0].head_index, 0)
    assert mock.take_used() == [(reqs[1].head, 5), (reqs[0].head, 0)]
    assert q.in_flight() == 1


def test_add_used_batch_publishes_once():
    mock = MockSplitDriver(8)
    for _ in range(4):
        mock.add_request(in_lens=[16])
    q = make_device_queue(mock)
    chains = q.pop_many(mock.mem)
    q.add_used_batch(mock.mem, [(c.head_index, 10 + i) for i, c in enumerate(chains)])
    assert mock.used_idx == 4 == q.next_used
    assert mock.take_used() == [(c.head_index, 10 + i) for i, c in enumerate(chains)]
    q.add_used_batch(mock.mem, [])
    assert mock.used_idx == 4


def test_indices_wrap_past_65535():
    mock = MockSplitDriver(4, base=0xFFF0)
    q = make_device_queue(mock, event_idx=True)
    assert (q.next_avail, q.next_used) == (0xFFF0, 0xFFF0)
    seen = []
    for n in range(40):  # 0xfff0 + 40 crosses 0x10000
        req = mock.add_request(out=[n.to_bytes(2, "little")], in_lens=[2])
        chain = q.pop_descriptor_chain(mock.mem)
        assert chain.head_index == req.head
        assert chain.read() == n.to_bytes(2, "little")
        q.add_used(mock.mem, chain.head_index, chain.write(b"ok"))
        (head, length), = mock.take_used()
        assert (head, length) == (req.head, 2)
        seen.append(q.next_avail)
    assert q.next_avail == q.next_used == (0xFFF0 + 40) & 0xFFFF == 0x18
    assert mock.avail_idx == mock.used_idx == 0x18
    assert 0 in seen and 0xFFFF in seen


def test_batch_across_the_wrap():
    mock = MockSplitDriver(8, base=0xFFFD)
    for _ in range(6):
        mock.add_request(in_lens=[4])
    q = make_device_queue(mock)
    chains = q.pop_many(mock.mem)
    assert len(chains) == 6 and q.next_avail == 3
    q.add_used_batch(mock.mem, [(c.head_index, 4) for c in chains])
    assert q.next_used == 3 and mock.used_idx == 3
    assert [h for h, _ in mock.take_used()] == [c.head_index for c in chains]


def test_set_base_and_sync_used_from_ring():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock)
    mock.set_used_idx(0x1234)
    mock.set_avail_idx(0x1236)
    mock.set_avail_entry(0x1234, 1)
    mock.set_avail_entry(0x1235, 2)
    mock.write_desc(1, mock.alloc(4), 4, F_WRITE)
    mock.write_desc(2, mock.alloc(4), 4, F_WRITE)
    q.set_base(0x1234 + 0x10000)  # taken mod 2**16
    q.sync_used_from_ring(mock.mem)
    assert (q.next_avail, q.next_used) == (0x1234, 0x1234)
    assert [c.head_index for c in q.pop_many(mock.mem)] == [1, 2]
    q.add_used(mock.mem, 2, 1)
    assert mock.used_idx == 0x1235 and mock.used_elem(0x1234) == (2, 1)


# --- drain ----------------------------------------------------------------------------------------


def test_drain_completes_synchronously_in_one_batch():
    mock = MockSplitDriver(8)
    reqs = [mock.add_request(out=[bytes([n]) * 3], in_lens=[3]) for n in range(3)]
    q = make_device_queue(mock)
    handled = []

    def handle(chain):
        handled.append(chain.head_index)
        return chain.write(chain.read().upper() + b"")

    assert q.drain(mock.mem, handle) is True  # flags 0: the driver wants interrupts
    assert handled == [r.head for r in reqs]
    assert mock.take_used() == [(r.head, 3) for r in reqs]
    assert q.in_flight() == 0 and q.notifications_enabled
    assert mock.used_flags == 0  # notifications re-enabled on the way out
    # nothing new: nothing to handle, no notification
    assert q.drain(mock.mem, handle) is False
    assert len(handled) == 3


def test_drain_with_deferred_completion():
    mock = MockSplitDriver(8)
    reqs = [mock.add_request(in_lens=[4]) for _ in range(3)]
    q = make_device_queue(mock, event_idx=True)
    later = []
    # nothing was completed: no interrupt, even before the first EVENT_IDX decision
    assert q.drain(mock.mem, lambda c: later.append(c)) is False
    assert len(later) == 3 and mock.used_idx == 0 and q.in_flight() == 3
    assert mock.avail_event == 3  # re-enabled at next_avail
    for chain in reversed(later):
        q.add_used(mock.mem, chain.head_index, chain.write(b"done"))
    assert mock.take_used() == [(r.head, 4) for r in reversed(reqs)]
    assert q.in_flight() == 0
    assert q.needs_notification(mock.mem) is True  # used idx 0 -> 3 passed used_event 0
    assert q.needs_notification(mock.mem) is False


def test_drain_mixed_sync_and_deferred():
    mock = MockSplitDriver(8)
    reqs = [mock.add_request(in_lens=[2]) for _ in range(4)]
    q = make_device_queue(mock)
    deferred = []

    def handle(chain):
        if chain.head_index % 2:
            deferred.append(chain)
            return None
        return 1

    q.drain(mock.mem, handle)
    assert mock.take_used() == [(r.head, 1) for r in reqs if r.head % 2 == 0]
    q.add_used_batch(mock.mem, [(c.head_index, 2) for c in deferred])
    assert mock.take_used() == [(r.head, 2) for r in reqs if r.head % 2]


def test_drain_picks_up_buffers_that_race_in_before_reenable():
    mock = MockSplitDriver(8)
    mock.add_request(in_lens=[1])
    q = make_device_queue(mock, event_idx=True)
    seen = []

    def handle(chain):
        seen.append(chain.head_index)
        if len(seen) == 1:  # the driver adds while notifications are disabled: no kick for it
            mock.add_request(in_lens=[1])
        return 0

    q.drain(mock.mem, handle)
    assert len(seen) == 2 and q.in_flight() == 0 and mock.used_idx == 2


def test_drain_disables_notifications_while_it_runs():
    mock = MockSplitDriver(8)
    mock.add_request(in_lens=[1])
    q = make_device_queue(mock)
    flags = []
    q.drain(mock.mem, lambda c: flags.append(mock.used_flags) or 0)
    assert flags == [NO_NOTIFY] and mock.used_flags == 0


# --- notification suppression ------------------------------------------------------------------


def _complete(mock, q, n=1):
    for _ in range(n):
        mock.add_request(in_lens=[1])
        chain = q.pop_descriptor_chain(mock.mem)
        q.add_used(mock.mem, chain.head_index, 0)


def test_needs_notification_without_event_idx_honours_no_interrupt():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock)
    _complete(mock, q)
    assert q.needs_notification(mock.mem) is True
    assert q.needs_notification(mock.mem) is False  # nothing added since
    mock.set_avail_flags(NO_INTERRUPT)
    _complete(mock, q)
    assert q.needs_notification(mock.mem) is False
    mock.set_avail_flags(0)
    _complete(mock, q, 2)
    assert q.needs_notification(mock.mem) is True
    mock.set_used_event(0x1234)  # ignored without EVENT_IDX
    _complete(mock, q)
    assert q.needs_notification(mock.mem) is True


def test_needs_notification_with_event_idx_honours_used_event():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock, event_idx=True)
    mock.set_used_event(5)
    _complete(mock, q)
    assert q.needs_notification(mock.mem) is True  # the first one always goes out
    mock.set_avail_flags(NO_INTERRUPT)  # ignored with EVENT_IDX
    _complete(mock, q, 3)  # used idx 1 -> 4: event 5 not passed
    assert q.needs_notification(mock.mem) is False
    _complete(mock, q)  # 4 -> 5: still not past 5
    assert q.needs_notification(mock.mem) is False
    _complete(mock, q)  # 5 -> 6: passed 5
    assert q.needs_notification(mock.mem) is True
    _complete(mock, q, 4)  # 6 -> 10, event 5 behind us
    assert q.needs_notification(mock.mem) is False
    mock.set_used_event(q.next_used)  # "tell me about the next one"
    _complete(mock, q)
    assert q.needs_notification(mock.mem) is True
    assert q.needs_notification(mock.mem) is False


def test_needs_notification_event_idx_in_a_batch_across_the_wrap():
    mock = MockSplitDriver(8, base=0xFFFC)
    q = make_device_queue(mock, event_idx=True)
    _complete(mock, q)
    assert q.needs_notification(mock.mem)  # first
    mock.set_used_event(0xFFFF)
    _complete(mock, q, 5)  # 0xfffd -> 2 crosses 0xffff
    assert q.needs_notification(mock.mem) is True
    mock.set_used_event(1)
    _complete(mock, q, 2)  # 2 -> 4: 1 is behind
    assert q.needs_notification(mock.mem) is False


def test_first_notification_with_event_idx_after_sync_and_reset():
    mock = MockSplitDriver(4)
    q = make_device_queue(mock, event_idx=True)
    _complete(mock, q)
    mock.set_used_event(0x8000)
    assert q.needs_notification(mock.mem) is True
    _complete(mock, q)
    assert q.needs_notification(mock.mem) is False
    q.sync_used_from_ring(mock.mem)  # a handed-over ring: no record of what was signalled
    _complete(mock, q)
    assert q.needs_notification(mock.mem) is True


def test_disable_and_enable_notification_without_event_idx():
    mock = MockSplitDriver(4)
    q = make_device_queue(mock)
    q.disable_notification(mock.mem)
    assert mock.used_flags == NO_NOTIFY and not q.notifications_enabled
    assert q.enable_notification(mock.mem) is False
    assert mock.used_flags == 0 and q.notifications_enabled
    assert mock.avail_event == 0  # untouched without EVENT_IDX


def test_disable_and_enable_notification_with_event_idx():
    mock = MockSplitDriver(4)
    q = make_device_queue(mock, event_idx=True)
    _complete(mock, q, 3)
    q.disable_notification(mock.mem)
    assert mock.used_flags == 0  # flags are not the mechanism with EVENT_IDX
    assert not q.notifications_enabled
    assert q.enable_notification(mock.mem) is False
    assert mock.avail_event == 3 == q.next_avail


def test_enable_notification_reports_buffers_that_raced_in():
    for event_idx in (False, True):
        mock = MockSplitDriver(4)
        q = make_device_queue(mock, event_idx=event_idx)
        q.disable_notification(mock.mem)
        mock.add_request(in_lens=[1])
        assert q.enable_notification(mock.mem) is True
        q.pop_descriptor_chain(mock.mem)
        assert q.enable_notification(mock.mem) is False


# --- configuration ---------------------------------------------------------------------------------


def test_reset_returns_to_initial_state():
    mock = MockSplitDriver(8)
    q = make_device_queue(mock, event_idx=True, indirect=True)
    _complete(mock, q, 2)
    q.needs_notification(mock.mem)
    q.disable_notification(mock.mem)
    q.reset()
    assert (q.ready, q.next_avail, q.next_used, q.broken, q.fault) == (False, 0, 0, False, None)
    assert (q.desc_table, q.avail_ring, q.used_ring) == (0, 0, 0)
    assert q.size == q.max_size and q.signalled_used == 0 and q.notifications_enabled
    with pytest.raises(UsageError, match="not ready"):
        q.pop_descriptor_chain(mock.mem)


def test_reset_clears_a_broken_queue():
    mock = MockSplitDriver(4)
    q = make_device_queue(mock)
    mock.set_avail_idx(9)
    with pytest.raises(DriverFault):
        q.pop_descriptor_chain(mock.mem)
    q.reset()
    fresh = MockSplitDriver(4)
    q.set_addresses(fresh.desc_table, fresh.avail_ring, fresh.used_ring)
    q.activate(fresh.mem)
    fresh.add_request(out=[b"ok"])
    assert q.pop_descriptor_chain(fresh.mem).read() == b"ok"


def test_calls_before_activate_are_usage_errors():
    mock = MockSplitDriver(4)
    q = make_device_queue(mock, activate=False)
    for call in (q.pop_descriptor_chain, q.has_available, q.avail_idx, q.needs_notification,
                 q.enable_notification, q.disable_notification):
        with pytest.raises(UsageError):
            call(mock.mem)
    with pytest.raises(UsageError):
        q.add_used(mock.mem, 0, 0)


def test_set_size_errors():
    q = SplitDeviceQueue(64)
    for bad in (0, 3, 48, 128, -4, 65536):
        with pytest.raises(DriverFault):
            q.set_size(bad)
    for good in (1, 2, 32, 64):
        q.set_size(good)
        assert q.size == good
    for bad in (0, 100, 1 << 16):
        with pytest.raises(UsageError):
            SplitDeviceQueue(bad)


def test_smaller_size_than_max():
    mock = MockSplitDriver(4)
    q = make_device_queue(mock, max_size=256)
    assert (q.max_size, q.size) == (256, 4)
    for n in range(6):  # wraps the 4-entry avail ring
        mock.add_request(out=[bytes([n])])
        assert q.pop_descriptor_chain(mock.mem).read() == bytes([n])


@pytest.mark.parametrize("desc,avail,used", [(8, 0x200, 0x400), (0, 0x201, 0x400), (0, 0x200, 0x402)])
def test_activate_refuses_misaligned_rings(desc, avail, used):
    mem = GuestMemory.anonymous(0x10000)
    q = SplitDeviceQueue(8)
    q.set_addresses(desc, avail, used)
    with pytest.raises(DriverFault, match="misaligned"):
        q.activate(mem)
    assert not q.ready


def test_activate_accepts_minimal_alignment():
    mem = GuestMemory.anonymous(0x10000)
    q = SplitDeviceQueue(8)
    q.set_addresses(0x10, 0x202, 0x404)  # 16, 2 and 4 bytes (2.7)
    q.activate(mem)
    assert q.ready and q.pop_descriptor_chain(mem) is None


def test_ring_views_follow_memory_changes():
    mock = MockSplitDriver(4)
    q = make_device_queue(mock)
    mock.mem.add_region(Region(0x100000, 0x1000, memoryview(bytearray(0x1000))))  # generation bump
    mock.add_request(out=[b"still"])
    assert q.pop_descriptor_chain(mock.mem).read() == b"still"
    # a different GuestMemory object over the same bytes works too
    other = GuestMemory(mock.mem.regions)
    mock.add_request(out=[b"other"])
    assert q.pop_descriptor_chain(other).read() == b"other"


def test_ring_parts_in_different_regions():
    mem = GuestMemory.from_buffers((0x0, bytearray(0x1000)), (0x10000, bytearray(0x1000)),
                                   (0x20000, bytearray(0x1000)))
    mock = MockSplitDriver(8, mem=mem, ring_addr=0x0)
    q = SplitDeviceQueue(8)
    # put the avail ring and used ring elsewhere by hand: copy the mock's layout semantics
    q.set_addresses(0x0, 0x10000, 0x20000)
    q.activate(mem)
    mem.write(0x800, b"far")
    mock.write_desc(0, 0x800, 3, 0)
    mem.store16(0x10004, 0)  # avail ring[0] = 0
    mem.store16(0x10002, 1)  # avail idx = 1
    chain = q.pop_descriptor_chain(mem)
    assert chain.read() == b"far"
    q.add_used(mem, 0, 0)
    assert mem.load16(0x20002) == 1 and mem.load32(0x20004) == 0


# --- the mock driver itself (a public test utility) --------------------------------------------


def test_mock_driver_layout_and_defaults():
    mock = MockSplitDriver(16)
    assert mock.layout.size == 16 and mock.desc_table == 0
    assert mock.avail_ring == 16 * 16 and mock.used_ring % 4 == 0
    assert mock.data_addr % 0x1000 == 0 and mock.data_addr >= mock.layout.end
    assert (mock.avail_idx, mock.used_idx, mock.avail_flags, mock.used_event) == (0, 0, 0, 0)
    assert mock.ring_len == mock.layout.end


def test_mock_driver_add_chain_links_and_round_robin_indices():
    mock = MockSplitDriver(4)
    a = mock.alloc(8)
    assert mock.add_chain([(a, 1, 0), (a, 2, F_WRITE)]) == 0
    assert mock.read_desc(0) == (a, 1, F_NEXT, 1)
    assert mock.read_desc(1) == (a, 2, F_WRITE, 0)
    assert mock.add_chain([(a, 3, 0), (a, 4, 0), (a, 5, 0)]) == 2  # indices 2, 3, 0 (wraps)
    assert mock.read_desc(3) == (a, 4, F_NEXT, 0)
    assert mock.avail_idx == 2 and [mock.avail_entry(s) for s in (0, 1)] == [0, 2]
    assert mock.add_chain([(a, 1, F_NEXT)], indices=[3], link=False) == 3
    assert mock.read_desc(3) == (a, 1, F_NEXT, 0)  # flags exactly as given
    with pytest.raises(UsageError):
        mock.add_chain([])
    with pytest.raises(UsageError):
        mock.add_chain([(a, 1, 0)], indices=[0, 1])


def test_mock_driver_indirect_chain_and_table():
    mock = MockSplitDriver(4)
    a = mock.alloc(4)
    head = mock.add_indirect_chain([(a, 4, 0), (a, 4, F_WRITE)], head=2)
    addr, length, flags, _ = mock.read_desc(2)
    assert head == 2 and flags == F_INDIRECT and length == 32
    assert mock.read(addr, 16)[12:14] == F_NEXT.to_bytes(2, "little")


def test_mock_driver_used_side_helpers():
    mock = MockSplitDriver(4, base=0xFFFE)
    q = make_device_queue(mock)
    reqs = [mock.add_request(in_lens=[1]) for _ in range(3)]
    for c in q.pop_many(mock.mem):
        q.add_used(mock.mem, c.head_index, 1)
    assert mock.used_idx == 1  # wrapped
    assert mock.used_elems() == [(r.head, 1) for r in reqs]
    assert mock.used_elems(start=0xFFFF) == [(r.head, 1) for r in reqs[1:]]
    assert mock.take_used() == [(r.head, 1) for r in reqs]
    assert mock.take_used() == [] and mock.last_used == 1


def test_mock_driver_regions_holes_and_alloc_limits():
    mock = MockSplitDriver(4, regions=((0, 0x2000), (0x8000, 0x1000)))
    assert [r.gpa for r in mock.mem.regions] == [0, 0x8000]
    mock.alloc(0x800)
    with pytest.raises(UsageError, match="exhausted"):
        mock.alloc(0x1000)
    other = MockSplitDriver(4, regions=((0, 0x1000), (0x8000, 0x1000)), data_addr=0x8000)
    assert other.alloc(16) == 0x8000
    no_data = MockSplitDriver(4, regions=((0, 0x200),), data_addr=0x4000)  # data area unmapped
    with pytest.raises(UsageError):
        no_data.alloc(1)


def test_mock_driver_raw_ring_bytes_and_event_fields():
    mock = MockSplitDriver(2)
    mock.write_ring_bytes(b"\xff" * 1000)
    assert mock.read_desc(1) == ((1 << 64) - 1, 0xFFFFFFFF, 0xFFFF, 0xFFFF)
    mock.write_ring_bytes(b"")
    assert mock.read(0, mock.ring_len) == bytes(mock.ring_len)
    mock.set_used_event(7)
    mock.set_avail_flags(NO_INTERRUPT)
    assert (mock.used_event, mock.avail_flags) == (7, NO_INTERRUPT)
    q = make_device_queue(mock, event_idx=True)
    q.enable_notification(mock.mem)
    assert mock.avail_event == 0


def test_make_device_queue_options():
    mock = MockSplitDriver(8, base=0x100)
    q = make_device_queue(mock, event_idx=True, indirect=True, max_size=128, index=3)
    assert (q.index, q.max_size, q.size, q.event_idx, q.indirect, q.ready) == (3, 128, 8, True, True, True)
    assert (q.next_avail, q.next_used) == (0x100, 0x100)
    idle = make_device_queue(mock, activate=False)
    assert not idle.ready and idle.desc_table == mock.desc_table


# --- indirect tables checked a table at a time (split_device._usual_table, chain.append_table) ---

from hypothesis import given, settings, strategies as st  # noqa: E402

_REGION_B = 0x200000  # a second region after a hole: (0, 1 MiB), (2 MiB, 1 MiB)
_FLAG_CHOICES = (0, F_NEXT, F_WRITE, F_NEXT | F_WRITE, F_INDIRECT, F_NEXT | F_INDIRECT, F_NEXT | 0x10)


@st.composite
def _tables(draw):
    """An indirect table of the usual shape (what Linux writes), or one with one to three
    descriptors off: another flag, a readable one after a writable one, a next that is not
    i + 1, a zero length, a buffer at a region's end, in the hole or in the other region."""
    n = draw(st.integers(8, 40))
    nread = draw(st.integers(0, n))
    descs = []
    for i in range(n):
        last = i == n - 1
        descs.append([0x10000 + i * 0x1000, 0x1000, (0 if i < nread else F_WRITE) | (0 if last else F_NEXT),
                      0 if last else i + 1])
    for i in draw(st.lists(st.integers(0, n - 1), max_size=3)):
        what = draw(st.integers(0, 3))
        if what == 0:
            descs[i][2] = draw(st.sampled_from(_FLAG_CHOICES))
        elif what == 1:
            descs[i][3] = draw(st.integers(0, n + 2))
        elif what == 2:
            descs[i][1] = draw(st.sampled_from((0, 1, 0x100000, 0x200000)))
        else:
            descs[i][0] = draw(st.sampled_from((0xFF000, 0x100000 - 0x800, 0x180000, _REGION_B + 0x1000,
                                                _REGION_B + 0xFF800, 1 << 40)))
    return [tuple(d) for d in descs]


def _memory():
    return GuestMemory.from_buffers((0, bytearray(0x100000)), (_REGION_B, bytearray(0x100000)))


def _walk_table_chain(descs, bulk: bool, mem=None):
    """The chain an indirect table ``descs`` gives (or the DriverFault it raises), walked with
    the table-at-a-time check allowed or not (``bulk_tables``: an attribute, which the compiled
    ring core honours too, unlike a patched module global)."""
    mem = mem or _memory()
    mock = MockSplitDriver(size=16, mem=mem)
    table = mock.alloc(16 * len(descs))
    for i, (addr, length, flags, nxt) in enumerate(descs):
        mock.write_desc_at(table, i, addr, length, flags, nxt)
    head = mock.take_desc_indices(1)[0]
    mock.write_desc(head, table, 16 * len(descs), F_INDIRECT, 0)
    mock.add_head(head)
    queue = make_device_queue(mock, indirect=True)
    queue.bulk_tables = bulk
    try:
        chain = queue.pop_descriptor_chain(mem)
    except DriverFault as exc:
        return "fault", str(exc)
    return (chain.head_index, [bytes(v) for v in chain.readable], [len(v) for v in chain.writable],
            chain.readable_len, chain.writable_len, chain.descriptors, chain.addresses)


@settings(max_examples=300, deadline=None)
@given(_tables())
def test_a_table_checked_at_once_gives_what_the_loop_gives(descs):
    """Any indirect table — the usual shape or one thing off — gives the same chain (views,
    lengths, descriptor count, host addresses) or the same fault whether the walk may check it a
    table at a time or must take it descriptor by descriptor."""
    mem = _memory()  # one for both walks: the same host addresses
    assert _walk_table_chain(descs, True, mem) == _walk_table_chain(descs, False, mem)


def test_the_usual_table_is_checked_at_once():
    """A table as Linux writes one (readable ones, then writable ones, nexts in order) is of the
    shape checked a table at a time; one with a readable descriptor after a writable one is not,
    and the walk refuses it as the loop does.  (The helper is called directly: a compiled ring
    core calls it without looking it up, so patching it would show nothing.)"""
    from pyvirtio.virtq import split_device
    from pyvirtio.virtq.chain import append_table, walk_window
    from pyvirtio.virtq.layout import descriptor_table_fields

    usual = [(0x10000 + i * 0x1000, 0x1000, (0 if i < 3 else F_WRITE) | (F_NEXT if i < 9 else 0),
              i + 1 if i < 9 else 0) for i in range(10)]
    mem = _memory()

    def fields(descs):
        table = bytearray()
        for addr, length, flags, nxt in descs:
            table += ring.VIRTQ_DESC.pack(addr, length, flags, nxt)
        return descriptor_table_fields(table, len(descs))
    mem.views(0x10000, 0x1000)  # a translation: the window is the first region's
    gpa, end, buf, at = walk_window(mem)
    assert split_device._usual_table(fields(usual), 10) == 3
    readable, writable, addrs = [], [], []
    assert append_table(fields(usual), 3, gpa, end, buf, at, readable, writable, addrs) == (3 * 0x1000, 7 * 0x1000)
    assert [len(v) for v in readable + writable] == [0x1000] * 10 and len(readable) == 3 and len(addrs) == 10
    assert _walk_table_chain(usual, True, mem)[3:6] == (3 * 0x1000, 7 * 0x1000, 10)
    bad = list(usual)
    bad[5] = (bad[5][0], bad[5][1], F_NEXT, 6)  # readable after writable ones
    assert split_device._usual_table(fields(bad), 10) == -1
    fault = _walk_table_chain(bad, True, mem)
    assert fault[0] == "fault" and "2.7.4.2" in fault[1]
