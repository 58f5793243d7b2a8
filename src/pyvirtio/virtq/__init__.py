"""Virtqueues: split and packed rings, both the device side and the driver side.

Sans-I/O: every operation takes the guest memory as an argument and returns data or decisions
(``needs_notification``, ``kick_prepare``); nothing here touches a socket or an eventfd.
"""

from .base import DeviceQueue
from .chain import DescriptorChain
from .event import vring_need_event
from .kinds import DriverRing, RingLayout, driver_queue
from .layout import SplitRingLayout
from .packed_device import PackedDeviceQueue
from .packed_driver import PackedDriverQueue, PackedRingLayout
from .split_device import SplitDeviceQueue
from .split_driver import SplitDriverQueue

__all__ = [
    "DescriptorChain",
    "DeviceQueue",
    "DriverRing",
    "PackedDeviceQueue",
    "PackedDriverQueue",
    "PackedRingLayout",
    "RingLayout",
    "SplitDeviceQueue",
    "SplitDriverQueue",
    "SplitRingLayout",
    "driver_queue",
    "vring_need_event",
]
