"""GPIO device (VIRTIO 1.3, 5.18).

Data only.  All fields are little-endian.  Queues: requestq (0); eventq (1) only with IRQ
(5.18.2).
"""

import struct
from enum import IntEnum
from typing import NamedTuple

REQUESTQ = 0
EVENTQ = 1


class GpioFeature(IntEnum):
    """Feature bit numbers (5.18.3)."""

    IRQ = 0


#: struct virtio_gpio_config { le16 ngpio; u8 padding[2]; le32 gpio_names_size; }  (5.18.4)
GPIO_CONFIG = struct.Struct("<H2xI")


class GpioConfig(NamedTuple):
    """One ``GPIO_CONFIG`` unpacked, field by field."""

    ngpio: int
    gpio_names_size: int


GPIO_CONFIG_FIELDS = GpioConfig._fields
GPIO_CONFIG_SIZE = 8


class GpioConfigOffset(IntEnum):
    """Field offsets in struct virtio_gpio_config (5.18.4)."""

    NGPIO = 0
    PADDING = 2
    GPIO_NAMES_SIZE = 4


#: struct virtio_gpio_request { le16 type; le16 gpio; le32 value; }  (5.18.6)
GPIO_REQUEST = struct.Struct("<HHI")


class GpioRequest(NamedTuple):
    """One ``GPIO_REQUEST`` unpacked, field by field."""

    type: int
    gpio: int
    value: int


GPIO_REQUEST_FIELDS = GpioRequest._fields
GPIO_REQUEST_SIZE = 8

#: struct virtio_gpio_response { u8 status; u8 value; }  (5.18.6); GET_LINE_NAMES answers with
#: { u8 status; u8 value[gpio_names_size]; } instead (5.18.6.1).
GPIO_RESPONSE = struct.Struct("<BB")
GPIO_RESPONSE_FIELDS = ("status", "value")
GPIO_RESPONSE_SIZE = 2


class GpioMsgType(IntEnum):
    """Request ``type`` values (5.18.6); Linux names as aliases."""

    GET_LINE_NAMES = 0x0001
    GET_DIRECTION = 0x0002
    SET_DIRECTION = 0x0003
    GET_VALUE = 0x0004
    SET_VALUE = 0x0005
    SET_IRQ_TYPE = 0x0006

    GET_NAMES = 0x0001  # Linux VIRTIO_GPIO_MSG_GET_NAMES
    IRQ_TYPE = 0x0006  # Linux VIRTIO_GPIO_MSG_IRQ_TYPE


class GpioStatus(IntEnum):
    """Response ``status`` values (5.18.6)."""

    OK = 0x0
    ERR = 0x1


class GpioDirection(IntEnum):
    """Line directions (5.18.6)."""

    NONE = 0x00
    OUT = 0x01
    IN = 0x02


class GpioIrqType(IntEnum):
    """Interrupt trigger types for SET_IRQ_TYPE (5.18.6)."""

    NONE = 0x00
    EDGE_RISING = 0x01
    EDGE_FALLING = 0x02
    EDGE_BOTH = 0x03
    LEVEL_HIGH = 0x04
    LEVEL_LOW = 0x08


#: struct virtio_gpio_irq_request { le16 gpio; }  (5.18.7)
GPIO_IRQ_REQUEST = struct.Struct("<H")
GPIO_IRQ_REQUEST_SIZE = 2
#: struct virtio_gpio_irq_response { u8 status; }  (5.18.7)
GPIO_IRQ_RESPONSE = struct.Struct("<B")
GPIO_IRQ_RESPONSE_SIZE = 1


class GpioIrqStatus(IntEnum):
    """eventq response ``status`` values (5.18.7)."""

    INVALID = 0x0  # the buffer was returned without an interrupt (e.g. IRQ disabled)
    VALID = 0x1
