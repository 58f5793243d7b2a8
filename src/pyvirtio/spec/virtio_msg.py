"""Virtio over messages (virtio-msg): message types, ids and layouts.

Data only.  Followed draft: Linaro's virtio-msg specification draft, ``transport-msg.tex`` at
commit 7891b6b4a1d438aa1b3961888492fd6ee1b80e70 (tag ``bertrand-pr28-wmamills-draft-v31``,
2025-12-01, repository wmamills/virtio-msg-spec, base ``virtio-v1.4-wd01``), the section
"Virtio Over Messages".  Section names below are that file's ("VMSG Basic Concepts / Common
Message Format" = "Virtio Transport Options / Virtio Over Messages / Basic Concepts / Common
Message Format").  Where the draft is unclear, what pyvirtio chose is listed in
``docs/virtio-msg.md``; the implementation-defined bus messages pyvirtio adds (the draft reserves
ids 0x80-0xFF for them: "VMSG Bus Messages / Overview") are marked "pyvirtio" here.

Every numeric field is little-endian ("VMSG Basic Concepts / Endianness").
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag
from typing import NamedTuple

#: The transport revision pyvirtio implements ("VMSG Basic Concepts / Revisions": revision 1).
REVISION = 1
#: Smallest maximum message size a bus may advertise ("Message Size Bounds": at least 44).
MIN_MAX_MESSAGE_SIZE = 44
#: Largest size revision 1 allows (the revisions table: 44-65536).
MAX_MAX_MESSAGE_SIZE = 65536
#: The size a bus SHOULD NOT exceed ("Message Size Bounds": 256-byte payload + header); pyvirtio's
#: buses advertise it.
RECOMMENDED_MAX_MESSAGE_SIZE = 264

# --- the common header ("VMSG Basic Concepts / Common Message Format") -------------------------

#: type (u8), msg_id (u8), dev_num (le16), token (le16), msg_size (le16): 8 bytes.
HEADER = struct.Struct("<BBHHH")
HEADER_SIZE = HEADER.size


class MsgType(IntFlag):
    """The header's ``type`` byte: bit 0 response, bit 1 bus message; bits 2..7 reserved (zero)
    ("VMSG Basic Concepts / Common Message Format")."""

    REQUEST = 0
    RESPONSE = 1 << 0
    BUS = 1 << 1


#: Bits of ``type`` that are defined; the rest are sent as zero and ignored on receive.
TYPE_DEFINED_BITS = MsgType.RESPONSE | MsgType.BUS
#: Bus messages operate on device number 0 ("Common Message Format").
BUS_DEV_NUM = 0


class Header(NamedTuple):
    """The 8-byte common header."""

    type: int
    msg_id: int
    dev_num: int
    token: int
    msg_size: int


#: Bit 6 of an id tells requests (0) from events (1) ("VMSG Transport Messages / Overview");
#: ids 0x80-0xFF are implementation-defined (0x80-0xBF requests, 0xC0-0xFF events).
EVENT_BIT = 0x40
IMPLEMENTATION_DEFINED = 0x80


class MsgId(IntEnum):
    """Transport message ids ("VMSG Transport Messages / Overview", the ids table)."""

    GET_DEVICE_INFO = 0x02
    GET_DEVICE_FEATURES = 0x03
    SET_DRIVER_FEATURES = 0x04
    GET_CONFIG = 0x05
    SET_CONFIG = 0x06
    GET_DEVICE_STATUS = 0x07
    SET_DEVICE_STATUS = 0x08
    GET_VQUEUE = 0x09
    SET_VQUEUE = 0x0A
    RESET_VQUEUE = 0x0B
    GET_SHM = 0x0C
    EVENT_CONFIG = 0x40  # device -> driver
    EVENT_AVAIL = 0x41  # driver -> device
    EVENT_USED = 0x42  # device -> driver


class BusMsgId(IntEnum):
    """Bus message ids ("VMSG Bus Messages / Overview"); 0x80 and up are pyvirtio's own."""

    GET_DEVICES = 0x02
    PING = 0x03
    EVENT_DEVICE = 0x40  # device side -> driver side
    # pyvirtio (implementation-defined requests, 0x80-0xBF)
    BUS_INFO = 0x80  # revision, maximum message size, transport features ("Revisions")
    SET_MEMORY = 0x81  # one guest memory region, its memfd passed with the message
    CLAIM = 0x82  # take an unused device (of a class, or a given number)
    RELEASE = 0x83  # give a claimed device back
    # pyvirtio (implementation-defined events, 0xC0-0xFF)
    EVENT_ERROR = 0xC0  # a request that gets no response, and why ("Error Signaling")


class DeviceBusState(IntEnum):
    """EVENT_DEVICE's ``device_bus_state`` ("VMSG Bus Messages / BUS_MSG_EVENT_DEVICE")."""

    READY = 0x0001
    REMOVED = 0x0002


class ErrorReason(IntEnum):
    """pyvirtio's EVENT_ERROR reasons: why a request got no response (not in the draft, whose
    "VMSG Bus Messages / Overview" leaves ids 0x80 and up to the bus implementation)."""

    MALFORMED = 1  # its payload does not have the layout of its id (lengths, counts, reserved)
    BAD_STATE = 2  # not allowed now (a queue set up before FEATURES_OK, features after it ...)
    NO_DEVICE = 3  # no device with that number on the bus
    NOT_CLAIMED = 4  # the device is not claimed by this driver (claim it first)
    INVALID = 5  # well-formed but refused (a queue size above the maximum, a bad queue index)
    UNSUPPORTED = 6  # a request the device does not implement (RESET_VQUEUE without RING_RESET)


class ClaimResult(IntEnum):
    """pyvirtio's CLAIM / RELEASE / SET_MEMORY ``result`` (implementation-defined bus messages,
    "VMSG Bus Messages / Overview")."""

    OK = 0
    NONE_FREE = 1  # no unclaimed device of that class (or that number is taken)
    NO_DEVICE = 2  # no such device number
    NOT_YOURS = 3  # RELEASE of a device another driver (or nobody) claimed
    REFUSED = 4  # SET_MEMORY: the region or its fd is unusable


# --- transport message payloads ("VMSG Transport Messages / VIRTIO_MSG_*") ------------------------

class DeviceInfo(NamedTuple):
    """GET_DEVICE_INFO response."""

    device_id: int
    vendor_id: int
    num_feature_bits: int
    config_size: int
    max_virtqueues: int
    admin_vq_start: int
    admin_vq_count: int


DEVICE_INFO = struct.Struct("<IIIIIHH")


class FeatureBlocks(NamedTuple):
    """GET_DEVICE_FEATURES request (``features`` empty), its response, SET_DRIVER_FEATURES request."""

    block_index: int
    num_blocks: int
    features: tuple[int, ...] = ()


FEATURE_BLOCKS = struct.Struct("<II")  # followed by num_blocks le32 in responses / SET requests
FEATURE_WORD = struct.Struct("<I")


class ConfigRange(NamedTuple):
    """GET_CONFIG request: ``offset``, ``length``."""

    offset: int
    length: int


CONFIG_RANGE = struct.Struct("<II")


class ConfigData(NamedTuple):
    """GET_CONFIG response, SET_CONFIG request and response: generation, offset, length, data."""

    generation: int
    offset: int
    length: int
    data: bytes = b""


CONFIG_DATA = struct.Struct("<III")  # followed by ``length`` bytes (a SET_CONFIG reject: 0)


class Status(NamedTuple):
    """GET_DEVICE_STATUS response, SET_DEVICE_STATUS request and response (le32)."""

    status: int


STATUS = struct.Struct("<I")


class QueueIndex(NamedTuple):
    """GET_VQUEUE, RESET_VQUEUE and GET_SHM requests (the draft's le32 ``index``: of a queue, or
    of a shared memory region)."""

    vq_index: int


QUEUE_INDEX = struct.Struct("<I")


class VqueueInfo(NamedTuple):
    """GET_VQUEUE response (the draft's ``index`` is ``vq_index`` here)."""

    vq_index: int
    max_size: int
    cur_size: int
    reserved: int
    desc_addr: int
    driver_addr: int
    device_addr: int


VQUEUE_INFO = struct.Struct("<IIIIQQQ")


class SetVqueue(NamedTuple):
    """SET_VQUEUE request (the response has no payload; ``index`` is ``vq_index`` here)."""

    vq_index: int
    reserved0: int
    size: int
    reserved1: int
    desc_addr: int
    driver_addr: int
    device_addr: int


SET_VQUEUE = struct.Struct("<IIIIQQQ")


class ShmInfo(NamedTuple):
    """GET_SHM response (the draft gives ``address`` 32 bits; length 0: no such region)."""

    shm_index: int
    length: int
    address: int


SHM_INFO = struct.Struct("<III")


class EventConfig(NamedTuple):
    """EVENT_CONFIG: status, generation, and optionally config data (length 0: re-read)."""

    device_status: int
    generation: int
    offset: int
    length: int
    data: bytes = b""


EVENT_CONFIG = struct.Struct("<IIII")


class EventAvail(NamedTuple):
    """EVENT_AVAIL: queue index, next offset (bits 30:0) and wrap (bit 31), 0 unless
    VIRTIO_F_NOTIFICATION_DATA."""

    vq_index: int
    next_offset: int


EVENT_AVAIL = struct.Struct("<II")
NEXT_WRAP_BIT = 1 << 31


class EventUsed(NamedTuple):
    """EVENT_USED: the queue index."""

    vq_index: int


EVENT_USED = struct.Struct("<I")

# --- bus message payloads ("VMSG Bus Messages / BUS_MSG_*") ---------------------------------------


class GetDevicesRequest(NamedTuple):
    """GET_DEVICES request: a window of ``dev_count`` device numbers (the draft's ``count``)
    from ``offset``, both multiples of 8."""

    offset: int
    dev_count: int


GET_DEVICES_REQUEST = struct.Struct("<HH")


class GetDevicesResponse(NamedTuple):
    """GET_DEVICES response: the echoed window, where to go on (0: done), a bitmap LSB first."""

    offset: int
    dev_count: int
    next_offset: int
    bitmap: bytes = b""


GET_DEVICES_RESPONSE = struct.Struct("<HHH")  # followed by count/8 bytes


class Ping(NamedTuple):
    """PING request and response: 32 bits the responder echoes."""

    data: int


PING = struct.Struct("<I")


class EventDevice(NamedTuple):
    """EVENT_DEVICE: a device number and its bus state (DeviceBusState)."""

    device_number: int
    device_bus_state: int


EVENT_DEVICE = struct.Struct("<HH")


class BusInfo(NamedTuple):
    """pyvirtio BUS_INFO response (the request has no payload): what "Advertising Transport
    Parameters" says a bus makes known before any transport message."""

    revision: int
    max_message_size: int
    transport_features: int


BUS_INFO = struct.Struct("<IIQ")


class MemoryRegionMsg(NamedTuple):
    """pyvirtio SET_MEMORY request: a guest-physical range backed by ``size`` bytes at
    ``mmap_offset`` of the memfd passed with the message (SCM_RIGHTS on a socket)."""

    gpa: int
    size: int
    mmap_offset: int


SET_MEMORY = struct.Struct("<QQQ")


class ClaimRequest(NamedTuple):
    """pyvirtio CLAIM request: a given device number, or (``dev_num`` 0) any unclaimed device of
    virtio device ID ``device_id`` (0: of any class)."""

    dev_num: int
    reserved: int
    device_id: int


CLAIM_REQUEST = struct.Struct("<HHI")


class ClaimResponse(NamedTuple):
    """pyvirtio CLAIM / RELEASE / SET_MEMORY response: the device number and a ClaimResult."""

    dev_num: int
    result: int


CLAIM_RESPONSE = struct.Struct("<HH")


class ReleaseRequest(NamedTuple):
    """pyvirtio RELEASE request."""

    dev_num: int
    reserved: int


RELEASE_REQUEST = struct.Struct("<HH")


class EventError(NamedTuple):
    """pyvirtio EVENT_ERROR: the header fields of the request that gets no response, and why."""

    type: int
    msg_id: int
    dev_num: int
    token: int
    reason: int


EVENT_ERROR = struct.Struct("<BBHHH")
