"""I2C adapter device (VIRTIO 1.3, 5.16).

Data only.  All fields are little-endian.  One queue (5.16.2); no configuration (5.16.4).
A request is out_hdr, then an optional buffer, then the 1-byte in_hdr written by the device
(5.16.6.1).
"""

import struct
from enum import IntEnum, IntFlag
from typing import NamedTuple

REQUESTQ = 0
I2C_CONFIG_SIZE = 0


class I2cFeature(IntEnum):
    """Feature bit numbers (5.16.3)."""

    ZERO_LENGTH_REQUEST = 0  # mandatory; the driver aborts if it is not offered


#: struct virtio_i2c_out_hdr { le16 addr; le16 padding; le32 flags; }  (5.16.6.1)
#: 7-bit addresses are stored as (addr << 1); 10-bit ones as described in 5.16.6.1.
I2C_OUT_HDR = struct.Struct("<H2xI")


class I2cOutHdr(NamedTuple):
    """One ``I2C_OUT_HDR`` unpacked, field by field."""

    addr: int
    flags: int


I2C_OUT_HDR_FIELDS = I2cOutHdr._fields
I2C_OUT_HDR_SIZE = 8

#: struct virtio_i2c_in_hdr { u8 status; }  (5.16.6.1)
I2C_IN_HDR = struct.Struct("<B")
I2C_IN_HDR_SIZE = 1


class I2cFlag(IntFlag):
    """out_hdr ``flags`` (5.16.6.1); other bits are reserved (0)."""

    FAIL_NEXT = 1 << 0  # fail the next request of the group if this one fails
    M_RD = 1 << 1  # read request (otherwise write)


class I2cStatus(IntEnum):
    """in_hdr ``status`` (5.16.6.1); Linux VIRTIO_I2C_MSG_*."""

    OK = 0
    ERR = 1
