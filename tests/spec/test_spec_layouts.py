"""pyvirtio.spec layouts and tables agree with the spec facts (shared/reference/virtio-facts.md)
and with themselves: sizes, offsets, field lists, ranges, citations, and "data only"."""

import ast
import importlib
import inspect
import pkgutil
import re
import struct
from enum import Enum

import pytest

import pyvirtio.spec
from pyvirtio.spec import (
    blk,
    console,
    features,
    fs,
    gpio,
    i2c,
    ids,
    input as vinput,
    mmio,
    net,
    pci,
    ring,
    rng,
    scsi,
    vhost_user,
    vsock,
)
from pyvirtio.spec.ids import DeviceType

SPEC_MODULES = [
    importlib.import_module(f"pyvirtio.spec.{info.name}")
    for info in pkgutil.iter_modules(pyvirtio.spec.__path__)
]
OWN_MODULES = [blk, console, fs, gpio, i2c, ids, vinput, mmio, net, pci, rng, scsi, vhost_user, vsock]


def field_offsets(st: struct.Struct, fields) -> dict[str, int]:
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
    assert offset == st.size, st.format
    assert len(offsets) == len(fields), (st.format, fields)
    return dict(zip(fields, offsets))


def all_structs():
    for module in SPEC_MODULES:
        for name, value in vars(module).items():
            if isinstance(value, struct.Struct):
                yield module, name, value


# --- sizes -----------------------------------------------------------------------------------------

# (struct, size) pairs straight from the facts file / the spec text.
FACT_SIZES = [
    (ring.VIRTQ_DESC, 16),
    (ring.VIRTQ_USED_ELEM, 8),
    (ring.PVIRTQ_DESC, 16),
    (ring.PVIRTQ_EVENT_SUPPRESS, 4),
    (pci.VIRTIO_PCI_CAP, 16),
    (pci.VIRTIO_PCI_NOTIFY_CAP, 20),
    (pci.VIRTIO_PCI_CFG_CAP, 20),
    (pci.VIRTIO_PCI_CAP64, 24),
    (pci.VIRTIO_PCI_COMMON_CFG, 64),
    (pci.MSIX_CAP, 12),
    (pci.MSIX_ENTRY, 16),
    (blk.BLK_CONFIG, 96),
    (blk.BLK_REQ_HEADER, 16),
    (blk.BLK_DISCARD_WRITE_ZEROES, 16),
    (blk.BLK_ZONE_REPORT_HEADER, 64),
    (blk.BLK_ZONE_DESCRIPTOR, 64),
    (net.NET_CONFIG, 28),
    (net.NET_HDR, 12),
    (net.NET_HDR_LEGACY, 10),
    (net.NET_HDR_HASH, 20),
    (console.CONSOLE_CONFIG, 12),
    (console.CONSOLE_CONTROL, 8),
    (vinput.INPUT_CONFIG, 136),
    (vinput.INPUT_ABSINFO, 20),
    (vinput.INPUT_DEVIDS, 8),
    (vinput.INPUT_EVENT, 8),
    (vsock.VSOCK_CONFIG, 8),
    (vsock.VSOCK_HDR, 44),
    (gpio.GPIO_CONFIG, 8),
    (gpio.GPIO_REQUEST, 8),
    (gpio.GPIO_RESPONSE, 2),
    (i2c.I2C_OUT_HDR, 8),
    (i2c.I2C_IN_HDR, 1),
    (scsi.SCSI_CONFIG, 36),
    (fs.FS_CONFIG, 44),
    (vhost_user.HEADER, 12),
    (vhost_user.VRING_STATE, 8),
    (vhost_user.VRING_ADDR, 40),
    (vhost_user.MEMORY_REGION, 32),
    (vhost_user.SINGLE_MEMORY_REGION, 40),
    (vhost_user.LOG, 16),
    (vhost_user.VRING_AREA, 24),
    (vhost_user.DESC_STATE_SPLIT, 16),
    (vhost_user.QUEUE_REGION_SPLIT, 16),
    (vhost_user.DESC_STATE_PACKED, 32),
]


@pytest.mark.parametrize("st,size", FACT_SIZES, ids=lambda v: getattr(v, "format", str(v)))
def test_struct_sizes_match_the_facts(st, size):
    assert st.size == size


def test_config_sizes_of_older_spec_versions():
    assert blk.BLK_CONFIG_SIZE_1_2 == blk.BlkConfigOffset.ZONE_SECTORS
    assert net.NET_CONFIG_SIZE_1_2 == net.NetConfigOffset.SUPPORTED_TUNNEL_TYPES
    assert pci.COMMON_CFG_SIZE_1_2 == pci.CommonCfg.ADMIN_QUEUE_INDEX


@pytest.mark.parametrize("module,name,st", list(all_structs()), ids=lambda v: getattr(v, "__name__", v) if not isinstance(v, struct.Struct) else "")
def test_every_struct_is_consistent_with_its_constants(module, name, st):
    # '<' and '=' for virtio's little-endian structs, '>' for SCSI's big-endian ones (scsi_cmd)
    assert st.format[0] in "<=>", f"{name}: fixed byte order and no alignment"
    if hasattr(module, name + "_SIZE"):
        assert st.size == getattr(module, name + "_SIZE")
    if hasattr(module, name + "_FIELDS"):
        fields = getattr(module, name + "_FIELDS")
        field_offsets(st, fields)
        assert len(set(fields)) == len(fields)
    unpacked = st.unpack(bytes(st.size))
    assert st.pack(*unpacked) == bytes(st.size)


def test_namedtuples_follow_their_field_lists():
    pairs = [
        (blk.BlkConfig, blk.BLK_CONFIG_FIELDS),
        (blk.BlkReqHeader, blk.BLK_REQ_HEADER_FIELDS),
        (blk.BlkDiscardWriteZeroes, blk.BLK_DISCARD_WRITE_ZEROES_FIELDS),
        (net.NetConfig, net.NET_CONFIG_FIELDS),
        (net.NetHdr, net.NET_HDR_FIELDS),
        (console.ConsoleConfig, console.CONSOLE_CONFIG_FIELDS),
        (console.ConsoleControl, console.CONSOLE_CONTROL_FIELDS),
        (vinput.InputConfig, vinput.INPUT_CONFIG_FIELDS),
        (vinput.InputEvent, vinput.INPUT_EVENT_FIELDS),
        (vsock.VsockHdr, vsock.VSOCK_HDR_FIELDS),
        (gpio.GpioConfig, gpio.GPIO_CONFIG_FIELDS),
        (gpio.GpioRequest, gpio.GPIO_REQUEST_FIELDS),
        (i2c.I2cOutHdr, i2c.I2C_OUT_HDR_FIELDS),
        (scsi.ScsiConfig, scsi.SCSI_CONFIG_FIELDS),
        (scsi.ScsiReqCmdHead, scsi.SCSI_REQ_CMD_HEAD_FIELDS),
        (scsi.ScsiRespCmdHead, scsi.SCSI_RESP_CMD_HEAD_FIELDS),
        (scsi.ScsiEvent, scsi.SCSI_EVENT_FIELDS),
        (fs.FsConfig, fs.FS_CONFIG_FIELDS),
        (vhost_user.Header, vhost_user.HEADER_FIELDS),
        (vhost_user.VringState, vhost_user.VRING_STATE_FIELDS),
        (vhost_user.VringAddr, vhost_user.VRING_ADDR_FIELDS),
        (vhost_user.MemoryRegion, vhost_user.MEMORY_REGION_FIELDS),
        (vhost_user.IotlbMsg, vhost_user.IOTLB_MSG_FIELDS),
        (vhost_user.Inflight, vhost_user.INFLIGHT_FIELDS),
    ]
    for cls, fields in pairs:
        assert cls._fields == tuple(fields), cls.__name__


def test_header_round_trip():
    hdr = vhost_user.Header(vhost_user.FrontendReq.SET_VRING_ADDR, vhost_user.VERSION, 40)
    raw = vhost_user.HEADER.pack(*hdr)
    assert raw == struct.pack("<III", 9, 1, 40)
    assert vhost_user.Header._make(vhost_user.HEADER.unpack(raw)) == hdr
    req = blk.BLK_REQ_HEADER.pack(blk.BlkReqType.OUT, 0, 2048)
    assert req == bytes([1, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0])


# --- offsets: the facts' tables, then every offset enum against its struct --------------------------

BLK_CONFIG_FACTS = {  # facts 1.6 "blk", offset/size
    "capacity": (0, 8), "size_max": (8, 4), "seg_max": (12, 4), "cylinders": (16, 2), "heads": (18, 1),
    "sectors": (19, 1), "blk_size": (20, 4), "physical_block_exp": (24, 1), "alignment_offset": (25, 1),
    "min_io_size": (26, 2), "opt_io_size": (28, 4), "writeback": (32, 1), "num_queues": (34, 2),
    "max_discard_sectors": (36, 4), "max_discard_seg": (40, 4), "discard_sector_alignment": (44, 4),
    "max_write_zeroes_sectors": (48, 4), "max_write_zeroes_seg": (52, 4), "write_zeroes_may_unmap": (56, 1),
    "max_secure_erase_sectors": (60, 4), "max_secure_erase_seg": (64, 4),
    "secure_erase_sector_alignment": (68, 4), "zone_sectors": (72, 4), "max_open_zones": (76, 4),
    "max_active_zones": (80, 4), "max_append_sectors": (84, 4), "write_granularity": (88, 4), "model": (92, 1),
}
NET_CONFIG_FACTS = {
    "mac": (0, 6), "status": (6, 2), "max_virtqueue_pairs": (8, 2), "mtu": (10, 2), "speed": (12, 4),
    "duplex": (16, 1), "rss_max_key_size": (17, 1), "rss_max_indirection_table_length": (18, 2),
    "supported_hash_types": (20, 4), "supported_tunnel_types": (24, 4),
}
SCSI_CONFIG_FACTS = {
    "num_queues": (0, 4), "seg_max": (4, 4), "max_sectors": (8, 4), "cmd_per_lun": (12, 4),
    "event_info_size": (16, 4), "sense_size": (20, 4), "cdb_size": (24, 4), "max_channel": (28, 2),
    "max_target": (30, 2), "max_lun": (32, 4),
}
CONSOLE_CONFIG_FACTS = {"cols": (0, 2), "rows": (2, 2), "max_nr_ports": (4, 4), "emerg_wr": (8, 4)}
FS_CONFIG_FACTS = {"tag": (0, 36), "num_request_queues": (36, 4), "notify_buf_size": (40, 4)}
GPIO_CONFIG_FACTS = {"ngpio": (0, 2), "gpio_names_size": (4, 4)}
INPUT_CONFIG_FACTS = {"select": (0, 1), "subsel": (1, 1), "size": (2, 1), "u": (8, 128)}
VSOCK_HDR_FACTS = {
    "src_cid": (0, 8), "dst_cid": (8, 8), "src_port": (16, 4), "dst_port": (20, 4), "len": (24, 4),
    "type": (28, 2), "op": (30, 2), "flags": (32, 4), "buf_alloc": (36, 4), "fwd_cnt": (40, 4),
}
PCI_CAP_FACTS = {
    "cap_vndr": (0, 1), "cap_next": (1, 1), "cap_len": (2, 1), "cfg_type": (3, 1), "bar": (4, 1), "id": (5, 1),
    "offset": (8, 4), "length": (12, 4),
}
COMMON_CFG_FACTS = {
    "device_feature_select": (0, 4), "device_feature": (4, 4), "driver_feature_select": (8, 4),
    "driver_feature": (12, 4), "config_msix_vector": (16, 2), "num_queues": (18, 2), "device_status": (20, 1),
    "config_generation": (21, 1), "queue_select": (22, 2), "queue_size": (24, 2), "queue_msix_vector": (26, 2),
    "queue_enable": (28, 2), "queue_notify_off": (30, 2), "queue_desc": (32, 8), "queue_driver": (40, 8),
    "queue_device": (48, 8), "queue_notif_config_data": (56, 2), "queue_reset": (58, 2),
    "admin_queue_index": (60, 2), "admin_queue_num": (62, 2),
}


@pytest.mark.parametrize(
    "st,fields,facts",
    [
        (blk.BLK_CONFIG, blk.BLK_CONFIG_FIELDS, BLK_CONFIG_FACTS),
        (net.NET_CONFIG, net.NET_CONFIG_FIELDS, NET_CONFIG_FACTS),
        (scsi.SCSI_CONFIG, scsi.SCSI_CONFIG_FIELDS, SCSI_CONFIG_FACTS),
        (console.CONSOLE_CONFIG, console.CONSOLE_CONFIG_FIELDS, CONSOLE_CONFIG_FACTS),
        (fs.FS_CONFIG, fs.FS_CONFIG_FIELDS, FS_CONFIG_FACTS),
        (gpio.GPIO_CONFIG, gpio.GPIO_CONFIG_FIELDS, GPIO_CONFIG_FACTS),
        (vinput.INPUT_CONFIG, vinput.INPUT_CONFIG_FIELDS, INPUT_CONFIG_FACTS),
        (vsock.VSOCK_HDR, vsock.VSOCK_HDR_FIELDS, VSOCK_HDR_FACTS),
        (pci.VIRTIO_PCI_CAP, pci.VIRTIO_PCI_CAP_FIELDS, PCI_CAP_FACTS),
        (pci.VIRTIO_PCI_COMMON_CFG, pci.VIRTIO_PCI_COMMON_CFG_FIELDS, COMMON_CFG_FACTS),
    ],
    ids=["blk", "net", "scsi", "console", "fs", "gpio", "input", "vsock_hdr", "pci_cap", "common_cfg"],
)
def test_layouts_match_the_facts_tables(st, fields, facts):
    offsets = field_offsets(st, fields)
    assert set(offsets) == set(facts)
    for name, (offset, size) in facts.items():
        assert offsets[name] == offset, name
        assert struct.calcsize("<" + _code_of(st, fields, name)) == size, name


def _code_of(st, fields, name):
    codes = []
    for count, code in re.findall(r"(\d*)([xcbB?hHiIlLqQnNefdspP])", st.format):
        if code == "x":
            continue
        if code == "s":
            codes.append(count + code)
        else:
            codes.extend([code] * (int(count) if count else 1))
    return dict(zip(fields, codes))[name]


@pytest.mark.parametrize(
    "st,fields,offset_enum",
    [
        (blk.BLK_CONFIG, blk.BLK_CONFIG_FIELDS, blk.BlkConfigOffset),
        (net.NET_CONFIG, net.NET_CONFIG_FIELDS, net.NetConfigOffset),
        (console.CONSOLE_CONFIG, console.CONSOLE_CONFIG_FIELDS, console.ConsoleConfigOffset),
        (vinput.INPUT_CONFIG, vinput.INPUT_CONFIG_FIELDS, vinput.InputConfigOffset),
        (gpio.GPIO_CONFIG, gpio.GPIO_CONFIG_FIELDS, gpio.GpioConfigOffset),
        (scsi.SCSI_CONFIG, scsi.SCSI_CONFIG_FIELDS, scsi.ScsiConfigOffset),
        (fs.FS_CONFIG, fs.FS_CONFIG_FIELDS, fs.FsConfigOffset),
        (pci.VIRTIO_PCI_COMMON_CFG, pci.VIRTIO_PCI_COMMON_CFG_FIELDS, pci.CommonCfg),
        (pci.MSIX_CAP, pci.MSIX_CAP_FIELDS, pci.MsixCap),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_offset_enums_match_their_structs(st, fields, offset_enum):
    offsets = field_offsets(st, fields)
    for name, offset in offsets.items():
        assert offset_enum[name.upper()] == offset, name
    # members that are not fields are padding / reserved bytes inside the struct
    for member in offset_enum:
        assert 0 <= member < st.size


def test_common_cfg_field_sizes_tile_the_structure():
    end = 0
    for field in pci.CommonCfg:
        assert field == end, field
        end += pci.COMMON_CFG_FIELD_SIZES[field]
    assert end == pci.COMMON_CFG_SIZE == 64
    assert pci.COMMON_CFG_READ_ONLY <= set(pci.CommonCfg)


def test_pci_cap_extension_offsets():
    assert field_offsets(pci.VIRTIO_PCI_NOTIFY_CAP, pci.VIRTIO_PCI_NOTIFY_CAP_FIELDS)["notify_off_multiplier"] == 16
    cap64 = field_offsets(pci.VIRTIO_PCI_CAP64, pci.VIRTIO_PCI_CAP64_FIELDS)
    assert (cap64["offset_hi"], cap64["length_hi"]) == (pci.VirtioPciCap.OFFSET_HI, pci.VirtioPciCap.LENGTH_HI)
    assert field_offsets(pci.VIRTIO_PCI_CFG_CAP, pci.VIRTIO_PCI_CFG_CAP_FIELDS)["pci_cfg_data"] == 16
    cap = field_offsets(pci.VIRTIO_PCI_CAP, pci.VIRTIO_PCI_CAP_FIELDS)
    for name, offset in cap.items():
        key = {"cap_vndr": "VNDR", "cap_next": "NEXT", "cap_len": "LEN"}.get(name, name.upper())
        assert pci.VirtioPciCap[key] == offset


def test_pci_config_header():
    assert pci.PCI_BAR_OFFSETS == tuple(range(0x10, 0x28, 4))
    assert pci.PciCfg.SUBSYSTEM_VENDOR_ID == 0x2C and pci.PciCfg.SUBSYSTEM_ID == 0x2E
    assert pci.PciCfg.CAPABILITY_LIST == 0x34 and pci.PciCfg.INTERRUPT_PIN == 0x3D
    assert pci.PciCommand.INTX_DISABLE == 0x400 and pci.PciStatus.CAP_LIST == 0x10
    assert pci.MSIX_FLAGS_ENABLE == 1 << 15 and pci.MSIX_FLAGS_MASKALL == 1 << 14
    assert (pci.ISR_QUEUE, pci.ISR_CONFIG) == (1, 2)
    assert pci.VIRTIO_MSI_NO_VECTOR == 0xFFFF


def test_mmio_registers():
    assert mmio.MAGIC_VALUE == int.from_bytes(b"virt", "little")
    assert (mmio.VERSION, mmio.LEGACY_VERSION, mmio.CONFIG_OFFSET) == (2, 1, 0x100)
    facts = {
        "MAGIC_VALUE": 0x000, "VERSION": 0x004, "DEVICE_ID": 0x008, "VENDOR_ID": 0x00C,
        "DEVICE_FEATURES": 0x010, "DEVICE_FEATURES_SEL": 0x014, "DRIVER_FEATURES": 0x020,
        "DRIVER_FEATURES_SEL": 0x024, "QUEUE_SEL": 0x030, "QUEUE_SIZE_MAX": 0x034, "QUEUE_SIZE": 0x038,
        "QUEUE_READY": 0x044, "QUEUE_NOTIFY": 0x050, "INTERRUPT_STATUS": 0x060, "INTERRUPT_ACK": 0x064,
        "STATUS": 0x070, "QUEUE_DESC_LOW": 0x080, "QUEUE_DESC_HIGH": 0x084, "QUEUE_DRIVER_LOW": 0x090,
        "QUEUE_DRIVER_HIGH": 0x094, "QUEUE_DEVICE_LOW": 0x0A0, "QUEUE_DEVICE_HIGH": 0x0A4, "SHM_SEL": 0x0AC,
        "SHM_LEN_LOW": 0x0B0, "SHM_LEN_HIGH": 0x0B4, "SHM_BASE_LOW": 0x0B8, "SHM_BASE_HIGH": 0x0BC,
        "QUEUE_RESET": 0x0C0, "CONFIG_GENERATION": 0x0FC, "CONFIG": 0x100,
    }
    assert {m.name: int(m) for m in mmio.MmioReg} == facts
    assert all(reg % 4 == 0 for reg in mmio.MmioReg)
    assert mmio.MmioLegacyReg.GUEST_PAGE_SIZE == 0x028
    assert mmio.MmioLegacyReg.QUEUE_ALIGN == 0x03C and mmio.MmioLegacyReg.QUEUE_PFN == 0x040
    assert (mmio.MmioInterrupt.USED_BUFFER, mmio.MmioInterrupt.CONFIG_CHANGE) == (1, 2)


# --- tables ----------------------------------------------------------------------------------------


def test_device_ids_are_the_spec_table():
    assert {int(t) for t in DeviceType} == set(range(1, 50)) - {14, 15, 37}
    assert set(ids.DEVICE_NAMES) == set(DeviceType)
    assert ids.DEVICE_NAMES[DeviceType.NET] == "network device"
    assert ids.DEVICE_NAMES[DeviceType.BALLOON_TRADITIONAL] == "memory ballooning (traditional)"
    assert ids.DEVICE_NAMES[DeviceType.BALLOON] == "memory balloon"
    assert len(ids.SPECIFIED_DEVICE_TYPES_1_3) == 19


def test_pci_ids():
    assert ids.PCI_VENDOR_ID_REDHAT_QUMRANET == 0x1AF4
    for device_type in DeviceType:
        modern = ids.PCI_MODERN_DEVICE_ID_BASE + device_type
        assert ids.PCI_MODERN_DEVICE_ID_BASE <= modern <= ids.PCI_MODERN_DEVICE_ID_MAX
    assert ids.TRANSITIONAL_PCI_DEVICE_IDS == {
        DeviceType.NET: 0x1000, DeviceType.BLOCK: 0x1001, DeviceType.BALLOON_TRADITIONAL: 0x1002,
        DeviceType.CONSOLE: 0x1003, DeviceType.SCSI: 0x1004, DeviceType.ENTROPY: 0x1005,
        DeviceType.NINEP: 0x1009,
    }
    for pci_id in ids.TRANSITIONAL_PCI_DEVICE_IDS.values():
        assert ids.PCI_TRANSITIONAL_DEVICE_ID_MIN <= pci_id <= ids.PCI_TRANSITIONAL_DEVICE_ID_MAX
    assert ids.PCI_NON_TRANSITIONAL_MIN_REVISION == 1
    assert ids.PCI_NON_TRANSITIONAL_MIN_SUBSYSTEM_ID == 0x40
    assert ids.PCI_CLASS_CODES[DeviceType.NET] == 0x020000
    assert ids.PCI_CLASS_CODES[DeviceType.BLOCK] == 0x010000
    assert ids.PCI_CLASS_CODES[DeviceType.CONSOLE] == 0x078000
    assert ids.PCI_CLASS_CODES[DeviceType.ENTROPY] == ids.PCI_CLASS_CODE_DEFAULT == 0x00FF00
    assert all(0 <= code < 1 << 24 for code in ids.PCI_CLASS_CODES.values())


FEATURE_ENUMS = [
    (blk.BlkFeature, blk.LEGACY_FEATURES),
    (net.NetFeature, net.LEGACY_FEATURES),
    (console.ConsoleFeature, frozenset()),
    (vsock.VsockFeature, frozenset()),
    (gpio.GpioFeature, frozenset()),
    (i2c.I2cFeature, frozenset()),
    (scsi.ScsiFeature, frozenset()),
    (fs.FsFeature, frozenset()),
    (rng.RngFeature, frozenset()),
    (vinput.InputFeature, frozenset()),
]


@pytest.mark.parametrize("enum_cls,legacy", FEATURE_ENUMS, ids=lambda v: getattr(v, "__name__", ""))
def test_device_feature_bits_are_device_specific(enum_cls, legacy):
    for bit in enum_cls:
        if bit in legacy:
            continue
        assert any(lo <= bit < hi for lo, hi in features.DEVICE_SPECIFIC_RANGES), bit
    reserved = {int(f) for f in features.Feature}
    assert not (reserved & {int(b) for b in enum_cls if b not in legacy})


def test_feature_values_from_the_facts():
    assert [int(blk.BlkFeature[n]) for n in ("SIZE_MAX", "SEG_MAX", "GEOMETRY", "RO", "BLK_SIZE", "FLUSH")] == [
        1, 2, 4, 5, 6, 9]
    assert blk.BlkFeature.ZONED == 17 and blk.BlkFeature.BARRIER == 0 and blk.BlkFeature.SCSI == 7
    assert net.NetFeature.MRG_RXBUF == 15 and net.NetFeature.SPEED_DUPLEX == 63 and net.NetFeature.GSO == 6
    assert net.NetFeature.HASH_TUNNEL == 51 and net.NetFeature.GUEST_HDRLEN == 59
    assert (console.ConsoleFeature.SIZE, console.ConsoleFeature.MULTIPORT, console.ConsoleFeature.EMERG_WRITE) == (
        0, 1, 2)
    assert list(rng.RngFeature) == [] and list(vinput.InputFeature) == []
    for gated, alternatives in net.FEATURE_REQUIRES.items():
        assert alternatives and all(gated not in alt for alt in alternatives)


def test_request_and_status_codes_from_the_facts():
    assert {t.name: int(t) for t in blk.BlkReqType if t.name not in ("SCSI_CMD", "SCSI_CMD_OUT", "FLUSH_OUT")} == {
        "IN": 0, "OUT": 1, "FLUSH": 4, "GET_ID": 8, "GET_LIFETIME": 10, "DISCARD": 11, "WRITE_ZEROES": 13,
        "SECURE_ERASE": 14, "ZONE_APPEND": 15, "ZONE_REPORT": 16, "ZONE_OPEN": 18, "ZONE_CLOSE": 20,
        "ZONE_FINISH": 22, "ZONE_RESET": 24, "ZONE_RESET_ALL": 26,
    }
    assert [int(s) for s in blk.BlkStatus] == list(range(7))
    assert blk.SECTOR_SIZE == 1 << blk.SECTOR_SHIFT == 512 and blk.BLK_ID_BYTES == 20
    assert [int(e) for e in console.ConsoleEvent] == list(range(8))
    assert [int(o) for o in vsock.VsockOp] == list(range(8))
    assert [int(t) for t in gpio.GpioMsgType] == list(range(1, 7))
    assert [int(t) for t in gpio.GpioIrqType] == [0, 1, 2, 3, 4, 8]
    assert (i2c.I2cFlag.FAIL_NEXT, i2c.I2cFlag.M_RD) == (1, 2)
    assert [int(s) for s in vinput.InputConfigSelect] == [0, 1, 2, 3, 0x10, 0x11, 0x12]
    assert [int(g) for g in net.NetGsoType] == [0, 1, 3, 4, 5, 0x80]
    assert net.NetCtrlMq.HASH_CONFIG == 2 and net.NetCtrlClass.GUEST_OFFLOADS == 5


def test_queue_indices():
    assert [console.receiveq_index(p) for p in range(4)] == [0, 4, 6, 8]
    assert [console.transmitq_index(p) for p in range(4)] == [1, 5, 7, 9]
    assert (console.CONTROL_RECEIVEQ, console.CONTROL_TRANSMITQ) == (2, 3)
    assert console.receiveq_index(1) == console.PORT_QUEUE_BASE
    assert (vsock.RXQ, vsock.TXQ, vsock.EVENTQ) == (0, 1, 2)
    assert (scsi.CONTROLQ, scsi.EVENTQ, scsi.REQUESTQ_BASE) == (0, 1, 2)
    assert (vinput.EVENTQ, vinput.STATUSQ) == (0, 1)


def test_net_headers_nest():
    assert net.NET_HDR_FIELDS[: len(net.NET_HDR_LEGACY_FIELDS)] == net.NET_HDR_LEGACY_FIELDS
    assert net.NET_HDR_HASH_FIELDS[: len(net.NET_HDR_FIELDS)] == net.NET_HDR_FIELDS
    assert net.NET_HDR.format[1:] == net.NET_HDR_HASH.format[1 : len(net.NET_HDR.format)]


# --- vhost-user ------------------------------------------------------------------------------------


def test_vhost_user_request_ids_are_contiguous():
    assert [int(r) for r in vhost_user.FrontendReq] == list(range(1, 45))
    assert [int(r) for r in vhost_user.BackendReq] == list(range(1, 11))
    assert [int(b) for b in vhost_user.ProtocolFeature] == list(range(23))
    assert vhost_user.ProtocolFeature.MTU is vhost_user.ProtocolFeature.NET_MTU
    assert vhost_user.ProtocolFeature.DEVICE_STATE == 19 and vhost_user.ProtocolFeature.XEN_MMAP == 17


def test_vhost_user_flags_and_masks():
    assert (vhost_user.VERSION, vhost_user.VERSION_MASK) == (1, 3)
    assert (vhost_user.HeaderFlag.REPLY, vhost_user.HeaderFlag.NEED_REPLY) == (4, 8)
    assert (vhost_user.VRING_IDX_MASK, vhost_user.VRING_NOFD_MASK) == (0xFF, 0x100)
    assert vhost_user.VHOST_VRING_F_LOG == 0 and vhost_user.VRING_ADDR_F_LOG == 1
    assert vhost_user.VHOST_USER_F_PROTOCOL_FEATURES == features.VHOST_USER_F_PROTOCOL_FEATURES == 30
    assert vhost_user.VHOST_MEMORY_BASELINE_NREGIONS == 8
    assert vhost_user.MEMORY_TABLE_MAX_SIZE == 8 + 8 * 32
    assert vhost_user.VHOST_LOG_PAGE == 0x1000


def test_vhost_user_payload_sizes():
    assert set(vhost_user.REQUEST_PAYLOAD_SIZE) | {
        vhost_user.FrontendReq.SET_MEM_TABLE,
        vhost_user.FrontendReq.GET_CONFIG,
        vhost_user.FrontendReq.SET_CONFIG,
        vhost_user.FrontendReq.CREATE_CRYPTO_SESSION,
        vhost_user.FrontendReq.GET_SHMEM_CONFIG,
    } == set(vhost_user.FrontendReq)
    for table in (vhost_user.REQUEST_PAYLOAD_SIZE, vhost_user.REPLY_PAYLOAD_SIZE,
                  vhost_user.BACKEND_REQUEST_PAYLOAD_SIZE):
        assert all(0 <= size <= vhost_user.MAX_MSG_SIZE for size in table.values())
    assert vhost_user.ALWAYS_REPLY <= set(vhost_user.REPLY_PAYLOAD_SIZE)
    # the inflight and IOTLB payloads carry the C structs' trailing padding
    assert vhost_user.INFLIGHT.size == 20 + 4 and vhost_user.IOTLB_MSG.size == 26 + 6
    assert field_offsets(vhost_user.QUEUE_REGION_PACKED, vhost_user.QUEUE_REGION_PACKED_FIELDS)[
        "old_used_wrap_counter"] == 21


# --- citations and "data only" ---------------------------------------------------------------------

#: A spec section "(5.2.3", the PCI spec "[PCI]", a quoted vu.rst section name, or a T10 SCSI
#: standard's clause "(SPC-4 6.6" (spec.scsi_cmd), or linux/fuse.h, the FUSE protocol's only
#: definition (spec.fuse).
CITATION = re.compile(r"\(\s*\d+(?:\.\d+)*|\[PCI\]|\"[A-Z][^\"]+\"|\((?:SPC|SBC|MMC|SAM)-\d|\bfuse\.h\b")


@pytest.mark.parametrize("module", SPEC_MODULES, ids=lambda m: m.__name__)
def test_every_module_and_enum_cites_its_source(module):
    doc = module.__doc__ or ""
    assert re.search(r"VIRTIO 1\.\d, \d|vhost-user\.rst|VIRTIO spec|transport-msg\.tex", doc), module.__name__
    for name, value in vars(module).items():
        if inspect.isclass(value) and issubclass(value, Enum) and value.__module__ == module.__name__:
            assert value.__doc__ and CITATION.search(value.__doc__), f"{module.__name__}.{name}"


ALLOWED_IMPORTS = {"enum", "struct", "collections", "typing", "__future__"}


@pytest.mark.parametrize("module", OWN_MODULES, ids=lambda m: m.__name__)
def test_modules_are_data_only(module):
    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        if isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] in ALLOWED_IMPORTS for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] in ALLOWED_IMPORTS | {"pyvirtio"}
        elif isinstance(node, ast.FunctionDef):
            body = node.body[1:] if isinstance(node.body[0], ast.Expr) else node.body
            assert len(body) == 1 and isinstance(body[0], ast.Return), f"{node.name} is not a one-liner"
        else:
            assert isinstance(node, (ast.Expr, ast.Assign, ast.AnnAssign, ast.ClassDef)), ast.dump(node)[:80]
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not names & {"open", "print", "os", "sys", "socket", "input", "exec", "eval"}
