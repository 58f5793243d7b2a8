"""Virtio over PCI (VIRTIO 1.3, 4.1) and the standard PCI pieces it uses.

Data only.  All virtio structures are little-endian.  The standard PCI configuration header and
MSI-X capability come from the PCI Local Bus / PCI Express specifications (the names follow
Linux ``pci_regs.h``); the spec refers to them as [PCI].
"""

import struct
from enum import IntEnum, IntFlag

# --- standard PCI configuration space ([PCI], Linux pci_regs.h) ----------------------------------

#: Size of the standard (type 0) header and of conventional config space; PCIe extends to 4096.
PCI_STD_HEADER_SIZE = 64
PCI_CONFIG_SPACE_SIZE = 256
PCIE_CONFIG_SPACE_SIZE = 4096
PCI_STD_NUM_BARS = 6


class PciCfg(IntEnum):
    """Offsets in the type 0 PCI configuration header ([PCI])."""

    VENDOR_ID = 0x00  # le16
    DEVICE_ID = 0x02  # le16
    COMMAND = 0x04  # le16, PciCommand
    STATUS = 0x06  # le16, PciStatus
    REVISION_ID = 0x08  # u8
    CLASS_PROG = 0x09  # u8 programming interface (class code bits 7:0)
    CLASS_DEVICE = 0x0A  # u8 sub-class (class code bits 15:8); le16 read gives base<<8|sub
    CLASS_BASE = 0x0B  # u8 base class (class code bits 23:16)
    CACHE_LINE_SIZE = 0x0C
    LATENCY_TIMER = 0x0D
    HEADER_TYPE = 0x0E  # u8, bit 7 = multi-function
    BIST = 0x0F
    BAR0 = 0x10  # six le32 BARs, 0x10..0x24
    BAR1 = 0x14
    BAR2 = 0x18
    BAR3 = 0x1C
    BAR4 = 0x20
    BAR5 = 0x24
    CARDBUS_CIS = 0x28
    SUBSYSTEM_VENDOR_ID = 0x2C  # le16
    SUBSYSTEM_ID = 0x2E  # le16
    ROM_ADDRESS = 0x30
    CAPABILITY_LIST = 0x34  # u8 pointer to the first capability (low 2 bits reserved)
    INTERRUPT_LINE = 0x3C
    INTERRUPT_PIN = 0x3D  # 1 = INTA#
    MIN_GNT = 0x3E
    MAX_LAT = 0x3F


#: The six BAR offsets in order.
PCI_BAR_OFFSETS = (PciCfg.BAR0, PciCfg.BAR1, PciCfg.BAR2, PciCfg.BAR3, PciCfg.BAR4, PciCfg.BAR5)
PCI_BAR_SIZE = 4


class PciCommand(IntFlag):
    """Bits of the PCI Command register ([PCI])."""

    IO = 0x1
    MEMORY = 0x2
    MASTER = 0x4
    SPECIAL = 0x8
    INVALIDATE = 0x10
    VGA_PALETTE = 0x20
    PARITY = 0x40
    WAIT = 0x80
    SERR = 0x100
    FAST_BACK = 0x200
    INTX_DISABLE = 0x400


class PciStatus(IntFlag):
    """Bits of the PCI Status register ([PCI]); only the ones a virtio device uses."""

    INTERRUPT = 0x08  # INTx asserted
    CAP_LIST = 0x10  # capability list present (virtio devices MUST have one, 4.1.4)


#: Header type register values ([PCI]).
PCI_HEADER_TYPE_NORMAL = 0x00
PCI_HEADER_TYPE_MULTI_FUNCTION = 0x80

#: BAR low bits ([PCI]).
PCI_BAR_SPACE_IO = 0x01
PCI_BAR_MEM_TYPE_32 = 0x00
PCI_BAR_MEM_TYPE_64 = 0x04
PCI_BAR_MEM_PREFETCH = 0x08
PCI_BAR_MEM_MASK = 0xFFFFFFF0
PCI_BAR_IO_MASK = 0xFFFFFFFC

#: Interrupt pin value for INTA# ([PCI]); virtio-pci uses INTx when MSI-X is off (4.1.5.3).
PCI_INTERRUPT_PIN_INTA = 1


class PciCapId(IntEnum):
    """PCI capability IDs ([PCI]); virtio uses VNDR for its structures (4.1.4) and MSIX."""

    PM = 0x01
    MSI = 0x05
    VNDR = 0x09
    EXP = 0x10
    MSIX = 0x11


PCI_CAP_ID_VNDR = PciCapId.VNDR
PCI_CAP_ID_MSIX = PciCapId.MSIX

#: Generic capability header: cap id at +0, next pointer at +1 ([PCI]).
PCI_CAP_LIST_ID = 0
PCI_CAP_LIST_NEXT = 1

# --- MSI-X capability ([PCI] 6.8.2; Linux pci_regs.h PCI_MSIX_*) ---------------------------------

#: { u8 cap_id; u8 cap_next; le16 message_control; le32 table (offset|BIR); le32 pba (offset|BIR) }
MSIX_CAP = struct.Struct("<BBHII")
MSIX_CAP_FIELDS = ("cap_id", "cap_next", "message_control", "table", "pba")
MSIX_CAP_SIZE = 12


class MsixCap(IntEnum):
    """Offsets inside the MSI-X capability ([PCI])."""

    CAP_ID = 0
    CAP_NEXT = 1
    MESSAGE_CONTROL = 2  # le16
    TABLE = 4  # le32: offset (bits 31:3) | BIR (bits 2:0)
    PBA = 8  # le32: offset (bits 31:3) | BIR (bits 2:0)


#: Message control: table size is N-1 in bits 10:0; bit 14 function mask; bit 15 enable.
MSIX_FLAGS_QSIZE = 0x07FF
MSIX_FLAGS_MASKALL = 1 << 14
MSIX_FLAGS_ENABLE = 1 << 15
MSIX_BIR_MASK = 0x7
MSIX_OFFSET_MASK = 0xFFFFFFF8

#: One MSI-X table entry: { le32 addr_lo; le32 addr_hi; le32 data; le32 vector_control }.
MSIX_ENTRY = struct.Struct("<IIII")
MSIX_ENTRY_FIELDS = ("addr_lo", "addr_hi", "data", "vector_control")
MSIX_ENTRY_SIZE = 16


class MsixEntry(IntEnum):
    """Offsets inside one MSI-X table entry ([PCI])."""

    LOWER_ADDR = 0x0
    UPPER_ADDR = 0x4
    DATA = 0x8
    VECTOR_CTRL = 0xC


#: Vector control bit 0 masks the vector.
MSIX_ENTRY_CTRL_MASKBIT = 0x1

#: "No vector" for config_msix_vector / queue_msix_vector (4.1.5.1.2).
VIRTIO_MSI_NO_VECTOR = 0xFFFF

# --- virtio structure capabilities (4.1.4) -------------------------------------------------------


class PciCapType(IntEnum):
    """``cfg_type`` of a virtio vendor capability (4.1.4)."""

    COMMON_CFG = 1
    NOTIFY_CFG = 2
    ISR_CFG = 3
    DEVICE_CFG = 4
    PCI_CFG = 5
    SHARED_MEMORY_CFG = 8
    VENDOR_CFG = 9  # 1.3 (4.1.4.8)


#: struct virtio_pci_cap { u8 cap_vndr; u8 cap_next; u8 cap_len; u8 cfg_type; u8 bar; u8 id;
#: u8 padding[2]; le32 offset; le32 length; }  (4.1.4)
VIRTIO_PCI_CAP = struct.Struct("<BBBBBB2xII")
VIRTIO_PCI_CAP_FIELDS = ("cap_vndr", "cap_next", "cap_len", "cfg_type", "bar", "id", "offset", "length")
VIRTIO_PCI_CAP_SIZE = 16


class VirtioPciCap(IntEnum):
    """Field offsets inside struct virtio_pci_cap and its extensions (4.1.4)."""

    VNDR = 0
    NEXT = 1
    LEN = 2
    CFG_TYPE = 3
    BAR = 4
    ID = 5
    OFFSET = 8
    LENGTH = 12
    NOTIFY_OFF_MULTIPLIER = 16  # virtio_pci_notify_cap only
    OFFSET_HI = 16  # virtio_pci_cap64 only
    LENGTH_HI = 20  # virtio_pci_cap64 only
    PCI_CFG_DATA = 16  # virtio_pci_cfg_cap only


#: struct virtio_pci_notify_cap { struct virtio_pci_cap cap; le32 notify_off_multiplier; }
#: (4.1.4.4).  Notify address = cap.offset + queue_notify_off * notify_off_multiplier.
VIRTIO_PCI_NOTIFY_CAP = struct.Struct("<BBBBBB2xIII")
VIRTIO_PCI_NOTIFY_CAP_FIELDS = VIRTIO_PCI_CAP_FIELDS + ("notify_off_multiplier",)
VIRTIO_PCI_NOTIFY_CAP_SIZE = 20

#: struct virtio_pci_cap64 { struct virtio_pci_cap cap; le32 offset_hi; le32 length_hi; }
#: (4.1.4, used by the shared memory capability 4.1.4.7).
VIRTIO_PCI_CAP64 = struct.Struct("<BBBBBB2xIIII")
VIRTIO_PCI_CAP64_FIELDS = VIRTIO_PCI_CAP_FIELDS + ("offset_hi", "length_hi")
VIRTIO_PCI_CAP64_SIZE = 24

#: struct virtio_pci_cfg_cap { struct virtio_pci_cap cap; u8 pci_cfg_data[4]; }  (4.1.4.9)
VIRTIO_PCI_CFG_CAP = struct.Struct("<BBBBBB2xII4s")
VIRTIO_PCI_CFG_CAP_FIELDS = VIRTIO_PCI_CAP_FIELDS + ("pci_cfg_data",)
VIRTIO_PCI_CFG_CAP_SIZE = 20
VIRTIO_PCI_CFG_CAP_DATA_SIZE = 4

#: struct virtio_pci_vndr_data { u8 cap_vndr; u8 cap_next; u8 cap_len; u8 cfg_type;
#: u16 vendor_id; /* vendor data, padded to a multiple of 4 */ }  (4.1.4.8, 1.3)
#: vendor_id MUST NOT be 0x1AF4.
VIRTIO_PCI_VNDR_DATA = struct.Struct("<BBBBH")
VIRTIO_PCI_VNDR_DATA_FIELDS = ("cap_vndr", "cap_next", "cap_len", "cfg_type", "vendor_id")
VIRTIO_PCI_VNDR_DATA_SIZE = 6


class CommonCfg(IntEnum):
    """Field offsets in struct virtio_pci_common_cfg (4.1.4.3)."""

    DEVICE_FEATURE_SELECT = 0  # le32 RW
    DEVICE_FEATURE = 4  # le32 RO
    DRIVER_FEATURE_SELECT = 8  # le32 RW
    DRIVER_FEATURE = 12  # le32 RW
    CONFIG_MSIX_VECTOR = 16  # le16 RW
    NUM_QUEUES = 18  # le16 RO
    DEVICE_STATUS = 20  # u8 RW
    CONFIG_GENERATION = 21  # u8 RO
    QUEUE_SELECT = 22  # le16 RW
    QUEUE_SIZE = 24  # le16 RW
    QUEUE_MSIX_VECTOR = 26  # le16 RW
    QUEUE_ENABLE = 28  # le16 RW
    QUEUE_NOTIFY_OFF = 30  # le16 RO
    QUEUE_DESC = 32  # le64 RW
    QUEUE_DRIVER = 40  # le64 RW
    QUEUE_DEVICE = 48  # le64 RW
    QUEUE_NOTIF_CONFIG_DATA = 56  # le16 RO; "queue_notify_data" in 1.2
    QUEUE_RESET = 58  # le16 RW
    ADMIN_QUEUE_INDEX = 60  # le16 RO, 1.3
    ADMIN_QUEUE_NUM = 62  # le16 RO, 1.3


#: Width in bytes of each common configuration field (4.1.4.3).
COMMON_CFG_FIELD_SIZES: dict[CommonCfg, int] = {
    CommonCfg.DEVICE_FEATURE_SELECT: 4,
    CommonCfg.DEVICE_FEATURE: 4,
    CommonCfg.DRIVER_FEATURE_SELECT: 4,
    CommonCfg.DRIVER_FEATURE: 4,
    CommonCfg.CONFIG_MSIX_VECTOR: 2,
    CommonCfg.NUM_QUEUES: 2,
    CommonCfg.DEVICE_STATUS: 1,
    CommonCfg.CONFIG_GENERATION: 1,
    CommonCfg.QUEUE_SELECT: 2,
    CommonCfg.QUEUE_SIZE: 2,
    CommonCfg.QUEUE_MSIX_VECTOR: 2,
    CommonCfg.QUEUE_ENABLE: 2,
    CommonCfg.QUEUE_NOTIFY_OFF: 2,
    CommonCfg.QUEUE_DESC: 8,
    CommonCfg.QUEUE_DRIVER: 8,
    CommonCfg.QUEUE_DEVICE: 8,
    CommonCfg.QUEUE_NOTIF_CONFIG_DATA: 2,
    CommonCfg.QUEUE_RESET: 2,
    CommonCfg.ADMIN_QUEUE_INDEX: 2,
    CommonCfg.ADMIN_QUEUE_NUM: 2,
}

#: The whole struct virtio_pci_common_cfg, fields in CommonCfg order (4.1.4.3).
VIRTIO_PCI_COMMON_CFG = struct.Struct("<IIIIHHBBHHHHHQQQHHHH")
VIRTIO_PCI_COMMON_CFG_FIELDS = tuple(f.name.lower() for f in CommonCfg)
COMMON_CFG_SIZE = 64  # 1.3
COMMON_CFG_SIZE_1_2 = 60  # 1.2 ends after queue_reset

#: Fields the driver may only read (4.1.4.3 "read-only for driver").
COMMON_CFG_READ_ONLY = frozenset(
    {
        CommonCfg.DEVICE_FEATURE,
        CommonCfg.NUM_QUEUES,
        CommonCfg.CONFIG_GENERATION,
        CommonCfg.QUEUE_NOTIFY_OFF,
        CommonCfg.QUEUE_NOTIF_CONFIG_DATA,
        CommonCfg.ADMIN_QUEUE_INDEX,
        CommonCfg.ADMIN_QUEUE_NUM,
    }
)


class IsrStatus(IntFlag):
    """ISR status byte (4.1.4.5); reading it clears it."""

    QUEUE = 0x1
    CONFIG = 0x2


ISR_QUEUE = IsrStatus.QUEUE
ISR_CONFIG = IsrStatus.CONFIG
ISR_CFG_SIZE = 1

#: Notification writes: le16 queue index, or le32 with VIRTIO_F_NOTIFICATION_DATA (4.1.5.2).
NOTIFY_SIZE = 2
NOTIFY_DATA_SIZE = 4

# --- legacy interface (4.1.4.10 "Legacy Interfaces: A Note on PCI Device Layout") ---------------


class LegacyReg(IntEnum):
    """Offsets in the legacy virtio header in I/O BAR0 (4.1.4.10); native-endian for legacy."""

    HOST_FEATURES = 0  # le32 R   device features bits 0:31
    GUEST_FEATURES = 4  # le32 RW  driver features bits 0:31
    QUEUE_PFN = 8  # le32 RW  queue address >> 12
    QUEUE_NUM = 12  # le16 R   queue size
    QUEUE_SEL = 14  # le16 RW
    QUEUE_NOTIFY = 16  # le16 RW
    STATUS = 18  # u8 RW
    ISR = 19  # u8 R
    MSI_CONFIG_VECTOR = 20  # le16 RW, only with MSI-X enabled
    MSI_QUEUE_VECTOR = 22  # le16 RW, only with MSI-X enabled


#: Device-specific config starts here in the legacy header, without / with MSI-X (4.1.4.10).
LEGACY_CONFIG_OFFSET = 20
LEGACY_CONFIG_OFFSET_MSIX = 24
#: Legacy QUEUE_PFN is the ring address shifted by 12; legacy rings are 4096-aligned.
LEGACY_QUEUE_ADDR_SHIFT = 12
LEGACY_VRING_ALIGN = 4096
