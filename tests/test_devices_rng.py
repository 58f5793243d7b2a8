"""Entropy device and driver, both sides, over loopback."""

from pyvirtio.devices.rng import MAX_REQUEST, RngDevice
from pyvirtio.drivers.rng import RngDriver
from pyvirtio.loopback import LoopbackTransport


def test_driver_reads_exactly_n_bytes():
    drv = RngDriver.probe(LoopbackTransport(RngDevice(), memory_size=1 << 20))
    for n in (1, 7, 4096, 10000):
        assert len(drv.read(n)) == n


def test_bytes_come_from_the_source_and_do_not_repeat():
    drv = RngDriver.probe(LoopbackTransport(RngDevice(), memory_size=1 << 20))
    a, b = drv.read(64), drv.read(64)
    assert a != b and len(set(a)) > 16


def test_device_never_writes_more_than_asked():
    calls = []

    def source(n):
        calls.append(n)
        return b"\xaa" * n

    drv = RngDriver.probe(LoopbackTransport(RngDevice(source), memory_size=1 << 20))
    assert drv.read(5) == b"\xaa" * 5
    assert calls == [5]


def test_huge_request_is_capped_and_the_driver_asks_again():
    drv = RngDriver.probe(LoopbackTransport(RngDevice(), memory_size=4 << 20))
    assert len(drv.read(MAX_REQUEST * 2 + 3, chunk=MAX_REQUEST * 2)) == MAX_REQUEST * 2 + 3


# --- fault rules (pyvirtio.faults): short reads and stalls ---------------------------------------


def _rng_loopback():
    import time  # noqa: F401
    from pyvirtio.drivers.rng import RngDriver
    from pyvirtio.loopback import LoopbackTransport
    dev = RngDevice()
    t = LoopbackTransport(dev, memory_size=1 << 20)
    return dev, t, RngDriver.probe(t)


def test_short_rule_serves_at_most_its_bytes_per_request():
    dev, t, drv = _rng_loopback()
    try:
        rule = dev.faults.add("short:bytes=3,count=2")
        assert len(drv.requestq.call([], [64])) == 3
        assert len(drv.requestq.call([], [64])) == 3
        assert len(drv.requestq.call([], [64])) == 64  # count=2 spent
        assert rule.fired == 2
    finally:
        t.close()


def test_stall_rule_holds_the_queue_without_blocking_the_worker():
    import time
    dev, t, drv = _rng_loopback()
    try:
        dev.faults.add("stall:ms=150,count=1")
        start = time.monotonic()
        pending = drv.requestq.submit([], [16])
        assert time.monotonic() - start < 0.1  # the kick returned at once
        drv.requestq.wait(pending)
        assert time.monotonic() - start >= 0.15
        start = time.monotonic()
        assert len(drv.read(16)) == 16 and time.monotonic() - start < 0.1
    finally:
        t.close()


def test_one_buffer_requests_go_in_batches_and_other_shapes_one_by_one_in_ring_order():
    """The batch path (drain_single): one-buffer requests are filled in place from the source,
    capped at MAX_REQUEST; a two-buffer request between them goes through the general path;
    the used ring keeps the ring's order and each length."""
    from pyvirtio.testing.mock_driver import MockSplitDriver, make_device_queue

    counter = iter(range(1, 1 << 30))
    dev = RngDevice(source=lambda n: bytes([next(counter) & 0xFF]) * n)
    mock = MockSplitDriver(size=16, regions=[(0, 1 << 20)])
    queue = make_device_queue(mock)
    dev.queues[0] = queue
    reqs = [mock.add_request(in_lens=[64]), mock.add_request(in_lens=[MAX_REQUEST + 100]),
            mock.add_request(in_lens=[16, 16]), mock.add_request(in_lens=[0]),
            mock.add_request(in_lens=[8])]
    assert dev.process_queue(mock.mem, queue) in (True, False)
    used = mock.used_elems(0)
    assert [h for h, _ in used] == [r.head for r in reqs]
    assert [n for _, n in used] == [64, MAX_REQUEST, 32, 0, 8]
    assert mock.read(*reqs[0].writable[0]) == b"\x01" * 64
    big = reqs[1].writable[0]
    assert mock.read(big[0], MAX_REQUEST) == b"\x02" * MAX_REQUEST
    assert mock.read(big[0] + MAX_REQUEST, 100) == b"\0" * 100  # never past what was asked
    assert mock.read(*reqs[2].writable[0]) + mock.read(*reqs[2].writable[1]) == b"\x03" * 32
    assert mock.read(*reqs[4].writable[0]) == b"\x04" * 8
    assert queue.stats.chains == 5
