"""Input device (VIRTIO 1.3, 5.8).

Data only.  All fields are little-endian.  Queues: eventq (0) carries device -> driver events,
statusq (1) driver -> device events such as LED state (5.8.2).  Event types and codes are the
Linux evdev ones (linux/input-event-codes.h).
"""

import struct
from enum import IntEnum
from typing import NamedTuple

EVENTQ = 0
STATUSQ = 1


class InputFeature(IntEnum):
    """Feature bit numbers (5.8.3): none are defined."""


class InputConfigSelect(IntEnum):
    """``select`` values of the configuration (5.8.4)."""

    UNSET = 0x00
    ID_NAME = 0x01  # u.string
    ID_SERIAL = 0x02  # u.string
    ID_DEVIDS = 0x03  # u.ids
    PROP_BITS = 0x10  # u.bitmap
    EV_BITS = 0x11  # subsel = event type; u.bitmap of codes
    ABS_INFO = 0x12  # subsel = axis; u.abs


#: struct virtio_input_config { u8 select; u8 subsel; u8 size; u8 reserved[5]; union u[128]; }
#: (5.8.4).  The driver writes select/subsel; the device answers with size and u.
INPUT_CONFIG = struct.Struct("<BBB5x128s")


class InputConfig(NamedTuple):
    """One ``INPUT_CONFIG`` unpacked, field by field."""

    select: int
    subsel: int
    size: int
    u: bytes


INPUT_CONFIG_FIELDS = InputConfig._fields
INPUT_CONFIG_SIZE = 136
INPUT_CONFIG_U_SIZE = 128


class InputConfigOffset(IntEnum):
    """Field offsets in struct virtio_input_config (5.8.4)."""

    SELECT = 0
    SUBSEL = 1
    SIZE = 2
    RESERVED = 3
    U = 8


#: struct virtio_input_absinfo { le32 min; le32 max; le32 fuzz; le32 flat; le32 res; }  (5.8.4)
#: Packed as signed: the values are evdev's __s32 (min is often negative).
INPUT_ABSINFO = struct.Struct("<iiiii")


class InputAbsInfo(NamedTuple):
    """One ``INPUT_ABSINFO`` unpacked: an absolute axis's range (evdev's struct input_absinfo
    without its current value)."""

    min: int
    max: int
    fuzz: int = 0
    flat: int = 0
    res: int = 0


INPUT_ABSINFO_FIELDS = InputAbsInfo._fields
INPUT_ABSINFO_SIZE = 20

#: struct virtio_input_devids { le16 bustype; le16 vendor; le16 product; le16 version; }  (5.8.4)
INPUT_DEVIDS = struct.Struct("<HHHH")


class InputDevIds(NamedTuple):
    """One ``INPUT_DEVIDS`` unpacked (evdev's struct input_id)."""

    bustype: int
    vendor: int
    product: int
    version: int


INPUT_DEVIDS_FIELDS = InputDevIds._fields
INPUT_DEVIDS_SIZE = 8

#: struct virtio_input_event { le16 type; le16 code; le32 value; }  (5.8.6).  ``value`` is
#: packed as signed (evdev __s32: relative motion is negative).
INPUT_EVENT = struct.Struct("<HHi")


class InputEvent(NamedTuple):
    """One ``INPUT_EVENT`` unpacked, field by field."""

    type: int
    code: int
    value: int


INPUT_EVENT_FIELDS = InputEvent._fields
INPUT_EVENT_SIZE = 8
