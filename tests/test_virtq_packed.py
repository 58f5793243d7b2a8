"""Packed virtqueue (2.8), both sides: round trips with wrap, suppression, hostile rings."""

import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pyvirtio.errors import DeviceFault, DriverFault, QueueBroken, QueueFull, VirtioError
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
