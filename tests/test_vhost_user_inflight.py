"""Inflight I/O tracking (vhost-user.rst "Inflight I/O tracking"): the split region's stores in
the spec's order, recovery after a back-end dies at any point of a completion, resubmission in
pop order before new avail entries, and hostile regions giving typed errors only."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirtio.device import VirtioDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.spec.features import Feature
from pyvirtio.vhost_user.backend import inflight as I
from pyvirtio.vhost_user.backend.connection import BackendConnection, Rejected, Reply
from pyvirtio.vhost_user.protocol import FrontendReq as R
from pyvirtio.vhost_user.protocol import ProtocolFeature as PF
from pyvirtio.vhost_user.testing import PairChannel, TestFrontend
from pyvirtio.vhost_user.wire import U64, Framer, Inflight, VringAddr, VringState, encode

SIZE = 16


# --- the split tracker alone ---------------------------------------------------------------------


class Model:
    """A split ring's used idx and a tracker over a bytearray region; ``crash`` stops at a
    chosen store of a completion, as a kill -9 would."""

    def __init__(self, size=SIZE):
        self.size = size
        self.buf = bytearray(I.queue_stride(size))
        self.t = I.SplitInflight(memoryview(self.buf), size)
        assert self.t.start(size, 0) == []
        self.used_idx = 0
        self.popped: list[int] = []  # pop order
        self.free = list(range(size))
        random.Random(size).shuffle(self.free)

    def pop(self):
        head = self.free.pop()
        self.t.popped(head)
        self.popped.append(head)
        return head

    def complete(self, heads, stop_at=None):
        """Steps: 'batch' (1-3), 'idx' (4: the used ring), 'published' (5-6)."""
        if stop_at == "batch":
            return
        self.t.batch(heads)
        if stop_at == "idx":
            return
        self.used_idx = (self.used_idx + len(heads)) & 0xFFFF
        if stop_at == "published":
            return
        self.t.published(heads, self.used_idx)
        for h in heads:
            self.popped.remove(h)
            self.free.insert(0, h)

    def restart(self):
        """A new back-end maps the same region: what it resubmits."""
        self.t.release()
        t = I.SplitInflight(memoryview(self.buf), self.size)
        heads = t.start(self.size, self.used_idx)
        t.release()
        return heads


def test_pop_sets_counter_then_inflight_and_completion_links_the_batch():
    m = Model()
    a, b, c = m.pop(), m.pop(), m.pop()
    assert m.buf[16 + 16 * a] == 1 and m.buf[16 + 16 * b] == 1
    counters = [int.from_bytes(m.buf[16 + 16 * h + 8:16 + 16 * h + 16], "little") for h in (a, b, c)]
    assert counters == sorted(counters) and len(set(counters)) == 3
    m.complete([c, a])
    hdr = I.SPLIT_HEADER.unpack_from(m.buf)
    assert hdr == (0, 1, SIZE, a, 2)  # features, version, desc_num, last_batch_head, used_idx
    assert m.buf[16 + 16 * a] == 0 and m.buf[16 + 16 * c] == 0 and m.buf[16 + 16 * b] == 1
    assert int.from_bytes(m.buf[16 + 16 * a + 6:16 + 16 * a + 8], "little") == c  # a.next = c
    assert m.restart() == [b]


@pytest.mark.parametrize("stop_at", ["batch", "idx", "published"])
def test_a_kill_inside_a_completion_loses_nothing_and_repeats_nothing(stop_at):
    m = Model()
    heads = [m.pop() for _ in range(6)]
    m.complete([heads[4], heads[1]])  # a whole batch
    m.complete([heads[0], heads[5], heads[2]], stop_at=stop_at)
    got = m.restart()
    if stop_at == "published":  # the used ring has them: the region is repaired, not resubmitted
        assert got == [heads[3]]
    else:  # the driver never saw them: resubmitted in pop order
        assert got == [heads[0], heads[2], heads[3], heads[5]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["pop", "complete"]), st.integers(1, 4)), max_size=60),
       st.sampled_from([None, "batch", "idx", "published"]), st.randoms(use_true_random=False))
def test_any_history_then_a_kill_resubmits_exactly_the_unused_chains_in_pop_order(ops, stop_at, rnd):
    m = Model()
    for op, n in ops:
        if op == "pop":
            for _ in range(min(n, len(m.free))):
                m.pop()
        elif m.popped:
            batch = rnd.sample(m.popped, min(n, len(m.popped)))
            m.complete(batch)
    unused = list(m.popped)
    if m.popped and stop_at:
        batch = rnd.sample(m.popped, min(2, len(m.popped)))
        m.complete(batch, stop_at=stop_at)
        if stop_at == "published":
            unused = [h for h in unused if h not in batch]
    assert m.restart() == unused


def test_the_counter_goes_on_after_a_restart():
    m = Model()
    a, b = m.pop(), m.pop()
    m.t.release()
    t = I.SplitInflight(memoryview(m.buf), SIZE)
    assert t.start(SIZE, 0) == [a, b]
    c = m.free.pop()
    t.popped(c)
    t.release()
    t = I.SplitInflight(memoryview(m.buf), SIZE)
    assert t.start(SIZE, 0) == [a, b, c]
    t.release()


# --- hostile regions -------------------------------------------------------------------------------


def _region(**fields):
    buf = bytearray(I.queue_stride(SIZE))
    hdr = dict(features=0, version=1, desc_num=SIZE, last_batch_head=0, used_idx=0) | fields
    I.SPLIT_HEADER.pack_into(buf, 0, *hdr.values())
    return buf


@pytest.mark.parametrize("fields, used, why", [
    (dict(version=2), 0, "version"),
    (dict(features=1), 0, "features"),
    (dict(desc_num=SIZE * 2), 0, "desc_num"),
    (dict(used_idx=0), SIZE + 1, "ahead"),
    (dict(used_idx=0, last_batch_head=SIZE + 3), 2, "list reaches"),
])
def test_hostile_region_contents_are_typed_errors(fields, used, why):
    t = I.SplitInflight(memoryview(_region(**fields)), SIZE)
    with pytest.raises(I.InflightRegionError, match=why):
        t.start(SIZE, used)


def test_garbage_inflight_flags_and_a_ring_of_another_size_are_refused():
    buf = _region()
    buf[16 + 16 * 3] = 7
    with pytest.raises(I.InflightRegionError, match="flags"):
        I.SplitInflight(memoryview(buf), SIZE).start(SIZE, 0)
    with pytest.raises(I.InflightRegionError, match="ring size"):
        I.SplitInflight(memoryview(_region()), SIZE).start(SIZE // 2, 0)


def test_regions_too_small_and_descriptions_out_of_range_are_refused():
    with pytest.raises(I.InflightRegionError, match="too small"):
        I.SplitInflight(memoryview(bytearray(32)), SIZE)
    with pytest.raises(I.InflightRegionError, match="need"):
        I.InflightRegion(memoryview(bytearray(100)), 2, SIZE, 2)
    for nq, qs in ((0, SIZE), (3, SIZE), (1, 0), (1, 40000)):
        with pytest.raises(I.InflightRegionError):
            I.check_description(nq, qs, 2)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=I.queue_stride(SIZE), max_size=I.queue_stride(SIZE)), st.integers(0, 0xFFFF))
def test_any_region_bytes_give_heads_in_range_or_a_typed_error(data, used):
    t = I.SplitInflight(memoryview(bytearray(data)), SIZE)
    try:
        heads = t.start(SIZE, used)
    except I.InflightRegionError:
        return
    assert len(set(heads)) == len(heads) <= SIZE and all(0 <= h < SIZE for h in heads)


# --- through the back-end connection ---------------------------------------------------------------


class HoldDevice(RngDevice):
    """Completes nothing until told to: every chain stays in flight (as a disk request would)."""

    completes_in_order = False
    inflight_tracking = True

    def __init__(self, packed=False):
        super().__init__()
        if packed:
            self.offer_packed_ring()
        self.seen: list[int] = []
        self.held = []

    def process_queue(self, mem, queue):
        # Every chain through handle_chain (the entropy device's batch path fills one-buffer
        # requests without it).
        return VirtioDevice.process_queue(self, mem, queue)

    def handle_chain(self, queue_index, chain):
        self.seen.append(chain.head_index)
        self.held.append(chain)
        return None

    def complete(self, mem, heads):
        self.queues[0].add_used_batch(mem, [(h, 1) for h in heads])


def _get_inflight(conn, num_queues=1, queue_size=SIZE):
    out = conn.receive(encode(R.GET_INFLIGHT_FD, Inflight(0, 0, num_queues, queue_size).pack(), flags=1))
    (reply,) = [o for o in out if isinstance(o, Reply)]
    (msg,) = Framer().feed(reply.data)
    return Inflight.unpack(msg.payload), reply.fds[0]


def _start_ring(fe, ring, base):
    """Hand an existing driver ring to the back-end again (as QEMU does after a reconnect)."""
    lay, uva, i = ring.queue.layout, fe.memory.gpa_to_uva, ring.index
    fe.request(R.SET_VRING_NUM, VringState(i, SIZE).pack())
    fe.request(R.SET_VRING_BASE, VringState(i, base).pack())
    fe.request(R.SET_VRING_ADDR, VringAddr(i, 0, uva(lay.desc_table), uva(lay.used_ring),
                                           uva(lay.avail_ring), 0).pack())
    fe.request(R.SET_VRING_CALL, U64(i).pack(), [ring.call_fd])
    fe.request(R.SET_VRING_KICK, U64(i).pack(), [ring.kick_fd])
    fe.request(R.SET_VRING_ENABLE, VringState(i, 1).pack())


def _submit(fe, n):
    tokens = []
    for _ in range(n):
        addr, length = fe.buffer(8)
        fe.rings[0].queue.add(fe.memory, [], [(addr, length)], token=addr)
        tokens.append(addr)
    return tokens


def test_blk_offers_inflight_shmfd_and_rng_does_not():
    assert BackendConnection(HoldDevice()).offered_protocol_features & (1 << PF.INFLIGHT_SHMFD)
    assert not BackendConnection(RngDevice()).offered_protocol_features & (1 << PF.INFLIGHT_SHMFD)


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_killed_back_end_s_requests_are_resubmitted_first_in_pop_order(packed):
    dev1 = HoldDevice(packed)
    conn1 = BackendConnection(dev1, name="first")
    fe = TestFrontend.pair(conn1)
    ring_bits = (1 << Feature.RING_PACKED) if packed else 0
    try:
        fe.negotiate(features=(dev1.device_features | 1 << 30 | ring_bits) & ~(1 << Feature.EVENT_IDX))
        info, fd = _get_inflight(conn1)
        assert info.mmap_size == I.region_size(1, SIZE) and info.mmap_offset == 0
        fe.request(R.SET_INFLIGHT_FD, info.pack(), [fd])
        fe.add_mem_reg()
        fe.setup_ring(0, SIZE, event_idx=False)
        for _ in range(3):  # go round the ring more than once (packed: both wrap counters flip)
            _submit(fe, 10)
            conn1.process_ring(0)
            dev1.complete(conn1.memory, dev1.seen[-10:])
            fe.wait_used(0, 10)
        dev1.seen.clear()
        _submit(fe, 6)
        conn1.process_ring(0)
        first = list(dev1.seen)
        assert len(first) == 6
        dev1.complete(conn1.memory, [first[4], first[1]])
        # kill -9: conn1 is never closed.  QEMU sends the used idx as the base of a split ring
        # (32: 30 + 2), the base of its last start for a packed one (the region knows better).
        dev2 = HoldDevice(packed)
        conn2 = BackendConnection(dev2, name="second")
        fe.ch = PairChannel(conn2)
        fe.negotiate(features=fe.features)
        fe.request(R.SET_INFLIGHT_FD, info.pack(), [fd])
        fe.add_mem_reg()
        _submit(fe, 2)  # made available while no back-end ran
        _start_ring(fe, fe.rings[0], base=0x8000_8000 if packed else 32)
        notify, fault = conn2.process_ring(0)
        assert fault is None and notify  # completions the old back-end made are signalled
        assert dev2.seen[:4] == [first[0], first[2], first[3], first[5]]
        assert len(dev2.seen) == 6 and not set(dev2.seen[4:]) & set(first)
        assert conn2.resubmitted == 4
        dev2.complete(conn2.memory, dev2.seen)
        got = fe.wait_used(0, 8)
        assert len(got) == 8
        _submit(fe, 3)  # the ring goes on where it should
        conn2.process_ring(0)
        dev2.complete(conn2.memory, dev2.seen[-3:])
        assert len(fe.wait_used(0, 3)) == 3
        conn2.close()
        os.close(fd)
    finally:
        fe.ch = PairChannel(conn1)
        fe.close()


def test_hostile_inflight_messages_are_rejected_with_their_fds_closed(tmp_path):
    conn = BackendConnection(HoldDevice(), name="hostile")
    fe = TestFrontend.pair(conn)
    try:
        fe.negotiate()
        info, fd = _get_inflight(conn)
        r, w = os.pipe()
        cases = [
            (Inflight(info.mmap_size - 64, 0, 1, SIZE), fd, "need"),  # too small for its queues
            (Inflight(info.mmap_size, 0, 2, SIZE), fd, "num_queues"),  # more queues than the device
            (Inflight(info.mmap_size, 4096, 1, SIZE), fd, "past the end"),
            (Inflight(info.mmap_size, 0, 1, SIZE), r, "not a memfd"),
        ]
        for desc, f, why in cases:
            out = conn.receive(encode(R.SET_INFLIGHT_FD, desc.pack(), flags=1), [os.dup(f)])
            (rej,) = [o for o in out if isinstance(o, Rejected)]
            assert why in str(rej.error)
        # a region whose contents disagree with the ring refuses the ring's start
        view = memoryview(__import__("mmap").mmap(fd, info.mmap_size))
        I.SPLIT_HEADER.pack_into(view, 0, 0, 1, SIZE + 1, 0, 0)
        fe.request(R.SET_INFLIGHT_FD, info.pack(), [fd])
        fe.add_mem_reg()
        before = len(fe.ch.outputs)
        fe.setup_ring(0, SIZE)
        rejected = [o for o in fe.ch.outputs[before:] if isinstance(o, Rejected)]
        assert [o.request for o in rejected] == [R.SET_VRING_KICK]
        assert "desc_num" in str(rejected[0].error) and not conn.vrings[0].started
        view.release()
        for f in (fd, r, w):
            os.close(f)
    finally:
        fe.close()


def test_a_completion_published_but_never_signalled_is_signalled_by_the_next_back_end():
    """Killed after the used idx moved but before the call fd was written: nothing is in flight,
    nothing is resubmitted, and still the restarted back-end interrupts the driver once (found by
    the guest kill loop: fio waited for ever for a request already in the used ring)."""
    dev1 = HoldDevice(False)
    conn1 = BackendConnection(dev1, name="first")
    fe = TestFrontend.pair(conn1)
    try:
        fe.negotiate(features=(dev1.device_features | 1 << 30) & ~(1 << Feature.EVENT_IDX))
        info, fd = _get_inflight(conn1)
        fe.request(R.SET_INFLIGHT_FD, info.pack(), [fd])
        fe.add_mem_reg()
        fe.setup_ring(0, SIZE, event_idx=False)
        _submit(fe, 3)
        conn1.process_ring(0)
        dev1.complete(conn1.memory, dev1.seen)  # published in the used ring, never signalled
        dev2 = HoldDevice(False)
        conn2 = BackendConnection(dev2, name="second")
        fe.ch = PairChannel(conn2)
        fe.negotiate(features=fe.features)
        fe.request(R.SET_INFLIGHT_FD, info.pack(), [fd])
        fe.add_mem_reg()
        _start_ring(fe, fe.rings[0], base=3)  # QEMU: the used idx
        notify, fault = conn2.process_ring(0)
        assert fault is None and conn2.resubmitted == 0 and not dev2.seen
        assert notify  # the driver is told to look at its used ring
        notify, _ = conn2.process_ring(0)
        assert not notify  # once
        assert len(fe.wait_used(0, 3)) == 3
        conn2.close()
        os.close(fd)
    finally:
        fe.ch = PairChannel(conn1)
        fe.close()
