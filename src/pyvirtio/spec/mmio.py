"""Virtio over MMIO, version 2 (VIRTIO 1.3, 4.2) and the legacy version 1 layout (4.2.4).

Data only.  Every register is 32 bits wide and little-endian; the driver accesses them with
32-bit aligned loads and stores only (4.2.2), except the device-specific config at CONFIG_OFFSET.
"""

from enum import IntEnum, IntFlag

#: MagicValue register contents: little-endian "virt" (4.2.2).
MAGIC_VALUE = 0x74726976
#: Version register: 2 for this layout; legacy devices report 1 (4.2.2, 4.2.4).
VERSION = 2
LEGACY_VERSION = 1
#: Device-specific configuration space starts here (4.2.2 "Config").
CONFIG_OFFSET = 0x100
#: A DeviceID of 0 is a placeholder with no device; the driver MUST ignore it (4.2.2.2).
DEVICE_ID_NONE = 0
#: Register width in bytes.
REGISTER_SIZE = 4
#: The registers occupy 0x000..0x0FF; the config space follows.  (The spec's device-tree example
#: maps a 0x200-byte window; the window size is not normative.)
REGISTER_BLOCK_SIZE = 0x100


class MmioReg(IntEnum):
    """Register offsets of the version 2 layout (4.2.2), spec names; R/W from the driver side.

    Aliases give the Linux ``virtio_mmio.h`` names where they differ.
    """

    MAGIC_VALUE = 0x000  # R
    VERSION = 0x004  # R
    DEVICE_ID = 0x008  # R
    VENDOR_ID = 0x00C  # R
    DEVICE_FEATURES = 0x010  # R, 32 bits selected by DEVICE_FEATURES_SEL
    DEVICE_FEATURES_SEL = 0x014  # W
    DRIVER_FEATURES = 0x020  # W, 32 bits selected by DRIVER_FEATURES_SEL
    DRIVER_FEATURES_SEL = 0x024  # W
    QUEUE_SEL = 0x030  # W
    QUEUE_SIZE_MAX = 0x034  # R ("QueueNumMax" in Linux)
    QUEUE_SIZE = 0x038  # W ("QueueNum" in Linux)
    QUEUE_READY = 0x044  # RW
    QUEUE_NOTIFY = 0x050  # W
    INTERRUPT_STATUS = 0x060  # R
    INTERRUPT_ACK = 0x064  # W
    STATUS = 0x070  # RW; writing 0 resets the device
    QUEUE_DESC_LOW = 0x080  # W
    QUEUE_DESC_HIGH = 0x084  # W
    QUEUE_DRIVER_LOW = 0x090  # W (avail ring / driver area)
    QUEUE_DRIVER_HIGH = 0x094  # W
    QUEUE_DEVICE_LOW = 0x0A0  # W (used ring / device area)
    QUEUE_DEVICE_HIGH = 0x0A4  # W
    SHM_SEL = 0x0AC  # W
    SHM_LEN_LOW = 0x0B0  # R
    SHM_LEN_HIGH = 0x0B4  # R
    SHM_BASE_LOW = 0x0B8  # R
    SHM_BASE_HIGH = 0x0BC  # R
    QUEUE_RESET = 0x0C0  # RW, needs VIRTIO_F_RING_RESET
    CONFIG_GENERATION = 0x0FC  # R
    CONFIG = 0x100  # RW, device-specific configuration space starts here

    # Linux virtio_mmio.h names for the same registers.
    QUEUE_NUM_MAX = 0x034
    QUEUE_NUM = 0x038
    QUEUE_AVAIL_LOW = 0x090
    QUEUE_AVAIL_HIGH = 0x094
    QUEUE_USED_LOW = 0x0A0
    QUEUE_USED_HIGH = 0x0A4


#: Registers the driver may only read (4.2.2).
READ_ONLY_REGS = frozenset(
    {
        MmioReg.MAGIC_VALUE, MmioReg.VERSION, MmioReg.DEVICE_ID, MmioReg.VENDOR_ID,
        MmioReg.DEVICE_FEATURES, MmioReg.QUEUE_SIZE_MAX, MmioReg.INTERRUPT_STATUS,
        MmioReg.SHM_LEN_LOW, MmioReg.SHM_LEN_HIGH, MmioReg.SHM_BASE_LOW, MmioReg.SHM_BASE_HIGH,
        MmioReg.CONFIG_GENERATION,
    }
)

#: SHMLen/SHMBase read as all-ones when the selected shared memory region does not exist (4.2.2).
SHM_NO_REGION = 0xFFFFFFFFFFFFFFFF


class MmioInterrupt(IntFlag):
    """InterruptStatus / InterruptACK bits (4.2.2)."""

    USED_BUFFER = 0x1  # Linux VIRTIO_MMIO_INT_VRING
    CONFIG_CHANGE = 0x2  # Linux VIRTIO_MMIO_INT_CONFIG


class MmioLegacyReg(IntEnum):
    """Registers of the legacy (version 1) layout that differ from version 2 (4.2.4).

    The legacy layout has no QueueReady, QueueDesc/Driver/Device, SHM*, QueueReset or
    ConfigGeneration registers; the others keep their version 2 offsets.
    """

    HOST_FEATURES = 0x010  # R
    HOST_FEATURES_SEL = 0x014  # W
    GUEST_FEATURES = 0x020  # W
    GUEST_FEATURES_SEL = 0x024  # W
    GUEST_PAGE_SIZE = 0x028  # W
    QUEUE_SEL = 0x030  # W
    QUEUE_NUM_MAX = 0x034  # R
    QUEUE_NUM = 0x038  # W
    QUEUE_ALIGN = 0x03C  # W, used ring alignment
    QUEUE_PFN = 0x040  # RW, queue address / GuestPageSize; 0 stops the queue
