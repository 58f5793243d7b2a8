"""The driver side of a split virtqueue, paired with the device side over one ring."""

from __future__ import annotations

import mmap
import random

import pytest

from pyvirtio.errors import QueueFull, UsageError
from pyvirtio.memory import GuestMemory
from pyvirtio.spec import ring
from pyvirtio.virtq import SplitDeviceQueue, SplitDriverQueue, SplitRingLayout
from pyvirtio.virtq.layout import avail_ring_size, used_ring_size

F_NEXT, F_WRITE, F_INDIRECT = ring.VIRTQ_DESC_F_NEXT, ring.VIRTQ_DESC_F_WRITE, ring.VIRTQ_DESC_F_INDIRECT
DATA = 0x20000
INDIRECT_AREA = 0x10000


class Pair:
    """A driver queue and a device queue over one ring (or two mappings of one memfd)."""

    def __init__(self, size=8, *, event_idx=False, max_indirect=0, driver_mem=None, device_mem=None):
        mem = driver_mem or GuestMemory.anonymous(0x40000)
        self.mem, self.dmem = mem, device_mem or mem
        self.layout = SplitRingLayout.contiguous(0, size)
        self.drv = SplitDriverQueue(self.layout, event_idx=event_idx,
                                    indirect_area=INDIRECT_AREA if max_indirect else None,
                                    max_indirect=max_indirect)
        self.drv.setup(mem)
        self.dev = SplitDeviceQueue(size)
        self.dev.set_addresses(self.layout.desc_table, self.layout.avail_ring, self.layout.used_ring)
        self.dev.set_features(event_idx=event_idx, indirect=bool(max_indirect))
        self.dev.activate(self.dmem)
        self.size = size

    def serve(self, length=None):
        """Device: pop everything, echo the readable bytes into the writable ones."""
        chains = self.dev.pop_many(self.dmem)
        done = []
        for c in chains:
            data = c.read()[:c.writable_len]
            n = c.write(data) if length is None else length
            done.append((c.head_index, n))
        self.dev.add_used_batch(self.dmem, done)
        return chains

    # raw ring fields, read independently of both queues
    def used_event(self):
        return self.mem.load16(self.layout.avail_ring + 4 + 2 * self.size)

    def avail_flags(self):
        return self.mem.load16(self.layout.avail_ring)

    def desc(self, i, table=None):
        base = self.layout.desc_table if table is None else table
        return ring.VIRTQ_DESC.unpack(self.mem.read(base + 16 * i, 16))


def _buf(n, k=0):
    return DATA + 0x100 * n + k * 0x40


# --- round trips ----------------------------------------------------------------------------------


def test_add_kick_get_buf_roundtrip():
    p = Pair(8)
    p.mem.write(_buf(0), b"ping")
    head = p.drv.add(p.mem, [(_buf(0), 4)], [(_buf(0, 1), 8)], "token-0")
    assert p.drv.num_free == 6 and p.drv.outstanding == 1
    assert p.drv.kick_prepare(p.mem) is True
    assert p.drv.kick_prepare(p.mem) is False  # nothing new since
    assert p.drv.get_buf(p.mem) is None and not p.drv.has_used(p.mem)
    (chain,) = p.serve()
    assert chain.head_index == head and chain.read() == b"ping" and chain.writable_len == 8
    assert p.drv.has_used(p.mem)
    assert p.drv.get_buf(p.mem) == ("token-0", 4)
    assert p.mem.read(_buf(0, 1), 4) == b"ping"
    assert p.drv.num_free == 8 and p.drv.outstanding == 0
    assert p.drv.get_buf(p.mem) is None


def test_descriptors_written_as_the_spec_says():
    p = Pair(8)
    head = p.drv.add(p.mem, [(_buf(0), 1), (_buf(1), 2)], [(_buf(2), 3)], 1)
    a = p.desc(head)
    b = p.desc(a[3])
    c = p.desc(b[3])
    assert a == (_buf(0), 1, F_NEXT, a[3])
    assert b == (_buf(1), 2, F_NEXT, b[3])
    assert c[:3] == (_buf(2), 3, F_WRITE)
    assert len({head, a[3], b[3]}) == 3
    assert p.mem.load16(p.layout.avail_ring + 2) == 1  # avail idx
    assert p.mem.load16(p.layout.avail_ring + 4) == head  # avail ring[0]


def test_roundtrip_over_two_mappings_of_one_memfd():
    """Driver and device see the ring at different host addresses (Linux's vring test trick)."""
    mem = GuestMemory.memfd(0x40000)
    second = mmap.mmap(mem.regions[0].fd, 0x40000)
    dmem = GuestMemory.from_buffers((0, second))
    try:
        p = Pair(8, event_idx=True, max_indirect=4, driver_mem=mem, device_mem=dmem)
        for n in range(20):
            p.mem.write(_buf(n % 4), bytes([n]) * 3)
            p.drv.add(p.mem, [(_buf(n % 4), 3)], [(_buf(n % 4, 1), 3)], n)
            p.serve()
            assert p.drv.get_buf(p.mem) == (n, 3)
            assert p.mem.read(_buf(n % 4, 1), 3) == bytes([n]) * 3
    finally:
        dmem.close()
        mem.close()


def test_get_bufs_in_completion_order_with_tokens():
    p = Pair(8)
    heads = {p.drv.add(p.mem, [], [(_buf(n), 4)], f"t{n}"): f"t{n}" for n in range(4)}
    chains = p.dev.pop_many(p.mem)
    order = [chains[2], chains[0], chains[3], chains[1]]
    p.dev.add_used_batch(p.mem, [(c.head_index, 1) for c in order])
    assert p.drv.get_bufs(p.mem) == [(heads[c.head_index], 1) for c in order]
    assert p.drv.get_bufs(p.mem) == []


def test_any_object_but_none_is_a_token():
    p = Pair(4)
    tok = object()
    p.drv.add(p.mem, [(_buf(0), 1)], [], tok)
    p.serve()
    assert p.drv.get_buf(p.mem)[0] is tok
    with pytest.raises(UsageError):
        p.drv.add(p.mem, [(_buf(0), 1)], [], None)
    with pytest.raises(UsageError):
        p.drv.add(p.mem, [], [], 1)
    assert p.drv.num_free == 4


def test_indices_wrap_past_65535():
    p = Pair(2, event_idx=True)
    for n in range(0x10000 + 10):
        p.drv.add(p.mem, [], [(_buf(0), 2)], n)
        chain = p.dev.pop_descriptor_chain(p.mem)
        p.dev.add_used(p.mem, chain.head_index, 2)
        assert p.drv.get_buf(p.mem) == (n, 2)
    assert p.drv.avail_idx_shadow == p.drv.last_used == 10 == p.dev.next_used
    assert p.used_event() == 10 and p.drv.num_free == 2


# --- free list ------------------------------------------------------------------------------------


def test_queue_full_and_free_list_conservation():
    p = Pair(8)
    p.drv.add(p.mem, [(_buf(0), 1)] * 3, [(_buf(1), 1)] * 2, "a")  # 5 descriptors
    assert p.drv.num_free == 3
    with pytest.raises(QueueFull):
        p.drv.add(p.mem, [(_buf(2), 1)] * 4, [], "b")
    assert p.drv.num_free == 3 and p.drv.outstanding == 1  # a refused add changes nothing
    p.drv.add(p.mem, [(_buf(2), 1)] * 3, [], "b")
    assert p.drv.num_free == 0
    with pytest.raises(QueueFull) as exc:
        p.drv.add(p.mem, [(_buf(3), 1)], [], "c")
    assert isinstance(exc.value, UsageError)
    p.serve(length=0)
    assert sorted(t for t, _ in p.drv.get_bufs(p.mem)) == ["a", "b"]
    assert p.drv.num_free == 8


def test_free_list_survives_random_out_of_order_completion():
    rng = random.Random(1234)
    p = Pair(16)
    held: dict[int, set[int]] = {}  # head -> descriptor indices of its chain
    tokens = iter(range(1 << 30))
    inflight = []
    for _ in range(3000):
        if rng.random() < 0.55:
            n = rng.randint(1, 5)
            try:
                tok = next(tokens)
                head = p.drv.add(p.mem, [(_buf(0), 1)] * (n - 1), [(_buf(1), 4)], tok)
            except QueueFull:
                assert n > p.drv.num_free
                continue
            ids, i = {head}, head
            while p.desc(i)[2] & F_NEXT:
                i = p.desc(i)[3]
                ids.add(i)
            assert len(ids) == n
            for other in held.values():
                assert not ids & other, "a descriptor handed out twice"
            held[head] = ids
            inflight.extend(p.dev.pop_many(p.mem))
        elif inflight:
            chain = inflight.pop(rng.randrange(len(inflight)))
            p.dev.add_used(p.mem, chain.head_index, rng.randint(0, 4))
            tok, length = p.drv.get_buf(p.mem)
            assert 0 <= length <= 4
            del held[chain.head_index]
        assert p.drv.num_free + sum(len(ids) for ids in held.values()) == 16
        assert p.drv.outstanding == len(held)


# --- indirect -------------------------------------------------------------------------------------


def test_indirect_used_when_it_fits():
    p = Pair(4, max_indirect=4)
    assert SplitDriverQueue.indirect_area_size(4, 4) == 4 * 4 * 16
    head = p.drv.add(p.mem, [(_buf(0), 1), (_buf(1), 2)], [(_buf(2), 3)], "ind")
    assert p.drv.num_free == 3  # one ring descriptor for three buffers
    addr, length, flags, _ = p.desc(head)
    assert flags == F_INDIRECT and length == 48
    assert INDIRECT_AREA <= addr < INDIRECT_AREA + SplitDriverQueue.indirect_area_size(4, 4)
    assert [p.desc(i, addr)[:3] for i in range(3)] == [
        (_buf(0), 1, F_NEXT), (_buf(1), 2, F_NEXT), (_buf(2), 3, F_WRITE)]
    (chain,) = p.serve(length=3)
    assert (chain.readable_len, chain.writable_len) == (3, 3)
    assert p.drv.get_buf(p.mem) == ("ind", 3) and p.drv.num_free == 4


def test_indirect_tables_per_head_do_not_collide():
    p = Pair(4, max_indirect=2)
    heads = [p.drv.add(p.mem, [(_buf(n), 1)], [(_buf(n, 1), 1)], n) for n in range(4)]
    assert p.drv.num_free == 0
    tables = {p.desc(h)[0] for h in heads}
    assert len(tables) == 4
    chains = p.serve(length=1)
    assert [c.readable[0].tobytes() for c in chains] == [p.mem.read(_buf(n), 1) for n in range(4)]
    assert [t for t, _ in p.drv.get_bufs(p.mem)] == [0, 1, 2, 3]


def test_direct_fallback_beyond_max_indirect_and_for_single_buffers():
    p = Pair(8, max_indirect=2)
    single = p.drv.add(p.mem, [(_buf(0), 1)], [], "single")
    assert p.desc(single)[2] == 0 and p.drv.num_free == 7  # one buffer: no table needed
    big = p.drv.add(p.mem, [(_buf(1), 1)] * 2, [(_buf(2), 1)], "big")  # 3 > max_indirect
    assert not p.desc(big)[2] & F_INDIRECT and p.drv.num_free == 4
    pair = p.drv.add(p.mem, [(_buf(3), 1)], [(_buf(4), 1)], "pair")
    assert p.desc(pair)[2] == F_INDIRECT and p.drv.num_free == 3
    p.serve()
    assert sorted(p.drv.get_bufs(p.mem)) == [("big", 1), ("pair", 1), ("single", 0)]
    assert p.drv.num_free == 8


def test_indirect_when_only_one_descriptor_is_free():
    p = Pair(2, max_indirect=4)
    p.drv.add(p.mem, [(_buf(0), 1)], [], "a")
    p.drv.add(p.mem, [(_buf(1), 1)] * 3, [], "b")  # needs 3, one free: a table fits
    assert p.drv.num_free == 0
    with pytest.raises(QueueFull):
        p.drv.add(p.mem, [(_buf(1), 1)] * 2, [], "c")


def test_indirect_ignored_without_an_area():
    p = Pair(4)
    drv = SplitDriverQueue(p.layout, max_indirect=8)  # no indirect_area: no indirect
    drv.setup(p.mem)
    assert drv.max_indirect == 0
    head = drv.add(p.mem, [(_buf(0), 1), (_buf(1), 1)], [], 1)
    assert p.desc(head)[2] == F_NEXT and drv.num_free == 2


# --- detach, setup ---------------------------------------------------------------------------------


def test_detach_unused_returns_outstanding_tokens_and_resets():
    p = Pair(8)
    for n in range(3):
        p.drv.add(p.mem, [(_buf(n), 1)], [], n)
    p.serve(length=0)
    assert p.drv.get_buf(p.mem) == (0, 0)
    assert sorted(p.drv.detach_unused()) == [1, 2]
    assert p.drv.num_free == 8 and p.drv.outstanding == 0
    assert p.drv.avail_idx_shadow == 0 and p.drv.last_used == 0
    assert p.drv.detach_unused() == []
    # after a device reset the rings are set up again and work
    p.drv.setup(p.mem)
    p.dev.reset()
    p.dev.set_addresses(p.layout.desc_table, p.layout.avail_ring, p.layout.used_ring)
    p.dev.activate(p.mem)
    p.drv.add(p.mem, [(_buf(0), 1)], [], "again")
    p.serve(length=0)
    assert p.drv.get_buf(p.mem) == ("again", 0)


def test_setup_zeroes_the_shared_ring():
    mem = GuestMemory.anonymous(0x40000)
    layout = SplitRingLayout.contiguous(0, 8)
    mem.write(layout.avail_ring, b"\xff" * (layout.end - layout.avail_ring))
    drv = SplitDriverQueue(layout)
    drv.setup(mem)
    assert mem.read(layout.avail_ring, avail_ring_size(8)) == bytes(avail_ring_size(8))
    assert mem.read(layout.used_ring, used_ring_size(8)) == bytes(used_ring_size(8))


def test_ring_outside_memory_is_a_usage_error():
    mem = GuestMemory.anonymous(0x100)
    drv = SplitDriverQueue(SplitRingLayout.contiguous(0, 64))
    with pytest.raises(UsageError, match="not in guest memory"):
        drv.setup(mem)
    drv2 = SplitDriverQueue(SplitRingLayout.contiguous(0, 2), indirect_area=0x1000, max_indirect=4)
    with pytest.raises(UsageError):
        drv2.setup(mem)


# --- interrupt suppression -----------------------------------------------------------------------


def test_disable_enable_cb_without_event_idx():
    p = Pair(8)
    p.drv.disable_cb(p.mem)
    assert p.avail_flags() == ring.VIRTQ_AVAIL_F_NO_INTERRUPT and not p.drv.callbacks_enabled
    p.drv.add(p.mem, [(_buf(0), 1)], [], 1)
    p.serve(length=0)
    assert p.dev.needs_notification(p.mem) is False  # the device honours the flag
    assert p.drv.enable_cb(p.mem) is True  # the used buffer raced in
    assert p.avail_flags() == 0
    assert p.drv.get_buf(p.mem) == (1, 0)
    assert p.drv.enable_cb(p.mem) is False


def test_disable_enable_cb_with_event_idx():
    p = Pair(8, event_idx=True)
    for n in range(3):
        p.drv.add(p.mem, [(_buf(n), 1)], [], n)
    p.serve(length=0)
    assert p.dev.needs_notification(p.mem) is True  # first
    p.drv.get_buf(p.mem)
    assert p.used_event() == 1  # get_buf with callbacks on: "tell me about the next"
    p.drv.disable_cb(p.mem)
    assert p.used_event() == (1 + 0x8000) & 0xFFFF and p.avail_flags() == 0
    assert p.drv.get_buf(p.mem) == (1, 0)
    assert p.used_event() == (1 + 0x8000) & 0xFFFF  # not moved while disabled
    assert p.drv.enable_cb(p.mem) is True  # one more is waiting
    assert p.used_event() == 2
    p.drv.get_buf(p.mem)
    assert p.drv.enable_cb(p.mem) is False and p.used_event() == 3
    # disabled: the device's next completions do not interrupt
    p.drv.disable_cb(p.mem)
    p.drv.add(p.mem, [(_buf(0), 1)], [], "x")
    p.serve(length=0)
    assert p.dev.needs_notification(p.mem) is False
    assert p.drv.enable_cb(p.mem) is True


def test_enable_cb_then_device_completion_interrupts():
    for event_idx in (False, True):
        p = Pair(8, event_idx=event_idx)
        p.drv.disable_cb(p.mem)
        assert p.drv.enable_cb(p.mem) is False
        p.drv.add(p.mem, [(_buf(0), 1)], [], 1)
        p.serve(length=0)
        assert p.dev.needs_notification(p.mem) is True


def test_kick_prepare_honours_no_notify():
    p = Pair(8)
    p.drv.add(p.mem, [(_buf(0), 1)], [], 1)
    p.dev.disable_notification(p.mem)
    assert p.drv.kick_prepare(p.mem) is False
    p.drv.add(p.mem, [(_buf(0), 1)], [], 2)
    assert p.dev.enable_notification(p.mem) is True  # the device notices by re-checking
    assert p.drv.kick_prepare(p.mem) is True
    assert p.drv.kick_prepare(p.mem) is False


def test_kick_prepare_honours_avail_event():
    p = Pair(8, event_idx=True)
    avail_event = p.layout.used_ring + 4 + 8 * 8
    # device asked to be kicked once avail idx passes 2
    p.mem.store16(avail_event, 2)
    p.drv.add(p.mem, [(_buf(0), 1)], [], 0)  # 0 -> 1
    assert p.drv.kick_prepare(p.mem) is False
    p.drv.add(p.mem, [(_buf(0), 1)], [], 1)  # 1 -> 2
    assert p.drv.kick_prepare(p.mem) is False
    p.drv.add(p.mem, [(_buf(0), 1)], [], 2)
    p.drv.add(p.mem, [(_buf(0), 1)], [], 3)  # 2 -> 4 in one batch, passes 2
    assert p.drv.kick_prepare(p.mem) is True
    p.mem.store16(avail_event, 0x10)
    p.drv.add(p.mem, [(_buf(0), 1)], [], 4)
    assert p.drv.kick_prepare(p.mem) is False
    # NO_NOTIFY is ignored with EVENT_IDX
    p.mem.store16(avail_event, p.drv.avail_idx_shadow)
    p.mem.store16(p.layout.used_ring, ring.VIRTQ_USED_F_NO_NOTIFY)
    p.drv.add(p.mem, [(_buf(0), 1)], [], 5)
    assert p.drv.kick_prepare(p.mem) is True


def test_device_enable_notification_sets_the_kick_point():
    p = Pair(8, event_idx=True)
    p.drv.add(p.mem, [(_buf(0), 1)], [], 0)
    assert p.drv.kick_prepare(p.mem) is True  # avail_event 0, idx 0 -> 1
    p.dev.disable_notification(p.mem)
    p.dev.pop_descriptor_chain(p.mem)
    p.drv.add(p.mem, [(_buf(0), 1)], [], 1)
    assert p.drv.kick_prepare(p.mem) is False  # avail_event still 0: no kick while draining
    assert p.dev.enable_notification(p.mem) is True  # but the re-check catches it
    p.dev.pop_descriptor_chain(p.mem)
    assert p.dev.enable_notification(p.mem) is False
    p.drv.add(p.mem, [(_buf(0), 1)], [], 2)
    assert p.drv.kick_prepare(p.mem) is True
