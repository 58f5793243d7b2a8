"""Per-queue counters (pyvirtio.stats): exact numbers over the loopback transport, kept across a
ring-layout change and a device reset, and the device's statistics as plain JSON-ready data."""

import json
import os

import pytest

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.drivers.blk import BlkDriver
from pyvirtio.drivers.rng import RngDriver
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.stats import COUNTERS, QueueCounters


def test_rng_reads_are_counted_exactly():
    t = LoopbackTransport(RngDevice(), memory_size=1 << 20)
    drv = RngDriver.probe(t)
    for _ in range(5):
        assert len(drv.read(64)) == 64
    q = t.device.statistics()["queues"][0]
    assert q["chains"] == 5
    assert q["kicks"] == 5
    assert q["bytes_read"] == 0  # an entropy request is all device-writable
    assert q["bytes_written"] == 5 * 64
    assert q["interrupts"] == 5
    assert q["in_flight"] == 0 and q["errors"] == 0
    t.close()


def test_statistics_are_plain_json_and_name_the_device(tmp_path):
    t = LoopbackTransport(RngDevice(), memory_size=1 << 20)
    RngDriver.probe(t)
    stats = t.device.statistics()
    assert json.loads(json.dumps(stats)) == stats
    assert stats["type"] == "entropy"
    assert "DRIVER_OK" in stats["status"] and not stats["needs_reset"]
    assert "VERSION_1" in stats["features"]["names"]
    assert set(COUNTERS) <= set(stats["queues"][0])
    t.close()


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    return str(path)


def test_blk_bytes_both_ways(image):
    dev = BlkDevice(image, locking=False)
    t = LoopbackTransport(dev, memory_size=4 << 20)
    drv = BlkDriver.probe(t)
    drv.write(0, b"x" * 4096)
    assert drv.read(0, 4096) == b"x" * 4096
    q = dev.statistics()["queues"][0]
    assert q["chains"] == 2
    assert q["bytes_read"] == 16 + 4096 + 16  # two request headers and the written data
    assert q["bytes_written"] == 1 + 4096 + 1  # the status bytes and the read data
    assert dev.statistics()["device"]["write_bytes"] == 4096
    t.close()
    dev.close()


def test_counters_survive_a_device_reset_and_a_layout_change():
    dev = RngDevice()
    dev.offer_packed_ring()
    counters = dev.queues[0].stats
    counters.chains = 7
    dev.reset()
    assert dev.queues[0].stats is counters
    t = LoopbackTransport(dev, memory_size=1 << 20)
    drv = RngDriver.probe(t)
    drv.read(8)
    assert dev.queues[0].packed  # the driver took the packed layout: a new queue object
    assert dev.queues[0].stats is counters and counters.chains == 8
    t.close()


def test_queue_counters_repr_and_dict():
    c = QueueCounters()
    c.kicks = 3
    assert c.as_dict()["kicks"] == 3 and "kicks=3" in repr(c)


def test_blk_failed_requests_count_on_their_queue(image):
    """A request the device fails counts on the queue it came on, whichever path ended it: a
    read past the end (refused at once), an ioerr fault rule, a torn write."""
    from pyvirtio.errors import RequestError
    dev = BlkDevice(image, locking=False, num_queues=2)
    t = LoopbackTransport(dev, memory_size=4 << 20)
    drv = BlkDriver.probe(t)
    past_end = dev.capacity
    with pytest.raises(RequestError):
        drv.read(past_end, 4096, queue=1)
    dev.faults.add("ioerr:sectors=8-15")
    with pytest.raises(RequestError):
        drv.read(8, 4096, queue=1)
    assert drv.read(16, 4096, queue=1) == bytes(4096)
    assert drv.read(16, 4096, queue=0) == bytes(4096)
    stats = dev.statistics()
    errors = [q["errors"] for q in stats["queues"]]
    assert errors == [0, 2] and dev.stats["errors"] == 2
    assert [q["chains"] for q in stats["queues"]] == [1, 3]
    t.close()
    dev.close()
