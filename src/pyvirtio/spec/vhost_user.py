"""vhost-user protocol wire format (QEMU docs/interop/vhost-user.rst, "vu.rst" below).

Data only.  vhost-user is not part of the VIRTIO spec; section names below are vu.rst's.  Every
number is in the machine's native byte order ("Message Specification"): the structs use ``=``
(native order, standard sizes, no alignment), which is little-endian on every host we target.
Where a C struct has implicit padding on the wire (IOTLB, inflight), the padding is spelled out.
"""

import struct
from enum import IntEnum, IntFlag
from typing import NamedTuple

# --- header ("Message Specification" / "Header") -------------------------------------------------

#: { u32 request; u32 flags; u32 size; } then ``size`` bytes of payload.
HEADER = struct.Struct("=III")


class Header(NamedTuple):
    """One ``HEADER`` unpacked, field by field."""

    request: int
    flags: int
    size: int


HEADER_FIELDS = Header._fields
HEADER_SIZE = 12


class HeaderFlag(IntFlag):
    """Header ``flags`` bits ("Header"): bits 0-1 version, bit 2 reply, bit 3 need_reply."""

    VERSION = 0x1  # the only protocol version; lives in VERSION_MASK
    REPLY = 0x4  # set on every reply
    NEED_REPLY = 0x8  # ask for a u64 ack (needs protocol feature REPLY_ACK)


VERSION = 0x1
VERSION_MASK = 0x3
REPLY_MASK = 0x4
NEED_REPLY_MASK = 0x8
#: Flag bits that are defined; others are reserved.
FLAGS_DEFINED_MASK = VERSION_MASK | REPLY_MASK | NEED_REPLY_MASK

#: The virtio feature bit that announces protocol features ("Communication"); it is the
#: UNUSED bit 30 of VIRTIO (1.3, 6).  Also in pyvirtio.spec.features.
VHOST_USER_F_PROTOCOL_FEATURES = 30
#: vhost feature bit: the front-end supports dirty logging ("Migration"; Linux vhost_types.h).
VHOST_F_LOG_ALL = 26

# --- requests ------------------------------------------------------------------------------------


class FrontendReq(IntEnum):
    """Front-end -> back-end request IDs ("Front-end message types")."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4  # deprecated
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21  # formerly SET_SLAVE_REQ_FD
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40
    GET_SHARED_OBJECT = 41
    SET_DEVICE_STATE_FD = 42
    CHECK_DEVICE_STATE = 43
    GET_SHMEM_CONFIG = 44  # rust-vmm/vhost and crosvm message.rs; not in vu.rst@f6b615b5


class BackendReq(IntEnum):
    """Back-end -> front-end request IDs, on the SET_BACKEND_REQ_FD socket ("Back-end message
    types"; formerly VHOST_USER_SLAVE_*)."""

    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3
    VRING_CALL = 4
    VRING_ERR = 5
    SHARED_OBJECT_ADD = 6
    SHARED_OBJECT_REMOVE = 7
    SHARED_OBJECT_LOOKUP = 8
    SHMEM_MAP = 9  # rust-vmm/vhost and crosvm; not in vu.rst@f6b615b5
    SHMEM_UNMAP = 10  # rust-vmm/vhost and crosvm; not in vu.rst@f6b615b5


class ProtocolFeature(IntEnum):
    """Protocol feature bit *numbers* ("Protocol features"); the mask is ``1 << bit``."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    NET_MTU = 4  # vu.rst spells it VHOST_USER_PROTOCOL_F_MTU
    BACKEND_REQ = 5  # formerly SLAVE_REQ
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10  # formerly SLAVE_SEND_FD
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14  # requires BACKEND_REQ and REPLY_ACK
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16
    XEN_MMAP = 17  # specified in QEMU 8.1
    SHARED_OBJECT = 18
    DEVICE_STATE = 19
    # Bits 20-22 are newer than vu.rst@f6b615b5 and have moved between patch series; the values
    # are rust-vmm/vhost's after rust-vmm/vhost#367 (crosvm agrees on SHMEM = 1 << 22).
    GET_VRING_BASE_INFLIGHT = 20
    GPA_ADDRESSES = 21
    SHMEM = 22

    MTU = 4  # vu.rst name


#: Protocol features that are only valid together with others ("In-band notifications").
PROTOCOL_FEATURE_REQUIRES: dict[ProtocolFeature, frozenset[ProtocolFeature]] = {
    ProtocolFeature.INBAND_NOTIFICATIONS: frozenset(
        {ProtocolFeature.BACKEND_REQ, ProtocolFeature.REPLY_ACK}
    ),
}

#: Requests that always get a reply, plus the ones that do when a protocol feature is
#: negotiated ("Communication").  With REPLY_ACK, NEED_REPLY adds a u64 reply to any other.
ALWAYS_REPLY = frozenset(
    {FrontendReq.GET_FEATURES, FrontendReq.GET_PROTOCOL_FEATURES, FrontendReq.GET_VRING_BASE}
)
REPLY_IF_PROTOCOL_FEATURE: dict[FrontendReq, ProtocolFeature] = {
    FrontendReq.SET_LOG_BASE: ProtocolFeature.LOG_SHMFD,
    FrontendReq.GET_INFLIGHT_FD: ProtocolFeature.INFLIGHT_SHMFD,
}

#: Requests that carry file descriptors in ancillary data ("Communication"); SET_LOG_BASE only
#: with LOG_SHMFD and SET_INFLIGHT_FD only with INFLIGHT_SHMFD.
FD_REQUESTS = frozenset(
    {
        FrontendReq.ADD_MEM_REG,
        FrontendReq.SET_MEM_TABLE,
        FrontendReq.SET_LOG_BASE,
        FrontendReq.SET_LOG_FD,
        FrontendReq.SET_VRING_KICK,
        FrontendReq.SET_VRING_CALL,
        FrontendReq.SET_VRING_ERR,
        FrontendReq.SET_BACKEND_REQ_FD,
        FrontendReq.SET_INFLIGHT_FD,
        FrontendReq.SET_DEVICE_STATE_FD,
    }
)

#: At most this many fds per back-end message with BACKEND_SEND_FD ("Back-end communication").
BACKEND_MAX_FDS = 8

# --- payloads ("Payload") ------------------------------------------------------------------------

#: A single 64-bit integer.
U64 = struct.Struct("=Q")
U64_SIZE = 8

#: Vring state description { u32 index; u32 num; } (SET_VRING_NUM/BASE, GET_VRING_BASE,
#: SET_VRING_ENABLE, SET_VRING_ENDIAN, VRING_KICK, BACKEND VRING_CALL/ERR).
VRING_STATE = struct.Struct("=II")


class VringState(NamedTuple):
    """One ``VRING_STATE`` unpacked, field by field."""

    index: int  # type: ignore[assignment]  # vu.rst's name; shadows tuple.index, as before
    num: int


VRING_STATE_FIELDS = VringState._fields
VRING_STATE_SIZE = 8

#: Vring base ``num`` for split rings: bits 0-15 next avail index (free-running), 16-31 zero.
#: For packed rings: bits 0-14 next avail index, bit 15 avail wrap counter, bits 16-30 used
#: index, bit 31 used wrap counter.
VRING_BASE_SPLIT_MASK = 0xFFFF
VRING_BASE_PACKED_AVAIL_IDX_MASK = 0x7FFF
VRING_BASE_PACKED_AVAIL_WRAP = 1 << 15
VRING_BASE_PACKED_USED_IDX_SHIFT = 16
VRING_BASE_PACKED_USED_IDX_MASK = 0x7FFF
VRING_BASE_PACKED_USED_WRAP = 1 << 31

#: SET_VRING_ENDIAN ``num`` (Linux vhost.h VHOST_VRING_*_ENDIAN).
VHOST_VRING_LITTLE_ENDIAN = 0
VHOST_VRING_BIG_ENDIAN = 1

#: Vring address description { u32 index; u32 flags; u64 desc; u64 used; u64 avail; u64 log; }
#: (Linux struct vhost_vring_addr).  The table in vu.rst also shows a "size" column that has no
#: field; the wire struct is 40 bytes.
VRING_ADDR = struct.Struct("=IIQQQQ")


class VringAddr(NamedTuple):
    """One ``VRING_ADDR`` unpacked, field by field."""

    index: int  # type: ignore[assignment]  # vu.rst's name; shadows tuple.index, as before
    flags: int
    desc_user_addr: int
    used_user_addr: int
    avail_user_addr: int
    log_guest_addr: int


VRING_ADDR_FIELDS = VringAddr._fields
VRING_ADDR_SIZE = 40
#: ``flags`` bit *number* for "log used-ring writes" (Linux vhost_types.h VHOST_VRING_F_LOG);
#: the mask is 1 << VHOST_VRING_F_LOG.
VHOST_VRING_F_LOG = 0
VRING_ADDR_F_LOG = 1 << VHOST_VRING_F_LOG

#: SET_VRING_KICK / CALL / ERR u64: bits 0-7 vring index, bit 8 "no fd, poll" (libvhost-user).
VRING_IDX_MASK = 0xFF
VRING_NOFD_MASK = 0x100

#: Memory region description { u64 guest_phys_addr; u64 memory_size; u64 userspace_addr;
#: u64 mmap_offset; }
MEMORY_REGION = struct.Struct("=QQQQ")


class MemoryRegion(NamedTuple):
    """One ``MEMORY_REGION`` unpacked, field by field."""

    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int


MEMORY_REGION_FIELDS = MemoryRegion._fields
MEMORY_REGION_SIZE = 32
#: ... with XEN_MMAP negotiated: + u32 xen_mmap_flags; u32 domid.
MEMORY_REGION_XEN = struct.Struct("=QQQQII")
MEMORY_REGION_XEN_FIELDS = MEMORY_REGION_FIELDS + ("xen_mmap_flags", "domid")
MEMORY_REGION_XEN_SIZE = 40


class XenMmapFlag(IntFlag):
    """``xen_mmap_flags`` bits ("Memory region description", with XEN_MMAP)."""

    FOREIGN = 1 << 0
    GRANT = 1 << 1
    UNMAP_ON_DEMAND = 1 << 8  # map only on demand


#: Multiple memory regions (SET_MEM_TABLE) head { u32 nregions; u32 padding; } then regions.
MEMORY_HEADER = struct.Struct("=II")
MEMORY_HEADER_FIELDS = ("nregions", "padding")
MEMORY_HEADER_SIZE = 8
#: SET_MEM_TABLE carries at most 8 regions (QEMU VHOST_MEMORY_BASELINE_NREGIONS); more need
#: CONFIGURE_MEM_SLOTS and ADD_MEM_REG.
VHOST_MEMORY_BASELINE_NREGIONS = 8
MEMORY_TABLE_MAX_SIZE = MEMORY_HEADER_SIZE + VHOST_MEMORY_BASELINE_NREGIONS * MEMORY_REGION_SIZE
#: Maximum memory slots libvhost-user supports with CONFIGURE_MEM_SLOTS (libvhost-user.h
#: VHOST_USER_MAX_RAM_SLOTS); NOT the SET_MEM_TABLE limit, which is the 8 above.
VHOST_USER_MAX_RAM_SLOTS = 509

#: Single memory region (ADD_MEM_REG / REM_MEM_REG) { u64 padding; region }.
SINGLE_MEMORY_REGION = struct.Struct("=QQQQQ")
SINGLE_MEMORY_REGION_FIELDS = ("padding",) + MEMORY_REGION_FIELDS
SINGLE_MEMORY_REGION_SIZE = 40

#: Log description { u64 mmap_size; u64 mmap_offset; } (SET_LOG_BASE with LOG_SHMFD).
LOG = struct.Struct("=QQ")
LOG_FIELDS = ("mmap_size", "mmap_offset")
LOG_SIZE = 16
#: Dirty-log page size: log[page / 8] |= 1 << page % 8 with page = addr / VHOST_LOG_PAGE.
VHOST_LOG_PAGE = 0x1000

#: IOTLB message, Linux struct vhost_iotlb_msg { u64 iova; u64 size; u64 uaddr; u8 perm;
#: u8 type; } — 26 bytes of fields, 32 with the C struct's trailing padding, as sent.
IOTLB_MSG = struct.Struct("=QQQBB6x")


class IotlbMsg(NamedTuple):
    """One ``IOTLB_MSG`` unpacked, field by field."""

    iova: int
    size: int
    uaddr: int
    perm: int
    type: int


IOTLB_MSG_FIELDS = IotlbMsg._fields
IOTLB_MSG_SIZE = 32


class IotlbPerm(IntEnum):
    """IOTLB ``perm`` ("An IOTLB message"; Linux VHOST_ACCESS_*)."""

    NONE = 0
    RO = 1
    WO = 2
    RW = 3


class IotlbType(IntEnum):
    """IOTLB ``type`` ("An IOTLB message"; Linux VHOST_IOTLB_*)."""

    MISS = 1
    UPDATE = 2
    INVALIDATE = 3
    ACCESS_FAIL = 4


#: Virtio device config space { u32 offset; u32 size; u32 flags; u8 payload[size]; }
#: (GET_CONFIG / SET_CONFIG).  A zero ``size`` in a GET_CONFIG reply signals an error.
CONFIG_HEADER = struct.Struct("=III")
CONFIG_HEADER_FIELDS = ("offset", "size", "flags")
CONFIG_HEADER_SIZE = 12
#: Largest config payload libvhost-user accepts (VHOST_USER_MAX_CONFIG_SIZE); rust-vmm/vhost
#: allows offset + size up to 0x1000 (VHOST_USER_CONFIG_SIZE).
VHOST_USER_MAX_CONFIG_SIZE = 256


class ConfigFlag(IntEnum):
    """Config ``flags`` values ("Virtio device config space")."""

    WRITABLE = 0  # front-end write of writable fields
    MIGRATION = 1  # live migration: read-only fields may be written too


#: Vring area description { u64 u64 (index | flags); u64 size; u64 offset; }
#: (BACKEND VRING_HOST_NOTIFIER_MSG).  Index in bits 0-7, bit 8 = no fd.
VRING_AREA = struct.Struct("=QQQ")
VRING_AREA_FIELDS = ("u64", "size", "offset")
VRING_AREA_SIZE = 24

#: Inflight description { u64 mmap_size; u64 mmap_offset; u16 num_queues; u16 queue_size; } —
#: 20 bytes of fields, 24 with the C struct's trailing padding, as QEMU and rust-vmm send it.
INFLIGHT = struct.Struct("=QQHH4x")


class Inflight(NamedTuple):
    """One ``INFLIGHT`` unpacked, field by field."""

    mmap_size: int
    mmap_offset: int
    num_queues: int
    queue_size: int


INFLIGHT_FIELDS = Inflight._fields
INFLIGHT_SIZE = 24

#: VhostUserShared: a 16-byte UUID (first three components big-endian).
SHARED_UUID_SIZE = 16

#: Device state transfer parameters { u32 direction; u32 phase; } (SET_DEVICE_STATE_FD).
DEVICE_STATE_PARAMS = struct.Struct("=II")
DEVICE_STATE_PARAMS_FIELDS = ("direction", "phase")
DEVICE_STATE_PARAMS_SIZE = 8


class TransferDirection(IntEnum):
    """SET_DEVICE_STATE_FD ``direction`` ("Device state transfer parameters")."""

    SAVE = 0  # back-end -> front-end (migration source)
    LOAD = 1  # front-end -> back-end (migration destination)


class MigrationPhase(IntEnum):
    """SET_DEVICE_STATE_FD ``phase`` ("Device state transfer parameters")."""

    STOPPED = 0


#: SET_DEVICE_STATE_FD reply u64: bits 0-7 error (0 = ok), bit 8 = no fd returned.
DEVICE_STATE_ERROR_MASK = 0xFF
DEVICE_STATE_NOFD_MASK = 0x100

# --- payload sizes -------------------------------------------------------------------------------

#: Exact request payload size per front-end request, where it is fixed (vu.rst payload types,
#: as QEMU sends them).  Absent: variable-size payloads (SET_MEM_TABLE: MEMORY_HEADER_SIZE +
#: n * MEMORY_REGION_SIZE, n <= 8; GET_CONFIG/SET_CONFIG: CONFIG_HEADER_SIZE + size;
#: CREATE_CRYPTO_SESSION; GET_SHMEM_CONFIG).  With XEN_MMAP, ADD_MEM_REG/REM_MEM_REG carry the
#: 40-byte Xen region (48 bytes) instead.  SET_LOG_BASE: vu.rst says u64, but QEMU and rust-vmm
#: send the 16-byte log description.
REQUEST_PAYLOAD_SIZE: dict[FrontendReq, int] = {
    FrontendReq.GET_FEATURES: 0,
    FrontendReq.SET_FEATURES: U64_SIZE,
    FrontendReq.SET_OWNER: 0,
    FrontendReq.RESET_OWNER: 0,
    FrontendReq.SET_LOG_BASE: LOG_SIZE,
    FrontendReq.SET_LOG_FD: 0,
    FrontendReq.SET_VRING_NUM: VRING_STATE_SIZE,
    FrontendReq.SET_VRING_ADDR: VRING_ADDR_SIZE,
    FrontendReq.SET_VRING_BASE: VRING_STATE_SIZE,
    FrontendReq.GET_VRING_BASE: VRING_STATE_SIZE,
    FrontendReq.SET_VRING_KICK: U64_SIZE,
    FrontendReq.SET_VRING_CALL: U64_SIZE,
    FrontendReq.SET_VRING_ERR: U64_SIZE,
    FrontendReq.GET_PROTOCOL_FEATURES: 0,
    FrontendReq.SET_PROTOCOL_FEATURES: U64_SIZE,
    FrontendReq.GET_QUEUE_NUM: 0,
    FrontendReq.SET_VRING_ENABLE: VRING_STATE_SIZE,
    FrontendReq.SEND_RARP: U64_SIZE,
    FrontendReq.NET_SET_MTU: U64_SIZE,
    FrontendReq.SET_BACKEND_REQ_FD: 0,
    FrontendReq.IOTLB_MSG: IOTLB_MSG_SIZE,
    FrontendReq.SET_VRING_ENDIAN: VRING_STATE_SIZE,
    FrontendReq.CLOSE_CRYPTO_SESSION: U64_SIZE,
    FrontendReq.POSTCOPY_ADVISE: 0,
    FrontendReq.POSTCOPY_LISTEN: 0,
    FrontendReq.POSTCOPY_END: 0,
    FrontendReq.GET_INFLIGHT_FD: INFLIGHT_SIZE,
    FrontendReq.SET_INFLIGHT_FD: INFLIGHT_SIZE,
    FrontendReq.GPU_SET_SOCKET: 0,
    FrontendReq.RESET_DEVICE: 0,
    FrontendReq.VRING_KICK: VRING_STATE_SIZE,
    FrontendReq.GET_MAX_MEM_SLOTS: 0,
    FrontendReq.ADD_MEM_REG: SINGLE_MEMORY_REGION_SIZE,
    FrontendReq.REM_MEM_REG: SINGLE_MEMORY_REGION_SIZE,
    FrontendReq.SET_STATUS: U64_SIZE,
    FrontendReq.GET_STATUS: 0,
    FrontendReq.GET_SHARED_OBJECT: SHARED_UUID_SIZE,
    FrontendReq.SET_DEVICE_STATE_FD: DEVICE_STATE_PARAMS_SIZE,
    FrontendReq.CHECK_DEVICE_STATE: 0,
}

#: Reply payload size of the requests that answer with a fixed-size body.  GET_CONFIG replies
#: with CONFIG_HEADER_SIZE + size; SET_MEM_TABLE / ADD_MEM_REG reply only in postcopy; any
#: request answered because of NEED_REPLY gets a u64.
REPLY_PAYLOAD_SIZE: dict[FrontendReq, int] = {
    FrontendReq.GET_FEATURES: U64_SIZE,
    FrontendReq.GET_PROTOCOL_FEATURES: U64_SIZE,
    FrontendReq.GET_VRING_BASE: VRING_STATE_SIZE,
    FrontendReq.GET_QUEUE_NUM: U64_SIZE,
    FrontendReq.SET_LOG_BASE: U64_SIZE,
    FrontendReq.IOTLB_MSG: U64_SIZE,
    FrontendReq.POSTCOPY_END: U64_SIZE,
    FrontendReq.GET_INFLIGHT_FD: INFLIGHT_SIZE,
    FrontendReq.GET_MAX_MEM_SLOTS: U64_SIZE,
    FrontendReq.GET_STATUS: U64_SIZE,
    FrontendReq.SET_DEVICE_STATE_FD: U64_SIZE,
    FrontendReq.CHECK_DEVICE_STATE: U64_SIZE,
}

#: Back-end request payload sizes, where fixed ("Back-end message types").
BACKEND_REQUEST_PAYLOAD_SIZE: dict[BackendReq, int] = {
    BackendReq.IOTLB_MSG: IOTLB_MSG_SIZE,
    BackendReq.CONFIG_CHANGE_MSG: 0,
    BackendReq.VRING_HOST_NOTIFIER_MSG: VRING_AREA_SIZE,
    BackendReq.VRING_CALL: VRING_STATE_SIZE,
    BackendReq.VRING_ERR: VRING_STATE_SIZE,
    BackendReq.SHARED_OBJECT_ADD: SHARED_UUID_SIZE,
    BackendReq.SHARED_OBJECT_REMOVE: SHARED_UUID_SIZE,
    BackendReq.SHARED_OBJECT_LOOKUP: SHARED_UUID_SIZE,
}

#: Largest payload rust-vmm/vhost accepts (MAX_MSG_SIZE); no request above needs more.
MAX_MSG_SIZE = 0x1000
#: At most this many fds in one message (rust-vmm/vhost MAX_ATTACHED_FD_ENTRIES).
MAX_ATTACHED_FD_ENTRIES = 32

# --- inflight I/O tracking ("Inflight I/O tracking") ---------------------------------------------

#: Each queue's region in the inflight buffer is aligned to this (libvhost-user
#: INFLIGHT_ALIGNMENT) and starts with version INFLIGHT_VERSION (0 = uninitialised).
INFLIGHT_ALIGNMENT = 64
INFLIGHT_VERSION = 1

#: DescStateSplit { u8 inflight; u8 padding[5]; u16 next; u64 counter; }
DESC_STATE_SPLIT = struct.Struct("=B5xHQ")
DESC_STATE_SPLIT_FIELDS = ("inflight", "next", "counter")
DESC_STATE_SPLIT_SIZE = 16

#: QueueRegionSplit head { u64 features; u16 version; u16 desc_num; u16 last_batch_head;
#: u16 used_idx; } then DescStateSplit desc[desc_num].
QUEUE_REGION_SPLIT = struct.Struct("=QHHHH")
QUEUE_REGION_SPLIT_FIELDS = ("features", "version", "desc_num", "last_batch_head", "used_idx")
QUEUE_REGION_SPLIT_SIZE = 16

#: DescStatePacked { u8 inflight; u8 padding; u16 next; u16 last; u16 num; u64 counter; u16 id;
#: u16 flags; u32 len; u64 addr; }
DESC_STATE_PACKED = struct.Struct("=BxHHHQHHIQ")
DESC_STATE_PACKED_FIELDS = ("inflight", "next", "last", "num", "counter", "id", "flags", "len", "addr")
DESC_STATE_PACKED_SIZE = 32

#: QueueRegionPacked head { u64 features; u16 version; u16 desc_num; u16 free_head;
#: u16 old_free_head; u16 used_idx; u16 old_used_idx; u8 used_wrap_counter;
#: u8 old_used_wrap_counter; u8 padding[7]; } then DescStatePacked desc[] at the next 8-byte
#: boundary (offset 32: 29 bytes of fields + 3 bytes of C alignment padding).
QUEUE_REGION_PACKED = struct.Struct("=QHHHHHHBB7x3x")
QUEUE_REGION_PACKED_FIELDS = (
    "features",
    "version",
    "desc_num",
    "free_head",
    "old_free_head",
    "used_idx",
    "old_used_idx",
    "used_wrap_counter",
    "old_used_wrap_counter",
)
QUEUE_REGION_PACKED_SIZE = 32
