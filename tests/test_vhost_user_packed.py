"""Packed rings over vhost-user: the back-end's ring state (SET/GET_VRING_BASE with both wrap
counters, any ring size), the device owning its queue objects, and blk completing requests out
of order on a packed ring served by the engine."""

from __future__ import annotations

import os
import struct

import pytest

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.spec.features import Feature
from pyvirtio.vhost_user.backend.connection import BackendConnection, Rejected
from pyvirtio.vhost_user.protocol import FrontendReq as R
from pyvirtio.vhost_user.testing import TestFrontend
from pyvirtio.vhost_user.wire import VringState
from pyvirtio.virtq import PackedDeviceQueue, SplitDeviceQueue

pytestmark = pytest.mark.timeout(60)
PACKED = 1 << Feature.RING_PACKED


def packed_rng() -> RngDevice:
    dev = RngDevice()
    dev.offer_packed_ring()
    return dev


@pytest.fixture
def pair():
    conn = BackendConnection(packed_rng(), name="test-packed")
    fe = TestFrontend.pair(conn)
    yield fe, conn
    fe.close()


def rejected(fe) -> list[str]:
    return [str(o.error) for o in fe.ch.outputs if isinstance(o, Rejected)]


def test_the_ring_follows_the_device_s_queue_object(pair):
    """Negotiating RING_PACKED replaces the device's queue objects; the vring sees the new one
    (it used to keep the split queue made at connect time), and the size set before is kept."""
    fe, conn = pair
    fe.request(R.SET_VRING_NUM, VringState(0, 128).pack())  # before SET_FEATURES, split rules
    fe.negotiate()
    assert isinstance(conn.device.queues[0], PackedDeviceQueue)
    assert conn.vrings[0].queue is conn.device.queues[0]
    assert conn.vrings[0].queue.size == 128
    fe.request(R.RESET_DEVICE)
    assert isinstance(conn.vrings[0].queue, SplitDeviceQueue)


def test_set_features_again_keeps_the_running_queue(pair):
    fe, conn = pair
    fe.start(size=16)
    q = conn.vrings[0].queue
    fe.request(R.SET_FEATURES, struct.pack("<Q", fe.features))
    assert conn.vrings[0].queue is q and not rejected(fe)


def test_non_power_of_two_size_only_on_a_packed_ring():
    for offer, ok in ((False, False), (True, True)):
        dev = packed_rng() if offer else RngDevice()
        fe = TestFrontend.pair(BackendConnection(dev, name="t"))
        fe.negotiate()
        fe.request(R.SET_VRING_NUM, VringState(0, 100).pack())
        assert (dev.queues[0].size == 100) == ok
        assert bool(rejected(fe)) != ok
        fe.close()


def test_split_ring_base_above_16_bits_is_refused():
    fe = TestFrontend.pair(BackendConnection(RngDevice(), name="t"))
    fe.negotiate()
    fe.request(R.SET_VRING_BASE, VringState(0, 0x8000_8000).pack())
    assert rejected(fe) and "split" in rejected(fe)[0]
    fe.close()


@pytest.mark.parametrize("base,avail,used", [
    (0x8000_8000, (0, 1), (0, 1)),  # QEMU at start: both positions 0, both wrap counters 1
    (0x8000, (0, 1), (0, 1)),  # DPDK virtio-user at start: the used half left zero
    (0x0003_8005, (5, 1), (3, 0)),  # used behind, on the previous lap
])
def test_packed_base_carries_both_positions_and_wraps(pair, base, avail, used):
    fe, conn = pair
    fe.negotiate()
    fe.request(R.SET_VRING_NUM, VringState(0, 8).pack())
    fe.request(R.SET_VRING_BASE, VringState(0, base).pack())
    q = conn.vrings[0].queue
    assert (q.next_avail, q.avail_wrap, q.next_used, q.used_wrap) == (*avail, *used)
    expected = base if base >> 16 else base | base << 16
    assert fe.get_vring_base(0) == expected


def test_packed_base_past_the_ring_is_refused(pair):
    fe, conn = pair
    fe.negotiate()
    fe.request(R.SET_VRING_NUM, VringState(0, 8).pack())
    fe.request(R.SET_VRING_BASE, VringState(0, 0x8009_8000).pack())  # used position 9 >= 8
    assert rejected(fe)
    assert not conn.vrings[0].queue.broken


# --- through the engine, over a socket ------------------------------------------------------------


def blk_request(fe, q, kind, sector, data_or_len, token):
    hdr = fe.buffer(struct.pack("<IIQ", kind, 0, sector))
    status = fe.buffer(1)
    if kind == 1:  # write
        bufs = ([hdr, fe.buffer(data_or_len)], [status])
        data = None
    else:
        data = fe.buffer(data_or_len)
        bufs = ([hdr], [data, status])
    fe.rings[q].queue.add(fe.memory, *bufs, token=token)
    return status, data


def test_blk_on_a_packed_ring_of_odd_size_wraps_and_restarts(server, tmp_path):
    """A packed ring of 7 descriptors goes round many times with blk requests (completed out of
    order by the I/O engine); GET_VRING_BASE then reports both positions and wrap counters."""
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    dev = BlkDevice(str(path))
    dev.offer_packed_ring()
    sock = str(tmp_path / "blk.sock")
    server.add(dev, socket_path=sock)
    server.start()
    fe = TestFrontend.connect(sock, memory_size=16 << 20)
    features = fe.start(size=7)
    assert features & PACKED
    for round_ in range(12):
        blobs = {i: os.urandom(512) for i in range(round_ % 3, round_ % 3 + 2)}  # 2 chains of 3
        for sector, blob in blobs.items():
            blk_request(fe, 0, 1, sector, blob, token=("w", sector))
        fe.kick(0)
        got = fe.wait_used(0, len(blobs))
        assert sorted(t for t, _ in got) == sorted(("w", s) for s in blobs)
        for sector, blob in blobs.items():
            status, data = blk_request(fe, 0, 0, sector, 512, token=("r", sector))
            fe.kick(0)
            [(token, written)] = fe.wait_used(0)
            assert token == ("r", sector) and written == 513
            assert fe.memory.read(status[0], 1) == b"\0"
            assert fe.memory.read(data[0], 512) == blob
    base = fe.get_vring_base(0)
    q = fe.rings[0].queue
    assert base == (q.next_avail | q.avail_wrap << 15) * 0x10001  # used caught up with avail
    assert base != 0x8000_8000  # it did move and wrap
    fe.close()
