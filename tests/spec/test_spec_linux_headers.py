"""pyvirtio.spec agrees with the Linux uapi headers (/usr/include/linux, package linux-libc-dev).

Three checks:
  * an explicit table, kernel name -> our object, for every kernel constant we model (names that
    exist in linux-libc-dev 6.1 MUST be present when their header is; newer names are compared
    when present);
  * a sweep: for each kernel prefix, every kernel constant whose suffix is one of our enum member
    names must have our value;
  * struct layouts: a small C program prints sizeof/offsetof of the kernel structs (needs a C
    compiler; skipped without one).
"""

import ast
import glob
import os
import re
import shutil
import struct
import subprocess
from collections import namedtuple
from enum import Enum

import pytest

from pyvirtio.spec import (
    blk,
    console,
    fs,
    gpio,
    i2c,
    ids,
    input as vinput,
    mmio,
    net,
    pci,
    ring,
    scsi,
    vhost_user,
    vsock,
)
from pyvirtio.spec.features import Feature
from pyvirtio.spec.ids import DeviceType
from pyvirtio.spec.status import DeviceStatus

INCLUDE = "/usr/include/linux"
HEADER_PATTERNS = ("virtio_*.h", "vhost_types.h", "vhost.h", "pci_regs.h", "vm_sockets.h")

#: Fewest kernel constants that must actually be compared (linux-libc-dev 6.1 gives 462).
MIN_COMPARED = 300

# --- a small C-header reader ---------------------------------------------------------------------

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)(?![\w(])[ \t]*(.*)$", re.M)
_ENUM = re.compile(r"\benum\b[^{;]*\{(.*?)\}", re.S)
_CAST = re.compile(
    r"\(\s*(?:(?:const|unsigned|signed|int|long|char|short|__[us](?:8|16|32|64)|__le(?:16|32|64))\s*)+\)"
)
_BIT_MACRO = re.compile(r"\b(?:_BITUL|_BITULL|BIT|BIT_ULL)\(\s*([^()]+?)\s*\)")
_NUMBER = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)([uUlL]*)\b")
_IDENT = re.compile(r"\b[A-Za-z_]\w*\b")
_SAFE = re.compile(r"^[\d\s()<>|&~+\-*/^]+$")


def _c_number(match: re.Match) -> str:
    text = match.group(1)
    if text[:2] in ("0x", "0X"):
        return str(int(text, 16))
    if len(text) > 1 and text[0] == "0":
        return str(int(text, 8))
    return text


def _unsigned_width(raw: str) -> int | None:
    if re.search(r"\d[uU]?[lL]{1,2}\b|__u64|\blong\b", raw):
        return 64
    if re.search(r"\d[uU]\b|__u32|\bunsigned\b", raw):
        return 32
    return None


class _Headers:
    """Integer ``#define``s and enumerators of a set of headers, evaluated lazily."""

    def __init__(self, paths):
        self.raw: dict[str, str] = {}
        self.origin: dict[str, str] = {}
        self.values: dict[str, int] = {}
        self.ambiguous: set[str] = set()
        for path in paths:
            self._read(path)

    def _add(self, name, expr, path):
        if name in self.raw and self.raw[name] != expr:
            self.ambiguous.add(name)
            return
        self.raw.setdefault(name, expr)
        self.origin.setdefault(name, os.path.basename(path))

    def _read(self, path):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = _COMMENT.sub(" ", f.read().replace("\\\n", " "))
        for name, expr in _DEFINE.findall(text):
            self._add(name, expr.strip(), path)
        for body in _ENUM.findall(text):
            previous = None
            for entry in body.split(","):
                entry = entry.strip()
                if not entry:
                    continue
                name, _, expr = entry.partition("=")
                name = name.strip()
                if not re.fullmatch(r"[A-Za-z_]\w*", name):
                    break
                if expr.strip():
                    expr = "(" + expr.strip() + ")"
                elif previous is None:
                    expr = "0"
                else:
                    expr = "(" + previous + ") + 1"
                self._add(name, expr, path)
                previous = name

    def value(self, name, _seen=()):
        if name in self.values:
            return self.values[name]
        if name not in self.raw or name in _seen or name in self.ambiguous:
            return None
        raw = self.raw[name]
        expr = _BIT_MACRO.sub(r"(1 << (\1))", _CAST.sub(" ", raw))
        expr = _NUMBER.sub(_c_number, expr)
        for ident in set(_IDENT.findall(expr)):
            sub = self.value(ident, _seen + (name,))
            if sub is None:
                return None
            expr = re.sub(rf"\b{ident}\b", f"({sub})", expr)
        if not expr.strip() or not _SAFE.match(expr):
            return None
        try:
            value = eval(compile(ast.parse(expr.replace("/", "//"), mode="eval"), name, "eval"), {"__builtins__": {}})
        except (SyntaxError, TypeError, ValueError, ZeroDivisionError):
            return None
        width = _unsigned_width(raw)
        if value < 0 and width is not None:
            value &= (1 << width) - 1
        self.values[name] = value
        return value

    def all_values(self) -> dict[str, int]:
        out = {}
        for name in self.raw:
            value = self.value(name)
            if value is not None:
                out[name] = value
        return out


@pytest.fixture(scope="module")
def headers():
    if not os.path.isdir(INCLUDE):
        pytest.skip(f"{INCLUDE} is missing: install the kernel uapi headers (linux-libc-dev)")
    paths = sorted({p for pattern in HEADER_PATTERNS for p in glob.glob(os.path.join(INCLUDE, pattern))})
    if not paths:
        pytest.skip(f"no virtio headers in {INCLUDE}: install linux-libc-dev")
    return _Headers(paths)


@pytest.fixture(scope="module")
def kernel(headers):
    return headers.all_values()


# --- the explicit table ----------------------------------------------------------------------------

Bit = namedtuple("Bit", "mask")  # the kernel gives a bit number, we give the mask 1 << bit

#: Kernel names present in linux-libc-dev 6.1, per header: each MUST exist when its header does.
KERNEL_MAP: dict[str, dict[str, object]] = {
    "virtio_ids.h": {
        "VIRTIO_ID_NET": DeviceType.NET,
        "VIRTIO_ID_BLOCK": DeviceType.BLOCK,
        "VIRTIO_ID_CONSOLE": DeviceType.CONSOLE,
        "VIRTIO_ID_RNG": DeviceType.ENTROPY,
        "VIRTIO_ID_BALLOON": DeviceType.BALLOON_TRADITIONAL,
        "VIRTIO_ID_IOMEM": DeviceType.IOMEMORY,
        "VIRTIO_ID_RPMSG": DeviceType.RPMSG,
        "VIRTIO_ID_SCSI": DeviceType.SCSI,
        "VIRTIO_ID_9P": DeviceType.NINEP,
        "VIRTIO_ID_MAC80211_WLAN": DeviceType.MAC80211_WLAN,
        "VIRTIO_ID_RPROC_SERIAL": DeviceType.RPROC_SERIAL,
        "VIRTIO_ID_CAIF": DeviceType.CAIF,
        "VIRTIO_ID_MEMORY_BALLOON": DeviceType.BALLOON,
        "VIRTIO_ID_GPU": DeviceType.GPU,
        "VIRTIO_ID_CLOCK": DeviceType.RTC,
        "VIRTIO_ID_INPUT": DeviceType.INPUT,
        "VIRTIO_ID_VSOCK": DeviceType.VSOCK,
        "VIRTIO_ID_CRYPTO": DeviceType.CRYPTO,
        "VIRTIO_ID_SIGNAL_DIST": DeviceType.SDM,
        "VIRTIO_ID_PSTORE": DeviceType.PSTORE,
        "VIRTIO_ID_IOMMU": DeviceType.IOMMU,
        "VIRTIO_ID_MEM": DeviceType.MEM,
        "VIRTIO_ID_SOUND": DeviceType.SOUND,
        "VIRTIO_ID_FS": DeviceType.FS,
        "VIRTIO_ID_PMEM": DeviceType.PMEM,
        "VIRTIO_ID_RPMB": DeviceType.RPMB,
        "VIRTIO_ID_MAC80211_HWSIM": DeviceType.MAC80211_HWSIM,
        "VIRTIO_ID_VIDEO_ENCODER": DeviceType.VIDEO_ENCODER,
        "VIRTIO_ID_VIDEO_DECODER": DeviceType.VIDEO_DECODER,
        "VIRTIO_ID_SCMI": DeviceType.SCMI,
        "VIRTIO_ID_NITRO_SEC_MOD": DeviceType.NITRO_SEC_MOD,
        "VIRTIO_ID_I2C_ADAPTER": DeviceType.I2C,
        "VIRTIO_ID_WATCHDOG": DeviceType.WATCHDOG,
        "VIRTIO_ID_CAN": DeviceType.CAN,
        "VIRTIO_ID_PARAM_SERV": DeviceType.PARAM_SERV,
        "VIRTIO_ID_AUDIO_POLICY": DeviceType.AUDIO_POLICY,
        "VIRTIO_ID_BT": DeviceType.BT,
        "VIRTIO_ID_GPIO": DeviceType.GPIO,
        "VIRTIO_TRANS_ID_NET": ids.TRANSITIONAL_PCI_DEVICE_IDS[DeviceType.NET],
        "VIRTIO_TRANS_ID_BLOCK": ids.TRANSITIONAL_PCI_DEVICE_IDS[DeviceType.BLOCK],
        "VIRTIO_TRANS_ID_BALLOON": ids.TRANSITIONAL_PCI_DEVICE_IDS[DeviceType.BALLOON_TRADITIONAL],
        "VIRTIO_TRANS_ID_CONSOLE": ids.TRANSITIONAL_PCI_DEVICE_IDS[DeviceType.CONSOLE],
        "VIRTIO_TRANS_ID_SCSI": ids.TRANSITIONAL_PCI_DEVICE_IDS[DeviceType.SCSI],
        "VIRTIO_TRANS_ID_RNG": ids.TRANSITIONAL_PCI_DEVICE_IDS[DeviceType.ENTROPY],
        "VIRTIO_TRANS_ID_9P": ids.TRANSITIONAL_PCI_DEVICE_IDS[DeviceType.NINEP],
    },
    "virtio_config.h": {
        "VIRTIO_CONFIG_S_ACKNOWLEDGE": DeviceStatus.ACKNOWLEDGE,
        "VIRTIO_CONFIG_S_DRIVER": DeviceStatus.DRIVER,
        "VIRTIO_CONFIG_S_DRIVER_OK": DeviceStatus.DRIVER_OK,
        "VIRTIO_CONFIG_S_FEATURES_OK": DeviceStatus.FEATURES_OK,
        "VIRTIO_CONFIG_S_NEEDS_RESET": DeviceStatus.DEVICE_NEEDS_RESET,
        "VIRTIO_CONFIG_S_FAILED": DeviceStatus.FAILED,
        "VIRTIO_F_NOTIFY_ON_EMPTY": Feature.NOTIFY_ON_EMPTY,
        "VIRTIO_F_ANY_LAYOUT": Feature.ANY_LAYOUT,
        "VIRTIO_F_VERSION_1": Feature.VERSION_1,
        "VIRTIO_F_ACCESS_PLATFORM": Feature.ACCESS_PLATFORM,
        "VIRTIO_F_IOMMU_PLATFORM": Feature.ACCESS_PLATFORM,
        "VIRTIO_F_RING_PACKED": Feature.RING_PACKED,
        "VIRTIO_F_IN_ORDER": Feature.IN_ORDER,
        "VIRTIO_F_ORDER_PLATFORM": Feature.ORDER_PLATFORM,
        "VIRTIO_F_SR_IOV": Feature.SR_IOV,
        "VIRTIO_F_RING_RESET": Feature.RING_RESET,
    },
    "virtio_ring.h": {
        "VRING_DESC_F_NEXT": ring.VIRTQ_DESC_F_NEXT,
        "VRING_DESC_F_WRITE": ring.VIRTQ_DESC_F_WRITE,
        "VRING_DESC_F_INDIRECT": ring.VIRTQ_DESC_F_INDIRECT,
        "VRING_PACKED_DESC_F_AVAIL": Bit(ring.VIRTQ_DESC_F_AVAIL),
        "VRING_PACKED_DESC_F_USED": Bit(ring.VIRTQ_DESC_F_USED),
        "VRING_USED_F_NO_NOTIFY": ring.VIRTQ_USED_F_NO_NOTIFY,
        "VRING_AVAIL_F_NO_INTERRUPT": ring.VIRTQ_AVAIL_F_NO_INTERRUPT,
        "VRING_PACKED_EVENT_FLAG_ENABLE": ring.RING_EVENT_FLAGS_ENABLE,
        "VRING_PACKED_EVENT_FLAG_DISABLE": ring.RING_EVENT_FLAGS_DISABLE,
        "VRING_PACKED_EVENT_FLAG_DESC": ring.RING_EVENT_FLAGS_DESC,
        "VIRTIO_RING_F_INDIRECT_DESC": Feature.INDIRECT_DESC,
        "VIRTIO_RING_F_EVENT_IDX": Feature.EVENT_IDX,
        "VRING_AVAIL_ALIGN_SIZE": ring.VIRTQ_AVAIL_ALIGN,
        "VRING_USED_ALIGN_SIZE": ring.VIRTQ_USED_ALIGN,
        "VRING_DESC_ALIGN_SIZE": ring.VIRTQ_DESC_ALIGN,
    },
    "virtio_pci.h": {
        "VIRTIO_PCI_HOST_FEATURES": pci.LegacyReg.HOST_FEATURES,
        "VIRTIO_PCI_GUEST_FEATURES": pci.LegacyReg.GUEST_FEATURES,
        "VIRTIO_PCI_QUEUE_PFN": pci.LegacyReg.QUEUE_PFN,
        "VIRTIO_PCI_QUEUE_NUM": pci.LegacyReg.QUEUE_NUM,
        "VIRTIO_PCI_QUEUE_SEL": pci.LegacyReg.QUEUE_SEL,
        "VIRTIO_PCI_QUEUE_NOTIFY": pci.LegacyReg.QUEUE_NOTIFY,
        "VIRTIO_PCI_STATUS": pci.LegacyReg.STATUS,
        "VIRTIO_PCI_ISR": pci.LegacyReg.ISR,
        "VIRTIO_MSI_CONFIG_VECTOR": pci.LegacyReg.MSI_CONFIG_VECTOR,
        "VIRTIO_MSI_QUEUE_VECTOR": pci.LegacyReg.MSI_QUEUE_VECTOR,
        "VIRTIO_PCI_ISR_CONFIG": pci.IsrStatus.CONFIG,
        "VIRTIO_MSI_NO_VECTOR": pci.VIRTIO_MSI_NO_VECTOR,
        "VIRTIO_PCI_QUEUE_ADDR_SHIFT": pci.LEGACY_QUEUE_ADDR_SHIFT,
        "VIRTIO_PCI_VRING_ALIGN": pci.LEGACY_VRING_ALIGN,
        "VIRTIO_PCI_CAP_COMMON_CFG": pci.PciCapType.COMMON_CFG,
        "VIRTIO_PCI_CAP_NOTIFY_CFG": pci.PciCapType.NOTIFY_CFG,
        "VIRTIO_PCI_CAP_ISR_CFG": pci.PciCapType.ISR_CFG,
        "VIRTIO_PCI_CAP_DEVICE_CFG": pci.PciCapType.DEVICE_CFG,
        "VIRTIO_PCI_CAP_PCI_CFG": pci.PciCapType.PCI_CFG,
        "VIRTIO_PCI_CAP_SHARED_MEMORY_CFG": pci.PciCapType.SHARED_MEMORY_CFG,
        "VIRTIO_PCI_CAP_VNDR": pci.VirtioPciCap.VNDR,
        "VIRTIO_PCI_CAP_NEXT": pci.VirtioPciCap.NEXT,
        "VIRTIO_PCI_CAP_LEN": pci.VirtioPciCap.LEN,
        "VIRTIO_PCI_CAP_CFG_TYPE": pci.VirtioPciCap.CFG_TYPE,
        "VIRTIO_PCI_CAP_BAR": pci.VirtioPciCap.BAR,
        "VIRTIO_PCI_CAP_OFFSET": pci.VirtioPciCap.OFFSET,
        "VIRTIO_PCI_CAP_LENGTH": pci.VirtioPciCap.LENGTH,
        "VIRTIO_PCI_NOTIFY_CAP_MULT": pci.VirtioPciCap.NOTIFY_OFF_MULTIPLIER,
        "VIRTIO_PCI_COMMON_DFSELECT": pci.CommonCfg.DEVICE_FEATURE_SELECT,
        "VIRTIO_PCI_COMMON_DF": pci.CommonCfg.DEVICE_FEATURE,
        "VIRTIO_PCI_COMMON_GFSELECT": pci.CommonCfg.DRIVER_FEATURE_SELECT,
        "VIRTIO_PCI_COMMON_GF": pci.CommonCfg.DRIVER_FEATURE,
        "VIRTIO_PCI_COMMON_MSIX": pci.CommonCfg.CONFIG_MSIX_VECTOR,
        "VIRTIO_PCI_COMMON_NUMQ": pci.CommonCfg.NUM_QUEUES,
        "VIRTIO_PCI_COMMON_STATUS": pci.CommonCfg.DEVICE_STATUS,
        "VIRTIO_PCI_COMMON_CFGGENERATION": pci.CommonCfg.CONFIG_GENERATION,
        "VIRTIO_PCI_COMMON_Q_SELECT": pci.CommonCfg.QUEUE_SELECT,
        "VIRTIO_PCI_COMMON_Q_SIZE": pci.CommonCfg.QUEUE_SIZE,
        "VIRTIO_PCI_COMMON_Q_MSIX": pci.CommonCfg.QUEUE_MSIX_VECTOR,
        "VIRTIO_PCI_COMMON_Q_ENABLE": pci.CommonCfg.QUEUE_ENABLE,
        "VIRTIO_PCI_COMMON_Q_NOFF": pci.CommonCfg.QUEUE_NOTIFY_OFF,
        "VIRTIO_PCI_COMMON_Q_DESCLO": pci.CommonCfg.QUEUE_DESC,
        "VIRTIO_PCI_COMMON_Q_DESCHI": pci.CommonCfg.QUEUE_DESC + 4,
        "VIRTIO_PCI_COMMON_Q_AVAILLO": pci.CommonCfg.QUEUE_DRIVER,
        "VIRTIO_PCI_COMMON_Q_AVAILHI": pci.CommonCfg.QUEUE_DRIVER + 4,
        "VIRTIO_PCI_COMMON_Q_USEDLO": pci.CommonCfg.QUEUE_DEVICE,
        "VIRTIO_PCI_COMMON_Q_USEDHI": pci.CommonCfg.QUEUE_DEVICE + 4,
        "VIRTIO_PCI_COMMON_Q_NDATA": pci.CommonCfg.QUEUE_NOTIF_CONFIG_DATA,
        "VIRTIO_PCI_COMMON_Q_RESET": pci.CommonCfg.QUEUE_RESET,
    },
    "virtio_mmio.h": {
        "VIRTIO_MMIO_MAGIC_VALUE": mmio.MmioReg.MAGIC_VALUE,
        "VIRTIO_MMIO_VERSION": mmio.MmioReg.VERSION,
        "VIRTIO_MMIO_DEVICE_ID": mmio.MmioReg.DEVICE_ID,
        "VIRTIO_MMIO_VENDOR_ID": mmio.MmioReg.VENDOR_ID,
        "VIRTIO_MMIO_DEVICE_FEATURES": mmio.MmioReg.DEVICE_FEATURES,
        "VIRTIO_MMIO_DEVICE_FEATURES_SEL": mmio.MmioReg.DEVICE_FEATURES_SEL,
        "VIRTIO_MMIO_DRIVER_FEATURES": mmio.MmioReg.DRIVER_FEATURES,
        "VIRTIO_MMIO_DRIVER_FEATURES_SEL": mmio.MmioReg.DRIVER_FEATURES_SEL,
        "VIRTIO_MMIO_GUEST_PAGE_SIZE": mmio.MmioLegacyReg.GUEST_PAGE_SIZE,
        "VIRTIO_MMIO_QUEUE_SEL": mmio.MmioReg.QUEUE_SEL,
        "VIRTIO_MMIO_QUEUE_NUM_MAX": mmio.MmioReg.QUEUE_SIZE_MAX,
        "VIRTIO_MMIO_QUEUE_NUM": mmio.MmioReg.QUEUE_SIZE,
        "VIRTIO_MMIO_QUEUE_ALIGN": mmio.MmioLegacyReg.QUEUE_ALIGN,
        "VIRTIO_MMIO_QUEUE_PFN": mmio.MmioLegacyReg.QUEUE_PFN,
        "VIRTIO_MMIO_QUEUE_READY": mmio.MmioReg.QUEUE_READY,
        "VIRTIO_MMIO_QUEUE_NOTIFY": mmio.MmioReg.QUEUE_NOTIFY,
        "VIRTIO_MMIO_INTERRUPT_STATUS": mmio.MmioReg.INTERRUPT_STATUS,
        "VIRTIO_MMIO_INTERRUPT_ACK": mmio.MmioReg.INTERRUPT_ACK,
        "VIRTIO_MMIO_STATUS": mmio.MmioReg.STATUS,
        "VIRTIO_MMIO_QUEUE_DESC_LOW": mmio.MmioReg.QUEUE_DESC_LOW,
        "VIRTIO_MMIO_QUEUE_DESC_HIGH": mmio.MmioReg.QUEUE_DESC_HIGH,
        "VIRTIO_MMIO_QUEUE_AVAIL_LOW": mmio.MmioReg.QUEUE_DRIVER_LOW,
        "VIRTIO_MMIO_QUEUE_AVAIL_HIGH": mmio.MmioReg.QUEUE_DRIVER_HIGH,
        "VIRTIO_MMIO_QUEUE_USED_LOW": mmio.MmioReg.QUEUE_DEVICE_LOW,
        "VIRTIO_MMIO_QUEUE_USED_HIGH": mmio.MmioReg.QUEUE_DEVICE_HIGH,
        "VIRTIO_MMIO_SHM_SEL": mmio.MmioReg.SHM_SEL,
        "VIRTIO_MMIO_SHM_LEN_LOW": mmio.MmioReg.SHM_LEN_LOW,
        "VIRTIO_MMIO_SHM_LEN_HIGH": mmio.MmioReg.SHM_LEN_HIGH,
        "VIRTIO_MMIO_SHM_BASE_LOW": mmio.MmioReg.SHM_BASE_LOW,
        "VIRTIO_MMIO_SHM_BASE_HIGH": mmio.MmioReg.SHM_BASE_HIGH,
        "VIRTIO_MMIO_CONFIG_GENERATION": mmio.MmioReg.CONFIG_GENERATION,
        "VIRTIO_MMIO_CONFIG": mmio.CONFIG_OFFSET,
        "VIRTIO_MMIO_INT_VRING": mmio.MmioInterrupt.USED_BUFFER,
        "VIRTIO_MMIO_INT_CONFIG": mmio.MmioInterrupt.CONFIG_CHANGE,
    },
    "virtio_blk.h": {
        "VIRTIO_BLK_F_SIZE_MAX": blk.BlkFeature.SIZE_MAX,
        "VIRTIO_BLK_F_SEG_MAX": blk.BlkFeature.SEG_MAX,
        "VIRTIO_BLK_F_GEOMETRY": blk.BlkFeature.GEOMETRY,
        "VIRTIO_BLK_F_RO": blk.BlkFeature.RO,
        "VIRTIO_BLK_F_BLK_SIZE": blk.BlkFeature.BLK_SIZE,
        "VIRTIO_BLK_F_TOPOLOGY": blk.BlkFeature.TOPOLOGY,
        "VIRTIO_BLK_F_MQ": blk.BlkFeature.MQ,
        "VIRTIO_BLK_F_DISCARD": blk.BlkFeature.DISCARD,
        "VIRTIO_BLK_F_WRITE_ZEROES": blk.BlkFeature.WRITE_ZEROES,
        "VIRTIO_BLK_F_SECURE_ERASE": blk.BlkFeature.SECURE_ERASE,
        "VIRTIO_BLK_F_BARRIER": blk.BlkFeature.BARRIER,
        "VIRTIO_BLK_F_SCSI": blk.BlkFeature.SCSI,
        "VIRTIO_BLK_F_FLUSH": blk.BlkFeature.FLUSH,
        "VIRTIO_BLK_F_CONFIG_WCE": blk.BlkFeature.CONFIG_WCE,
        "VIRTIO_BLK_F_WCE": blk.BlkFeature.FLUSH,
        "VIRTIO_BLK_ID_BYTES": blk.BLK_ID_BYTES,
        "VIRTIO_BLK_T_IN": blk.BlkReqType.IN,
        "VIRTIO_BLK_T_OUT": blk.BlkReqType.OUT,
        "VIRTIO_BLK_T_SCSI_CMD": blk.BlkReqType.SCSI_CMD,
        "VIRTIO_BLK_T_FLUSH": blk.BlkReqType.FLUSH,
        "VIRTIO_BLK_T_GET_ID": blk.BlkReqType.GET_ID,
        "VIRTIO_BLK_T_DISCARD": blk.BlkReqType.DISCARD,
        "VIRTIO_BLK_T_WRITE_ZEROES": blk.BlkReqType.WRITE_ZEROES,
        "VIRTIO_BLK_T_SECURE_ERASE": blk.BlkReqType.SECURE_ERASE,
        "VIRTIO_BLK_T_BARRIER": blk.BLK_T_BARRIER,
        "VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP": blk.BLK_WRITE_ZEROES_FLAG_UNMAP,
        "VIRTIO_BLK_S_OK": blk.BlkStatus.OK,
        "VIRTIO_BLK_S_IOERR": blk.BlkStatus.IOERR,
        "VIRTIO_BLK_S_UNSUPP": blk.BlkStatus.UNSUPP,
    },
    "virtio_net.h": {
        "VIRTIO_NET_F_CSUM": net.NetFeature.CSUM,
        "VIRTIO_NET_F_GUEST_CSUM": net.NetFeature.GUEST_CSUM,
        "VIRTIO_NET_F_CTRL_GUEST_OFFLOADS": net.NetFeature.CTRL_GUEST_OFFLOADS,
        "VIRTIO_NET_F_MTU": net.NetFeature.MTU,
        "VIRTIO_NET_F_MAC": net.NetFeature.MAC,
        "VIRTIO_NET_F_GUEST_TSO4": net.NetFeature.GUEST_TSO4,
        "VIRTIO_NET_F_GUEST_TSO6": net.NetFeature.GUEST_TSO6,
        "VIRTIO_NET_F_GUEST_ECN": net.NetFeature.GUEST_ECN,
        "VIRTIO_NET_F_GUEST_UFO": net.NetFeature.GUEST_UFO,
        "VIRTIO_NET_F_HOST_TSO4": net.NetFeature.HOST_TSO4,
        "VIRTIO_NET_F_HOST_TSO6": net.NetFeature.HOST_TSO6,
        "VIRTIO_NET_F_HOST_ECN": net.NetFeature.HOST_ECN,
        "VIRTIO_NET_F_HOST_UFO": net.NetFeature.HOST_UFO,
        "VIRTIO_NET_F_MRG_RXBUF": net.NetFeature.MRG_RXBUF,
        "VIRTIO_NET_F_STATUS": net.NetFeature.STATUS,
        "VIRTIO_NET_F_CTRL_VQ": net.NetFeature.CTRL_VQ,
        "VIRTIO_NET_F_CTRL_RX": net.NetFeature.CTRL_RX,
        "VIRTIO_NET_F_CTRL_VLAN": net.NetFeature.CTRL_VLAN,
        "VIRTIO_NET_F_CTRL_RX_EXTRA": net.NetFeature.CTRL_RX_EXTRA,
        "VIRTIO_NET_F_GUEST_ANNOUNCE": net.NetFeature.GUEST_ANNOUNCE,
        "VIRTIO_NET_F_MQ": net.NetFeature.MQ,
        "VIRTIO_NET_F_CTRL_MAC_ADDR": net.NetFeature.CTRL_MAC_ADDR,
        "VIRTIO_NET_F_NOTF_COAL": net.NetFeature.NOTF_COAL,
        "VIRTIO_NET_F_HASH_REPORT": net.NetFeature.HASH_REPORT,
        "VIRTIO_NET_F_RSS": net.NetFeature.RSS,
        "VIRTIO_NET_F_RSC_EXT": net.NetFeature.RSC_EXT,
        "VIRTIO_NET_F_STANDBY": net.NetFeature.STANDBY,
        "VIRTIO_NET_F_SPEED_DUPLEX": net.NetFeature.SPEED_DUPLEX,
        "VIRTIO_NET_F_GSO": net.NetFeature.GSO,
        "VIRTIO_NET_S_LINK_UP": net.NetStatus.LINK_UP,
        "VIRTIO_NET_S_ANNOUNCE": net.NetStatus.ANNOUNCE,
        "VIRTIO_NET_RSS_HASH_TYPE_IPv4": net.NetHashType.IPV4,
        "VIRTIO_NET_RSS_HASH_TYPE_TCPv4": net.NetHashType.TCPV4,
        "VIRTIO_NET_RSS_HASH_TYPE_UDPv4": net.NetHashType.UDPV4,
        "VIRTIO_NET_RSS_HASH_TYPE_IPv6": net.NetHashType.IPV6,
        "VIRTIO_NET_RSS_HASH_TYPE_TCPv6": net.NetHashType.TCPV6,
        "VIRTIO_NET_RSS_HASH_TYPE_UDPv6": net.NetHashType.UDPV6,
        "VIRTIO_NET_RSS_HASH_TYPE_IP_EX": net.NetHashType.IP_EX,
        "VIRTIO_NET_RSS_HASH_TYPE_TCP_EX": net.NetHashType.TCP_EX,
        "VIRTIO_NET_RSS_HASH_TYPE_UDP_EX": net.NetHashType.UDP_EX,
        "VIRTIO_NET_HDR_F_NEEDS_CSUM": net.NetHdrFlag.NEEDS_CSUM,
        "VIRTIO_NET_HDR_F_DATA_VALID": net.NetHdrFlag.DATA_VALID,
        "VIRTIO_NET_HDR_F_RSC_INFO": net.NetHdrFlag.RSC_INFO,
        "VIRTIO_NET_HDR_GSO_NONE": net.NetGsoType.NONE,
        "VIRTIO_NET_HDR_GSO_TCPV4": net.NetGsoType.TCPV4,
        "VIRTIO_NET_HDR_GSO_UDP": net.NetGsoType.UDP,
        "VIRTIO_NET_HDR_GSO_TCPV6": net.NetGsoType.TCPV6,
        "VIRTIO_NET_HDR_GSO_ECN": net.NET_HDR_GSO_ECN,
        "VIRTIO_NET_HASH_REPORT_NONE": net.NetHashReport.NONE,
        "VIRTIO_NET_HASH_REPORT_IPv4": net.NetHashReport.IPV4,
        "VIRTIO_NET_HASH_REPORT_TCPv4": net.NetHashReport.TCPV4,
        "VIRTIO_NET_HASH_REPORT_UDPv4": net.NetHashReport.UDPV4,
        "VIRTIO_NET_HASH_REPORT_IPv6": net.NetHashReport.IPV6,
        "VIRTIO_NET_HASH_REPORT_TCPv6": net.NetHashReport.TCPV6,
        "VIRTIO_NET_HASH_REPORT_UDPv6": net.NetHashReport.UDPV6,
        "VIRTIO_NET_HASH_REPORT_IPv6_EX": net.NetHashReport.IPV6_EX,
        "VIRTIO_NET_HASH_REPORT_TCPv6_EX": net.NetHashReport.TCPV6_EX,
        "VIRTIO_NET_HASH_REPORT_UDPv6_EX": net.NetHashReport.UDPV6_EX,
        "VIRTIO_NET_OK": net.NetCtrlAck.OK,
        "VIRTIO_NET_ERR": net.NetCtrlAck.ERR,
        "VIRTIO_NET_CTRL_RX": net.NetCtrlClass.RX,
        "VIRTIO_NET_CTRL_RX_PROMISC": net.NetCtrlRx.PROMISC,
        "VIRTIO_NET_CTRL_RX_ALLMULTI": net.NetCtrlRx.ALLMULTI,
        "VIRTIO_NET_CTRL_RX_ALLUNI": net.NetCtrlRx.ALLUNI,
        "VIRTIO_NET_CTRL_RX_NOMULTI": net.NetCtrlRx.NOMULTI,
        "VIRTIO_NET_CTRL_RX_NOUNI": net.NetCtrlRx.NOUNI,
        "VIRTIO_NET_CTRL_RX_NOBCAST": net.NetCtrlRx.NOBCAST,
        "VIRTIO_NET_CTRL_MAC": net.NetCtrlClass.MAC,
        "VIRTIO_NET_CTRL_MAC_TABLE_SET": net.NetCtrlMac.TABLE_SET,
        "VIRTIO_NET_CTRL_MAC_ADDR_SET": net.NetCtrlMac.ADDR_SET,
        "VIRTIO_NET_CTRL_VLAN": net.NetCtrlClass.VLAN,
        "VIRTIO_NET_CTRL_VLAN_ADD": net.NetCtrlVlan.ADD,
        "VIRTIO_NET_CTRL_VLAN_DEL": net.NetCtrlVlan.DEL,
        "VIRTIO_NET_CTRL_ANNOUNCE": net.NetCtrlClass.ANNOUNCE,
        "VIRTIO_NET_CTRL_ANNOUNCE_ACK": net.NetCtrlAnnounce.ACK,
        "VIRTIO_NET_CTRL_MQ": net.NetCtrlClass.MQ,
        "VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET": net.NetCtrlMq.VQ_PAIRS_SET,
        "VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN": net.NET_CTRL_MQ_VQ_PAIRS_MIN,
        "VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX": net.NET_CTRL_MQ_VQ_PAIRS_MAX,
        "VIRTIO_NET_CTRL_MQ_RSS_CONFIG": net.NetCtrlMq.RSS_CONFIG,
        "VIRTIO_NET_CTRL_MQ_HASH_CONFIG": net.NetCtrlMq.HASH_CONFIG,
        "VIRTIO_NET_CTRL_GUEST_OFFLOADS": net.NetCtrlClass.GUEST_OFFLOADS,
        "VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET": net.NetCtrlGuestOffloads.SET,
        "VIRTIO_NET_CTRL_NOTF_COAL": net.NetCtrlClass.NOTF_COAL,
        "VIRTIO_NET_CTRL_NOTF_COAL_TX_SET": net.NetCtrlNotfCoal.TX_SET,
        "VIRTIO_NET_CTRL_NOTF_COAL_RX_SET": net.NetCtrlNotfCoal.RX_SET,
    },
    "virtio_console.h": {
        "VIRTIO_CONSOLE_F_SIZE": console.ConsoleFeature.SIZE,
        "VIRTIO_CONSOLE_F_MULTIPORT": console.ConsoleFeature.MULTIPORT,
        "VIRTIO_CONSOLE_F_EMERG_WRITE": console.ConsoleFeature.EMERG_WRITE,
        "VIRTIO_CONSOLE_BAD_ID": console.CONSOLE_BAD_ID,
        "VIRTIO_CONSOLE_DEVICE_READY": console.ConsoleEvent.DEVICE_READY,
        "VIRTIO_CONSOLE_PORT_ADD": console.ConsoleEvent.DEVICE_ADD,
        "VIRTIO_CONSOLE_PORT_REMOVE": console.ConsoleEvent.DEVICE_REMOVE,
        "VIRTIO_CONSOLE_PORT_READY": console.ConsoleEvent.PORT_READY,
        "VIRTIO_CONSOLE_CONSOLE_PORT": console.ConsoleEvent.CONSOLE_PORT,
        "VIRTIO_CONSOLE_RESIZE": console.ConsoleEvent.RESIZE,
        "VIRTIO_CONSOLE_PORT_OPEN": console.ConsoleEvent.PORT_OPEN,
        "VIRTIO_CONSOLE_PORT_NAME": console.ConsoleEvent.PORT_NAME,
    },
    "virtio_input.h": {
        "VIRTIO_INPUT_CFG_UNSET": vinput.InputConfigSelect.UNSET,
        "VIRTIO_INPUT_CFG_ID_NAME": vinput.InputConfigSelect.ID_NAME,
        "VIRTIO_INPUT_CFG_ID_SERIAL": vinput.InputConfigSelect.ID_SERIAL,
        "VIRTIO_INPUT_CFG_ID_DEVIDS": vinput.InputConfigSelect.ID_DEVIDS,
        "VIRTIO_INPUT_CFG_PROP_BITS": vinput.InputConfigSelect.PROP_BITS,
        "VIRTIO_INPUT_CFG_EV_BITS": vinput.InputConfigSelect.EV_BITS,
        "VIRTIO_INPUT_CFG_ABS_INFO": vinput.InputConfigSelect.ABS_INFO,
    },
    "virtio_vsock.h": {
        "VIRTIO_VSOCK_F_SEQPACKET": vsock.VsockFeature.SEQPACKET,
        "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET": vsock.VsockEventId.TRANSPORT_RESET,
        "VIRTIO_VSOCK_TYPE_STREAM": vsock.VsockType.STREAM,
        "VIRTIO_VSOCK_TYPE_SEQPACKET": vsock.VsockType.SEQPACKET,
        "VIRTIO_VSOCK_OP_INVALID": vsock.VsockOp.INVALID,
        "VIRTIO_VSOCK_OP_REQUEST": vsock.VsockOp.REQUEST,
        "VIRTIO_VSOCK_OP_RESPONSE": vsock.VsockOp.RESPONSE,
        "VIRTIO_VSOCK_OP_RST": vsock.VsockOp.RST,
        "VIRTIO_VSOCK_OP_SHUTDOWN": vsock.VsockOp.SHUTDOWN,
        "VIRTIO_VSOCK_OP_RW": vsock.VsockOp.RW,
        "VIRTIO_VSOCK_OP_CREDIT_UPDATE": vsock.VsockOp.CREDIT_UPDATE,
        "VIRTIO_VSOCK_OP_CREDIT_REQUEST": vsock.VsockOp.CREDIT_REQUEST,
        "VIRTIO_VSOCK_SHUTDOWN_RCV": vsock.VsockShutdown.RECEIVE,
        "VIRTIO_VSOCK_SHUTDOWN_SEND": vsock.VsockShutdown.SEND,
        "VIRTIO_VSOCK_SEQ_EOM": vsock.VsockSeqFlag.EOM,
        "VIRTIO_VSOCK_SEQ_EOR": vsock.VsockSeqFlag.EOR,
    },
    "virtio_gpio.h": {
        "VIRTIO_GPIO_F_IRQ": gpio.GpioFeature.IRQ,
        "VIRTIO_GPIO_MSG_GET_NAMES": gpio.GpioMsgType.GET_LINE_NAMES,
        "VIRTIO_GPIO_MSG_GET_DIRECTION": gpio.GpioMsgType.GET_DIRECTION,
        "VIRTIO_GPIO_MSG_SET_DIRECTION": gpio.GpioMsgType.SET_DIRECTION,
        "VIRTIO_GPIO_MSG_GET_VALUE": gpio.GpioMsgType.GET_VALUE,
        "VIRTIO_GPIO_MSG_SET_VALUE": gpio.GpioMsgType.SET_VALUE,
        "VIRTIO_GPIO_MSG_IRQ_TYPE": gpio.GpioMsgType.SET_IRQ_TYPE,
        "VIRTIO_GPIO_STATUS_OK": gpio.GpioStatus.OK,
        "VIRTIO_GPIO_STATUS_ERR": gpio.GpioStatus.ERR,
        "VIRTIO_GPIO_DIRECTION_NONE": gpio.GpioDirection.NONE,
        "VIRTIO_GPIO_DIRECTION_OUT": gpio.GpioDirection.OUT,
        "VIRTIO_GPIO_DIRECTION_IN": gpio.GpioDirection.IN,
        "VIRTIO_GPIO_IRQ_TYPE_NONE": gpio.GpioIrqType.NONE,
        "VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING": gpio.GpioIrqType.EDGE_RISING,
        "VIRTIO_GPIO_IRQ_TYPE_EDGE_FALLING": gpio.GpioIrqType.EDGE_FALLING,
        "VIRTIO_GPIO_IRQ_TYPE_EDGE_BOTH": gpio.GpioIrqType.EDGE_BOTH,
        "VIRTIO_GPIO_IRQ_TYPE_LEVEL_HIGH": gpio.GpioIrqType.LEVEL_HIGH,
        "VIRTIO_GPIO_IRQ_TYPE_LEVEL_LOW": gpio.GpioIrqType.LEVEL_LOW,
        "VIRTIO_GPIO_IRQ_STATUS_INVALID": gpio.GpioIrqStatus.INVALID,
        "VIRTIO_GPIO_IRQ_STATUS_VALID": gpio.GpioIrqStatus.VALID,
    },
    "virtio_i2c.h": {
        "VIRTIO_I2C_F_ZERO_LENGTH_REQUEST": i2c.I2cFeature.ZERO_LENGTH_REQUEST,
        "VIRTIO_I2C_FLAGS_FAIL_NEXT": i2c.I2cFlag.FAIL_NEXT,
        "VIRTIO_I2C_FLAGS_M_RD": i2c.I2cFlag.M_RD,
        "VIRTIO_I2C_MSG_OK": i2c.I2cStatus.OK,
        "VIRTIO_I2C_MSG_ERR": i2c.I2cStatus.ERR,
    },
    "virtio_scsi.h": {
        "VIRTIO_SCSI_CDB_DEFAULT_SIZE": scsi.SCSI_CDB_DEFAULT_SIZE,
        "VIRTIO_SCSI_SENSE_DEFAULT_SIZE": scsi.SCSI_SENSE_DEFAULT_SIZE,
        "VIRTIO_SCSI_F_INOUT": scsi.ScsiFeature.INOUT,
        "VIRTIO_SCSI_F_HOTPLUG": scsi.ScsiFeature.HOTPLUG,
        "VIRTIO_SCSI_F_CHANGE": scsi.ScsiFeature.CHANGE,
        "VIRTIO_SCSI_F_T10_PI": scsi.ScsiFeature.T10_PI,
        "VIRTIO_SCSI_S_OK": scsi.ScsiResponse.OK,
        "VIRTIO_SCSI_S_OVERRUN": scsi.ScsiResponse.OVERRUN,
        "VIRTIO_SCSI_S_ABORTED": scsi.ScsiResponse.ABORTED,
        "VIRTIO_SCSI_S_BAD_TARGET": scsi.ScsiResponse.BAD_TARGET,
        "VIRTIO_SCSI_S_RESET": scsi.ScsiResponse.RESET,
        "VIRTIO_SCSI_S_BUSY": scsi.ScsiResponse.BUSY,
        "VIRTIO_SCSI_S_TRANSPORT_FAILURE": scsi.ScsiResponse.TRANSPORT_FAILURE,
        "VIRTIO_SCSI_S_TARGET_FAILURE": scsi.ScsiResponse.TARGET_FAILURE,
        "VIRTIO_SCSI_S_NEXUS_FAILURE": scsi.ScsiResponse.NEXUS_FAILURE,
        "VIRTIO_SCSI_S_FAILURE": scsi.ScsiResponse.FAILURE,
        "VIRTIO_SCSI_S_FUNCTION_SUCCEEDED": scsi.ScsiResponse.FUNCTION_SUCCEEDED,
        "VIRTIO_SCSI_S_FUNCTION_REJECTED": scsi.ScsiResponse.FUNCTION_REJECTED,
        "VIRTIO_SCSI_S_INCORRECT_LUN": scsi.ScsiResponse.INCORRECT_LUN,
        "VIRTIO_SCSI_T_TMF": scsi.ScsiCtrlType.TMF,
        "VIRTIO_SCSI_T_AN_QUERY": scsi.ScsiCtrlType.AN_QUERY,
        "VIRTIO_SCSI_T_AN_SUBSCRIBE": scsi.ScsiCtrlType.AN_SUBSCRIBE,
        "VIRTIO_SCSI_T_TMF_ABORT_TASK": scsi.ScsiTmf.ABORT_TASK,
        "VIRTIO_SCSI_T_TMF_ABORT_TASK_SET": scsi.ScsiTmf.ABORT_TASK_SET,
        "VIRTIO_SCSI_T_TMF_CLEAR_ACA": scsi.ScsiTmf.CLEAR_ACA,
        "VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET": scsi.ScsiTmf.CLEAR_TASK_SET,
        "VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET": scsi.ScsiTmf.I_T_NEXUS_RESET,
        "VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET": scsi.ScsiTmf.LOGICAL_UNIT_RESET,
        "VIRTIO_SCSI_T_TMF_QUERY_TASK": scsi.ScsiTmf.QUERY_TASK,
        "VIRTIO_SCSI_T_TMF_QUERY_TASK_SET": scsi.ScsiTmf.QUERY_TASK_SET,
        "VIRTIO_SCSI_T_EVENTS_MISSED": scsi.SCSI_T_EVENTS_MISSED,
        "VIRTIO_SCSI_T_NO_EVENT": scsi.ScsiEventType.NO_EVENT,
        "VIRTIO_SCSI_T_TRANSPORT_RESET": scsi.ScsiEventType.TRANSPORT_RESET,
        "VIRTIO_SCSI_T_ASYNC_NOTIFY": scsi.ScsiEventType.ASYNC_NOTIFY,
        "VIRTIO_SCSI_T_PARAM_CHANGE": scsi.ScsiEventType.PARAM_CHANGE,
        "VIRTIO_SCSI_EVT_RESET_HARD": scsi.ScsiResetReason.HARD,
        "VIRTIO_SCSI_EVT_RESET_RESCAN": scsi.ScsiResetReason.RESCAN,
        "VIRTIO_SCSI_EVT_RESET_REMOVED": scsi.ScsiResetReason.REMOVED,
        "VIRTIO_SCSI_S_SIMPLE": scsi.ScsiTaskAttr.SIMPLE,
        "VIRTIO_SCSI_S_ORDERED": scsi.ScsiTaskAttr.ORDERED,
        "VIRTIO_SCSI_S_HEAD": scsi.ScsiTaskAttr.HEAD,
        "VIRTIO_SCSI_S_ACA": scsi.ScsiTaskAttr.ACA,
    },
    "virtio_fs.h": {
        "VIRTIO_FS_SHMCAP_ID_CACHE": fs.FS_SHM_ID_CACHE,
    },
    "vhost_types.h": {
        "VHOST_VRING_F_LOG": vhost_user.VHOST_VRING_F_LOG,
        "VHOST_ACCESS_RO": vhost_user.IotlbPerm.RO,
        "VHOST_ACCESS_WO": vhost_user.IotlbPerm.WO,
        "VHOST_ACCESS_RW": vhost_user.IotlbPerm.RW,
        "VHOST_IOTLB_MISS": vhost_user.IotlbType.MISS,
        "VHOST_IOTLB_UPDATE": vhost_user.IotlbType.UPDATE,
        "VHOST_IOTLB_INVALIDATE": vhost_user.IotlbType.INVALIDATE,
        "VHOST_IOTLB_ACCESS_FAIL": vhost_user.IotlbType.ACCESS_FAIL,
        "VHOST_PAGE_SIZE": vhost_user.VHOST_LOG_PAGE,
        "VHOST_F_LOG_ALL": vhost_user.VHOST_F_LOG_ALL,
    },
    "vhost.h": {
        "VHOST_VRING_LITTLE_ENDIAN": vhost_user.VHOST_VRING_LITTLE_ENDIAN,
        "VHOST_VRING_BIG_ENDIAN": vhost_user.VHOST_VRING_BIG_ENDIAN,
    },
    "vm_sockets.h": {
        "VMADDR_CID_HOST": vsock.VSOCK_CID_HOST,
    },
    "pci_regs.h": {
        "PCI_CFG_SPACE_SIZE": pci.PCI_CONFIG_SPACE_SIZE,
        "PCI_CFG_SPACE_EXP_SIZE": pci.PCIE_CONFIG_SPACE_SIZE,
        "PCI_STD_HEADER_SIZEOF": pci.PCI_STD_HEADER_SIZE,
        "PCI_STD_NUM_BARS": pci.PCI_STD_NUM_BARS,
        "PCI_VENDOR_ID": pci.PciCfg.VENDOR_ID,
        "PCI_DEVICE_ID": pci.PciCfg.DEVICE_ID,
        "PCI_COMMAND": pci.PciCfg.COMMAND,
        "PCI_STATUS": pci.PciCfg.STATUS,
        "PCI_REVISION_ID": pci.PciCfg.REVISION_ID,
        "PCI_CLASS_PROG": pci.PciCfg.CLASS_PROG,
        "PCI_CLASS_DEVICE": pci.PciCfg.CLASS_DEVICE,
        "PCI_CACHE_LINE_SIZE": pci.PciCfg.CACHE_LINE_SIZE,
        "PCI_LATENCY_TIMER": pci.PciCfg.LATENCY_TIMER,
        "PCI_HEADER_TYPE": pci.PciCfg.HEADER_TYPE,
        "PCI_BIST": pci.PciCfg.BIST,
        "PCI_BASE_ADDRESS_0": pci.PciCfg.BAR0,
        "PCI_BASE_ADDRESS_1": pci.PciCfg.BAR1,
        "PCI_BASE_ADDRESS_2": pci.PciCfg.BAR2,
        "PCI_BASE_ADDRESS_3": pci.PciCfg.BAR3,
        "PCI_BASE_ADDRESS_4": pci.PciCfg.BAR4,
        "PCI_BASE_ADDRESS_5": pci.PciCfg.BAR5,
        "PCI_CARDBUS_CIS": pci.PciCfg.CARDBUS_CIS,
        "PCI_SUBSYSTEM_VENDOR_ID": pci.PciCfg.SUBSYSTEM_VENDOR_ID,
        "PCI_SUBSYSTEM_ID": pci.PciCfg.SUBSYSTEM_ID,
        "PCI_ROM_ADDRESS": pci.PciCfg.ROM_ADDRESS,
        "PCI_CAPABILITY_LIST": pci.PciCfg.CAPABILITY_LIST,
        "PCI_INTERRUPT_LINE": pci.PciCfg.INTERRUPT_LINE,
        "PCI_INTERRUPT_PIN": pci.PciCfg.INTERRUPT_PIN,
        "PCI_MIN_GNT": pci.PciCfg.MIN_GNT,
        "PCI_MAX_LAT": pci.PciCfg.MAX_LAT,
        "PCI_COMMAND_IO": pci.PciCommand.IO,
        "PCI_COMMAND_MEMORY": pci.PciCommand.MEMORY,
        "PCI_COMMAND_MASTER": pci.PciCommand.MASTER,
        "PCI_COMMAND_SPECIAL": pci.PciCommand.SPECIAL,
        "PCI_COMMAND_INVALIDATE": pci.PciCommand.INVALIDATE,
        "PCI_COMMAND_VGA_PALETTE": pci.PciCommand.VGA_PALETTE,
        "PCI_COMMAND_PARITY": pci.PciCommand.PARITY,
        "PCI_COMMAND_WAIT": pci.PciCommand.WAIT,
        "PCI_COMMAND_SERR": pci.PciCommand.SERR,
        "PCI_COMMAND_FAST_BACK": pci.PciCommand.FAST_BACK,
        "PCI_COMMAND_INTX_DISABLE": pci.PciCommand.INTX_DISABLE,
        "PCI_STATUS_INTERRUPT": pci.PciStatus.INTERRUPT,
        "PCI_STATUS_CAP_LIST": pci.PciStatus.CAP_LIST,
        "PCI_HEADER_TYPE_NORMAL": pci.PCI_HEADER_TYPE_NORMAL,
        "PCI_BASE_ADDRESS_SPACE_IO": pci.PCI_BAR_SPACE_IO,
        "PCI_BASE_ADDRESS_MEM_TYPE_32": pci.PCI_BAR_MEM_TYPE_32,
        "PCI_BASE_ADDRESS_MEM_TYPE_64": pci.PCI_BAR_MEM_TYPE_64,
        "PCI_BASE_ADDRESS_MEM_PREFETCH": pci.PCI_BAR_MEM_PREFETCH,
        "PCI_CAP_LIST_ID": pci.PCI_CAP_LIST_ID,
        "PCI_CAP_LIST_NEXT": pci.PCI_CAP_LIST_NEXT,
        "PCI_CAP_ID_PM": pci.PciCapId.PM,
        "PCI_CAP_ID_MSI": pci.PciCapId.MSI,
        "PCI_CAP_ID_VNDR": pci.PCI_CAP_ID_VNDR,
        "PCI_CAP_ID_EXP": pci.PciCapId.EXP,
        "PCI_CAP_ID_MSIX": pci.PCI_CAP_ID_MSIX,
        "PCI_MSIX_FLAGS": pci.MsixCap.MESSAGE_CONTROL,
        "PCI_MSIX_FLAGS_QSIZE": pci.MSIX_FLAGS_QSIZE,
        "PCI_MSIX_FLAGS_MASKALL": pci.MSIX_FLAGS_MASKALL,
        "PCI_MSIX_FLAGS_ENABLE": pci.MSIX_FLAGS_ENABLE,
        "PCI_MSIX_TABLE": pci.MsixCap.TABLE,
        "PCI_MSIX_TABLE_BIR": pci.MSIX_BIR_MASK,
        "PCI_MSIX_TABLE_OFFSET": pci.MSIX_OFFSET_MASK,
        "PCI_MSIX_PBA": pci.MsixCap.PBA,
        "PCI_MSIX_PBA_BIR": pci.MSIX_BIR_MASK,
        "PCI_MSIX_PBA_OFFSET": pci.MSIX_OFFSET_MASK,
        "PCI_CAP_MSIX_SIZEOF": pci.MSIX_CAP_SIZE,
        "PCI_MSIX_ENTRY_SIZE": pci.MSIX_ENTRY_SIZE,
        "PCI_MSIX_ENTRY_LOWER_ADDR": pci.MsixEntry.LOWER_ADDR,
        "PCI_MSIX_ENTRY_UPPER_ADDR": pci.MsixEntry.UPPER_ADDR,
        "PCI_MSIX_ENTRY_DATA": pci.MsixEntry.DATA,
        "PCI_MSIX_ENTRY_VECTOR_CTRL": pci.MsixEntry.VECTOR_CTRL,
        "PCI_MSIX_ENTRY_CTRL_MASKBIT": pci.MSIX_ENTRY_CTRL_MASKBIT,
    },
}

#: Names that only newer headers have; compared when present.
KERNEL_MAP_NEWER: dict[str, object] = {
    "VIRTIO_F_NOTIFICATION_DATA": Feature.NOTIFICATION_DATA,
    "VIRTIO_F_NOTIF_CONFIG_DATA": Feature.NOTIF_CONFIG_DATA,
    "VIRTIO_F_ADMIN_VQ": Feature.ADMIN_VQ,
    "VIRTIO_PCI_CAP_VENDOR_CFG": pci.PciCapType.VENDOR_CFG,
    "VIRTIO_PCI_COMMON_ADM_Q_IDX": pci.CommonCfg.ADMIN_QUEUE_INDEX,
    "VIRTIO_PCI_COMMON_ADM_Q_NUM": pci.CommonCfg.ADMIN_QUEUE_NUM,
    "VIRTIO_MMIO_QUEUE_RESET": mmio.MmioReg.QUEUE_RESET,
    "VIRTIO_BLK_F_ZONED": blk.BlkFeature.ZONED,
    "VIRTIO_BLK_F_LIFETIME": blk.BlkFeature.LIFETIME,
    "VIRTIO_BLK_T_GET_LIFETIME": blk.BlkReqType.GET_LIFETIME,
    "VIRTIO_BLK_T_ZONE_APPEND": blk.BlkReqType.ZONE_APPEND,
    "VIRTIO_BLK_T_ZONE_REPORT": blk.BlkReqType.ZONE_REPORT,
    "VIRTIO_BLK_T_ZONE_OPEN": blk.BlkReqType.ZONE_OPEN,
    "VIRTIO_BLK_T_ZONE_CLOSE": blk.BlkReqType.ZONE_CLOSE,
    "VIRTIO_BLK_T_ZONE_FINISH": blk.BlkReqType.ZONE_FINISH,
    "VIRTIO_BLK_T_ZONE_RESET": blk.BlkReqType.ZONE_RESET,
    "VIRTIO_BLK_T_ZONE_RESET_ALL": blk.BlkReqType.ZONE_RESET_ALL,
    "VIRTIO_BLK_S_ZONE_INVALID_CMD": blk.BlkStatus.ZONE_INVALID_CMD,
    "VIRTIO_BLK_S_ZONE_UNALIGNED_WP": blk.BlkStatus.ZONE_UNALIGNED_WP,
    "VIRTIO_BLK_S_ZONE_OPEN_RESOURCE": blk.BlkStatus.ZONE_OPEN_RESOURCE,
    "VIRTIO_BLK_S_ZONE_ACTIVE_RESOURCE": blk.BlkStatus.ZONE_ACTIVE_RESOURCE,
    "VIRTIO_BLK_Z_NONE": blk.BlkZonedModel.NONE,
    "VIRTIO_BLK_Z_HM": blk.BlkZonedModel.HM,
    "VIRTIO_BLK_Z_HA": blk.BlkZonedModel.HA,
    "VIRTIO_NET_F_VQ_NOTF_COAL": net.NetFeature.VQ_NOTF_COAL,
    "VIRTIO_NET_F_GUEST_USO4": net.NetFeature.GUEST_USO4,
    "VIRTIO_NET_F_GUEST_USO6": net.NetFeature.GUEST_USO6,
    "VIRTIO_NET_F_HOST_USO": net.NetFeature.HOST_USO,
    "VIRTIO_NET_F_DEVICE_STATS": net.NetFeature.DEVICE_STATS,
    "VIRTIO_NET_F_GUEST_HDRLEN": net.NetFeature.GUEST_HDRLEN,
    "VIRTIO_NET_HDR_GSO_UDP_L4": net.NetGsoType.UDP_L4,
    "VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET": net.NetCtrlNotfCoal.VQ_SET,
    "VIRTIO_NET_CTRL_NOTF_COAL_VQ_GET": net.NetCtrlNotfCoal.VQ_GET,
    "VIRTIO_NET_CTRL_STATS": net.NetCtrlClass.STATS,
    "VIRTIO_VSOCK_F_STREAM": vsock.VsockFeature.STREAM,
    "VIRTIO_VSOCK_F_NO_IMPLIED_STREAM": vsock.VsockFeature.NO_IMPLIED_STREAM,
    "VIRTIO_ID_RDMA": DeviceType.RDMA,
    "VIRTIO_ID_CAMERA": DeviceType.CAMERA,
    "VIRTIO_ID_ISM": DeviceType.ISM,
    "VIRTIO_ID_SPI": DeviceType.SPI,
    "VIRTIO_FS_F_NOTIFICATION": fs.FsFeature.NOTIFICATION,
}

# --- the sweep -------------------------------------------------------------------------------------

SWEEP: tuple[tuple[str, type[Enum]], ...] = (
    ("VIRTIO_ID_", DeviceType),
    ("VIRTIO_CONFIG_S_", DeviceStatus),
    ("VIRTIO_F_", Feature),
    ("VIRTIO_PCI_CAP_", pci.PciCapType),
    ("VIRTIO_PCI_CAP_", pci.VirtioPciCap),
    ("VIRTIO_PCI_", pci.LegacyReg),
    ("VIRTIO_MMIO_", mmio.MmioReg),
    ("VIRTIO_MMIO_", mmio.MmioLegacyReg),
    ("VIRTIO_BLK_F_", blk.BlkFeature),
    ("VIRTIO_BLK_T_", blk.BlkReqType),
    ("VIRTIO_BLK_S_", blk.BlkStatus),
    ("VIRTIO_BLK_Z_", blk.BlkZonedModel),
    ("VIRTIO_BLK_ZT_", blk.BlkZoneType),
    ("VIRTIO_BLK_ZS_", blk.BlkZoneState),
    ("VIRTIO_NET_F_", net.NetFeature),
    ("VIRTIO_NET_S_", net.NetStatus),
    ("VIRTIO_NET_HDR_F_", net.NetHdrFlag),
    ("VIRTIO_NET_HDR_GSO_", net.NetGsoType),
    ("VIRTIO_NET_RSS_HASH_TYPE_", net.NetHashType),
    ("VIRTIO_NET_HASH_REPORT_", net.NetHashReport),
    ("VIRTIO_NET_", net.NetCtrlAck),
    ("VIRTIO_NET_CTRL_", net.NetCtrlClass),
    ("VIRTIO_NET_CTRL_RX_", net.NetCtrlRx),
    ("VIRTIO_NET_CTRL_MAC_", net.NetCtrlMac),
    ("VIRTIO_NET_CTRL_VLAN_", net.NetCtrlVlan),
    ("VIRTIO_NET_CTRL_ANNOUNCE_", net.NetCtrlAnnounce),
    ("VIRTIO_NET_CTRL_MQ_", net.NetCtrlMq),
    ("VIRTIO_NET_CTRL_GUEST_OFFLOADS_", net.NetCtrlGuestOffloads),
    ("VIRTIO_NET_CTRL_NOTF_COAL_", net.NetCtrlNotfCoal),
    ("VIRTIO_CONSOLE_F_", console.ConsoleFeature),
    ("VIRTIO_CONSOLE_", console.ConsoleEvent),
    ("VIRTIO_INPUT_CFG_", vinput.InputConfigSelect),
    ("VIRTIO_VSOCK_F_", vsock.VsockFeature),
    ("VIRTIO_VSOCK_OP_", vsock.VsockOp),
    ("VIRTIO_VSOCK_TYPE_", vsock.VsockType),
    ("VIRTIO_VSOCK_SHUTDOWN_", vsock.VsockShutdown),
    ("VIRTIO_VSOCK_SEQ_", vsock.VsockSeqFlag),
    ("VIRTIO_VSOCK_EVENT_", vsock.VsockEventId),
    ("VIRTIO_GPIO_F_", gpio.GpioFeature),
    ("VIRTIO_GPIO_MSG_", gpio.GpioMsgType),
    ("VIRTIO_GPIO_STATUS_", gpio.GpioStatus),
    ("VIRTIO_GPIO_DIRECTION_", gpio.GpioDirection),
    ("VIRTIO_GPIO_IRQ_TYPE_", gpio.GpioIrqType),
    ("VIRTIO_GPIO_IRQ_STATUS_", gpio.GpioIrqStatus),
    ("VIRTIO_I2C_F_", i2c.I2cFeature),
    ("VIRTIO_I2C_FLAGS_", i2c.I2cFlag),
    ("VIRTIO_I2C_MSG_", i2c.I2cStatus),
    ("VIRTIO_SCSI_F_", scsi.ScsiFeature),
    ("VIRTIO_SCSI_S_", scsi.ScsiResponse),
    ("VIRTIO_SCSI_S_", scsi.ScsiTaskAttr),
    ("VIRTIO_SCSI_T_", scsi.ScsiCtrlType),
    ("VIRTIO_SCSI_T_", scsi.ScsiEventType),
    ("VIRTIO_SCSI_T_TMF_", scsi.ScsiTmf),
    ("VIRTIO_SCSI_EVT_RESET_", scsi.ScsiResetReason),
    ("VIRTIO_SCSI_EVT_ASYNC_", scsi.ScsiAsyncEvent),
    ("VIRTIO_FS_F_", fs.FsFeature),
    ("VHOST_IOTLB_", vhost_user.IotlbType),
    ("VHOST_ACCESS_", vhost_user.IotlbPerm),
    ("PCI_", pci.PciCfg),
    ("PCI_COMMAND_", pci.PciCommand),
    ("PCI_STATUS_", pci.PciStatus),
    ("PCI_CAP_ID_", pci.PciCapId),
    ("PCI_MSIX_ENTRY_", pci.MsixEntry),
)

#: Kernel names whose suffix is one of our member names but means something else.
SWEEP_NAME_CLASHES: dict[str, str] = {
    "VIRTIO_ID_BALLOON": "Linux's ID 5 ('memory ballooning (traditional)'); our BALLOON is ID 13, "
    "Linux VIRTIO_ID_MEMORY_BALLOON",
}


def _sweep_pairs(kernel):
    for prefix, enum_cls in SWEEP:
        members = {name.upper(): member for name, member in enum_cls.__members__.items()}
        for name, value in kernel.items():
            if name.startswith(prefix) and name[len(prefix):].upper() in members:
                yield name, value, members[name[len(prefix):].upper()], enum_cls


def _agrees(kernel_value, ours) -> bool:
    if isinstance(ours, Bit):
        return 1 << kernel_value == ours.mask
    return kernel_value == int(ours)


def _compared_names(headers, kernel):
    names = set()
    for header, table in KERNEL_MAP.items():
        names.update(n for n in table if n in kernel)
    names.update(n for n in KERNEL_MAP_NEWER if n in kernel)
    names.update(n for n, *_ in _sweep_pairs(kernel) if n not in SWEEP_NAME_CLASHES)
    return names


# --- tests -----------------------------------------------------------------------------------------


def test_reader_understands_the_forms_it_meets(headers, kernel):
    assert kernel["VIRTIO_ID_NET"] == 1
    assert kernel["VIRTIO_F_IOMMU_PLATFORM"] == kernel["VIRTIO_F_ACCESS_PLATFORM"]  # a reference
    assert kernel["VIRTIO_BLK_F_WCE"] == kernel["VIRTIO_BLK_F_FLUSH"]
    assert kernel["VIRTIO_MMIO_INT_CONFIG"] == 2  # (1 << 1)
    assert kernel["VIRTIO_CONSOLE_BAD_ID"] == 0xFFFFFFFF  # (~(__u32)0)
    assert kernel["VIRTIO_BLK_T_BARRIER"] == 0x80000000
    if "VIRTIO_I2C_FLAGS_M_RD" in kernel:
        assert kernel["VIRTIO_I2C_FLAGS_M_RD"] == 2  # _BITUL(1)
    if "VIRTIO_VSOCK_OP_CREDIT_REQUEST" in kernel:
        assert kernel["VIRTIO_VSOCK_OP_CREDIT_REQUEST"] == 7  # enum
    assert "vring_used_event" not in kernel  # function-like macros are not constants


@pytest.mark.parametrize("header", sorted(KERNEL_MAP))
def test_every_mapped_name_exists(headers, kernel, header):
    if not os.path.exists(os.path.join(INCLUDE, header)):
        pytest.skip(f"{INCLUDE}/{header} is not installed")
    missing = [n for n in KERNEL_MAP[header] if n not in kernel]
    assert not missing, f"{header} lacks (or the reader cannot evaluate) {missing}"
    wrong_file = {n: headers.origin[n] for n in KERNEL_MAP[header] if n in kernel and headers.origin[n] != header}
    assert not wrong_file, f"defined elsewhere: {wrong_file}"


@pytest.mark.parametrize("header", sorted(KERNEL_MAP))
def test_mapped_values_agree(kernel, header):
    table = {n: ours for n, ours in KERNEL_MAP[header].items() if n in kernel}
    if not table:
        pytest.skip(f"no names of {header} in {INCLUDE}")
    wrong = {n: (kernel[n], ours) for n, ours in table.items() if not _agrees(kernel[n], ours)}
    assert not wrong, f"kernel value != ours: {wrong}"


def test_newer_names_agree_when_present(kernel):
    wrong = {
        n: (kernel[n], ours)
        for n, ours in KERNEL_MAP_NEWER.items()
        if n in kernel and not _agrees(kernel[n], ours)
    }
    assert not wrong, f"kernel value != ours: {wrong}"


def test_prefix_sweep_agrees(kernel):
    wrong = {
        name: (value, f"{enum_cls.__name__}.{member.name}", int(member))
        for name, value, member, enum_cls in _sweep_pairs(kernel)
        if value != int(member) and name not in SWEEP_NAME_CLASHES
    }
    assert not wrong, f"same name, different value: {wrong}"


def test_sweep_clash_list_is_current(kernel):
    clashes = {
        name for name, value, member, _ in _sweep_pairs(kernel) if value != int(member)
    }
    stale = {n for n in SWEEP_NAME_CLASHES if n in kernel} - clashes
    assert not stale, f"no longer clash, drop them from SWEEP_NAME_CLASHES: {stale}"


def test_enough_constants_are_compared(headers, kernel):
    compared = _compared_names(headers, kernel)
    assert len(compared) >= MIN_COMPARED, f"only {len(compared)} kernel constants compared"


def test_every_mapped_object_is_ours():
    for table in list(KERNEL_MAP.values()) + [KERNEL_MAP_NEWER]:
        for name, ours in table.items():
            assert isinstance(ours, (int, Bit)), name


# --- struct layouts, compiled ------------------------------------------------------------------------


def _field_offsets(st: struct.Struct, fields) -> dict[str, int]:
    """Offset of each named item of a packed ``struct`` format (``x`` pads are unnamed)."""
    offsets, offset = [], 0
    for count, code in re.findall(r"(\d*)([xcbB?hHiIlLqQnNefdspP])", st.format):
        n = int(count) if count else 1
        size = struct.calcsize("<" + code)
        if code == "x":
            offset += n
        elif code == "s":
            offsets.append(offset)
            offset += n
        else:
            for _ in range(n):
                offsets.append(offset)
                offset += size
    assert offset == st.size and len(offsets) == len(fields)
    return dict(zip(fields, offsets))


def _layouts():
    """(include, C type, expected sizeof or None, {C member: our offset})."""
    o = _field_offsets
    common = {f.name.lower(): int(f) for f in pci.CommonCfg}
    return [
        ("linux/virtio_ring.h", "struct vring_desc", ring.VIRTQ_DESC_SIZE,
         {"addr": 0, "len": 8, "flags": 12, "next": 14}),
        ("linux/virtio_ring.h", "struct vring_used_elem", ring.VIRTQ_USED_ELEM_SIZE, {"id": 0, "len": 4}),
        ("linux/virtio_ring.h", "struct vring_packed_desc", ring.PVIRTQ_DESC_SIZE,
         {"addr": 0, "len": 8, "id": 12, "flags": 14}),
        ("linux/virtio_ring.h", "struct vring_packed_desc_event", ring.PVIRTQ_EVENT_SUPPRESS.size,
         {"off_wrap": 0, "flags": 2}),
        ("linux/virtio_pci.h", "struct virtio_pci_cap", pci.VIRTIO_PCI_CAP_SIZE,
         o(pci.VIRTIO_PCI_CAP, pci.VIRTIO_PCI_CAP_FIELDS)),
        ("linux/virtio_pci.h", "struct virtio_pci_notify_cap", pci.VIRTIO_PCI_NOTIFY_CAP_SIZE,
         {"notify_off_multiplier": pci.VirtioPciCap.NOTIFY_OFF_MULTIPLIER}),
        ("linux/virtio_pci.h", "struct virtio_pci_cap64", pci.VIRTIO_PCI_CAP64_SIZE,
         {"offset_hi": pci.VirtioPciCap.OFFSET_HI, "length_hi": pci.VirtioPciCap.LENGTH_HI}),
        ("linux/virtio_pci.h", "struct virtio_pci_cfg_cap", pci.VIRTIO_PCI_CFG_CAP_SIZE,
         {"pci_cfg_data": pci.VirtioPciCap.PCI_CFG_DATA}),
        ("linux/virtio_pci.h", "struct virtio_pci_common_cfg", None,
         {
             "device_feature_select": common["device_feature_select"],
             "device_feature": common["device_feature"],
             "guest_feature_select": common["driver_feature_select"],
             "guest_feature": common["driver_feature"],
             "msix_config": common["config_msix_vector"],
             "num_queues": common["num_queues"],
             "device_status": common["device_status"],
             "config_generation": common["config_generation"],
             "queue_select": common["queue_select"],
             "queue_size": common["queue_size"],
             "queue_msix_vector": common["queue_msix_vector"],
             "queue_enable": common["queue_enable"],
             "queue_notify_off": common["queue_notify_off"],
             "queue_desc_lo": common["queue_desc"],
             "queue_avail_lo": common["queue_driver"],
             "queue_used_lo": common["queue_device"],
         }),
        ("linux/virtio_blk.h", "struct virtio_blk_config", None,
         {
             "capacity": blk.BlkConfigOffset.CAPACITY,
             "size_max": blk.BlkConfigOffset.SIZE_MAX,
             "seg_max": blk.BlkConfigOffset.SEG_MAX,
             "geometry.cylinders": blk.BlkConfigOffset.CYLINDERS,
             "geometry.heads": blk.BlkConfigOffset.HEADS,
             "geometry.sectors": blk.BlkConfigOffset.SECTORS,
             "blk_size": blk.BlkConfigOffset.BLK_SIZE,
             "physical_block_exp": blk.BlkConfigOffset.PHYSICAL_BLOCK_EXP,
             "alignment_offset": blk.BlkConfigOffset.ALIGNMENT_OFFSET,
             "min_io_size": blk.BlkConfigOffset.MIN_IO_SIZE,
             "opt_io_size": blk.BlkConfigOffset.OPT_IO_SIZE,
             "wce": blk.BlkConfigOffset.WRITEBACK,
             "num_queues": blk.BlkConfigOffset.NUM_QUEUES,
             "max_discard_sectors": blk.BlkConfigOffset.MAX_DISCARD_SECTORS,
             "max_discard_seg": blk.BlkConfigOffset.MAX_DISCARD_SEG,
             "discard_sector_alignment": blk.BlkConfigOffset.DISCARD_SECTOR_ALIGNMENT,
             "max_write_zeroes_sectors": blk.BlkConfigOffset.MAX_WRITE_ZEROES_SECTORS,
             "max_write_zeroes_seg": blk.BlkConfigOffset.MAX_WRITE_ZEROES_SEG,
             "write_zeroes_may_unmap": blk.BlkConfigOffset.WRITE_ZEROES_MAY_UNMAP,
             "max_secure_erase_sectors": blk.BlkConfigOffset.MAX_SECURE_ERASE_SECTORS,
             "max_secure_erase_seg": blk.BlkConfigOffset.MAX_SECURE_ERASE_SEG,
             "secure_erase_sector_alignment": blk.BlkConfigOffset.SECURE_ERASE_SECTOR_ALIGNMENT,
         }),
        ("linux/virtio_blk.h", "struct virtio_blk_outhdr", blk.BLK_REQ_HEADER_SIZE,
         {"type": 0, "ioprio": o(blk.BLK_REQ_HEADER, blk.BLK_REQ_HEADER_FIELDS)["reserved"],
          "sector": o(blk.BLK_REQ_HEADER, blk.BLK_REQ_HEADER_FIELDS)["sector"]}),
        ("linux/virtio_blk.h", "struct virtio_blk_discard_write_zeroes", blk.BLK_DISCARD_WRITE_ZEROES_SIZE,
         {"sector": 0, "num_sectors": 8, "flags": 12}),
        ("linux/virtio_net.h", "struct virtio_net_config", None,
         {f.name.lower(): int(f) for f in net.NetConfigOffset if f is not net.NetConfigOffset.SUPPORTED_TUNNEL_TYPES}),
        ("linux/virtio_net.h", "struct virtio_net_hdr", net.NET_HDR_LEGACY_SIZE,
         o(net.NET_HDR_LEGACY, net.NET_HDR_LEGACY_FIELDS)),
        ("linux/virtio_net.h", "struct virtio_net_hdr_v1", net.NET_HDR_SIZE, o(net.NET_HDR, net.NET_HDR_FIELDS)),
        ("linux/virtio_net.h", "struct virtio_net_hdr_v1_hash", net.NET_HDR_HASH_SIZE,
         {"hash_value": o(net.NET_HDR_HASH, net.NET_HDR_HASH_FIELDS)["hash_value"],
          "hash_report": o(net.NET_HDR_HASH, net.NET_HDR_HASH_FIELDS)["hash_report"],
          "padding": o(net.NET_HDR_HASH, net.NET_HDR_HASH_FIELDS)["padding_reserved"]}),
        ("linux/virtio_console.h", "struct virtio_console_config", console.CONSOLE_CONFIG_SIZE,
         {f.name.lower(): int(f) for f in console.ConsoleConfigOffset}),
        ("linux/virtio_console.h", "struct virtio_console_control", console.CONSOLE_CONTROL_SIZE,
         o(console.CONSOLE_CONTROL, console.CONSOLE_CONTROL_FIELDS)),
        ("linux/virtio_input.h", "struct virtio_input_config", vinput.INPUT_CONFIG_SIZE,
         {f.name.lower(): int(f) for f in vinput.InputConfigOffset}),
        ("linux/virtio_input.h", "struct virtio_input_absinfo", vinput.INPUT_ABSINFO_SIZE,
         o(vinput.INPUT_ABSINFO, vinput.INPUT_ABSINFO_FIELDS)),
        ("linux/virtio_input.h", "struct virtio_input_devids", vinput.INPUT_DEVIDS_SIZE,
         o(vinput.INPUT_DEVIDS, vinput.INPUT_DEVIDS_FIELDS)),
        ("linux/virtio_input.h", "struct virtio_input_event", vinput.INPUT_EVENT_SIZE,
         o(vinput.INPUT_EVENT, vinput.INPUT_EVENT_FIELDS)),
        ("linux/virtio_vsock.h", "struct virtio_vsock_config", vsock.VSOCK_CONFIG_SIZE, {"guest_cid": 0}),
        ("linux/virtio_vsock.h", "struct virtio_vsock_hdr", vsock.VSOCK_HDR_SIZE,
         o(vsock.VSOCK_HDR, vsock.VSOCK_HDR_FIELDS)),
        ("linux/virtio_vsock.h", "struct virtio_vsock_event", vsock.VSOCK_EVENT_SIZE, {"id": 0}),
        ("linux/virtio_gpio.h", "struct virtio_gpio_config", gpio.GPIO_CONFIG_SIZE,
         {f.name.lower(): int(f) for f in gpio.GpioConfigOffset if f is not gpio.GpioConfigOffset.PADDING}),
        ("linux/virtio_gpio.h", "struct virtio_gpio_request", gpio.GPIO_REQUEST_SIZE,
         o(gpio.GPIO_REQUEST, gpio.GPIO_REQUEST_FIELDS)),
        ("linux/virtio_gpio.h", "struct virtio_gpio_response", gpio.GPIO_RESPONSE_SIZE,
         o(gpio.GPIO_RESPONSE, gpio.GPIO_RESPONSE_FIELDS)),
        ("linux/virtio_gpio.h", "struct virtio_gpio_irq_request", gpio.GPIO_IRQ_REQUEST_SIZE, {"gpio": 0}),
        ("linux/virtio_gpio.h", "struct virtio_gpio_irq_response", gpio.GPIO_IRQ_RESPONSE_SIZE, {"status": 0}),
        ("linux/virtio_i2c.h", "struct virtio_i2c_out_hdr", i2c.I2C_OUT_HDR_SIZE,
         {"addr": 0, "padding": 2, "flags": o(i2c.I2C_OUT_HDR, i2c.I2C_OUT_HDR_FIELDS)["flags"]}),
        ("linux/virtio_i2c.h", "struct virtio_i2c_in_hdr", i2c.I2C_IN_HDR_SIZE, {"status": 0}),
        ("linux/virtio_scsi.h", "struct virtio_scsi_config", scsi.SCSI_CONFIG_SIZE,
         {f.name.lower(): int(f) for f in scsi.ScsiConfigOffset}),
        ("linux/virtio_scsi.h", "struct virtio_scsi_cmd_req", None,
         {"lun": 0, "tag": 8, "task_attr": 16, "prio": 17, "crn": 18, "cdb": scsi.SCSI_REQ_CMD_HEAD_SIZE}),
        ("linux/virtio_scsi.h", "struct virtio_scsi_cmd_resp", None,
         {"sense_len": 0, "resid": 4, "status_qualifier": 8, "status": 10, "response": 11,
          "sense": scsi.SCSI_RESP_CMD_HEAD_SIZE}),
        ("linux/virtio_scsi.h", "struct virtio_scsi_ctrl_tmf_req", scsi.SCSI_CTRL_TMF_SIZE,
         {"type": 0, "subtype": 4, "lun": 8, "tag": 16}),
        ("linux/virtio_scsi.h", "struct virtio_scsi_ctrl_an_req", scsi.SCSI_CTRL_AN_SIZE,
         {"type": 0, "lun": 4, "event_requested": 12}),
        ("linux/virtio_scsi.h", "struct virtio_scsi_ctrl_an_resp", scsi.SCSI_CTRL_AN_RESP_SIZE,
         {"event_actual": 0, "response": 4}),
        ("linux/virtio_scsi.h", "struct virtio_scsi_event", scsi.SCSI_EVENT_SIZE,
         o(scsi.SCSI_EVENT, scsi.SCSI_EVENT_FIELDS)),
        ("linux/virtio_fs.h", "struct virtio_fs_config", None,
         {"tag": fs.FsConfigOffset.TAG, "num_request_queues": fs.FsConfigOffset.NUM_REQUEST_QUEUES}),
        ("linux/vhost_types.h", "struct vhost_vring_state", vhost_user.VRING_STATE_SIZE,
         o(vhost_user.VRING_STATE, vhost_user.VRING_STATE_FIELDS)),
        ("linux/vhost_types.h", "struct vhost_vring_addr", vhost_user.VRING_ADDR_SIZE,
         o(vhost_user.VRING_ADDR, vhost_user.VRING_ADDR_FIELDS)),
        ("linux/vhost_types.h", "struct vhost_memory_region", vhost_user.MEMORY_REGION_SIZE,
         {"guest_phys_addr": 0, "memory_size": 8, "userspace_addr": 16, "flags_padding": 24}),
        ("linux/vhost_types.h", "struct vhost_iotlb_msg", vhost_user.IOTLB_MSG_SIZE,
         o(vhost_user.IOTLB_MSG, vhost_user.IOTLB_MSG_FIELDS)),
        ("linux/fuse.h", "struct fuse_in_header", fs.FUSE_IN_HEADER_SIZE,
         o(fs.FUSE_IN_HEADER, fs.FUSE_IN_HEADER_FIELDS)),
        ("linux/fuse.h", "struct fuse_out_header", fs.FUSE_OUT_HEADER_SIZE,
         o(fs.FUSE_OUT_HEADER, fs.FUSE_OUT_HEADER_FIELDS)),
    ]


@pytest.fixture(scope="module")
def c_layouts(tmp_path_factory):
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler to measure the kernel structs")
    if not os.path.isdir(INCLUDE):
        pytest.skip(f"{INCLUDE} is missing: install linux-libc-dev")
    layouts = [entry for entry in _layouts() if os.path.exists(os.path.join("/usr/include", entry[0]))]
    lines = ["#include <stddef.h>", "#include <stdio.h>"]
    lines += sorted({f"#include <{inc}>" for inc, *_ in layouts})
    lines.append("int main(void) {")
    for _, ctype, _, members in layouts:
        lines.append(f'  printf("%s %zu\\n", "{ctype}", sizeof({ctype}));')
        for member in members:
            lines.append(f'  printf("%s.%s %zu\\n", "{ctype}", "{member}", offsetof({ctype}, {member}));')
    lines.append("  return 0;\n}")
    work = tmp_path_factory.mktemp("clayout")
    (work / "layout.c").write_text("\n".join(lines) + "\n")
    build = subprocess.run([cc, "-o", str(work / "layout"), str(work / "layout.c")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(work / "layout")], capture_output=True, text=True, check=True)
    measured = dict(line.rsplit(" ", 1) for line in run.stdout.splitlines())
    return layouts, {k: int(v) for k, v in measured.items()}


def test_struct_layouts_match_the_kernel(c_layouts):
    layouts, measured = c_layouts
    wrong = []
    for _, ctype, size, members in layouts:
        if size is not None and measured[ctype] != size:
            wrong.append(f"sizeof({ctype}) = {measured[ctype]}, ours {size}")
        for member, offset in members.items():
            got = measured[f"{ctype}.{member}"]
            if got != int(offset):
                wrong.append(f"offsetof({ctype}, {member}) = {got}, ours {int(offset)}")
    assert not wrong, "\n".join(wrong)
    assert len(layouts) >= 40
