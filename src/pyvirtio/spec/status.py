"""Device status field (VIRTIO 1.3, 2.1 "Device Status Field")."""

from enum import IntFlag


class DeviceStatus(IntFlag):
    """Bits of the device status field (2.1)."""

    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    SUSPEND = 16  # 1.4 only
    DEVICE_NEEDS_RESET = 64
    FAILED = 128
