"""What a vhost-user back-end is: its device type, and its features and config space by name.

vhost-user has no message that names the device type (vhost-user.rst: the front-end "already
knows" the device it emulates).  A front-end that is pointed at a socket should therefore be told
(``--type=blk``).  :func:`infer_device_type` is the documented fallback, a heuristic over what the
back-end does reveal, tried in this order:

1. protocol features that only one device type uses: RARP or NET_MTU → net, CRYPTO_SESSION →
   crypto;
2. device-specific feature bits (0-23): any of bits 18-23 → net (no block feature is numbered
   above 17); else the type whose signature matches more bits, if two or more — blk's SEG_MAX,
   BLK_SIZE, FLUSH, TOPOLOGY, CONFIG_WCE, DISCARD, WRITE_ZEROES, or net's CSUM, GUEST_CSUM, MAC,
   GUEST_TSO4, HOST_TSO4, MRG_RXBUF, CTRL_VQ, GUEST_ANNOUNCE, MQ;
3. no device-specific feature at all: one queue → rng (the entropy device has no features, no
   config and one queue); two or more queues and no config space → fs (virtio-fs offers no
   features unless NOTIFICATION, and its config lives in the front-end, as QEMU's
   vhost-user-fs-pci does).

Each answer comes with the reason, and a guess is called a guess.  It can be wrong: a console
without features looks like fs, a minimal blk device without optional features matches nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from ...spec import blk as spec_blk
from ...spec import console as spec_console
from ...spec import fs as spec_fs
from ...spec import gpio as spec_gpio
from ...spec import net as spec_net
from ...spec import scsi as spec_scsi
from ...spec import vsock as spec_vsock
from ...spec.features import Feature
from ...spec.ids import DeviceType
from ..protocol import VHOST_F_LOG_ALL, VHOST_USER_F_PROTOCOL_FEATURES, ProtocolFeature

T = DeviceType

#: Names accepted by ``--type`` (the vhost-user.json names and pyvirtio's short ones).
TYPE_NAMES: dict[str, DeviceType] = {
    "net": T.NET, "blk": T.BLOCK, "block": T.BLOCK, "console": T.CONSOLE, "rng": T.ENTROPY,
    "entropy": T.ENTROPY, "balloon": T.BALLOON_TRADITIONAL, "scsi": T.SCSI, "9p": T.NINEP,
    "gpu": T.GPU, "input": T.INPUT, "vsock": T.VSOCK, "crypto": T.CRYPTO, "fs": T.FS,
    "sound": T.SOUND, "i2c": T.I2C, "gpio": T.GPIO, "can": T.CAN, "scmi": T.SCMI,
    "rpmsg": T.RPMSG, "rproc-serial": T.RPROC_SERIAL, "caif": T.CAIF, "video-encoder":
    T.VIDEO_ENCODER, "video-decoder": T.VIDEO_DECODER, "spi": T.SPI,
}

#: The short name of each type (the first name above that maps to it).
SHORT_NAME: dict[int, str] = {}
for _name, _type in TYPE_NAMES.items():
    SHORT_NAME.setdefault(int(_type), _name)

#: Queues a device type has when the back-end cannot say (no MQ): the spec's fixed queues.
DEFAULT_QUEUES: dict[int, int] = {
    T.NET: 2, T.BLOCK: 1, T.CONSOLE: 2, T.ENTROPY: 1, T.SCSI: 3, T.GPU: 2, T.INPUT: 2,
    T.VSOCK: 3, T.CRYPTO: 2, T.FS: 2, T.SOUND: 4, T.I2C: 1, T.GPIO: 2,
}

#: Device-specific feature names per type (bit number → enum class).
FEATURE_ENUMS: dict[int, type[IntEnum]] = {
    T.BLOCK: spec_blk.BlkFeature, T.NET: spec_net.NetFeature, T.CONSOLE: spec_console.ConsoleFeature,
    T.FS: spec_fs.FsFeature, T.SCSI: spec_scsi.ScsiFeature, T.VSOCK: spec_vsock.VsockFeature,
    T.GPIO: spec_gpio.GpioFeature,
}


@dataclass(frozen=True)
class ConfigLayout:
    struct: struct.Struct
    fields: tuple[str, ...]


CONFIG_LAYOUTS: dict[int, ConfigLayout] = {
    T.BLOCK: ConfigLayout(spec_blk.BLK_CONFIG, spec_blk.BLK_CONFIG_FIELDS),
    T.NET: ConfigLayout(spec_net.NET_CONFIG, spec_net.NET_CONFIG_FIELDS),
    T.CONSOLE: ConfigLayout(spec_console.CONSOLE_CONFIG, spec_console.CONSOLE_CONFIG_FIELDS),
    T.FS: ConfigLayout(spec_fs.FS_CONFIG, spec_fs.FS_CONFIG_FIELDS),
    T.SCSI: ConfigLayout(spec_scsi.SCSI_CONFIG, spec_scsi.SCSI_CONFIG_FIELDS),
    T.VSOCK: ConfigLayout(spec_vsock.VSOCK_CONFIG, spec_vsock.VSOCK_CONFIG_FIELDS),
    T.GPIO: ConfigLayout(spec_gpio.GPIO_CONFIG, spec_gpio.GPIO_CONFIG_FIELDS),
}

_B = spec_blk.BlkFeature
_N = spec_net.NetFeature

#: Config fields that are valid only with a feature (VIRTIO 1.3, 5.2.4 and 5.1.4).
CONFIG_FIELD_FEATURES: dict[int, dict[str, int]] = {
    T.BLOCK: {
        "size_max": _B.SIZE_MAX, "seg_max": _B.SEG_MAX, "cylinders": _B.GEOMETRY,
        "heads": _B.GEOMETRY, "sectors": _B.GEOMETRY, "blk_size": _B.BLK_SIZE,
        "physical_block_exp": _B.TOPOLOGY, "alignment_offset": _B.TOPOLOGY,
        "min_io_size": _B.TOPOLOGY, "opt_io_size": _B.TOPOLOGY, "writeback": _B.CONFIG_WCE,
        "num_queues": _B.MQ, "max_discard_sectors": _B.DISCARD, "max_discard_seg": _B.DISCARD,
        "discard_sector_alignment": _B.DISCARD, "max_write_zeroes_sectors": _B.WRITE_ZEROES,
        "max_write_zeroes_seg": _B.WRITE_ZEROES, "write_zeroes_may_unmap": _B.WRITE_ZEROES,
        "max_secure_erase_sectors": _B.SECURE_ERASE, "max_secure_erase_seg": _B.SECURE_ERASE,
        "secure_erase_sector_alignment": _B.SECURE_ERASE, "zone_sectors": _B.ZONED,
        "max_open_zones": _B.ZONED, "max_active_zones": _B.ZONED, "max_append_sectors": _B.ZONED,
        "write_granularity": _B.ZONED, "model": _B.ZONED,
    },
    T.NET: {
        "mac": _N.MAC, "status": _N.STATUS, "max_virtqueue_pairs": _N.MQ, "mtu": _N.MTU,
        "speed": _N.SPEED_DUPLEX, "duplex": _N.SPEED_DUPLEX, "rss_max_key_size": _N.RSS,
        "rss_max_indirection_table_length": _N.RSS, "supported_hash_types": _N.RSS,
        "supported_tunnel_types": _N.HASH_TUNNEL,
    },
}
BLK_SIGNATURE = frozenset({_B.SEG_MAX, _B.BLK_SIZE, _B.FLUSH, _B.TOPOLOGY, _B.CONFIG_WCE, _B.DISCARD,
                           _B.WRITE_ZEROES})
NET_SIGNATURE = frozenset({_N.CSUM, _N.GUEST_CSUM, _N.MAC, _N.GUEST_TSO4, _N.HOST_TSO4, _N.MRG_RXBUF,
                           _N.CTRL_VQ, _N.GUEST_ANNOUNCE, _N.MQ})
#: Bits 18-23 are net's (CTRL_RX … CTRL_MAC_ADDR); no block feature is numbered above 17.
NET_ONLY = frozenset({_N.CTRL_RX, _N.CTRL_VLAN, _N.CTRL_RX_EXTRA, _N.GUEST_ANNOUNCE, _N.MQ,
                      _N.CTRL_MAC_ADDR})
DEVICE_SPECIFIC_LOW = (1 << 24) - 1


def parse_type(name: str) -> DeviceType:
    """``--type`` value → device type: a name above or a number."""
    key = name.strip().lower()
    if key in TYPE_NAMES:
        return TYPE_NAMES[key]
    try:
        return DeviceType(int(key, 0))
    except ValueError:
        raise ValueError(f"unknown device type {name!r} (one of: {', '.join(sorted(TYPE_NAMES))}, "
                         "or a device ID)") from None


def type_name(device_type: int | None) -> str:
    if device_type is None:
        return "unknown"
    if device_type in SHORT_NAME:
        return SHORT_NAME[device_type]
    try:
        return DeviceType(device_type).name.lower()
    except ValueError:
        return f"type {device_type}"


def _bits(mask: int) -> set[int]:
    return {i for i in range(mask.bit_length()) if mask >> i & 1}


def infer_device_type(features: int, protocol_features: int, queue_num: int | None,
                      config_size: int | None) -> tuple[DeviceType | None, str]:
    """Guess the device type (see the module docstring).  Returns (type or None, why)."""
    pf = protocol_features
    for bit, dtype in ((ProtocolFeature.RARP, T.NET), (ProtocolFeature.NET_MTU, T.NET),
                       (ProtocolFeature.CRYPTO_SESSION, T.CRYPTO)):
        if pf & (1 << bit):
            return dtype, f"guessed from protocol feature {bit.name}, which only {type_name(dtype)} uses"
    low = _bits(features & DEVICE_SPECIFIC_LOW)
    net_only = low & NET_ONLY
    if net_only:
        names = ", ".join(_N(b).name for b in sorted(net_only))
        return T.NET, f"guessed from feature bits only net defines ({names})"
    scored = sorted(((len(low & sig), dtype, low & sig) for dtype, sig in
                     ((T.BLOCK, BLK_SIGNATURE), (T.NET, NET_SIGNATURE))), reverse=True)
    count, dtype, hits = scored[0]
    if count >= 2 and count > scored[1][0]:
        enum = FEATURE_ENUMS[dtype]
        names = ", ".join(enum(b).name for b in sorted(hits))
        return dtype, f"guessed from {type_name(dtype)} feature bits ({names})"
    if not low:
        if queue_num == 1:
            return T.ENTROPY, "guessed: no device features and one queue, like an entropy device"
        if queue_num is not None and queue_num >= 2 and not config_size:
            return T.FS, (f"guessed: no device features, {queue_num} queues and no config space, "
                          "like virtio-fs")
    return None, "cannot tell: give --type"


def feature_names(features: int, device_type: int | None) -> list[str]:
    """Every set bit by name: device-specific names for ``device_type``, the reserved names,
    vhost's own bits; unknown bits as ``bit N``."""
    enum = FEATURE_ENUMS.get(device_type) if device_type is not None else None
    out = []
    for bit in sorted(_bits(features)):
        out.append(feature_name(bit, device_type, enum))
    return out


def feature_name(bit: int, device_type: int | None = None, enum=None) -> str:
    if enum is None and device_type is not None:
        enum = FEATURE_ENUMS.get(device_type)
    if bit == VHOST_USER_F_PROTOCOL_FEATURES:
        return "VHOST_USER_F_PROTOCOL_FEATURES"
    if bit == VHOST_F_LOG_ALL:
        return "VHOST_F_LOG_ALL"
    if bit in Feature._value2member_map_:
        ring_bit = bit in (Feature.INDIRECT_DESC, Feature.EVENT_IDX)
        return ("VIRTIO_RING_F_" if ring_bit else "VIRTIO_F_") + Feature(bit).name
    if enum is not None and bit in enum._value2member_map_:
        return f"VIRTIO_{type_name(device_type).upper()}_F_{enum(bit).name}"
    return f"bit {bit}"


def protocol_feature_names(mask: int) -> list[str]:
    out = []
    for bit in sorted(_bits(mask)):
        try:
            out.append(ProtocolFeature(bit).name)
        except ValueError:
            out.append(f"bit {bit}")
    return out


def decode_config(device_type: int | None, data: bytes, features: int | None = None) -> dict:
    """The config bytes as named fields of the type's layout.  Fields past ``data`` are left
    out, and so are fields whose feature is not in ``features`` (when given)."""
    layout = CONFIG_LAYOUTS.get(device_type) if device_type is not None else None
    if layout is None or device_type is None or not data:
        return {}
    padded = data[:layout.struct.size].ljust(layout.struct.size, b"\0")
    values = dict(zip(layout.fields, layout.struct.unpack(padded)))
    gates = CONFIG_FIELD_FEATURES.get(device_type, {})
    out = {}
    for name, value in values.items():
        if _field_end(layout, name) > len(data):
            continue
        if features is not None and name in gates and not features >> gates[name] & 1:
            continue
        out[name] = _clean(name, value)
    return out


def _field_end(layout: ConfigLayout, name: str) -> int:
    """Offset just past field ``name`` (from the struct format, padding included)."""
    fmt = layout.struct.format
    codes = [c for c in _codes(fmt)]
    i = layout.fields.index(name)
    seen = -1
    prefix = fmt[0] if fmt[0] in "<>=!@" else ""
    out = []
    for code in codes:
        out.append(code)
        if not code.endswith("x"):
            seen += 1
            if seen == i:
                break
    return struct.calcsize(prefix + "".join(out))


def _codes(fmt: str) -> list[str]:
    out, num = [], ""
    for ch in fmt.lstrip("<>=!@"):
        if ch.isdigit():
            num += ch
            continue
        out.append(num + ch)
        num = ""
    return out


def _clean(name: str, value):
    if not isinstance(value, bytes):
        return value
    if name == "mac":
        return value.hex(":")
    return value.rstrip(b"\0").decode(errors="replace")


__all__ = ["TYPE_NAMES", "DEFAULT_QUEUES", "parse_type", "type_name", "infer_device_type",
           "feature_names", "feature_name", "protocol_feature_names", "decode_config"]
