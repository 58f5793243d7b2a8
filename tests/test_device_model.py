"""The device-side model: status rules, feature negotiation, config, NEEDS_RESET."""

import pytest

from pyvirtio.device import COMMON_FEATURES
from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.errors import DeviceStatusError, DriverFault
from pyvirtio.interrupt import Interrupt
from pyvirtio.spec.features import Feature
from pyvirtio.spec.status import DeviceStatus as S
from pyvirtio.conformance.device_model import CHECKS, check_device
from pyvirtio.testing.mock_device import MockDevice


@pytest.fixture
def blk_image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(b"")
    with open(path, "wb") as f:
        f.truncate(4 << 20)
    return str(path)


def test_rng_device_conformance():
    assert check_device(RngDevice) == [c.__name__ for c in CHECKS]


def test_blk_device_conformance(blk_image):
    assert len(check_device(lambda: BlkDevice(blk_image))) == len(CHECKS)


def test_mock_device_conformance():
    assert len(check_device(lambda: MockDevice(config=b"\x01\x02"))) == len(CHECKS)


def test_features_ok_applies_ring_features_to_queues():
    dev = RngDevice()
    dev.set_status(S.ACKNOWLEDGE | S.DRIVER)
    dev.set_driver_features((1 << Feature.VERSION_1) | (1 << Feature.EVENT_IDX))
    dev.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
    assert dev.status & S.FEATURES_OK
    assert dev.queues[0].event_idx and not dev.queues[0].indirect
    assert dev.has_feature(Feature.EVENT_IDX) and not dev.has_feature(Feature.INDIRECT_DESC)


def test_driver_ok_without_features_ok_is_refused():
    dev = RngDevice()
    with pytest.raises(DeviceStatusError):
        dev.set_status(S.ACKNOWLEDGE | S.DRIVER | S.DRIVER_OK)


def test_features_after_features_ok_are_a_driver_fault():
    dev = RngDevice()
    dev.set_status(S.ACKNOWLEDGE | S.DRIVER)
    dev.set_driver_features(COMMON_FEATURES)
    dev.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
    with pytest.raises(DriverFault):
        dev.set_driver_features(0)


def test_config_change_interrupts_only_when_running():
    dev = MockDevice(config=b"abcd")
    seen = []
    dev.interrupt = seen.append
    dev.set_config(0, b"x")
    assert seen == [] and dev.config_generation == 1
    dev.set_status(S.ACKNOWLEDGE | S.DRIVER)
    dev.set_driver_features(COMMON_FEATURES)
    dev.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
    dev.set_config(1, b"y")
    assert seen == [Interrupt(None)] and dev.config_generation == 2
    assert dev.read_config(0, 4) == b"xycd"


def test_notify_for_missing_queue_is_ignored():
    dev = RngDevice()
    dev.queue_notify(None, 7)  # no exception, nothing happens
    assert dev.status == 0


def test_needs_reset_survives_status_writes_until_reset():
    dev = RngDevice()
    dev.set_status(S.ACKNOWLEDGE | S.DRIVER)
    dev.set_driver_features(COMMON_FEATURES)
    dev.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
    dev.needs_reset(DriverFault("test"))
    dev.set_status(dev.status & ~S.DEVICE_NEEDS_RESET)  # the driver cannot clear it
    assert dev.status & S.DEVICE_NEEDS_RESET
    assert not dev.driver_ok
    dev.set_status(0)
    assert dev.status == 0
