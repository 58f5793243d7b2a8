"""Entropy device (VIRTIO 1.3, 5.4).

Data only.  One queue; no feature bits; no configuration space.  The driver places only
device-writable buffers; the device fills one or more bytes of each (5.4.6).
"""

from enum import IntEnum

#: The only queue (5.4.2).
REQUESTQ = 0
NUM_QUEUES = 1
#: No device configuration (5.4.4).
RNG_CONFIG_SIZE = 0


class RngFeature(IntEnum):
    """Feature bit numbers (5.4.3): none are defined."""
