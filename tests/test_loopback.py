"""The loopback transport maps memory twice and passes ring addresses as driver virtual addresses."""

from pyvirtio.drivers.rng import RngDriver
from pyvirtio.devices.rng import RngDevice
from pyvirtio.loopback import LoopbackTransport


def test_driver_and_device_see_the_same_pages_through_different_mappings():
    t = LoopbackTransport(RngDevice(), memory_size=1 << 20)
    drv_region, dev_region = t.memory.regions[0], t.device_memory.regions[0]
    assert drv_region.buf is not dev_region.buf
    t.memory.write(drv_region.gpa + 100, b"shared")
    assert t.device_memory.read(dev_region.gpa + 100, 6) == b"shared"
    t.close()


def test_ring_addresses_are_translated_from_driver_virtual_addresses():
    t = LoopbackTransport(RngDevice(), memory_size=1 << 20)
    drv = RngDriver.probe(t)
    q = t.device.queues[0]
    assert q.desc_table == drv.requestq.vq.layout.desc_table
    assert t.memory.gpa_to_uva(q.desc_table) != q.desc_table  # a virtual address did cross
    assert len(drv.read(16)) == 16
    t.close()
