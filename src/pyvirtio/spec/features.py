"""Device-independent ("reserved") feature bits (VIRTIO 1.3, 6 "Reserved Feature Bits").

Values are bit *numbers*; the mask is ``1 << Feature.X``.
"""

from enum import IntEnum


class Feature(IntEnum):
    """Reserved feature bit numbers (6)."""

    NOTIFY_ON_EMPTY = 24  # legacy only
    ANY_LAYOUT = 27  # legacy only
    INDIRECT_DESC = 28  # 2.7.5.3 / 2.8.19
    EVENT_IDX = 29  # 2.7.7 / 2.7.10
    VERSION_1 = 32
    ACCESS_PLATFORM = 33
    RING_PACKED = 34
    IN_ORDER = 35
    ORDER_PLATFORM = 36
    SR_IOV = 37
    NOTIFICATION_DATA = 38
    NOTIF_CONFIG_DATA = 39
    RING_RESET = 40
    ADMIN_VQ = 41  # 1.3, PCI only


# vhost-user reuses the unused bit 30 (vhost-user.rst, "Feature negotiation").
VHOST_USER_F_PROTOCOL_FEATURES = 30

# Device-specific feature bits live in 0-23 and 50-127 (6).
DEVICE_SPECIFIC_RANGES = ((0, 24), (50, 128))
