"""What the reference vhost-user back-ends offer of the ring features (issue 11), seen through
pyvirtio's front-end: qemu-storage-daemon (libvhost-user) offers neither RING_PACKED nor
IN_ORDER, so its vhost-user-blk can only be driven with split rings; DPDK's net_vhost offers
both.  If a peer's offer changes, these fail and the packed columns can grow."""

from __future__ import annotations

import shutil

import pytest

from pyvirtio.bench.peers import QSD, start_qsd, start_testpmd, which
from pyvirtio.spec.features import Feature
from pyvirtio.spec.ids import DeviceType
from pyvirtio.testing.env import require
from pyvirtio.vhost_user.frontend.transport import VhostUserTransport

pytestmark = [pytest.mark.peer, pytest.mark.timeout(120)]


def offered(sock, device_type, **kw):
    t = VhostUserTransport(sock, device_type=device_type, memory_size=4 << 20, **kw)
    try:
        return t.get_device_features()
    finally:
        t.close()


def bits(features):
    return {f.name for f in (Feature.RING_PACKED, Feature.IN_ORDER) if features >> f & 1}


def test_qemu_storage_daemon_offers_split_only(tmp_path):
    require(which(QSD) is not None, "qemu-storage-daemon")
    sock = str(tmp_path / "q.sock")
    with start_qsd(sock, null_size=1 << 20):
        assert bits(offered(sock, DeviceType.BLOCK)) == set()


def test_dpdk_net_vhost_offers_packed_and_in_order(tmp_path):
    require(shutil.which("dpdk-testpmd") is not None, "dpdk-testpmd (Debian: dpdk-dev)")
    sock = str(tmp_path / "n.sock")
    with start_testpmd(sock):
        assert bits(offered(sock, DeviceType.NET)) == {"RING_PACKED", "IN_ORDER"}
    with start_testpmd(sock):  # and the front-end can hide it
        assert bits(offered(sock, DeviceType.NET, split_only=True)) == {"IN_ORDER"}
