"""The transmit fast path: ``SplitDeviceQueue.pop_direct`` (one-descriptor chains in a batch,
no DescriptorChain) and the vectorised ``add_used_batch``, on their own and under NetDevice."""

import pytest

from pyvirtio.devices.net import NetDevice
from pyvirtio.drivers.net import NetDriver
from pyvirtio.errors import DriverFault, QueueBroken, UsageError
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.memory import GuestMemory
from pyvirtio.net.frame import frame_seq, mac_bytes, numbered_frame
from pyvirtio.net.mock import MockBackend
from pyvirtio.spec.status import DeviceStatus as S
from pyvirtio.virtq import SplitDeviceQueue, SplitDriverQueue, SplitRingLayout

SIZE = 8
RING = 0x1000
BUFS = 0x4000


@pytest.fixture
def rings():
    mem = GuestMemory.anonymous(1 << 20)
    layout = SplitRingLayout.contiguous(RING, SIZE)
    drv = SplitDriverQueue(layout)
    drv.setup(mem)
    dev = SplitDeviceQueue(SIZE)
    dev.set_addresses(layout.desc_table, layout.avail_ring, layout.used_ring)
    dev.activate(mem)
    return mem, drv, dev


def add_frames(mem, drv, count, start=0):
    for i in range(count):
        addr = BUFS + ((start + i) % 64) * 256
        data = bytes([start + i]) * (20 + i)
        mem.write(addr, data)
        drv.add(mem, [(addr, len(data))], [], ("f", start + i))


def test_single_descriptor_chains_come_in_one_batch(rings):
    mem, drv, dev = rings
    add_frames(mem, drv, 5)
    heads, lengths, views = dev.pop_direct(mem, 64)
    assert len(heads) == 5 and lengths == [20, 21, 22, 23, 24]
    assert [bytes(v) for v in views] == [bytes([i]) * (20 + i) for i in range(5)]
    assert dev.pop_direct(mem, 64) == ([], [], [])
    dev.add_used_batch(mem, [(h, 0) for h in heads])
    assert [t for t, _ in drv.get_bufs(mem)] == [("f", i) for i in range(5)]


def test_batches_wrap_around_the_ring_many_times(rings):
    mem, drv, dev = rings
    seen = 0
    for round_ in range(40):
        n = 1 + round_ % SIZE
        add_frames(mem, drv, n, start=seen)
        heads, lengths, views = dev.pop_direct(mem, 3 + round_ % 5)
        while heads:
            assert [bytes(v)[0] for v in views] == [(seen + i) & 0xFF for i in range(len(heads))]
            dev.add_used_batch(mem, [(h, 0) for h in heads])
            seen += len(heads)
            heads, lengths, views = dev.pop_direct(mem, 3)
        got = drv.get_bufs(mem)
        assert [tok for tok, _ in got] == [("f", i) for i in range(seen - n, seen)]
    assert dev.next_avail == seen & 0xFFFF and dev.next_used == seen & 0xFFFF


def test_a_chained_or_indirect_chain_ends_the_batch(rings):
    mem, drv, dev = rings
    add_frames(mem, drv, 2)
    drv.add(mem, [(BUFS, 10), (BUFS + 100, 10)], [], "chained")
    add_frames(mem, drv, 2, start=10)
    heads, _, _ = dev.pop_direct(mem, 64)
    assert len(heads) == 2
    chain = dev.pop_descriptor_chain(mem)
    assert chain.readable_len == 20
    heads2, lengths, _ = dev.pop_direct(mem, 64)
    assert lengths == [20, 21]


def test_a_head_out_of_range_breaks_the_queue(rings):
    mem, drv, dev = rings
    add_frames(mem, drv, 1)
    mem.store16(drv.layout.avail_ring + 4, SIZE + 3)  # the ring entry points past the table
    with pytest.raises(DriverFault):
        dev.pop_direct(mem, 64)
    with pytest.raises(QueueBroken):
        dev.pop_direct(mem, 64)


def test_a_buffer_outside_memory_breaks_the_queue_unless_never_touched(rings):
    mem, drv, dev = rings
    drv.add(mem, [(1 << 40, 64)], [], "wild")
    heads, lengths, views = dev.pop_direct(mem, 64, views=False)  # a sink reads no address
    assert lengths == [64] and views is None
    drv.add(mem, [(1 << 40, 64)], [], "wild2")
    with pytest.raises(DriverFault):
        dev.pop_direct(mem, 64)
    assert dev.broken


def test_add_used_batch_checks_before_it_writes(rings):
    mem, drv, dev = rings
    add_frames(mem, drv, 3)
    heads, _, _ = dev.pop_direct(mem, 64)
    for bad in ([(heads[0], -1)], [(SIZE, 0)], [(heads[0], 1 << 32)], [(heads[0],)]):
        with pytest.raises(UsageError):
            dev.add_used_batch(mem, bad)
    assert dev.next_used == 0 and mem.load16(drv.layout.used_ring + 2) == 0
    dev.add_used_batch(mem, [(h, 0) for h in heads])
    assert [t for t, _ in drv.get_bufs(mem)] == [("f", 0), ("f", 1), ("f", 2)]


def test_add_used_heads_wraps_and_checks(rings):
    mem, drv, dev = rings
    for round_ in range(6):  # 6 x 5 chains through a ring of 8: the used ring wraps
        add_frames(mem, drv, 5, start=round_ * 5)
        heads, _, _ = dev.pop_direct(mem, 64)
        dev.add_used_heads(mem, heads)
        assert [t for t, _ in drv.get_bufs(mem)] == [("f", round_ * 5 + i) for i in range(5)]
    for bad in ([SIZE], [-1], ["x"]):
        with pytest.raises(UsageError):
            dev.add_used_heads(mem, bad)
    with pytest.raises(UsageError):
        dev.add_used_heads(mem, [0], length=-5)
    dev.add_used_heads(mem, [])
    assert dev.next_used == 30


# --- under the device ---------------------------------------------------------------------------

MAC, PEER = mac_bytes("52:54:00:00:05:01"), mac_bytes("52:54:00:00:05:02")


def test_device_mixes_fast_and_general_chains_in_order():
    backend = MockBackend()
    dev = NetDevice(backend, mac=MAC)
    t = LoopbackTransport(dev)
    try:
        drv = NetDriver.probe(t)
        txq = drv.queues[1]
        frames = [numbered_frame(PEER, MAC, i, 80) for i in range(30)]
        pendings = []
        for i, frame in enumerate(frames):
            out = [bytes(12) + frame] if i % 3 else [bytes(12), frame[:30], frame[30:]]
            pendings.append(txq.submit(out, [], kick=False))
        txq.kick()
        assert [frame_seq(f)[0] for f in backend.sent] == list(range(30))
        for p in pendings:
            txq.wait(p)
    finally:
        t.close()


def test_device_refuses_a_wild_fast_path_buffer_with_needs_reset():
    dev = NetDevice(MockBackend(), mac=MAC)
    t = LoopbackTransport(dev)
    try:
        drv = NetDriver.probe(t)
        txq = drv.queues[1]
        txq.vq.add(t.memory, [(1 << 40, 100)], [], "wild")
        txq.kick()
        assert dev.status & S.DEVICE_NEEDS_RESET
    finally:
        t.close()
