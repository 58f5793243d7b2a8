"""The split ring's batch paths: ``SplitDeviceQueue.pop_single`` / ``add_used_lengths`` and
``SplitDriverQueue.add_single`` / ``collect``, against the general path (``pop_descriptor_chain``,
``add``, ``get_bufs``): the same chains, bytes, lengths and faults, on hostile rings too."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirtio.errors import DeviceFault, DriverFault, QueueBroken, QueueFull, UsageError
from pyvirtio.memory import GuestMemory
from pyvirtio.testing import MockSplitDriver, make_device_queue
from pyvirtio.testing.mock_driver import F_INDIRECT, F_NEXT, F_WRITE
from pyvirtio.virtq import SplitDeviceQueue, SplitDriverQueue, SplitRingLayout

EXAMPLES = int(os.environ.get("PYVIRTIO_HYPOTHESIS_EXAMPLES", "300"))
SIZE = 16
# Two adjacent regions (a buffer may cross from one into the other), then a hole.
REGIONS = ((0, 0x8000), (0x8000, 0x8000))
MEM_END = 0x10000
U64 = 1 << 64


def _memory() -> GuestMemory:
    mem = GuestMemory.from_buffers(*((gpa, bytearray(n)) for gpa, n in REGIONS))
    mem.write(0x1000, bytes(i * 7 % 251 for i in range(MEM_END - 0x1000)))  # recognisable bytes
    return mem


def _ring(chains, bad_heads=(), avail_jump=0):
    """A MockSplitDriver holding ``chains`` (lists of (addr, len, flags) descriptors), each chain in
    consecutive descriptor slots; ``bad_heads``: (position, head) avail entries overwritten;
    ``avail_jump``: added to the published avail idx."""
    mock = MockSplitDriver(SIZE, mem=_memory(), data_addr=0x1000)
    for descs in chains:
        mock.add_chain(descs)
    for pos, head in bad_heads:
        mock.set_avail_entry(pos, head)
    if avail_jump:
        mock.set_avail_idx(mock.avail_idx + avail_jump)
    return mock, make_device_queue(mock)


def _record(chain):
    return chain.head_index, b"".join(bytes(v) for v in chain.readable), chain.writable_len


def drain_general(mock, q):
    """Every chain through pop_descriptor_chain, completed with add_used_batch; (chains, fault,
    used ring bytes)."""
    out, done, fault = [], [], None
    try:
        while (chain := q.pop_descriptor_chain(mock.mem)) is not None:
            out.append(_record(chain))
            done.append((chain.head_index, chain.writable_len))
    except DriverFault as exc:
        fault = str(exc)
    if done and not q.broken:
        q.add_used_batch(mock.mem, done)
    return out, fault, mock.read(mock.used_ring, 4 + 8 * SIZE)


def drain_batch(mock, q, limit):
    """Batches of readable, then writable single-descriptor chains through pop_single (limit per
    batch), anything else through pop_descriptor_chain; completed as they come."""
    out, fault, mem = [], None, mock.mem
    try:
        while True:
            heads, lengths, offsets, buf = q.pop_single(mem, limit)
            if heads:
                out += [(h, bytes(buf[o:o + n]), 0) for h, n, o in zip(heads, lengths, offsets)]
                q.add_used_lengths(mem, heads, [0] * len(heads))
                continue
            heads, lengths, offsets, buf = q.pop_single(mem, limit, writable=True)
            if heads:
                assert all(o + n <= len(buf) for o, n in zip(offsets, lengths))
                out += [(h, b"", n) for h, n in zip(heads, lengths)]
                q.add_used_lengths(mem, heads, lengths)
                continue
            chain = q.pop_descriptor_chain(mem)
            if chain is None:
                break
            out.append(_record(chain))
            q.add_used(mem, chain.head_index, chain.writable_len)
    except DriverFault as exc:
        fault = str(exc)
    return out, fault, mock.read(mock.used_ring, 4 + 8 * SIZE)


def _same_outcome(chains, bad_heads=(), avail_jump=0, limit=SIZE, indirect=False):
    mock_g, q_g = _ring(chains, bad_heads, avail_jump)
    mock_b, q_b = _ring(chains, bad_heads, avail_jump)
    q_g.set_features(False, indirect)
    q_b.set_features(False, indirect)
    general, batch = drain_general(mock_g, q_g), drain_batch(mock_b, q_b, limit)
    assert batch[:2] == general[:2]
    if general[1] is None:
        assert batch[2] == general[2]  # the used ring holds the same entries
        assert (q_b.next_avail, q_b.next_used) == (q_g.next_avail, q_g.next_used)
    assert q_b.broken == q_g.broken == (general[1] is not None)
    if q_b.broken:
        with pytest.raises(QueueBroken):
            q_b.pop_single(mock_b.mem, limit)
    assert (q_b.stats.chains, q_b.stats.bytes_read) == (q_g.stats.chains, q_g.stats.bytes_read)
    return general


# --- device side: hostile rings -------------------------------------------------------------------

R, W = 0, F_WRITE
GOOD = [[(0x1000 + 64 * i, 32 + i, R if i % 3 else W)] for i in range(5)]

HOSTILE = {
    "head >= size": dict(chains=GOOD, bad_heads=[(2, SIZE + 1)]),
    "first head >= size": dict(chains=GOOD, bad_heads=[(0, 0xFFFF)]),
    "avail idx too far ahead": dict(chains=GOOD, avail_jump=SIZE),
    "buffer outside memory": dict(chains=GOOD[:2] + [[(1 << 40, 64, R)]] + GOOD[2:]),
    "writable buffer outside memory": dict(chains=GOOD[:3] + [[(MEM_END + 0x100, 8, W)]]),
    "buffer running past memory": dict(chains=GOOD[:2] + [[(MEM_END - 10, 64, R)]]),
    "address + length wraps 2**64": dict(chains=GOOD[:2] + [[(U64 - 16, 64, W)]]),
    "indirect without the feature": dict(chains=GOOD[:2] + [[(0x2000, 32, F_INDIRECT)]]),
    "next out of the table": dict(chains=[GOOD[0], [(0x1000, 8, F_NEXT)]]),
    "buffer crossing two regions": dict(chains=GOOD[:2] + [[(0x8000 - 8, 64, R)]] + GOOD[2:]),
    "zero-length buffer outside memory": dict(chains=GOOD[:2] + [[(1 << 40, 0, W)]] + GOOD[2:]),
    "chained and single mixed": dict(chains=GOOD[:2] + [[(0x1000, 8, R), (0x2000, 8, W)]] + GOOD[2:]),
    "buffers in the second region": dict(chains=[[(0x9000 + 64 * i, 16, R)] for i in range(4)] + GOOD),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
@pytest.mark.parametrize("limit", [1, 3, SIZE])
def test_hostile_rings_end_as_on_the_general_path(case, limit):
    _same_outcome(**HOSTILE[case], limit=limit)


def test_the_faults_are_the_general_paths():
    assert "head index" in _same_outcome(**HOSTILE["head >= size"])[1]
    assert "more than" in _same_outcome(**HOSTILE["avail idx too far ahead"])[1]
    for case in ("buffer outside memory", "buffer running past memory", "address + length wraps 2**64"):
        chains, fault, _ = _same_outcome(**HOSTILE[case])
        assert "descriptor buffer" in fault and len(chains) == 2  # the chains before it, then the fault
    assert _same_outcome(**HOSTILE["buffer crossing two regions"])[1] is None


def test_a_bad_buffer_first_in_the_batch_breaks_the_queue_and_takes_nothing():
    mock, q = _ring([[(1 << 40, 64, R)]] + GOOD)
    with pytest.raises(DriverFault, match="descriptor buffer"):
        q.pop_single(mock.mem, SIZE)
    assert q.broken and q.next_avail == 0 and mock.used_idx == 0
    with pytest.raises(QueueBroken):
        q.pop_single(mock.mem, SIZE, writable=True)


def test_the_batch_is_one_view_of_the_region_and_counts_like_the_general_path():
    chains = [[(0x1000 + 100 * i, 10 + i, R)] for i in range(6)]
    mock, q = _ring(chains)
    heads, lengths, offsets, buf = q.pop_single(mock.mem, 4)
    assert heads == [0, 1, 2, 3] and lengths == [10, 11, 12, 13] and len(buf) == 0x8000
    assert [bytes(buf[o:o + n]) for o, n in zip(offsets, lengths)] == [
        mock.read(0x1000 + 100 * i, 10 + i) for i in range(4)]
    assert q.stats.chains == 4 and q.stats.bytes_read == 46 and q.next_avail == 4
    assert q.pop_single(mock.mem, 8, writable=True)[0] == []  # readable chains: not this batch
    assert q.pop_single(mock.mem, 8)[0] == [4, 5]
    q.add_used_lengths(mock.mem, [5, 4, 0], [0, 0, 7])
    assert mock.take_used() == [(5, 0), (4, 0), (0, 7)]
    with pytest.raises(UsageError):
        q.add_used_lengths(mock.mem, [SIZE], [0])
    with pytest.raises(UsageError):
        q.add_used_lengths(mock.mem, [1], [1 << 32])


@pytest.mark.parametrize("order", [[3, 4, 5, 6], [6, 5, 4, 3], [3, 9, 4, 0], [15, 0, 1, 2]])
def test_consecutive_and_scattered_heads_read_the_same_descriptors(order):
    mock = MockSplitDriver(SIZE, mem=_memory(), data_addr=0x1000, base=0xFFFE)  # the indices wrap too
    q = make_device_queue(mock)
    for k, head in enumerate(order):
        mock.add_chain([(0x2000 + 64 * head, 8 + k, W)], indices=[head])
    heads, lengths, offsets, buf = q.pop_single(mock.mem, SIZE, writable=True)
    assert heads == order and lengths == [8, 9, 10, 11]
    assert offsets == [0x2000 + 64 * h for h in order]
    q.add_used_lengths(mock.mem, heads, lengths)
    assert mock.take_used() == list(zip(order, [8, 9, 10, 11]))


@pytest.mark.parametrize("order", [[3, 4, 5, 6], [6, 5, 4, 3], [3, 9, 4, 0], [15, 0, 1, 2], [7]])
def test_pop_direct_reads_consecutive_and_scattered_heads_alike(order):
    mock = MockSplitDriver(SIZE, mem=_memory(), data_addr=0x1000)
    q = make_device_queue(mock)
    for k, head in enumerate(order):
        mock.add_chain([(0x2000 + 64 * head, 8 + k, R)], indices=[head])
    heads, lengths, views = q.pop_direct(mock.mem, SIZE)
    assert heads == order and lengths == [8 + k for k in range(len(order))]
    assert [bytes(v) for v in views] == [mock.read(0x2000 + 64 * h, 8 + k) for k, h in enumerate(order)]


def test_offsets_are_relative_to_the_second_region():
    mock, q = _ring([[(0x9000 + 16 * i, 16, W)] for i in range(3)])
    heads, lengths, offsets, buf = q.pop_single(mock.mem, SIZE, writable=True)
    assert heads == [0, 1, 2] and offsets == [0x1000, 0x1010, 0x1020]
    buf[offsets[1]:offsets[1] + 4] = b"abcd"
    assert mock.read(0x9010, 4) == b"abcd"


def test_resubmitted_chains_go_first_through_the_general_path():
    mock, q = _ring(GOOD)
    q.resubmit = [3]
    assert q.pop_single(mock.mem, SIZE)[0] == [] and q.next_avail == 0
    assert q.pop_descriptor_chain(mock.mem).head_index == 3
    assert q.pop_single(mock.mem, SIZE, writable=True)[0] == [0]


def test_inflight_tracking_sees_every_pop():
    class Tracker:
        def __init__(self):
            self.popped_heads = []

        def popped(self, head):
            self.popped_heads.append(head)

    mock, q = _ring([[(0x1000 + 64 * i, 8, R)] for i in range(4)])
    q.inflight = Tracker()
    assert q.pop_single(mock.mem, SIZE)[0] == [0, 1, 2, 3]
    assert q.inflight.popped_heads == [0, 1, 2, 3]


DESC = st.one_of(
    st.tuples(st.integers(0x1000, MEM_END - 64), st.integers(0, 64), st.sampled_from([R, W])),  # good
    st.tuples(st.sampled_from([0x8000 - 4, MEM_END - 4, 1 << 40, U64 - 8]), st.integers(0, 64),
              st.sampled_from([R, W])),  # crossing, running out, outside, wrapping
    st.tuples(st.integers(0x1000, MEM_END - 64), st.integers(0, 64),
              st.sampled_from([F_INDIRECT, F_WRITE | F_INDIRECT, 0x80])),  # other flags
)
CHAIN = st.one_of(st.lists(DESC, min_size=1, max_size=1), st.lists(DESC, min_size=1, max_size=1),
                  st.lists(DESC, min_size=2, max_size=3))


@settings(max_examples=EXAMPLES, deadline=None)
@given(chains=st.lists(CHAIN, max_size=6),
       bad_heads=st.lists(st.tuples(st.integers(0, 5), st.integers(SIZE, 0xFFFF)), max_size=1),
       avail_jump=st.sampled_from([0, 0, 0, SIZE + 1]), limit=st.integers(1, SIZE),
       indirect=st.booleans())
def test_batch_and_general_paths_agree_on_random_rings(chains, bad_heads, avail_jump, limit, indirect):
    """The batch path with the general path's fallback hands out the same chains with the same
    bytes, fills the same used ring and ends in the same fault as the general path alone."""
    bad_heads = [(pos, head) for pos, head in bad_heads if pos < len(chains)]
    _same_outcome(chains, bad_heads, avail_jump, limit, indirect)


# --- driver side ----------------------------------------------------------------------------------

def _driver(size=SIZE, event_idx=False):
    mem = GuestMemory.anonymous(1 << 16)
    layout = SplitRingLayout.contiguous(0, size)
    drv = SplitDriverQueue(layout, event_idx=event_idx)
    drv.setup(mem)
    dev = SplitDeviceQueue(size)
    dev.set_features(event_idx, False)
    dev.set_addresses(layout.desc_table, layout.avail_ring, layout.used_ring)
    dev.activate(mem)
    return mem, drv, dev


def _ring_bytes(mem, drv):
    lay = drv.layout
    return mem.read(lay.desc_table, lay.end - lay.desc_table)


def _state(drv):
    return (drv.free_head, drv.num_free, drv.outstanding, drv.avail_idx_shadow, drv.last_used,
            list(drv._next), list(drv._tokens), list(drv._in_len), list(drv._chain_len))


def _complete(mem, dev, order, lens):
    """The device pops everything and returns the chains in ``order`` (a permutation key) with
    ``lens(chain)`` bytes written."""
    chains = dev.pop_many(mem)
    chains.sort(key=lambda c: order(c.head_index))
    dev.add_used_batch(mem, [(c.head_index, lens(c)) for c in chains])


@settings(max_examples=max(1, EXAMPLES // 2), deadline=None)
@given(rounds=st.lists(st.tuples(st.integers(1, SIZE), st.booleans(), st.integers(0, 3),
                                 st.sampled_from(["fifo", "lifo", "odd"])), min_size=1, max_size=8),
       event_idx=st.booleans())
def test_add_single_writes_what_add_writes_and_collect_returns_what_get_bufs_returns(rounds, event_idx):
    """Two rings, one driven per chain (add, get_bufs), one by batch (add_single, collect) but with
    the per-chain ring's history replayed first so both free lists agree: every round the batch add
    writes the same ring bytes and leaves the same driver state; collect returns the same tokens
    and lengths."""
    mem_a, drv_a, dev_a = _driver(event_idx=event_idx)
    mem_b, drv_b, dev_b = _driver(event_idx=event_idx)
    orders = {"fifo": lambda h: 0, "lifo": lambda h: -h, "odd": lambda h: (h % 2, h)}
    for step, (n, writable, shrink, how) in enumerate(rounds):
        addrs = [0x4000 + 512 * ((step + i) % 64) for i in range(n)]
        lengths = [(64 * i + step) % 300 for i in range(n)]
        tokens = [(step, i) for i in range(n)]
        for a, ln, t in zip(addrs, lengths, tokens):
            drv_a.add(mem_a, [] if writable else [(a, ln)], [(a, ln)] if writable else [], t)
        heads = drv_b.add_single(mem_b, addrs, lengths, tokens, writable=writable)
        assert len(heads) == n
        assert _ring_bytes(mem_b, drv_b) == _ring_bytes(mem_a, drv_a)
        assert _state(drv_b) == _state(drv_a)
        for mem, dev in ((mem_a, dev_a), (mem_b, dev_b)):
            _complete(mem, dev, orders[how], lambda c: max(0, c.writable_len - shrink))
        got_a, got_b = drv_a.get_bufs(mem_a), drv_b.collect(mem_b)
        assert got_b == got_a and len(got_a) == n
        assert drv_b.num_free == drv_a.num_free == SIZE and drv_b.outstanding == 0
        assert sorted(_free_list(drv_b)) == sorted(_free_list(drv_a)) == list(range(SIZE))
        # replay: the batch ring takes the per-chain ring's free list for the next round
        drv_b.free_head, drv_b._next = drv_a.free_head, list(drv_a._next)


def _free_list(drv):
    out, idx = [], drv.free_head
    for _ in range(drv.num_free):
        out.append(idx)
        idx = drv._next[idx]
    return out


def test_collect_takes_its_own_free_list_in_used_order():
    mem, drv, dev = _driver()
    for _ in range(5):
        drv.add_single(mem, [0x4000] * 10, [8] * 10, list(range(1, 11)), writable=True)
        _complete(mem, dev, lambda h: 0, lambda c: c.writable_len)
        assert drv.collect(mem) == [(t, 8) for t in range(1, 11)]
        assert _free_list(drv)[:10] == list(range(10)) and drv.num_free == SIZE


def test_add_single_checks_before_writing():
    mem, drv, dev = _driver()
    before = _ring_bytes(mem, drv)
    for addrs, lengths, tokens, error in (
            ([1], [1], [None], UsageError), ([-1], [1], [1], UsageError), ([1], [1 << 32], [1], UsageError),
            ([U64], [1], [1], UsageError), ([1, 2], [1], [1, 2], UsageError),
            ([1] * (SIZE + 1), [1] * (SIZE + 1), list(range(1, SIZE + 2)), QueueFull)):
        with pytest.raises(error):
            drv.add_single(mem, addrs, lengths, tokens)
    assert _ring_bytes(mem, drv) == before and drv.num_free == SIZE
    assert drv.add_single(mem, [], [], []) == []


def test_add_single_wraps_the_avail_ring():
    mem, drv, dev = _driver()
    for step in range(7):
        drv.add_single(mem, [0x4000 + i for i in range(5)], [4] * 5, [(step, i) for i in range(5)])
        chains = dev.pop_many(mem)
        assert [bytes(c.readable[0]) for c in chains] == [mem.read(0x4000 + i, 4) for i in range(5)]
        dev.add_used_batch(mem, [(c.head_index, 0) for c in chains])
        assert drv.collect(mem) == [((step, i), 0) for i in range(5)]


HOSTILE_USED = {
    "id out of range": lambda mem, drv, entries: entries.__setitem__(1, (SIZE + 2, 0)),
    "id not outstanding": lambda mem, drv, entries: entries.__setitem__(2, (SIZE - 1, 0)),
    "id twice": lambda mem, drv, entries: entries.__setitem__(2, entries[0]),
    "length above the buffer": lambda mem, drv, entries: entries.__setitem__(1, (entries[1][0], 999)),
    "length on a readable buffer": lambda mem, drv, entries: entries.__setitem__(3, (entries[3][0], 5)),
    "all as written": lambda mem, drv, entries: None,
}


@pytest.mark.parametrize("case", HOSTILE_USED, ids=list(HOSTILE_USED))
@pytest.mark.parametrize("clamp", [False, True])
def test_a_lying_used_ring_gets_the_same_answer_from_collect_and_get_bufs(case, clamp):
    outcomes = []
    for collect in (False, True):
        mem, drv, dev = _driver()
        drv.clamp_used_len = clamp
        drv.add_single(mem, [0x4000] * 3, [64] * 3, [1, 2, 3], writable=True)
        drv.add_single(mem, [0x4000], [64], [4])
        entries = [(c.head_index, c.writable_len) for c in dev.pop_many(mem)]
        HOSTILE_USED[case](mem, drv, entries)
        used = drv.layout.used_ring
        for slot, (head, length) in enumerate(entries):  # as a lying device writes them
            mem.store32(used + 4 + 8 * slot, head)
            mem.store32(used + 8 + 8 * slot, length)
        mem.store16(used + 2, len(entries))
        try:
            got = drv.collect(mem) if collect else drv.get_bufs(mem)
            outcomes.append(("ok", got, drv.num_free, sorted(_free_list(drv))))
        except DeviceFault as exc:
            outcomes.append(("fault", str(exc), drv.broken))
    assert outcomes[0] == outcomes[1]


def test_a_used_idx_jump_breaks_the_queue_on_collect():
    mem, drv, dev = _driver()
    drv.add_single(mem, [0x4000], [8], [1])
    mem.store16(drv.layout.used_ring + 2, SIZE + 1)
    with pytest.raises(DeviceFault, match="jumped"):
        drv.collect(mem)
    with pytest.raises(QueueBroken):
        drv.collect(mem)


def test_in_order_rings_add_and_collect_one_by_one():
    mem = GuestMemory.anonymous(1 << 16)
    layout = SplitRingLayout.contiguous(0, SIZE)
    drv = SplitDriverQueue(layout, in_order=True)
    drv.setup(mem)
    dev = SplitDeviceQueue(SIZE)
    dev.set_addresses(layout.desc_table, layout.avail_ring, layout.used_ring)
    dev.activate(mem)
    for step in range(3):
        heads = drv.add_single(mem, [0x4000] * 6, [8] * 6, [(step, i) for i in range(6)], writable=True)
        assert heads == [(6 * step + i) % SIZE for i in range(6)]
        dev.add_used_batch(mem, [(c.head_index, 8) for c in dev.pop_many(mem)])
        assert drv.collect(mem) == [((step, i), 8) for i in range(6)]
