"""Property tests for the split virtqueue.

1. ``RingPair``: a SplitDriverQueue and a SplitDeviceQueue over one memory, driven by random
   sequences of add / kick / pop / complete / get / suppression calls.  A model kept here, from
   the ring fields read raw and from indices counted here, must agree with every answer: tokens
   come back exactly once with what the device wrote, the free list is conserved, and every
   notification decision is the brute-force "did the index pass the event" over the u16 circle.
2. A fuzzer: arbitrary bytes for the whole ring plus random device-side API calls.  Invariant:
   the only errors are DriverFault (stricter than "any VirtioError": a hostile ring is the
   driver's fault), which breaks the queue, and QueueBroken after it; a pop reads a bounded
   number of descriptors (it cannot loop).

``PYVIRTIO_HYPOTHESIS_EXAMPLES`` sets the example count (default 300; CI runs thousands).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections import deque

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pyvirtio.errors import DriverFault, QueueBroken, QueueFull, UsageError
from pyvirtio.memory import GuestMemory
from pyvirtio.spec import ring
from pyvirtio.testing import MockSplitDriver, make_device_queue
from pyvirtio.virtq import SplitDeviceQueue, SplitDriverQueue, SplitRingLayout
from pyvirtio.virtq import split_device

EXAMPLES = int(os.environ.get("PYVIRTIO_HYPOTHESIS_EXAMPLES", "300"))
SIZES = [1, 2, 4, 8, 16, 32, 64]
MAX_INDIRECT = 4
INDIRECT_AREA = 0x8000
DATA = 0x10000
MEM_SIZE = 0x80000


def crossed(target: int, new: int, old: int) -> bool:
    """Brute force: step the index from ``old`` to ``new`` and see whether it held ``target``."""
    idx = old
    while idx != new:
        if idx == target:
            return True
        idx = (idx + 1) & 0xFFFF
    return False


class RingPair(RuleBasedStateMachine):
    """Driver and device over one ring; the model lives in plain Python containers."""

    @initialize(size=st.sampled_from(SIZES), event_idx=st.booleans(), indirect=st.booleans(),
                base=st.one_of(st.just(0), st.integers(0xFFF0, 0xFFFF), st.integers(0, 0xFFFF)))
    def setup(self, size, event_idx, indirect, base):
        self.size, self.event_idx, self.indirect = size, event_idx, indirect
        self.mem = mem = GuestMemory.anonymous(MEM_SIZE)
        self.layout = lay = SplitRingLayout.contiguous(0, size)
        assert lay.end <= INDIRECT_AREA
        self.drv = SplitDriverQueue(lay, event_idx=event_idx,
                                    indirect_area=INDIRECT_AREA if indirect else None,
                                    max_indirect=MAX_INDIRECT if indirect else 0)
        self.drv.setup(mem)
        self.dev = SplitDeviceQueue(64)
        self.dev.set_size(size)
        self.dev.set_addresses(lay.desc_table, lay.avail_ring, lay.used_ring)
        self.dev.set_features(event_idx=event_idx, indirect=indirect)
        self.dev.activate(mem)
        # Start both sides at ``base`` (a ring handed over mid-life), to cross the u16 wrap soon.
        self.drv.avail_idx_shadow = self.drv.kicked_avail = self.drv.last_used = base
        mem.store16(lay.avail_ring + 2, base)
        mem.store16(lay.used_ring + 2, base)
        self.dev.set_base(base)
        self.dev.sync_used_from_ring(mem)
        # the model
        self.avail = self.kicked = self.next_used = self.last_used = base
        self.next_avail = base
        self.signalled = base  # used idx at the last decision
        self.signalled_valid = False  # no decision yet: the first one with EVENT_IDX says yes
        self.cursor = DATA
        self.tokens = 0
        self.outstanding = {}  # token -> dict(head, ndesc, out, in_bufs, in_len)
        self.by_head = {}  # head -> token
        self.avail_q = deque()  # heads made available, not popped
        self.popped = []  # chains popped, not completed
        self.used_q = deque()  # (head, len) completed, not collected
        self.returned = set()
        self.cb_enabled = True

    # --- raw ring fields --------------------------------------------------------------------

    def raw_used_event(self):
        return self.mem.load16(self.layout.avail_ring + 4 + 2 * self.size)

    def raw_avail_event(self):
        return self.mem.load16(self.layout.used_ring + 4 + 8 * self.size)

    def raw_avail_flags(self):
        return self.mem.load16(self.layout.avail_ring)

    def raw_used_flags(self):
        return self.mem.load16(self.layout.used_ring)

    def _alloc(self, n):
        addr = self.cursor
        self.cursor += (n + 15) & ~15
        assert self.cursor < MEM_SIZE
        return addr

    # --- driver -------------------------------------------------------------------------------

    @rule(outs=st.lists(st.integers(1, 64), max_size=3), ins=st.lists(st.integers(0, 64), max_size=3))
    def add(self, outs, ins):
        token = self.tokens
        out_bufs, in_bufs = [], []
        for n in outs:
            addr = self._alloc(n)
            self.mem.write(addr, bytes((token + k) & 0xFF for k in range(n)))
            out_bufs.append((addr, n))
        for n in ins:
            in_bufs.append((self._alloc(n), n))
        total = len(outs) + len(ins)
        free = self.drv.num_free
        if total == 0:
            with pytest.raises(UsageError):
                self.drv.add(self.mem, out_bufs, in_bufs, token)
            return
        ndesc = 1 if 1 < total <= self.drv.max_indirect and free >= 1 else total
        if ndesc > free:
            with pytest.raises(QueueFull):
                self.drv.add(self.mem, out_bufs, in_bufs, token)
            assert self.drv.num_free == free
            event("QueueFull")
            return
        head = self.drv.add(self.mem, out_bufs, in_bufs, token)
        self.tokens += 1
        assert 0 <= head < self.size and head not in self.by_head
        assert self.drv.num_free == free - ndesc
        self.outstanding[token] = dict(head=head, ndesc=ndesc, out=b"".join(
            self.mem.read(a, n) for a, n in out_bufs), in_bufs=in_bufs, in_len=sum(ins))
        self.by_head[head] = token
        self.avail_q.append(head)
        self.avail = (self.avail + 1) & 0xFFFF

    @rule()
    def kick_prepare(self):
        old, new = self.kicked, self.avail
        self.kicked = new
        if old == new:
            expected = False
        elif self.event_idx:
            expected = crossed(self.raw_avail_event(), new, old)
        else:
            expected = not self.raw_used_flags() & ring.VIRTQ_USED_F_NO_NOTIFY
        assert self.drv.kick_prepare(self.mem) == expected
        event(f"kick_prepare -> {expected} (event_idx={self.event_idx})")

    @rule()
    def get_buf(self):
        got = self.drv.get_buf(self.mem)
        if not self.used_q:
            assert got is None
            return
        head, length = self.used_q.popleft()
        token = self.by_head.pop(head)
        assert got == (token, length)
        assert token not in self.returned
        self.returned.add(token)
        info = self.outstanding.pop(token)
        assert length <= info["in_len"]
        # what the device wrote is there
        written = b"".join(self.mem.read(a, n) for a, n in info["in_bufs"])[:length]
        assert written == bytes((~token + k) & 0xFF for k in range(length))
        self.last_used = (self.last_used + 1) & 0xFFFF
        if self.last_used == 0:
            event("used index wrapped")
        if self.event_idx and self.cb_enabled:
            assert self.raw_used_event() == self.last_used

    @rule(enable=st.booleans())
    def driver_cb(self, enable):
        if enable:
            assert self.drv.enable_cb(self.mem) == bool(self.used_q)
            if self.event_idx:
                assert self.raw_used_event() == self.last_used
            else:
                assert self.raw_avail_flags() == 0
        else:
            self.drv.disable_cb(self.mem)
            if self.event_idx:
                assert self.raw_used_event() == (self.last_used + 0x8000) & 0xFFFF
            else:
                assert self.raw_avail_flags() == ring.VIRTQ_AVAIL_F_NO_INTERRUPT
        self.cb_enabled = enable

    # --- device -------------------------------------------------------------------------------

    def _check_popped(self, chain):
        expected_head = self.avail_q.popleft()
        assert chain.head_index == expected_head
        info = self.outstanding[self.by_head[chain.head_index]]
        assert chain.read() == info["out"]
        assert chain.writable_len == info["in_len"]
        self.next_avail = (self.next_avail + 1) & 0xFFFF

    @rule(k=st.integers(1, 8))
    def device_pop(self, k):
        chains = self.dev.pop_many(self.mem, limit=k)
        assert len(chains) == min(k, len(self.avail_q))
        for chain in chains:
            self._check_popped(chain)
        self.popped.extend(chains)

    def _written(self, chain, n):
        token = self.by_head[chain.head_index]
        return chain.write(bytes((~token + k) & 0xFF for k in range(n)))

    @precondition(lambda self: self.popped)
    @rule(data=st.data(), batch=st.booleans())
    def device_complete(self, data, batch):
        picks = data.draw(st.lists(st.integers(0, len(self.popped) - 1), min_size=1, unique=True))
        done = []
        for i in picks:
            chain = self.popped[i]
            n = data.draw(st.integers(0, chain.writable_len))
            done.append((chain.head_index, self._written(chain, n)))
        self.popped = [c for i, c in enumerate(self.popped) if i not in picks]
        if batch:
            self.dev.add_used_batch(self.mem, done)
        else:
            for head, n in done:
                self.dev.add_used(self.mem, head, n)
        self.used_q.extend(done)
        self.next_used = (self.next_used + len(done)) & 0xFFFF

    def _expect_notify(self):
        new, old = self.next_used, self.signalled
        if old == new:
            return False
        self.signalled = new
        if self.event_idx:
            first, self.signalled_valid = not self.signalled_valid, True
            return True if first else crossed(self.raw_used_event(), new, old)
        return not self.raw_avail_flags() & ring.VIRTQ_AVAIL_F_NO_INTERRUPT

    @rule()
    def needs_notification(self):
        expected = self._expect_notify()
        assert self.dev.needs_notification(self.mem) == expected
        event(f"needs_notification -> {expected} (event_idx={self.event_idx})")

    @rule(enable=st.booleans())
    def device_notification(self, enable):
        if enable:
            assert self.dev.enable_notification(self.mem) == bool(self.avail_q)
            if self.event_idx:
                assert self.raw_avail_event() == self.next_avail
            else:
                assert self.raw_used_flags() == 0
        else:
            self.dev.disable_notification(self.mem)
            if not self.event_idx:
                assert self.raw_used_flags() == ring.VIRTQ_USED_F_NO_NOTIFY

    @rule(data=st.data())
    def device_drain(self, data):
        completed = []

        def handle(chain):
            self._check_popped(chain)
            if data.draw(st.booleans(), label="defer"):
                self.popped.append(chain)
                return None
            n = self._written(chain, data.draw(st.integers(0, chain.writable_len), label="len"))
            completed.append((chain.head_index, n))
            return n

        result = self.dev.drain(self.mem, handle)
        assert not self.avail_q
        self.used_q.extend(completed)
        self.next_used = (self.next_used + len(completed)) & 0xFFFF
        assert result == self._expect_notify()
        if self.event_idx:
            assert self.raw_avail_event() == self.next_avail
        else:
            assert self.raw_used_flags() == 0

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def conserved(self):
        if not hasattr(self, "drv"):
            return
        assert not self.drv.broken and not self.dev.broken
        held = sum(info["ndesc"] for info in self.outstanding.values())
        assert self.drv.num_free + held == self.size
        assert self.drv.outstanding == len(self.outstanding)
        assert self.dev.in_flight() == len(self.popped)
        assert (self.dev.next_avail, self.dev.next_used) == (self.next_avail, self.next_used)
        assert self.drv.avail_idx_shadow == self.avail and self.drv.last_used == self.last_used

    def teardown(self):
        if sys.exc_info()[0] is not None or not hasattr(self, "drv"):
            return  # a rule already failed: let that error speak
        # finish everything: every token comes back exactly once
        for chain in self.popped:
            self.dev.add_used(self.mem, chain.head_index, 0)
            self.used_q.append((chain.head_index, 0))
        self.popped = []
        for chain in self.dev.pop_many(self.mem):
            self._check_popped(chain)
            self.dev.add_used(self.mem, chain.head_index, 0)
            self.used_q.append((chain.head_index, 0))
        while self.used_q:
            self.get_buf()
        assert self.drv.get_buf(self.mem) is None
        assert self.returned == set(range(self.tokens))
        assert self.drv.num_free == self.size and not self.outstanding


TestRingPair = RingPair.TestCase
TestRingPair.settings = settings(max_examples=EXAMPLES, stateful_step_count=60, deadline=None,
                                 suppress_health_check=[HealthCheck.too_slow])


# --- the fuzzer ---------------------------------------------------------------------------------

FUZZ_DATA, FUZZ_DATA_END = 0x2000, 0x4000  # data region; 0x4000..0x8000 is a hole
FUZZ_REGIONS = ((0, FUZZ_DATA_END), (0x8000, 0x1000))
FUZZ_MEM_BYTES = FUZZ_DATA_END + 0x1000


class CountingDesc:
    """Stands in for the descriptor Struct in split_device to count descriptor reads."""

    def __init__(self, real):
        self.real, self.reads = real, 0

    def unpack_from(self, buf, offset=0):
        self.reads += 1
        return self.real.unpack_from(buf, offset)


@pytest.fixture
def counting_desc(monkeypatch):
    counter = CountingDesc(split_device._DESC)
    monkeypatch.setattr(split_device, "_DESC", counter)
    return counter


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang("a device-side call did not return")


@pytest.fixture
def per_example_alarm():
    """``arm()`` at the start of each example: a call that hangs becomes a failure."""
    old = signal.signal(signal.SIGALRM, _alarm)
    yield lambda: signal.setitimer(signal.ITIMER_REAL, 10)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def _mostly(good, wild):
    """Three draws in four from ``good``: enough valid structure to get past the first check."""
    return st.one_of(good, good, good, wild)


def descriptor(size):
    F = ring
    addr = _mostly(st.one_of(st.integers(FUZZ_DATA, FUZZ_DATA_END - 0x100), st.just(FUZZ_DATA)),
                   st.one_of(st.integers(0, 0x9000), st.integers(0, (1 << 64) - 1)))
    length = _mostly(st.one_of(st.integers(0, 0x100), st.sampled_from([16, 32, 48, 64, 128])),
                     st.one_of(st.sampled_from([0xFFFFFFFF, 0x80000000]), st.integers(0, 0xFFFFFFFF)))
    plain = [0, F.VIRTQ_DESC_F_WRITE, F.VIRTQ_DESC_F_NEXT, F.VIRTQ_DESC_F_NEXT | F.VIRTQ_DESC_F_WRITE,
             F.VIRTQ_DESC_F_INDIRECT]
    flags = _mostly(st.sampled_from(plain), st.integers(0, 0xFFFF))
    nxt = _mostly(st.integers(0, max(0, size - 1)), st.integers(0, 0xFFFF))
    return st.tuples(addr, length, flags, nxt)


@st.composite
def noisy_ring(draw, size):
    """Structured-but-arbitrary ring fields, or raw noise; plus bytes for the start of the data
    area (where indirect tables often point)."""
    lay = SplitRingLayout.contiguous(0, size)
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(min_size=lay.end, max_size=lay.end)), b""
    buf = bytearray(lay.end)
    for i, (a, n, f, x) in enumerate(draw(st.lists(descriptor(size), min_size=size, max_size=size))):
        ring.VIRTQ_DESC.pack_into(buf, lay.desc_table + 16 * i, a, n, f, x)
    idx = _mostly(st.integers(0, size), st.integers(0, 0xFFFF))
    head = _mostly(st.integers(0, size - 1), st.integers(0, 0xFFFF))
    buf[lay.avail_ring:lay.avail_ring + 2] = draw(st.integers(0, 3)).to_bytes(2, "little")
    buf[lay.avail_ring + 2:lay.avail_ring + 4] = draw(idx).to_bytes(2, "little")
    for k in range(size):
        off = lay.avail_ring + 4 + 2 * k
        buf[off:off + 2] = draw(head).to_bytes(2, "little")
    off = lay.avail_ring + 4 + 2 * size
    buf[off:off + 2] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "little")  # used_event
    table = b"".join(ring.VIRTQ_DESC.pack(*d) for d in draw(st.lists(descriptor(8), max_size=8)))
    return bytes(buf), table


chain_spec = st.tuples(st.booleans(),  # through an indirect table?
                       st.lists(st.tuples(st.integers(0, 24), st.booleans()), min_size=1, max_size=3))
mutation = st.tuples(st.integers(0, 0x7FF), st.binary(min_size=1, max_size=2))


@st.composite
def fuzz_ring(draw):
    """``(size, recipe)`` for :func:`_prepare`.  Half the time a valid ring the mock driver builds,
    with a few bytes flipped afterwards (gets deep into the walk); otherwise noise (hits the
    first checks)."""
    size = draw(st.sampled_from(SIZES[:6]))
    if draw(st.booleans()):
        return size, ("noise",) + draw(noisy_ring(size))
    return size, ("mutated", draw(st.lists(chain_spec, max_size=size)),
                  draw(st.lists(mutation, max_size=3)))


def _prepare(mock, recipe):
    if recipe[0] == "noise":
        _, ring_bytes, table = recipe
        mock.write_ring_bytes(ring_bytes)
        mock.write(FUZZ_DATA, table)
        return
    _, chains, mutations = recipe
    budget = mock.size
    for indirect, descs in chains:
        need = 1 if indirect else len(descs)
        if need > budget:
            break
        budget -= need
        descs = sorted(descs, key=lambda d: d[1])  # readable first: valid until mutated
        built = [(mock.alloc(max(1, n)), n, ring.VIRTQ_DESC_F_WRITE if w else 0) for n, w in descs]
        (mock.add_indirect_chain if indirect else mock.add_chain)(built)
    for offset, data in mutations:
        mock.write(offset % (mock.ring_len + 0x100), data)  # the ring and a first table or two


CALLS = st.lists(st.one_of(
    st.tuples(st.just("pop")),
    st.tuples(st.just("pop_many"), st.integers(0, 80)),
    st.tuples(st.just("pop_direct"), st.integers(0, 80), st.booleans()),
    st.tuples(st.just("complete"), st.integers(0, 100), st.integers(0, 0xFFFFFFFF), st.booleans()),
    st.tuples(st.just("needs_notification")),
    st.tuples(st.just("enable_notification")),
    st.tuples(st.just("disable_notification")),
    st.tuples(st.just("has_available")),
    st.tuples(st.just("drain"), st.booleans()),
    st.tuples(st.just("poke"), st.integers(0, 0x800), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("reset")),
), max_size=25)


def _fuzz_queue(mock, size, event_idx, indirect):
    q = SplitDeviceQueue(64)
    q.set_size(size)
    q.set_addresses(mock.desc_table, mock.avail_ring, mock.used_ring)
    q.set_features(event_idx=event_idx, indirect=indirect)
    q.activate(mock.mem)
    return q


def _run_call(q, mem, call, popped):
    name = call[0]
    if name == "pop":
        chain = q.pop_descriptor_chain(mem)
        return [chain] if chain is not None else []
    if name == "pop_many":
        return q.pop_many(mem, limit=call[1])
    if name == "pop_direct":  # every chain it takes: one plain descriptor, its buffer mapped
        heads, lengths, views = q.pop_direct(mem, call[1])
        for head, length, view in zip(heads, lengths, views):
            addr, n, flags, _ = ring.VIRTQ_DESC.unpack_from(mem.view(q.desc_table + 16 * head, 16))
            assert flags == 0 and n == length == len(view) and bytes(view) == mem.read(addr, n)
            event("pop_direct took a chain")
        if call[2]:
            q.add_used_heads(mem, heads)
        return []
    if name == "complete":
        if not popped:
            q.add_used_batch(mem, [])  # nothing to return, but still an entry point
            return []
        chain = popped.pop(call[1] % len(popped))
        n = min(call[2], chain.writable_len)
        if call[3]:
            q.add_used(mem, chain.head_index, n)
        else:
            q.add_used_batch(mem, [(chain.head_index, n)])
        return []
    if name == "drain":
        out = []
        q.drain(mem, lambda c: out.append(c) if call[1] else min(c.writable_len, 7))
        return out
    getattr(q, name)(mem)
    return []


def _check_chain(chain, size):
    assert 0 <= chain.head_index < size
    assert chain.readable_len == sum(len(v) for v in chain.readable)
    assert chain.writable_len == sum(len(v) for v in chain.writable)
    assert chain.readable_len + chain.writable_len <= 1 << 32


@settings(max_examples=EXAMPLES * 2, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(fuzz=fuzz_ring(), event_idx=st.booleans(), indirect=_mostly(st.just(True), st.just(False)),
       calls=CALLS, first=st.sampled_from([("pop_many", 1000), ("pop_direct", 1000, True),
                                           ("pop_direct", 1000, False)]))
def test_fuzzed_ring_only_typed_errors(counting_desc, per_example_alarm, fuzz, event_idx, indirect,
                                       calls, first):
    per_example_alarm()
    size, recipe = fuzz
    mock = MockSplitDriver(size, regions=FUZZ_REGIONS, data_addr=FUZZ_DATA)
    _prepare(mock, recipe)
    q = _fuzz_queue(mock, size, event_idx, indirect)
    popped: list = []
    # a walk may read every ring descriptor once, then every entry of one indirect table
    bound = size + 1 + FUZZ_MEM_BYTES // 16
    for call in [first] + calls:
        if call[0] == "reset":  # the driver resets the queue and sets it up again on the same ring
            q.reset()
            q = _fuzz_queue(mock, size, event_idx, indirect)
            popped = []
            continue
        if call[0] == "poke":  # the guest scribbles on its ring (and data) meanwhile
            mock.write(call[1], call[2])
            continue
        broken_before, next_avail = q.broken, q.next_avail
        counting_desc.reads = 0
        try:
            chains = _run_call(q, mock.mem, call, popped)
        except QueueBroken:
            assert broken_before
            continue
        except DriverFault as exc:
            assert q.broken and not broken_before
            event("fault: " + re.sub(r"\d+", "N", str(exc).split(": ", 1)[-1])[:36])
            popped = []
            continue
        finally:
            walks = ((q.next_avail - next_avail) & 0xFFFF) + 1  # chains popped, plus a failed one
            assert counting_desc.reads <= bound * walks, "a descriptor walk did not stop"
        assert not broken_before, f"{call} worked on a broken queue"
        for chain in chains:
            _check_chain(chain, size)
            event("popped a chain")
        popped.extend(chains)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.sampled_from(SIZES), data=st.binary(min_size=16, max_size=16 * 64),
       indirect=st.booleans())
def test_fuzzed_descriptor_table_single_pop(size, data, indirect):
    """One pop over a noisy descriptor table with a valid avail entry: a chain or a DriverFault,
    never an untyped error; with the queue broken exactly when it raised."""
    mock = MockSplitDriver(size, regions=((0, 0x4000),))
    mock.write(mock.desc_table, data[:16 * size])
    mock.add_head(data[0] % size)
    q = make_device_queue(mock, indirect=indirect)
    try:
        chain = q.pop_descriptor_chain(mock.mem)
    except DriverFault:
        assert q.broken
        with pytest.raises(QueueBroken):
            q.pop_descriptor_chain(mock.mem)
    else:
        assert chain is not None and not q.broken
        _check_chain(chain, size)


SHAPES = st.sampled_from(["direct", "direct", "direct", "chained", "writable"])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.sampled_from(SIZES[:5]), in_order=st.booleans(), base=st.integers(0, 0xFFFF),
       rounds=st.lists(st.tuples(st.lists(SHAPES, max_size=16), st.integers(1, 20)), min_size=1, max_size=12))
def test_pop_direct_agrees_with_the_general_path(size, in_order, base, rounds):
    """Chains of any shape; the device takes one-descriptor ones with ``pop_direct`` in batches
    of up to ``limit`` and any other through pop_descriptor_chain: every chain comes out once,
    in ring order, with the bytes the driver wrote, and the general path never gets a direct
    one.  Completed in order (``add_used_heads`` for a batch: one used entry with IN_ORDER), the
    driver gets every token back in order with the right length, across the u16 wrap."""
    mem = GuestMemory.anonymous(MEM_SIZE)
    lay = SplitRingLayout.contiguous(0, size)
    drv = SplitDriverQueue(lay, in_order=in_order)
    drv.setup(mem)
    dev = SplitDeviceQueue(64)
    dev.set_size(size)
    dev.set_addresses(lay.desc_table, lay.avail_ring, lay.used_ring)
    dev.in_order = in_order
    dev.activate(mem)
    drv.avail_idx_shadow = drv.kicked_avail = drv.last_used = base
    mem.store16(lay.avail_ring + 2, base)
    mem.store16(lay.used_ring + 2, base)
    dev.set_base(base)
    dev.sync_used_from_ring(mem)
    k = 0
    for shapes, limit in rounds:
        expected, tokens = [], []
        for shape in shapes:
            if drv.num_free < (1 if shape == "direct" else 2):
                break
            addr = DATA + (k % 64) * 256
            data = bytes([k & 0xFF, k >> 8 & 0xFF]) * (4 + k % 9)
            mem.write(addr, data)
            if shape == "direct":
                drv.add(mem, [(addr, len(data))], [], k)
            elif shape == "chained":
                drv.add(mem, [(addr, 3), (addr + 3, len(data) - 3)], [], k)
            else:
                drv.add(mem, [(addr, len(data))], [(addr + 128, 8)], k)
            expected.append((shape, data))
            tokens.append(k)
            k += 1
        got = []
        while True:
            heads, lengths, views = dev.pop_direct(mem, limit)
            assert len(heads) <= limit and lengths == [len(v) for v in views]
            if heads:
                got += [("direct", bytes(v)) for v in views]
                dev.add_used_heads(mem, heads)
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
