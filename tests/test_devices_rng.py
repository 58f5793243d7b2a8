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
