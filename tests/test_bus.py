"""Bus probing: devices found on transports bind to drivers by ID table."""

from pyvirtio.bus import Bus
from pyvirtio.devices.rng import RngDevice
from pyvirtio.drivers import ALL_DRIVERS, RngDriver
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec.ids import DeviceType
from pyvirtio.testing.mock_device import MockDevice


def test_bind_by_id_and_leave_unknown_devices_unbound():
    bus = Bus(drivers=ALL_DRIVERS)
    bus.add(LoopbackTransport(RngDevice(), memory_size=1 << 20))
    bus.add(LoopbackTransport(MockDevice(device_type=DeviceType.GPU), memory_size=1 << 20))
    bindings = bus.probe()
    assert isinstance(bindings[0].driver, RngDriver)
    assert bindings[1].driver is None and bindings[1].type_name == "gpu"
    assert bus.find(DeviceType.ENTROPY) == [bindings[0].driver]


def test_probe_failure_is_kept_per_device_and_others_still_bind():
    bad = MockDevice(device_type=DeviceType.ENTROPY, accept_features=lambda f: False)
    bus = Bus(drivers=ALL_DRIVERS)
    bus.add(LoopbackTransport(bad, memory_size=1 << 20))
    bus.add(LoopbackTransport(RngDevice(), memory_size=1 << 20))
    first, second = bus.probe()
    assert first.driver is None and first.error is not None
    assert second.driver is not None and len(second.driver.read(8)) == 8
