"""Socket device, vsock (VIRTIO 1.3, 5.10).

Data only.  All fields are little-endian.  Queues: rx (0), tx (1), event (2) (5.10.2).
Every packet is a 44-byte header followed by ``len`` bytes of payload (5.10.6).
"""

import struct
from enum import IntEnum, IntFlag
from typing import NamedTuple

RXQ = 0
TXQ = 1
EVENTQ = 2


class VsockFeature(IntEnum):
    """Feature bit numbers (5.10.3)."""

    STREAM = 0
    SEQPACKET = 1
    NO_IMPLIED_STREAM = 2  # 1.3


#: struct virtio_vsock_config { le64 guest_cid; }  (5.10.4); the upper 32 bits are reserved (0).
VSOCK_CONFIG = struct.Struct("<Q")
VSOCK_CONFIG_FIELDS = ("guest_cid",)
VSOCK_CONFIG_SIZE = 8

#: Well-known CID of the host (5.10.4).
VSOCK_CID_HOST = 2
#: CIDs that cannot be a guest's CID (5.10.4).
VSOCK_RESERVED_CIDS = frozenset({0, 1, 2, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF})

#: struct virtio_vsock_hdr { le64 src_cid; le64 dst_cid; le32 src_port; le32 dst_port; le32 len;
#: le16 type; le16 op; le32 flags; le32 buf_alloc; le32 fwd_cnt; }  (5.10.6)
VSOCK_HDR = struct.Struct("<QQIIIHHIII")


class VsockHdr(NamedTuple):
    """One ``VSOCK_HDR`` unpacked, field by field."""

    src_cid: int
    dst_cid: int
    src_port: int
    dst_port: int
    len: int
    type: int
    op: int
    flags: int
    buf_alloc: int
    fwd_cnt: int


VSOCK_HDR_FIELDS = VsockHdr._fields
VSOCK_HDR_SIZE = 44


class VsockOp(IntEnum):
    """Header ``op`` values (5.10.6)."""

    INVALID = 0
    REQUEST = 1
    RESPONSE = 2
    RST = 3
    SHUTDOWN = 4
    RW = 5
    CREDIT_UPDATE = 6
    CREDIT_REQUEST = 7


class VsockType(IntEnum):
    """Header ``type`` values (5.10.6.2)."""

    STREAM = 1
    SEQPACKET = 2


class VsockShutdown(IntFlag):
    """``flags`` of OP_SHUTDOWN (5.10.6.5).  The spec names bit *numbers*
    (VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE 0, _F_SEND 1); these are the masks, as in Linux."""

    RECEIVE = 1 << 0  # peer will receive no more data
    SEND = 1 << 1  # peer will send no more data

    RCV = 1 << 0  # Linux VIRTIO_VSOCK_SHUTDOWN_RCV


class VsockSeqFlag(IntFlag):
    """``flags`` of OP_RW on seqpacket sockets (5.10.6.6)."""

    EOM = 1 << 0  # last packet of a message
    EOR = 1 << 1  # last packet of a record


class VsockEventId(IntEnum):
    """Event queue ``id`` values (5.10.6.7)."""

    TRANSPORT_RESET = 0


#: struct virtio_vsock_event { le32 id; }  (5.10.6.7)
VSOCK_EVENT = struct.Struct("<I")
VSOCK_EVENT_SIZE = 4
