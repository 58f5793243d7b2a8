"""The packed ring's device-side batch path, ``PackedDeviceQueue.pop_single`` and
``add_used_lengths``, against the general path (``pop_descriptor_chain``, ``add_used_batch``): the
same chains, bytes, lengths, used descriptors and faults, on any ring bytes."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirtio.errors import DriverFault, QueueBroken, QueueFull, UsageError
from pyvirtio.memory import GuestMemory
from pyvirtio.spec import ring
from pyvirtio.virtq.packed_device import PackedDeviceQueue, leading_run, store_flags
from pyvirtio.virtq.packed_driver import PackedDriverQueue, PackedRingLayout

EXAMPLES = int(os.environ.get("PYVIRTIO_HYPOTHESIS_EXAMPLES", "300"))
SIZE = 8
RING = 0x1000
# Two adjacent regions (a buffer may cross from one into the other), then a hole.
REGIONS = ((0, 0x10000), (0x10000, 0x10000))
MEM_END = 0x20000
U64 = 1 << 64
AV, US = ring.VIRTQ_DESC_F_AVAIL, ring.VIRTQ_DESC_F_USED
W, NX, IND = ring.VIRTQ_DESC_F_WRITE, ring.VIRTQ_DESC_F_NEXT, ring.VIRTQ_DESC_F_INDIRECT


def _queue(descs, pos=0, wrap=1, indirect=False, size=SIZE):
    """A device queue over a packed ring holding the raw ``descs`` (addr, len, id, flags)."""
    mem = GuestMemory.from_buffers(*((gpa, bytearray(n)) for gpa, n in REGIONS))
    mem.write(0x4000, bytes(i * 7 % 251 for i in range(MEM_END - 0x4000)))  # recognisable bytes
    for i, desc in enumerate(descs):
        mem.write(RING + 16 * i, ring.PVIRTQ_DESC.pack(*desc))
    dev = PackedDeviceQueue(size)
    dev.set_addresses(RING, RING + 16 * size, RING + 16 * size + 4)
    dev.set_features(False, indirect)
    dev.activate(mem)
    dev.set_base(pos | wrap << 15)
    return mem, dev


def _record(chain):
    return chain.head_index, b"".join(bytes(v) for v in chain.readable), chain.writable_len


def drain_general(mem, dev):
    out, done, fault = [], [], None
    try:
        while (chain := dev.pop_descriptor_chain(mem)) is not None:
            out.append(_record(chain))
            done.append((chain.head_index, chain.writable_len))
    except DriverFault as exc:
        fault = str(exc)
    if done and not dev.broken:
        dev.add_used_batch(mem, done)
    return out, fault


def drain_batch(mem, dev, limit):
    """Readable, then writable batches through pop_single, anything else through
    pop_descriptor_chain; completed together at the end, as drain_general completes them."""
    out, heads, lens, fault = [], [], [], None
    try:
        while True:
            ids, lengths, offsets, buf = dev.pop_single(mem, limit)
            if ids:
                out += [(i, bytes(buf[o:o + n]), 0) for i, n, o in zip(ids, lengths, offsets)]
                heads += ids
                lens += [0] * len(ids)
                continue
            ids, lengths, offsets, buf = dev.pop_single(mem, limit, writable=True)
            if ids:
                out += [(i, b"", n) for i, n in zip(ids, lengths)]
                heads += ids
                lens += lengths
                continue
            chain = dev.pop_descriptor_chain(mem)
            if chain is None:
                break
            out.append(_record(chain))
            heads.append(chain.head_index)
            lens.append(chain.writable_len)
    except DriverFault as exc:
        fault = str(exc)
    if heads and not dev.broken:
        dev.add_used_lengths(mem, heads, lens)
    return out, fault


def _same_outcome(descs, pos=0, wrap=1, limit=SIZE, indirect=False):
    mem_g, dev_g = _queue(descs, pos, wrap, indirect)
    mem_b, dev_b = _queue(descs, pos, wrap, indirect)
    general, batch = drain_general(mem_g, dev_g), drain_batch(mem_b, dev_b, limit)
    assert batch == general
    assert dev_b.broken == dev_g.broken == (general[1] is not None)
    if not dev_g.broken:
        assert mem_b.read(RING, 16 * SIZE) == mem_g.read(RING, 16 * SIZE)  # the same used descriptors
        assert dev_b.get_base() == dev_g.get_base() and dev_b.in_flight() == dev_g.in_flight() == 0
    else:
        with pytest.raises(QueueBroken):
            dev_b.pop_single(mem_b, limit)
    assert (dev_b.stats.chains, dev_b.stats.bytes_read, dev_b.stats.bytes_written) == (
        dev_g.stats.chains, dev_g.stats.bytes_read, dev_g.stats.bytes_written)
    return general


GOOD = [(0x4000 + 64 * i, 16 + i, i, AV | (W if i % 3 == 0 else 0)) for i in range(5)]

HOSTILE = {
    "buffer outside memory": GOOD[:2] + [(1 << 40, 64, 7, AV)] + GOOD[2:4],
    "writable buffer running past memory": GOOD[:3] + [(MEM_END - 8, 64, 7, AV | W)],
    "address + length wraps 2**64": GOOD[:1] + [(U64 - 16, 64, 7, AV | W)],
    "id already in flight": GOOD[:3] + [(0x5000, 8, 1, AV)],
    "id repeated first": [(0x5000, 8, 3, AV), (0x5000, 8, 3, AV)],
    "bad buffer and id in flight": GOOD[:2] + [(1 << 40, 8, 1, AV)],
    "indirect without the feature": GOOD[:2] + [(0x6000, 32, 7, AV | IND)],
    "chain not available further on": GOOD[:2] + [(0x6000, 8, 7, AV | NX), (0x6000, 8, 7, US)],
    "buffer crossing two regions": GOOD[:2] + [(0x10000 - 8, 64, 7, AV)] + GOOD[2:4],
    "zero-length buffer outside memory": GOOD[:2] + [(1 << 40, 0, 7, AV | W)] + GOOD[2:4],
    "buffers in the second region": [(0x18000 + 64 * i, 8, i, AV) for i in range(4)] + GOOD[4:],
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
@pytest.mark.parametrize("limit", [1, 3, SIZE])
def test_hostile_rings_end_as_on_the_general_path(case, limit):
    _same_outcome(HOSTILE[case], limit=limit)


def test_the_faults_are_the_general_paths():
    chains, fault = _same_outcome(HOSTILE["buffer outside memory"])
    assert "descriptor buffer" in fault and len(chains) == 2
    chains, fault = _same_outcome(HOSTILE["id already in flight"])
    assert "already in flight" in fault and len(chains) == 3
    assert "descriptor buffer" in _same_outcome(HOSTILE["bad buffer and id in flight"])[1]
    assert _same_outcome(HOSTILE["buffer crossing two regions"])[1] is None


def test_a_batch_across_the_rings_end_and_its_used_descriptors():
    lap = [(0x4000 + 64 * i, 8 + i, 10 + i, AV if i >= 5 else US) for i in range(SIZE)]  # 5..7, then 0..4
    mem, dev = _queue(lap, pos=5, wrap=1)
    ids, lengths, offsets, buf = dev.pop_single(mem, SIZE)
    assert ids == [15, 16, 17, 10, 11, 12, 13, 14] and dev.get_base() & 0xFFFF == 5  # wrapped, flipped
    assert [bytes(buf[o:o + n]) for o, n in zip(offsets, lengths)] == [
        mem.read(0x4000 + 64 * i, 8 + i) for i in (5, 6, 7, 0, 1, 2, 3, 4)]
    dev.add_used_lengths(mem, ids, list(range(8)))
    for k, (buf_id, length) in enumerate(zip(ids, range(8))):
        _, used_len, used_id, flags = ring.PVIRTQ_DESC.unpack_from(mem.read(RING + 16 * ((5 + k) % SIZE), 16))
        assert (used_id, used_len) == (buf_id, length)
        assert flags == (AV | US if k < 3 else 0)  # the used wrap counter flips at the ring's end
    assert dev.in_flight() == 0 and dev.stats.bytes_written == sum(range(8))
    with pytest.raises(UsageError):
        dev.add_used_lengths(mem, [10], [0])  # not in flight
    with pytest.raises(UsageError):
        dev.add_used_lengths(mem, [10], [1 << 32])


RAW_DESC = st.tuples(
    st.one_of(*[st.integers(0x4000, MEM_END - 0x100)] * 4, st.sampled_from([0x10000 - 8, MEM_END - 8, 1 << 40, U64 - 8])),
    st.integers(0, 64),
    st.integers(0, 5),
    st.one_of(*[st.sampled_from([AV, US, AV | W, US | W])] * 5,
              st.sampled_from([AV | US, 0, AV | NX, US | NX, AV | IND, AV | W | NX]), st.integers(0, 0xFFFF)))


@given(descs=st.lists(RAW_DESC, min_size=SIZE, max_size=SIZE), pos=st.integers(0, SIZE - 1),
       wrap=st.integers(0, 1), limit=st.integers(1, SIZE + 2), indirect=st.booleans())
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_batch_and_general_paths_agree_on_any_ring(descs, pos, wrap, limit, indirect):
    """Any descriptor ring: the batch path with the general path's fallback hands out the same
    chains with the same bytes, writes the same used descriptors and ends in the same fault as
    the general path alone."""
    _same_outcome(descs, pos, wrap, limit, indirect)


@pytest.mark.parametrize("in_order", [False, True])
def test_a_driver_round_trip_through_many_wraps(in_order):
    mem = GuestMemory.anonymous(1 << 20)
    lay = PackedRingLayout.contiguous(0x1000, 5)
    drv = PackedDriverQueue(lay, in_order=in_order)
    drv.setup(mem)
    dev = PackedDeviceQueue(8)
    dev.set_size(5)
    dev.set_addresses(lay.desc_table, lay.avail_ring, lay.used_ring)
    dev.in_order = in_order
    dev.activate(mem)
    for rnd in range(9):  # 9 x 4 through a ring of 5
        for i in range(4):
            drv.add(mem, [], [(0x8000 + 64 * i, 32)], (rnd, i))
        ids, lengths, offsets, buf = dev.pop_single(mem, 8, writable=True)
        assert lengths == [32] * 4
        for i, off in enumerate(offsets):
            buf[off:off + 2] = bytes([rnd, i])
        dev.add_used_lengths(mem, ids, [2, 32, 2, 32] if not in_order else [32, 32, 32, 2])
        got = drv.get_bufs(mem)
        assert [t for t, _ in got] == [(rnd, i) for i in range(4)]
        assert [n for _, n in got] == ([2, 32, 2, 32] if not in_order else [32, 32, 32, 2])
        assert [mem.read(0x8000 + 64 * i, 2) for i in range(4)] == [bytes([rnd, i]) for i in range(4)]


# --- driver side ----------------------------------------------------------------------------------

def _driver(size=SIZE, event_idx=False, in_order=False):
    mem = GuestMemory.anonymous(1 << 16)
    lay = PackedRingLayout.contiguous(0x1000, size)
    drv = PackedDriverQueue(lay, event_idx=event_idx, in_order=in_order)
    drv.setup(mem)
    dev = PackedDeviceQueue(size)
    dev.set_addresses(lay.desc_table, lay.avail_ring, lay.used_ring)
    dev.set_features(event_idx, False)
    dev.in_order = in_order
    dev.activate(mem)
    return mem, drv, dev


def _state(drv):
    return (drv.next_avail, drv.avail_wrap, drv.last_used, drv.used_wrap, drv.num_free, drv.outstanding,
            list(drv._free_ids), list(drv._tokens), list(drv._count), list(drv._in_len), list(drv._order),
            drv._added)


def _complete(mem, dev, how, lens):
    chains = dev.pop_many(mem)
    if how == "lifo":
        chains.reverse()
    elif how == "odd":
        chains.sort(key=lambda c: (c.head_index % 2, c.head_index))
    dev.add_used_batch(mem, [(c.head_index, lens(c)) for c in chains])


@settings(max_examples=max(1, EXAMPLES // 2), deadline=None)
@given(rounds=st.lists(st.tuples(st.integers(1, SIZE), st.booleans(), st.integers(0, 3),
                                 st.sampled_from(["fifo", "lifo", "odd"])), min_size=1, max_size=8),
       event_idx=st.booleans(), in_order=st.booleans(), chained=st.booleans())
def test_add_single_writes_what_add_writes_and_collect_returns_what_get_bufs_returns(
        rounds, event_idx, in_order, chained):
    """Two rings, one driven per chain (add, get_bufs), one by batch (add_single, collect), with
    the per-chain ring's free ids replayed into the batch one each round: every batch add writes
    the same ring bytes and leaves the same driver state as the adds; collect returns what
    get_bufs returns (a chain of two descriptors now and then sends collect to get_bufs)."""
    mem_a, drv_a, dev_a = _driver(event_idx=event_idx, in_order=in_order)
    mem_b, drv_b, dev_b = _driver(event_idx=event_idx, in_order=in_order)
    for step, (n, writable, shrink, how) in enumerate(rounds):
        if in_order:
            how = "fifo"
        addrs = [0x4000 + 512 * ((step + i) % 16) for i in range(n)]
        lengths = [(64 * i + step) % 300 for i in range(n)]
        tokens = [(step, i) for i in range(n)]
        extra = chained and step % 3 == 1 and n < SIZE - 1
        for mem, drv in ((mem_a, drv_a), (mem_b, drv_b)):
            if extra:  # a chain of two descriptors first, made available by add on both rings
                drv.add(mem, [(0x3000, 4)], [(0x3100, 8)], ("two", step))
        for a, ln, t in zip(addrs, lengths, tokens):
            drv_a.add(mem_a, [] if writable else [(a, ln)], [(a, ln)] if writable else [], t)
        assert len(drv_b.add_single(mem_b, addrs, lengths, tokens, writable=writable)) == n
        assert mem_b.read(0x1000, 16 * SIZE + 8) == mem_a.read(0x1000, 16 * SIZE + 8)
        assert _state(drv_b) == _state(drv_a)
        for mem, dev in ((mem_a, dev_a), (mem_b, dev_b)):
            _complete(mem, dev, how, lambda c: max(0, c.writable_len - shrink))
        got_a, got_b = drv_a.get_bufs(mem_a), drv_b.collect(mem_b)
        assert got_b == got_a and len(got_a) == n + extra
        assert drv_b.num_free == drv_a.num_free == SIZE and drv_b.outstanding == 0
        assert sorted(drv_b._free_ids) == sorted(drv_a._free_ids) == list(range(SIZE))
        drv_b._free_ids = list(drv_a._free_ids)  # the next round starts from the same free ids
        assert _state(drv_b) == _state(drv_a)


def test_collect_frees_ids_for_the_next_batch_in_order():
    mem, drv, dev = _driver()
    for rnd in range(7):  # 7 x 5 through a ring of 8: wraps
        assert drv.add_single(mem, [0x4000] * 5, [8] * 5, [(rnd, i) for i in range(5)], writable=True) == [0, 1, 2, 3, 4]
        ids, lengths, offsets, buf = dev.pop_single(mem, SIZE, writable=True)
        dev.add_used_lengths(mem, ids, [8, 7, 6, 5, 4])
        assert drv.collect(mem) == [((rnd, i), 8 - i) for i in range(5)]


def test_add_single_checks_before_writing():
    mem, drv, dev = _driver()
    before = mem.read(0x1000, 16 * SIZE + 8)
    for addrs, lengths, tokens, error in (
            ([1], [1], [None], UsageError), ([-1], [1], [1], UsageError), ([1], [1 << 32], [1], UsageError),
            ([U64], [1], [1], UsageError), ([1, 2], [1], [1, 2], UsageError),
            ([1] * (SIZE + 1), [1] * (SIZE + 1), list(range(1, SIZE + 2)), QueueFull)):
        with pytest.raises(error):
            drv.add_single(mem, addrs, lengths, tokens)
    assert mem.read(0x1000, 16 * SIZE + 8) == before and drv.num_free == SIZE
    assert drv.add_single(mem, [], [], []) == []


HOSTILE_USED = {
    "id out of range": lambda entries: entries.__setitem__(1, (SIZE + 2, 0)),
    "id not in flight": lambda entries: entries.__setitem__(2, (SIZE - 1, 0)),
    "id twice": lambda entries: entries.__setitem__(2, entries[0]),
    "length above the buffer": lambda entries: entries.__setitem__(1, (entries[1][0], 999)),
    "length on a readable buffer": lambda entries: entries.__setitem__(3, (entries[3][0], 5)),
    "all as written": lambda entries: None,
}


@pytest.mark.parametrize("case", HOSTILE_USED, ids=list(HOSTILE_USED))
@pytest.mark.parametrize("clamp", [False, True])
def test_a_lying_device_gets_the_same_answer_from_collect_and_get_bufs(case, clamp):
    outcomes = []
    for collect in (False, True):
        mem, drv, dev = _driver()
        drv.clamp_used_len = clamp
        drv.add_single(mem, [0x4000] * 3, [64] * 3, [1, 2, 3], writable=True)
        drv.add_single(mem, [0x4000], [64], [4])
        entries = [(i, 64 if i < 3 else 0) for i in range(4)]
        HOSTILE_USED[case](entries)
        for pos, (buf_id, length) in enumerate(entries):  # as a lying device writes them
            desc = mem.view(0x1000 + 16 * pos, 16)
            ring.PVIRTQ_DESC.pack_into(desc, 0, 0, length, buf_id, AV | US)
        try:
            got = drv.collect(mem) if collect else drv.get_bufs(mem)
            outcomes.append(("ok", got, drv.num_free, sorted(drv._free_ids)))
        except Exception as exc:  # noqa: BLE001 - compared below: the same type and message
            outcomes.append((type(exc).__name__, str(exc), drv.broken))
    assert outcomes[0] == outcomes[1]


@given(words=st.lists(st.sampled_from([AV, US, AV | US, 0, AV | W, 0x0180]), max_size=40),
       expected=st.sampled_from([AV, US, AV | W, 0]))
def test_leading_run_counts_the_leading_words_equal_to_expected(words, expected):
    table = memoryview(bytearray(16 * max(1, len(words)))).cast("H")
    for i, w in enumerate(words):
        table[8 * i + 7] = w
        table[8 * i + 6] = expected  # the neighbouring field must not count
    naive = next((i for i, w in enumerate(words) if w != expected), len(words))
    assert leading_run(table[7:8 * len(words):8], expected) == naive


@given(first=st.integers(0, 7), count=st.integers(0, 8), value=st.sampled_from([AV, US, AV | US, 0, AV | W]))
def test_store_flags_writes_only_the_flags_words_of_the_positions_asked(first, count, value):
    count = min(count, SIZE - first)
    before = bytes(range(256)) * (16 * SIZE // 256) or bytes(16 * SIZE)
    buf = bytearray(before[:16 * SIZE])
    store_flags(memoryview(buf).cast("H"), first, count, value)
    expect = bytearray(before[:16 * SIZE])
    for pos in range(first, first + count):
        expect[16 * pos + 14:16 * pos + 16] = value.to_bytes(2, "little")
    assert buf == expect


def test_no_flags_word_is_published_by_a_strided_slice_store():
    """The packed ring's flags word is written by both sides; a strided memoryview slice store
    copies each 2-byte item with glibc's memcpy (a 16-bit store, then the first byte again), so
    a peer's write between the two is lost — DPDK's transmit ring stalled on it.  Every flags
    store goes through ``store_flags`` (one store per word) or an item assignment."""
    import re
    from pathlib import Path

    import pyvirtio
    root = Path(pyvirtio.__file__).parent
    strided_flags_store = re.compile(r"\[(?:[^\]]*\+)?\s*7\s*:[^\]]*:\s*8\s*\]\s*=(?!=)")
    offenders = [f"{path.relative_to(root)}:{n}" for path in root.rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if strided_flags_store.search(line)]
    assert not offenders, offenders
