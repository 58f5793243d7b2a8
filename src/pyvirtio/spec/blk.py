"""Block device (VIRTIO 1.3, 5.2).

Data only.  All fields are little-endian.  A request is the 16-byte out header, then data, then
(for zone append) le64 append_sector, then a 1-byte status written by the device (5.2.6).
"""

import struct
from enum import IntEnum
from typing import NamedTuple

#: Queues: requestq1..requestqN at indices 0..N-1; N > 1 only with MQ (5.2.2).
REQUESTQ = 0

#: Data is always addressed in 512-byte sectors, whatever blk_size says (5.2.6).
SECTOR_SIZE = 512
SECTOR_SHIFT = 9

#: GET_ID returns a device ID string of up to 20 bytes, NUL-padded when shorter (5.2.6).
BLK_ID_BYTES = 20


class BlkFeature(IntEnum):
    """Feature bit numbers (5.2.3; legacy bits 5.2.3.1)."""

    BARRIER = 0  # legacy: request barriers
    SIZE_MAX = 1
    SEG_MAX = 2
    GEOMETRY = 4
    RO = 5
    BLK_SIZE = 6
    SCSI = 7  # legacy: SCSI packet commands
    FLUSH = 9
    TOPOLOGY = 10
    CONFIG_WCE = 11
    MQ = 12
    DISCARD = 13
    WRITE_ZEROES = 14
    LIFETIME = 15
    SECURE_ERASE = 16
    ZONED = 17  # 1.3

    WCE = 9  # legacy name of FLUSH


#: Legacy-only feature bits (5.2.3.1).
LEGACY_FEATURES = frozenset({BlkFeature.BARRIER, BlkFeature.SCSI})

# --- configuration layout (5.2.4) ----------------------------------------------------------------

#: struct virtio_blk_config, 96 bytes in 1.3 (1.2 stops at 72, before ``zoned``).  Padding bytes
#: (unused0, unused1[3], zoned.unused2[3]) are ``x`` and do not appear in the field list.
BLK_CONFIG = struct.Struct("<QIIHBBIBBHIBxHIIIIIB3xIIIIIIIIB3x")


class BlkConfig(NamedTuple):
    """One ``BLK_CONFIG`` unpacked, field by field."""

    capacity: int
    size_max: int
    seg_max: int
    cylinders: int  # geometry
    heads: int
    sectors: int
    blk_size: int
    physical_block_exp: int  # topology
    alignment_offset: int
    min_io_size: int
    opt_io_size: int
    writeback: int
    num_queues: int
    max_discard_sectors: int
    max_discard_seg: int
    discard_sector_alignment: int
    max_write_zeroes_sectors: int
    max_write_zeroes_seg: int
    write_zeroes_may_unmap: int
    max_secure_erase_sectors: int
    max_secure_erase_seg: int
    secure_erase_sector_alignment: int
    zone_sectors: int  # zoned
    max_open_zones: int
    max_active_zones: int
    max_append_sectors: int
    write_granularity: int
    model: int


BLK_CONFIG_FIELDS = BlkConfig._fields
BLK_CONFIG_SIZE = 96
BLK_CONFIG_SIZE_1_2 = 72


class BlkConfigOffset(IntEnum):
    """Field offsets in struct virtio_blk_config (5.2.4)."""

    CAPACITY = 0  # le64, in 512-byte sectors
    SIZE_MAX = 8  # le32
    SEG_MAX = 12  # le32
    CYLINDERS = 16  # le16
    HEADS = 18  # u8
    SECTORS = 19  # u8
    BLK_SIZE = 20  # le32
    PHYSICAL_BLOCK_EXP = 24  # u8
    ALIGNMENT_OFFSET = 25  # u8
    MIN_IO_SIZE = 26  # le16
    OPT_IO_SIZE = 28  # le32
    WRITEBACK = 32  # u8, the only field the driver writes (with CONFIG_WCE)
    UNUSED0 = 33  # u8
    NUM_QUEUES = 34  # le16 (u16 in 1.3's listing, le16 in 1.4)
    MAX_DISCARD_SECTORS = 36
    MAX_DISCARD_SEG = 40
    DISCARD_SECTOR_ALIGNMENT = 44
    MAX_WRITE_ZEROES_SECTORS = 48
    MAX_WRITE_ZEROES_SEG = 52
    WRITE_ZEROES_MAY_UNMAP = 56  # u8
    UNUSED1 = 57  # u8[3]
    MAX_SECURE_ERASE_SECTORS = 60
    MAX_SECURE_ERASE_SEG = 64
    SECURE_ERASE_SECTOR_ALIGNMENT = 68
    ZONE_SECTORS = 72
    MAX_OPEN_ZONES = 76
    MAX_ACTIVE_ZONES = 80
    MAX_APPEND_SECTORS = 84
    WRITE_GRANULARITY = 88
    MODEL = 92  # u8, BlkZonedModel
    UNUSED2 = 93  # u8[3]


class BlkZonedModel(IntEnum):
    """``zoned.model`` values (5.2.4)."""

    NONE = 0  # host-managed/aware zoning not offered
    HM = 1  # host-managed
    HA = 2  # host-aware


# --- requests (5.2.6) ----------------------------------------------------------------------------

#: struct virtio_blk_req out header { le32 type; le32 reserved; le64 sector; }.  ``reserved`` was
#: ``ioprio`` in the legacy interface.
BLK_REQ_HEADER = struct.Struct("<IIQ")


class BlkReqHeader(NamedTuple):
    """One ``BLK_REQ_HEADER`` unpacked, field by field."""

    type: int
    reserved: int
    sector: int


BLK_REQ_HEADER_FIELDS = BlkReqHeader._fields
BLK_REQ_HEADER_SIZE = 16
#: The device-writable status byte at the very end of every request.
BLK_STATUS_SIZE = 1


class BlkReqType(IntEnum):
    """Request types (5.2.6; zone types 5.2.6 "zoned"; legacy 5.2.6.3)."""

    IN = 0
    OUT = 1
    SCSI_CMD = 2  # legacy
    SCSI_CMD_OUT = 3  # legacy
    FLUSH = 4
    FLUSH_OUT = 5  # legacy
    GET_ID = 8
    GET_LIFETIME = 10
    DISCARD = 11
    WRITE_ZEROES = 13
    SECURE_ERASE = 14
    ZONE_APPEND = 15
    ZONE_REPORT = 16
    ZONE_OPEN = 18
    ZONE_CLOSE = 20
    ZONE_FINISH = 22
    ZONE_RESET = 24
    ZONE_RESET_ALL = 26


#: Legacy: OR'ed into ``type`` to ask for a barrier (5.2.6.3).
BLK_T_BARRIER = 0x80000000


class BlkStatus(IntEnum):
    """Status byte values (5.2.6; zoned statuses 3-6)."""

    OK = 0
    IOERR = 1
    UNSUPP = 2
    ZONE_INVALID_CMD = 3
    ZONE_UNALIGNED_WP = 4
    ZONE_OPEN_RESOURCE = 5
    ZONE_ACTIVE_RESOURCE = 6


#: struct virtio_blk_discard_write_zeroes { le64 sector; le32 num_sectors; le32 flags; } — one
#: segment of DISCARD / WRITE_ZEROES / SECURE_ERASE data (5.2.6).
BLK_DISCARD_WRITE_ZEROES = struct.Struct("<QII")


class BlkDiscardWriteZeroes(NamedTuple):
    """One ``BLK_DISCARD_WRITE_ZEROES`` unpacked, field by field."""

    sector: int
    num_sectors: int
    flags: int


BLK_DISCARD_WRITE_ZEROES_FIELDS = BlkDiscardWriteZeroes._fields
BLK_DISCARD_WRITE_ZEROES_SIZE = 16
#: flags bit 0: WRITE_ZEROES may unmap; other bits reserved.
BLK_WRITE_ZEROES_FLAG_UNMAP = 0x1

#: struct virtio_blk_lifetime { le16 pre_eol_info; le16 device_lifetime_est_typ_a;
#: le16 device_lifetime_est_typ_b; }  (5.2.6)
BLK_LIFETIME = struct.Struct("<HHH")
BLK_LIFETIME_FIELDS = ("pre_eol_info", "device_lifetime_est_typ_a", "device_lifetime_est_typ_b")
BLK_LIFETIME_SIZE = 6


class BlkPreEolInfo(IntEnum):
    """``pre_eol_info`` values of GET_LIFETIME (5.2.6)."""

    UNDEFINED = 0
    NORMAL = 1  # < 80% of reserved blocks consumed
    WARNING = 2  # 80% consumed
    URGENT = 3  # 90% consumed


#: ZONE_APPEND in-header: le64 append_sector before the status byte (struct virtio_blk_req_za).
BLK_ZONE_APPEND_SECTOR = struct.Struct("<Q")

#: struct virtio_blk_zone_report { le64 nr_zones; u8 reserved[56]; descriptors[] }  (5.2.6)
BLK_ZONE_REPORT_HEADER = struct.Struct("<Q56x")
BLK_ZONE_REPORT_HEADER_SIZE = 64

#: struct virtio_blk_zone_descriptor { le64 z_cap; le64 z_start; le64 z_wp; u8 z_type;
#: u8 z_state; u8 reserved[38]; }  (5.2.6)
BLK_ZONE_DESCRIPTOR = struct.Struct("<QQQBB38x")
BLK_ZONE_DESCRIPTOR_FIELDS = ("z_cap", "z_start", "z_wp", "z_type", "z_state")
BLK_ZONE_DESCRIPTOR_SIZE = 64


class BlkZoneType(IntEnum):
    """``z_type`` values (5.2.6)."""

    CONV = 1  # conventional
    SWR = 2  # sequential write required
    SWP = 3  # sequential write preferred


class BlkZoneState(IntEnum):
    """``z_state`` values (5.2.6)."""

    NOT_WP = 0
    EMPTY = 1
    IOPEN = 2
    EOPEN = 3
    CLOSED = 4
    RDONLY = 13
    FULL = 14
    OFFLINE = 15
