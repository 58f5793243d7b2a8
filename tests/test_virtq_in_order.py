"""VIRTIO_F_IN_ORDER (2.7.9 split, 2.8.21 packed), both sides.

Driver side: descriptors taken in ring order (split), and a device that returns a batch with one
used entry — the id of the batch's last buffer, where its first was — is understood: every buffer
up to that id completes, the ones before it with all their writable bytes.  Device side: the
packed queue writes one used descriptor per run of buffers it filled whole, never out of order.
Devices that complete in order offer the bit; our drivers take it.
"""

import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.net import NetDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.drivers.net import NetDriver
from pyvirtio.drivers.rng import RngDriver
from pyvirtio.errors import DeviceFault, QueueBroken, QueueFull, UsageError
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.memory import GuestMemory
from pyvirtio.net.frame import frame_seq, mac_bytes, numbered_frame
from pyvirtio.net.mock import MockBackend
from pyvirtio.spec import ring
from pyvirtio.spec.features import Feature
from pyvirtio.virtq import SplitDeviceQueue, SplitDriverQueue, SplitRingLayout
from pyvirtio.virtq.packed_device import PackedDeviceQueue
from pyvirtio.virtq.packed_driver import PackedDriverQueue, PackedRingLayout

EXAMPLES = int(os.environ.get("PYVIRTIO_HYPOTHESIS_EXAMPLES", "300"))
DATA = 0x40000
IN_ORDER = 1 << Feature.IN_ORDER


# --- split: a device that batches (our split device writes one entry per chain) -----------------

def split_pair(size=8, indirect=False):
    mem = GuestMemory.anonymous(1 << 20)
    lay = SplitRingLayout.contiguous(0x1000, size)
    drv = SplitDriverQueue(lay, in_order=True, indirect_area=0x20000 if indirect else None,
                           max_indirect=4 if indirect else 0)
    drv.setup(mem)
    dev = SplitDeviceQueue(size)
    dev.set_addresses(lay.desc_table, lay.avail_ring, lay.used_ring)
    dev.set_features(False, indirect)
    dev.activate(mem)
    return mem, drv, dev, lay


def used_batch(mem, lay, dev, head, length, count):
    """What a batching device does (2.7.9): one used entry (``head``, ``length``) at the slot of
    the batch's first chain, and the used idx moved by the batch size ``count``."""
    slot = dev.next_used % lay.size
    mem.store32(lay.used_ring + 4 + 8 * slot, head)
    mem.store32(lay.used_ring + 8 + 8 * slot, length)
    dev.next_used = (dev.next_used + count) & 0xFFFF
    mem.store16(lay.used_ring + 2, dev.next_used)


def test_split_driver_takes_descriptors_in_ring_order_wrapping_at_the_end():
    mem, drv, dev, lay = split_pair(size=4)
    heads = []
    for i in range(6):
        heads.append(drv.add(mem, [(DATA, 1)], [(DATA + 8, 1)], token=i))  # two descriptors
        chain = dev.pop_descriptor_chain(mem)
        dev.add_used(mem, chain.head_index, 1)
        assert drv.get_buf(mem) == (i, 1)
    assert heads == [0, 2, 0, 2, 0, 2]
    assert drv.num_free == 4 and drv.free_head == 0


def test_split_chain_crossing_the_end_of_the_table_links_to_zero():
    mem, drv, dev, lay = split_pair(size=4)
    drv.add(mem, [(DATA, 1)], [], token="a")  # descriptor 0
    drv.add(mem, [(DATA, 1)], [], token="b")  # descriptor 1
    for _ in range(2):
        c = dev.pop_descriptor_chain(mem)
        dev.add_used(mem, c.head_index, 0)
    assert [t for t, _ in drv.get_bufs(mem)] == ["a", "b"]
    head = drv.add(mem, [(DATA, 1), (DATA + 1, 1), (DATA + 2, 1)], [], token="c")  # 2, 3, 0
    assert head == 2
    descs = [ring.VIRTQ_DESC.unpack_from(mem.read(lay.desc_table + 16 * i, 16)) for i in range(4)]
    assert (descs[2][3], descs[3][3]) == (3, 0)  # 2.7.9: next of the last table entry is 0
    chain = dev.pop_descriptor_chain(mem)
    assert chain.read() == mem.read(DATA, 3)


def test_split_driver_reads_a_batch_from_one_used_entry():
    mem, drv, dev, lay = split_pair(size=8)
    for i in range(4):
        drv.add(mem, [(DATA, 4)], [(DATA + 0x100 * (i + 1), 10 * (i + 1))], token=i)
    heads = [dev.pop_descriptor_chain(mem).head_index for _ in range(4)]
    used_batch(mem, lay, dev, heads[2], 7, 3)  # chains 0..2 in one entry
    assert drv.get_bufs(mem) == [(0, 10), (1, 20), (2, 7)]  # before the last: whole buffers
    used_batch(mem, lay, dev, heads[3], 40, 1)
    assert drv.get_bufs(mem) == [(3, 40)]
    assert drv.num_free == 8 and drv.outstanding == 0


def test_split_batch_longer_than_the_used_idx_moved_breaks_the_queue():
    mem, drv, dev, lay = split_pair(size=8)
    for i in range(3):
        drv.add(mem, [(DATA, 4)], [], token=i)
    heads = [dev.pop_descriptor_chain(mem).head_index for _ in range(3)]
    used_batch(mem, lay, dev, heads[2], 0, 2)  # claims three chains, publishes two
    with pytest.raises(DeviceFault, match="batch of 3"):
        drv.get_buf(mem)
    with pytest.raises(QueueBroken):
        drv.get_buf(mem)


def test_split_batch_closing_on_an_id_not_outstanding_breaks_the_queue():
    mem, drv, dev, lay = split_pair(size=8)
    drv.add(mem, [(DATA, 4)], [], token=0)
    dev.pop_descriptor_chain(mem)
    used_batch(mem, lay, dev, 5, 0, 1)
    with pytest.raises(DeviceFault, match="not an outstanding head"):
        drv.get_buf(mem)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 2), st.integers(1, 4)), min_size=1,
                max_size=60), st.booleans(), st.data())
def test_split_in_order_batches_property(requests, indirect, data):
    """Any mix of chain shapes and batch sizes: tokens come back in order, each with the bytes
    the device reported (the batch's last) or its whole writable length (the rest)."""
    mem, drv, dev, lay = split_pair(size=8, indirect=indirect)
    expect, flying, got = [], [], []
    for n, (outs, ins, _) in enumerate(requests):
        in_bufs = [(DATA + 0x100 * k, 16 * (k + 1)) for k in range(ins)]
        try:
            drv.add(mem, [(DATA, 1)] * outs, in_bufs, token=n)
        except QueueFull:
            break
        flying.append((n, sum(length for _, length in in_bufs)))
        dev.pop_descriptor_chain(mem)
        if data.draw(st.booleans()) or len(flying) == 8:
            batch = data.draw(st.integers(1, len(flying)))
            last_token, last_in = flying[batch - 1]
            written = data.draw(st.integers(0, last_in))
            used_batch(mem, lay, dev, _head_of(drv, last_token), written, batch)
            expect += [(t, w) for t, w in flying[:batch - 1]] + [(last_token, written)]
            del flying[:batch]
            got += drv.get_bufs(mem)
    if flying:
        token, _ = flying[-1]
        used_batch(mem, lay, dev, _head_of(drv, token), 0, len(flying))
        expect += [(t, w) for t, w in flying[:-1]] + [(token, 0)]
        got += drv.get_bufs(mem)
    assert got == expect
    assert drv.num_free == 8 and drv.outstanding == 0


def _head_of(drv, token):
    return drv._tokens.index(token)


# --- packed: both sides are ours ----------------------------------------------------------------

def packed_pair(size=8, indirect=False):
    mem = GuestMemory.anonymous(1 << 20)
    lay = PackedRingLayout.contiguous(0x1000, size)
    drv = PackedDriverQueue(lay, in_order=True, indirect_area=0x10000 if indirect else None,
                            max_indirect=4 if indirect else 0)
    drv.setup(mem)
    dev = PackedDeviceQueue(max(size, 8))
    dev.set_size(size)
    dev.set_addresses(lay.desc_table, lay.avail_ring, lay.used_ring)
    dev.set_features(False, indirect)
    dev.in_order = True
    dev.activate(mem)
    return mem, drv, dev


def used_flags_written(mem, dev, positions):
    """Which ring positions carry the device's used flags for the current used wrap."""
    return [p for p in positions if (mem.load16(dev.desc_table + 16 * p + 14)
                                     & (ring.VIRTQ_DESC_F_USED | ring.VIRTQ_DESC_F_AVAIL))
            in (0, ring.VIRTQ_DESC_F_USED | ring.VIRTQ_DESC_F_AVAIL)]


def test_packed_transmit_batch_is_one_used_descriptor():
    mem, drv, dev = packed_pair(size=8)
    for i in range(5):
        drv.add(mem, [(DATA, 60)], [], token=i)
    chains = dev.pop_many(mem)
    dev.add_used_batch(mem, [(c.head_index, 0) for c in chains])
    # one used descriptor, at the batch's first position, with the last buffer's id
    assert mem.load16(dev.desc_table + 12) == chains[-1].head_index
    assert used_flags_written(mem, dev, range(5)) == [0]
    assert dev.next_used == 5 and dev.in_flight() == 0
    assert drv.get_bufs(mem) == [(i, 0) for i in range(5)]
    assert drv.num_free == 8


def test_packed_partly_filled_buffers_close_runs_so_no_length_is_lost():
    mem, drv, dev = packed_pair(size=8)
    for i in range(5):
        drv.add(mem, [], [(DATA + 0x100 * i, 100)], token=i)
    chains = dev.pop_many(mem)
    lengths = [100, 100, 42, 100, 7]
    dev.add_used_batch(mem, [(c.head_index, n) for c, n in zip(chains, lengths)])
    assert used_flags_written(mem, dev, range(5)) == [0, 3]  # runs 0-2 and 3-4
    assert drv.get_bufs(mem) == list(enumerate(lengths))


def test_packed_in_order_device_refuses_to_complete_out_of_order():
    mem, drv, dev = packed_pair(size=8)
    for i in range(3):
        drv.add(mem, [(DATA, 1)], [], token=i)
    a, b, c = dev.pop_many(mem)
    with pytest.raises(UsageError, match="not the oldest"):
        dev.add_used_batch(mem, [(b.head_index, 0)])
    with pytest.raises(UsageError, match="out of order"):
        dev.add_used(mem, c.head_index, 0)
    dev.add_used(mem, a.head_index, 0)
    dev.add_used_batch(mem, [(b.head_index, 0), (c.head_index, 0)])
    assert drv.get_bufs(mem) == [(0, 0), (1, 0), (2, 0)]


def test_packed_driver_batch_on_an_id_not_in_flight_breaks_the_queue():
    mem, drv, dev = packed_pair(size=8)
    drv.add(mem, [(DATA, 1)], [], token=0)
    chain = dev.pop_descriptor_chain(mem)
    mem.store16(dev.desc_table + 12, (chain.head_index + 3) % 8)  # a used id never made available
    mem.store16(dev.desc_table + 14, ring.VIRTQ_DESC_F_AVAIL | ring.VIRTQ_DESC_F_USED)
    with pytest.raises(DeviceFault, match="not in flight"):
        drv.get_buf(mem)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 9), st.booleans(),
       st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.booleans()), min_size=1,
                max_size=80), st.data())
def test_packed_in_order_round_trip_property(size, indirect, requests, data):
    """Both sides in order over many wraps of any ring size: every token comes back in order
    with the exact bytes the device wrote, however the device cut its batches."""
    mem, drv, dev = packed_pair(size=size, indirect=indirect)
    sent, got, flying = [], [], []
    for n, (outs, ins, full) in enumerate(requests):
        in_bufs = [(DATA + 0x100 * k, 8 * (k + 1)) for k in range(ins)]
        if not outs and not ins:
            outs = 1
        try:
            drv.add(mem, [(DATA, 1)] * outs, in_bufs, token=n)
        except QueueFull:  # no room now (or a chain longer than a tiny ring): not sent
            pass
        else:
            flying.extend(dev.pop_many(mem))
        if flying and (data.draw(st.booleans()) or drv.num_free == 0 or not drv._free_ids):
            k = data.draw(st.integers(1, len(flying)))
            batch = []
            for chain in flying[:k]:
                w = chain.writable_len if full else data.draw(st.integers(0, chain.writable_len))
                batch.append((chain.head_index, w))
                sent.append(w)
            del flying[:k]
            dev.add_used_batch(mem, batch)
            got += [w for _, w in drv.get_bufs(mem)]
    dev.add_used_batch(mem, [(c.head_index, 0) for c in flying])
    sent += [0] * len(flying)
    got += [w for _, w in drv.get_bufs(mem)]
    assert got == sent
    assert drv.num_free == size and drv.outstanding == 0 and dev.in_flight() == 0


# --- which devices offer it; our drivers take it -----------------------------------------------

def test_devices_that_complete_in_order_offer_it_and_blk_does_not(tmp_path):
    assert RngDevice().device_features & IN_ORDER
    assert NetDevice(MockBackend()).device_features & IN_ORDER
    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 16))
    assert not BlkDevice(str(img)).device_features & IN_ORDER


@pytest.mark.parametrize("packed", [False, True])
def test_rng_driver_negotiates_in_order_over_loopback(packed):
    dev = RngDevice()
    if packed:
        dev.offer_packed_ring()
    t = LoopbackTransport(dev)
    try:
        drv = RngDriver.probe(t)
        assert drv.has_feature(Feature.IN_ORDER) and dev.has_feature(Feature.IN_ORDER)
        assert drv.has_feature(Feature.RING_PACKED) == packed
        assert drv.queues[0].vq.in_order and dev.queues[0].in_order
        assert len(drv.read(4096)) == 4096
    finally:
        t.close()


MAC = mac_bytes("52:54:00:00:00:01")
PEER = mac_bytes("52:54:00:00:00:99")


@pytest.mark.parametrize("packed", [False, True])
def test_net_bad_receive_buffer_behind_good_ones_keeps_ring_order(packed):
    """With MRG_RXBUF the device holds spare buffers while it gathers; a bad buffer behind them
    (device-readable) sends them back first, empty, so the used order stays the avail order —
    the in-order driver would otherwise credit the wrong buffers."""
    backend = MockBackend()
    dev = NetDevice(backend, mac=MAC)
    if packed:
        dev.offer_packed_ring()
    t = LoopbackTransport(dev)
    try:
        drv = NetDriver.probe(t, rx_buffers=2, rx_buffer_size=64)  # a frame needs several
        assert drv.has_feature(Feature.IN_ORDER) and drv.mrg
        drv.queues[0].submit([b"device-readable"], [64], kick=True)
        drv.queues[0].submit([], [64], kick=True)
        backend.incoming.append(numbered_frame(MAC, PEER, 1))  # 76 bytes: one full, one part
        dev.serve_backend()
        for _ in range(40):
            drv.queues[0].submit([], [64], kick=True)
        dev.host_frames([numbered_frame(MAC, PEER, 2)])
        frames = drv.recv_all()
        assert [frame_seq(f)[0] for f in frames] == [1, 2]
        assert dev.rx.placers[0].bad_buffers == 1
        assert not dev.status & 0x40
    finally:
        t.close()
