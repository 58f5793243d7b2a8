"""Network device (VIRTIO 1.3, 5.1).

Data only.  All fields are little-endian (legacy: guest-native, 5.1.6.1).

Queues (5.1.2): receiveq k at 2k, transmitq k at 2k+1 for k = 0..N-1, then controlq at 2N.
N is 1 unless MQ or RSS is negotiated, in which case it is ``max_virtqueue_pairs``; controlq
exists only with CTRL_VQ.
"""

import struct
from enum import IntEnum, IntFlag
from typing import NamedTuple

RECEIVEQ1 = 0
TRANSMITQ1 = 1


class NetFeature(IntEnum):
    """Feature bit numbers (5.1.3; legacy 5.1.3.2).  1.4-only bits are marked."""

    CSUM = 0
    GUEST_CSUM = 1
    CTRL_GUEST_OFFLOADS = 2
    MTU = 3
    MAC = 5
    GSO = 6  # legacy
    GUEST_TSO4 = 7
    GUEST_TSO6 = 8
    GUEST_ECN = 9
    GUEST_UFO = 10
    HOST_TSO4 = 11
    HOST_TSO6 = 12
    HOST_ECN = 13
    HOST_UFO = 14
    MRG_RXBUF = 15
    STATUS = 16
    CTRL_VQ = 17
    CTRL_RX = 18
    CTRL_VLAN = 19
    CTRL_RX_EXTRA = 20  # 1.3
    GUEST_ANNOUNCE = 21
    MQ = 22
    CTRL_MAC_ADDR = 23
    GUEST_RSC4 = 41  # legacy
    GUEST_RSC6 = 42  # legacy
    DEVICE_STATS = 50  # 1.4
    HASH_TUNNEL = 51  # 1.3
    VQ_NOTF_COAL = 52  # 1.3
    NOTF_COAL = 53  # 1.3
    GUEST_USO4 = 54  # 1.3
    GUEST_USO6 = 55  # 1.3
    HOST_USO = 56
    HASH_REPORT = 57
    GUEST_HDRLEN = 59
    RSS = 60
    RSC_EXT = 61
    STANDBY = 62
    SPEED_DUPLEX = 63
    RSS_CONTEXT = 64  # 1.4
    GUEST_UDP_TUNNEL_GSO = 65  # 1.4
    GUEST_UDP_TUNNEL_GSO_CSUM = 66  # 1.4
    HOST_UDP_TUNNEL_GSO = 67  # 1.4
    HOST_UDP_TUNNEL_GSO_CSUM = 68  # 1.4
    OUT_NET_HEADER = 69  # 1.4
    IPSEC = 70  # 1.4


#: Legacy-only feature bits (5.1.3.2).
LEGACY_FEATURES = frozenset({NetFeature.GSO, NetFeature.GUEST_RSC4, NetFeature.GUEST_RSC6})

#: Feature dependencies, "Feature bit requirements" (5.1.3.1): each feature needs all of the
#: features in at least one of the listed alternatives.  (1.4-only rows omitted.)
FEATURE_REQUIRES: dict[NetFeature, tuple[frozenset[NetFeature], ...]] = {
    NetFeature.GUEST_TSO4: (frozenset({NetFeature.GUEST_CSUM}),),
    NetFeature.GUEST_TSO6: (frozenset({NetFeature.GUEST_CSUM}),),
    NetFeature.GUEST_ECN: (frozenset({NetFeature.GUEST_TSO4}), frozenset({NetFeature.GUEST_TSO6})),
    NetFeature.GUEST_UFO: (frozenset({NetFeature.GUEST_CSUM}),),
    NetFeature.GUEST_USO4: (frozenset({NetFeature.GUEST_CSUM}),),
    NetFeature.GUEST_USO6: (frozenset({NetFeature.GUEST_CSUM}),),
    NetFeature.HOST_TSO4: (frozenset({NetFeature.CSUM}),),
    NetFeature.HOST_TSO6: (frozenset({NetFeature.CSUM}),),
    NetFeature.HOST_ECN: (frozenset({NetFeature.HOST_TSO4}), frozenset({NetFeature.HOST_TSO6})),
    NetFeature.HOST_UFO: (frozenset({NetFeature.CSUM}),),
    NetFeature.HOST_USO: (frozenset({NetFeature.CSUM}),),
    NetFeature.CTRL_RX: (frozenset({NetFeature.CTRL_VQ}),),
    NetFeature.CTRL_VLAN: (frozenset({NetFeature.CTRL_VQ}),),
    NetFeature.GUEST_ANNOUNCE: (frozenset({NetFeature.CTRL_VQ}),),
    NetFeature.MQ: (frozenset({NetFeature.CTRL_VQ}),),
    NetFeature.CTRL_MAC_ADDR: (frozenset({NetFeature.CTRL_VQ}),),
    NetFeature.NOTF_COAL: (frozenset({NetFeature.CTRL_VQ}),),
    NetFeature.RSC_EXT: (frozenset({NetFeature.HOST_TSO4}), frozenset({NetFeature.HOST_TSO6})),
    NetFeature.RSS: (frozenset({NetFeature.CTRL_VQ}),),
    NetFeature.VQ_NOTF_COAL: (frozenset({NetFeature.CTRL_VQ}),),
    NetFeature.HASH_TUNNEL: (
        frozenset({NetFeature.CTRL_VQ, NetFeature.RSS}),
        frozenset({NetFeature.CTRL_VQ, NetFeature.HASH_REPORT}),
    ),
}

# --- configuration layout (5.1.4) ----------------------------------------------------------------

#: struct virtio_net_config { u8 mac[6]; le16 status; le16 max_virtqueue_pairs; le16 mtu;
#: le32 speed; u8 duplex; u8 rss_max_key_size; le16 rss_max_indirection_table_length;
#: le32 supported_hash_types; le32 supported_tunnel_types; }  28 bytes in 1.3, 24 in 1.2.
NET_CONFIG = struct.Struct("<6sHHHIBBHII")


class NetConfig(NamedTuple):
    """One ``NET_CONFIG`` unpacked, field by field."""

    mac: bytes
    status: int
    max_virtqueue_pairs: int
    mtu: int
    speed: int
    duplex: int
    rss_max_key_size: int
    rss_max_indirection_table_length: int
    supported_hash_types: int
    supported_tunnel_types: int


NET_CONFIG_FIELDS = NetConfig._fields
NET_CONFIG_SIZE = 28
NET_CONFIG_SIZE_1_2 = 24


class NetConfigOffset(IntEnum):
    """Field offsets in struct virtio_net_config (5.1.4)."""

    MAC = 0  # u8[6], with MAC
    STATUS = 6  # le16, with STATUS
    MAX_VIRTQUEUE_PAIRS = 8  # le16, with MQ or RSS
    MTU = 10  # le16, with MTU
    SPEED = 12  # le32, with SPEED_DUPLEX
    DUPLEX = 16  # u8, with SPEED_DUPLEX
    RSS_MAX_KEY_SIZE = 17  # u8, with RSS or HASH_REPORT
    RSS_MAX_INDIRECTION_TABLE_LENGTH = 18  # le16, with RSS
    SUPPORTED_HASH_TYPES = 20  # le32, with RSS or HASH_REPORT
    SUPPORTED_TUNNEL_TYPES = 24  # le32, with HASH_TUNNEL


class NetStatus(IntFlag):
    """Bits of the config ``status`` field (5.1.4)."""

    LINK_UP = 1
    ANNOUNCE = 2


#: ``speed`` is in Mbit/s, 0..0x7fffffff, or this for unknown (5.1.4).
NET_SPEED_UNKNOWN = 0xFFFFFFFF
NET_SPEED_MAX = 0x7FFFFFFF
#: ``duplex`` values (5.1.4).
NET_DUPLEX_HALF = 0x00
NET_DUPLEX_FULL = 0x01
NET_DUPLEX_UNKNOWN = 0xFF
#: Size of the ``mac`` field.
ETH_ALEN = 6

# --- packet header (5.1.6) -----------------------------------------------------------------------

#: struct virtio_net_hdr { u8 flags; u8 gso_type; le16 hdr_len; le16 gso_size; le16 csum_start;
#: le16 csum_offset; le16 num_buffers; }  — 12 bytes, the header of every packet with
#: VERSION_1 or MRG_RXBUF (5.1.6).
NET_HDR = struct.Struct("<BBHHHHH")


class NetHdr(NamedTuple):
    """One ``NET_HDR`` unpacked, field by field."""

    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int
    num_buffers: int


NET_HDR_FIELDS = NetHdr._fields
NET_HDR_SIZE = 12

#: Legacy header without num_buffers (no VERSION_1 and no MRG_RXBUF), 10 bytes (5.1.6.1).
NET_HDR_LEGACY = struct.Struct("<BBHHHH")
NET_HDR_LEGACY_FIELDS = NET_HDR_FIELDS[:-1]
NET_HDR_LEGACY_SIZE = 10

#: The header with HASH_REPORT: + le32 hash_value; le16 hash_report; le16 padding_reserved;
#: 20 bytes (5.1.6).
NET_HDR_HASH = struct.Struct("<BBHHHHHIHH")
NET_HDR_HASH_FIELDS = NET_HDR_FIELDS + ("hash_value", "hash_report", "padding_reserved")
NET_HDR_HASH_SIZE = 20


class NetHdrFlag(IntFlag):
    """virtio_net_hdr ``flags`` (5.1.6)."""

    NEEDS_CSUM = 1
    DATA_VALID = 2
    RSC_INFO = 4


class NetGsoType(IntEnum):
    """virtio_net_hdr ``gso_type`` (5.1.6).  ECN is a flag OR'ed into one of the others."""

    NONE = 0
    TCPV4 = 1
    UDP = 3
    TCPV6 = 4
    UDP_L4 = 5
    ECN = 0x80


NET_HDR_GSO_ECN = 0x80


class NetHashType(IntFlag):
    """Supported/enabled hash types bitmask (5.1.6.4.3, "Supported/enabled hash types")."""

    IPV4 = 1 << 0
    TCPV4 = 1 << 1
    UDPV4 = 1 << 2
    IPV6 = 1 << 3
    TCPV6 = 1 << 4
    UDPV6 = 1 << 5
    IP_EX = 1 << 6
    TCP_EX = 1 << 7
    UDP_EX = 1 << 8


class NetHashReport(IntEnum):
    """virtio_net_hdr ``hash_report`` values (5.1.6.4.5)."""

    NONE = 0
    IPV4 = 1
    TCPV4 = 2
    UDPV4 = 3
    IPV6 = 4
    TCPV6 = 5
    UDPV6 = 6
    IPV6_EX = 7
    TCPV6_EX = 8
    UDPV6_EX = 9


# --- control virtqueue (5.1.6.5) -----------------------------------------------------------------

#: struct virtio_net_ctrl { u8 class; u8 command; u8 command-specific-data[]; u8 ack; ... }
NET_CTRL_HDR = struct.Struct("<BB")
NET_CTRL_HDR_FIELDS = ("class_", "command")
NET_CTRL_HDR_SIZE = 2
NET_CTRL_ACK_SIZE = 1


class NetCtrlAck(IntEnum):
    """The ``ack`` byte (5.1.6.5)."""

    OK = 0
    ERR = 1


class NetCtrlClass(IntEnum):
    """Control command classes (5.1.6.5.*)."""

    RX = 0
    MAC = 1
    VLAN = 2
    ANNOUNCE = 3
    MQ = 4
    GUEST_OFFLOADS = 5
    NOTF_COAL = 6
    HASH_TUNNEL = 7  # 1.3
    STATS = 8  # 1.4
    RSS_CTX = 9  # 1.4 (VIRTNET_RSS_CTX_CTRL)


class NetCtrlRx(IntEnum):
    """Commands of class RX (5.1.6.5.1); data is one u8 on/off."""

    PROMISC = 0
    ALLMULTI = 1
    ALLUNI = 2  # CTRL_RX_EXTRA
    NOMULTI = 3  # CTRL_RX_EXTRA
    NOUNI = 4  # CTRL_RX_EXTRA
    NOBCAST = 5  # CTRL_RX_EXTRA


class NetCtrlMac(IntEnum):
    """Commands of class MAC (5.1.6.5.2)."""

    TABLE_SET = 0  # two struct virtio_net_ctrl_mac: unicast, then multicast
    ADDR_SET = 1  # u8 mac[6], needs CTRL_MAC_ADDR


#: struct virtio_net_ctrl_mac { le32 entries; u8 macs[entries][6]; }
NET_CTRL_MAC_ENTRIES = struct.Struct("<I")


class NetCtrlVlan(IntEnum):
    """Commands of class VLAN (5.1.6.5.3); data is le16 vlan id."""

    ADD = 0
    DEL = 1


class NetCtrlAnnounce(IntEnum):
    """Commands of class ANNOUNCE (5.1.6.5.4)."""

    ACK = 0


class NetCtrlMq(IntEnum):
    """Commands of class MQ (5.1.6.5.6, 5.1.6.5.7; HASH_CONFIG 5.1.6.4.3)."""

    VQ_PAIRS_SET = 0  # struct virtio_net_ctrl_mq_pairs_set { le16 virtqueue_pairs; }
    RSS_CONFIG = 1  # struct virtio_net_rss_config
    HASH_CONFIG = 2  # struct virtio_net_hash_config


NET_CTRL_MQ_VQ_PAIRS_MIN = 1
NET_CTRL_MQ_VQ_PAIRS_MAX = 0x8000
NET_CTRL_MQ_PAIRS_SET = struct.Struct("<H")

#: struct virtio_net_rss_config, fixed head: { le32 hash_types; le16 indirection_table_mask;
#: le16 unclassified_queue; } then le16 indirection_table[mask + 1], then
#: { le16 max_tx_vq; u8 hash_key_length; } then u8 hash_key_data[hash_key_length]  (5.1.6.5.7)
NET_RSS_CONFIG_HEAD = struct.Struct("<IHH")
NET_RSS_CONFIG_HEAD_FIELDS = ("hash_types", "indirection_table_mask", "unclassified_queue")
NET_RSS_CONFIG_TAIL = struct.Struct("<HB")
NET_RSS_CONFIG_TAIL_FIELDS = ("max_tx_vq", "hash_key_length")

#: struct virtio_net_hash_config { le32 hash_types; le16 reserved[4]; u8 hash_key_length;
#: u8 hash_key_data[hash_key_length]; }  (5.1.6.4.3)
NET_HASH_CONFIG_HEAD = struct.Struct("<I8xB")
NET_HASH_CONFIG_HEAD_FIELDS = ("hash_types", "hash_key_length")
NET_HASH_CONFIG_HEAD_SIZE = 13


class NetCtrlGuestOffloads(IntEnum):
    """Commands of class GUEST_OFFLOADS (5.1.6.5.8); data is le64 offloads bitmask."""

    SET = 0


NET_CTRL_GUEST_OFFLOADS = struct.Struct("<Q")


class NetCtrlNotfCoal(IntEnum):
    """Commands of class NOTF_COAL (5.1.6.5.9)."""

    TX_SET = 0
    RX_SET = 1
    VQ_SET = 2  # VQ_NOTF_COAL
    VQ_GET = 3  # VQ_NOTF_COAL


#: struct virtio_net_ctrl_coal { le32 max_packets; le32 max_usecs; }
NET_CTRL_COAL = struct.Struct("<II")
NET_CTRL_COAL_FIELDS = ("max_packets", "max_usecs")
#: struct virtio_net_ctrl_coal_vq { le16 vq_index; le16 reserved; struct virtio_net_ctrl_coal; }
NET_CTRL_COAL_VQ = struct.Struct("<H2xII")
NET_CTRL_COAL_VQ_FIELDS = ("vq_index", "max_packets", "max_usecs")
