"""Device-type inference and feature / config decoding for vhost-user back-ends."""

from __future__ import annotations

import pytest

from pyvirtio.spec import blk as spec_blk
from pyvirtio.spec.ids import DeviceType
from pyvirtio.vhost_user.frontend.identify import (decode_config, feature_names, infer_device_type,
                                          parse_type, protocol_feature_names, type_name)
from pyvirtio.vhost_user.protocol import ProtocolFeature as PF

QSD_FEATURES = 0x175007E46  # qemu-storage-daemon 7.2's vhost-user-blk export
DPDK_FEATURES = 0xD7C66E7CB  # DPDK 22.11 net_vhost
VIRTIOFSD_FEATURES = 0x175000000  # QEMU 7.2's C virtiofsd
PYVIRTIO_RNG = 0x170000000


@pytest.mark.parametrize("features, protocol, queues, config, expected", [
    (QSD_FEATURES, 0x8F2B, 2, 60, DeviceType.BLOCK),
    (DPDK_FEATURES, 0x10CBF, 128, None, DeviceType.NET),  # RARP gives it away
    (DPDK_FEATURES, 0, None, None, DeviceType.NET),  # and so do its feature bits
    (VIRTIOFSD_FEATURES, 0x8C2B, 2, None, DeviceType.FS),
    (PYVIRTIO_RNG, 0x1A209, 1, 256, DeviceType.ENTROPY),
    (1 << 32, 1 << PF.CRYPTO_SESSION, 2, None, DeviceType.CRYPTO),
    (1 << 32 | 1 << 5, 0, 3, 8, None),  # one odd bit, three queues: no guess
])
def test_infer_device_type(features, protocol, queues, config, expected):
    dtype, why = infer_device_type(features, protocol, queues, config)
    assert dtype == expected
    assert ("guess" in why) if expected else ("--type" in why)


def test_parse_and_name_types():
    assert parse_type("blk") == parse_type("block") == parse_type("2") == DeviceType.BLOCK
    assert parse_type("RNG") == DeviceType.ENTROPY and parse_type("0x1a") == DeviceType.FS
    with pytest.raises(ValueError):
        parse_type("toaster")
    assert type_name(DeviceType.ENTROPY) == "rng" and type_name(None) == "unknown"


def test_feature_names():
    names = feature_names(QSD_FEATURES, DeviceType.BLOCK)
    assert names[:2] == ["VIRTIO_BLK_F_SIZE_MAX", "VIRTIO_BLK_F_SEG_MAX"]
    assert {"VIRTIO_RING_F_EVENT_IDX", "VIRTIO_F_VERSION_1", "VHOST_F_LOG_ALL",
            "VHOST_USER_F_PROTOCOL_FEATURES", "VIRTIO_F_NOTIFY_ON_EMPTY"} <= set(names)
    assert "bit 5" in feature_names(1 << 5, None)
    assert protocol_feature_names(0b1001 | 1 << 40) == ["MQ", "REPLY_ACK", "bit 40"]


def test_decode_config_respects_length_and_features():
    values = dict.fromkeys(spec_blk.BLK_CONFIG_FIELDS, 0)
    values.update(capacity=2048, blk_size=4096, num_queues=2, seg_max=7)
    raw = spec_blk.BLK_CONFIG.pack(*values.values())
    full = decode_config(DeviceType.BLOCK, raw)
    assert full["capacity"] == 2048 and "model" in full
    short = decode_config(DeviceType.BLOCK, raw[:60])  # QEMU 7.2's 60-byte config
    assert "write_zeroes_may_unmap" in short and "max_secure_erase_sectors" not in short
    only = decode_config(DeviceType.BLOCK, raw, features=1 << spec_blk.BlkFeature.BLK_SIZE)
    assert only == {"capacity": 2048, "blk_size": 4096}  # ungated capacity + the offered field
    assert decode_config(DeviceType.NET, bytes.fromhex("525400123456") + bytes(22))["mac"] == \
        "52:54:00:12:34:56"
    assert decode_config(DeviceType.ENTROPY, bytes(8)) == {}
