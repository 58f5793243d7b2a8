"""Device IDs (VIRTIO 1.3, 5 "Device Types") and PCI identification (4.1.2 "PCI Device Discovery").

Data only.  Device ID 0 is reserved (invalid); 14, 15 and 37 are unassigned in the spec.
"""

from enum import IntEnum


class DeviceType(IntEnum):
    """Virtio device IDs, the "Device Types" table of chapter 5 (1.3; 46-49 are 1.4 only).

    Linux ``virtio_ids.h`` spells some of these differently (ENTROPY is ``VIRTIO_ID_RNG``,
    BALLOON_TRADITIONAL is ``VIRTIO_ID_BALLOON``, BALLOON is ``VIRTIO_ID_MEMORY_BALLOON``, RTC is
    ``VIRTIO_ID_CLOCK``, SDM is ``VIRTIO_ID_SIGNAL_DIST``, I2C is ``VIRTIO_ID_I2C_ADAPTER`` …).
    Linux also assigns 37 (``VIRTIO_ID_DMABUF``), which the spec does not list.
    """

    NET = 1
    BLOCK = 2
    CONSOLE = 3
    ENTROPY = 4
    BALLOON_TRADITIONAL = 5
    IOMEMORY = 6
    RPMSG = 7
    SCSI = 8
    NINEP = 9
    MAC80211_WLAN = 10
    RPROC_SERIAL = 11
    CAIF = 12
    BALLOON = 13
    GPU = 16
    RTC = 17  # 1.3 "Timer/Clock device"; 1.4 "RTC (Real Time Clock) device"
    INPUT = 18
    VSOCK = 19
    CRYPTO = 20
    SDM = 21
    PSTORE = 22
    IOMMU = 23
    MEM = 24
    SOUND = 25
    FS = 26
    PMEM = 27
    RPMB = 28
    MAC80211_HWSIM = 29
    VIDEO_ENCODER = 30
    VIDEO_DECODER = 31
    SCMI = 32
    NITRO_SEC_MOD = 33
    I2C = 34
    WATCHDOG = 35
    CAN = 36
    PARAM_SERV = 38
    AUDIO_POLICY = 39
    BT = 40
    GPIO = 41
    RDMA = 42  # last ID in 1.2
    CAMERA = 43  # 1.3
    ISM = 44  # 1.3
    SPI = 45  # 1.3 "SPI master"; 1.4 "SPI controller"
    TEE = 46  # 1.4
    CPU_BALLOON = 47  # 1.4
    MEDIA = 48  # 1.4
    USB = 49  # 1.4


#: Reserved (invalid) device ID (5).  virtio-mmio: a DeviceID of 0 means "no device" (4.2.2).
DEVICE_ID_INVALID = 0

#: The spec's names for each device type, 1.3 wording (5); 1.4 renames noted in DeviceType.
DEVICE_NAMES: dict[int, str] = {
    DeviceType.NET: "network device",
    DeviceType.BLOCK: "block device",
    DeviceType.CONSOLE: "console",
    DeviceType.ENTROPY: "entropy source",
    DeviceType.BALLOON_TRADITIONAL: "memory ballooning (traditional)",
    DeviceType.IOMEMORY: "ioMemory",
    DeviceType.RPMSG: "rpmsg",
    DeviceType.SCSI: "SCSI host",
    DeviceType.NINEP: "9P transport",
    DeviceType.MAC80211_WLAN: "mac80211 wlan",
    DeviceType.RPROC_SERIAL: "rproc serial",
    DeviceType.CAIF: "virtio CAIF",
    DeviceType.BALLOON: "memory balloon",
    DeviceType.GPU: "GPU device",
    DeviceType.RTC: "Timer/Clock device",
    DeviceType.INPUT: "Input device",
    DeviceType.VSOCK: "Socket device",
    DeviceType.CRYPTO: "Crypto device",
    DeviceType.SDM: "Signal Distribution Module",
    DeviceType.PSTORE: "pstore device",
    DeviceType.IOMMU: "IOMMU device",
    DeviceType.MEM: "Memory device",
    DeviceType.SOUND: "Sound device",
    DeviceType.FS: "file system device",
    DeviceType.PMEM: "PMEM device",
    DeviceType.RPMB: "RPMB device",
    DeviceType.MAC80211_HWSIM: "mac80211 hwsim wireless simulation device",
    DeviceType.VIDEO_ENCODER: "Video encoder device",
    DeviceType.VIDEO_DECODER: "Video decoder device",
    DeviceType.SCMI: "SCMI device",
    DeviceType.NITRO_SEC_MOD: "NitroSecureModule",
    DeviceType.I2C: "I2C adapter",
    DeviceType.WATCHDOG: "Watchdog",
    DeviceType.CAN: "CAN device",
    DeviceType.PARAM_SERV: "Parameter Server",
    DeviceType.AUDIO_POLICY: "Audio policy device",
    DeviceType.BT: "Bluetooth device",
    DeviceType.GPIO: "GPIO device",
    DeviceType.RDMA: "RDMA device",
    DeviceType.CAMERA: "Camera device",
    DeviceType.ISM: "ISM device",
    DeviceType.SPI: "SPI master",
    DeviceType.TEE: "TEE device",
    DeviceType.CPU_BALLOON: "CPU balloon device",
    DeviceType.MEDIA: "Media device",
    DeviceType.USB: "USB controller",
}

#: Device types that have a full chapter in the spec (``\\input{device-types/...}``), 1.3.
SPECIFIED_DEVICE_TYPES_1_3 = frozenset(
    {
        DeviceType.NET, DeviceType.BLOCK, DeviceType.CONSOLE, DeviceType.ENTROPY,
        DeviceType.BALLOON_TRADITIONAL, DeviceType.SCSI, DeviceType.GPU, DeviceType.INPUT,
        DeviceType.CRYPTO, DeviceType.VSOCK, DeviceType.FS, DeviceType.RPMB, DeviceType.IOMMU,
        DeviceType.SOUND, DeviceType.MEM, DeviceType.I2C, DeviceType.SCMI, DeviceType.GPIO,
        DeviceType.PMEM,
    }
)

# --- PCI identification (4.1.2 "PCI Device Discovery") ------------------------------------------

#: Every virtio PCI function has this vendor ID (4.1.2).
PCI_VENDOR_ID_REDHAT_QUMRANET = 0x1AF4

#: Virtio PCI device IDs are 0x1000..0x107F inclusive (4.1.2).
PCI_DEVICE_ID_MIN = 0x1000
PCI_DEVICE_ID_MAX = 0x107F

#: Modern (non-transitional) device ID = 0x1040 + virtio device ID; range 0x1040..0x107F (4.1.2).
PCI_MODERN_DEVICE_ID_BASE = 0x1040
PCI_MODERN_DEVICE_ID_MAX = 0x107F

#: Transitional device IDs live in 0x1000..0x103F (4.1.2.3 legacy note).
PCI_TRANSITIONAL_DEVICE_ID_MIN = 0x1000
PCI_TRANSITIONAL_DEVICE_ID_MAX = 0x103F

#: Transitional PCI device IDs, the table in 4.1.2.1.
TRANSITIONAL_PCI_DEVICE_IDS: dict[int, int] = {
    DeviceType.NET: 0x1000,
    DeviceType.BLOCK: 0x1001,
    DeviceType.BALLOON_TRADITIONAL: 0x1002,
    DeviceType.CONSOLE: 0x1003,
    DeviceType.SCSI: 0x1004,
    DeviceType.ENTROPY: 0x1005,
    DeviceType.NINEP: 0x1009,
}

# Revision and subsystem IDs (4.1.2.1, 4.1.2.3):
#  - Non-transitional devices SHOULD have Revision ID >= 1 and Subsystem Device ID >= 0x40,
#    so that a legacy driver does not bind to them.
#  - Transitional devices MUST have Revision ID 0 and Subsystem Device ID = virtio device ID.
#  - The Subsystem Vendor ID and Subsystem Device ID MAY otherwise reflect the environment; they
#    tell implementations apart (informational for the driver).
PCI_NON_TRANSITIONAL_MIN_REVISION = 1
PCI_NON_TRANSITIONAL_MIN_SUBSYSTEM_ID = 0x40
PCI_TRANSITIONAL_REVISION = 0

# PCI class codes (24-bit: base class << 16 | subclass << 8 | prog-if).
# These are CONVENTIONS, not spec: the VIRTIO spec says nothing about the class code.  Values are
# the ones QEMU's hw/virtio/*-pci.c set (and Linux and other guests have always seen):
#   net PCI_CLASS_NETWORK_ETHERNET 0x0200, blk and scsi PCI_CLASS_STORAGE_SCSI 0x0100,
#   console and vsock PCI_CLASS_COMMUNICATION_OTHER 0x0780, input PCI_CLASS_INPUT_OTHER 0x0980,
#   fs PCI_CLASS_STORAGE_OTHER 0x0180, everything else (rng, balloon, ...) PCI_CLASS_OTHERS 0x00ff.
PCI_CLASS_NETWORK_ETHERNET = 0x020000
PCI_CLASS_STORAGE_SCSI = 0x010000
PCI_CLASS_STORAGE_OTHER = 0x018000
PCI_CLASS_COMMUNICATION_OTHER = 0x078000
PCI_CLASS_INPUT_OTHER = 0x098000
PCI_CLASS_OTHERS = 0x00FF00

#: Class code for device types not in PCI_CLASS_CODES (convention, see above).
PCI_CLASS_CODE_DEFAULT = PCI_CLASS_OTHERS

#: Conventional PCI class code per device type (QEMU's choices; not spec).
PCI_CLASS_CODES: dict[int, int] = {
    DeviceType.NET: PCI_CLASS_NETWORK_ETHERNET,
    DeviceType.BLOCK: PCI_CLASS_STORAGE_SCSI,
    DeviceType.SCSI: PCI_CLASS_STORAGE_SCSI,
    DeviceType.CONSOLE: PCI_CLASS_COMMUNICATION_OTHER,
    DeviceType.VSOCK: PCI_CLASS_COMMUNICATION_OTHER,
    DeviceType.INPUT: PCI_CLASS_INPUT_OTHER,
    DeviceType.FS: PCI_CLASS_STORAGE_OTHER,
    DeviceType.ENTROPY: PCI_CLASS_OTHERS,
    DeviceType.BALLOON_TRADITIONAL: PCI_CLASS_OTHERS,
}
