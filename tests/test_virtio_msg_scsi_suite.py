"""The scsi driver-and-device suite (tests/test_scsi_driver_device.py) again with pyvirtio's
virtio-scsi device on a virtio-msg bus: the socket binding (split and packed rings) and the
in-process queue binding.  The same test bodies; only the ``rig`` fixture is this file's."""

from __future__ import annotations

import pytest

import test_scsi_driver_device
from pyvirtio.drivers.scsi import ScsiDriver
from pyvirtio.spec.features import Feature
from pyvirtio.virtio_msg.local import device_transport

globals().update({name: fn for name, fn in vars(test_scsi_driver_device).items()
                  if name.startswith("test_")})  # the suite's tests, collected here too

pytestmark = pytest.mark.timeout(120)

#: name -> (binding, packed)
COLUMNS = {"virtio-msg": ("socket", False), "virtio-msg-packed": ("socket", True),
           "virtio-msg-queue": ("queue", False)}


@pytest.fixture(params=sorted(COLUMNS))
def rig(request, tmp_path):
    """(device, driver, events seen) as tests/test_scsi_driver_device.py's, over virtio-msg."""
    binding, packed = COLUMNS[request.param]
    device = test_scsi_driver_device.make_device(packed)
    try:
        with device_transport(device, binding, str(tmp_path / "scsi-vmsg.sock"), memory_size=8 << 20) as t:
            seen: list = []
            drv = ScsiDriver.probe(t, on_event=seen.append)
            assert drv.has_feature(Feature.RING_PACKED) == packed
            try:
                yield device, drv, seen
            finally:
                drv.remove()
    finally:
        device.close()
