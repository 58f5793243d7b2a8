"""pyvirtio's net driver against DPDK's vhost-user back-end (testpmd ``net_vhost``, macswap:
every frame it receives goes back with the addresses swapped), packed and split rings.

net_vhost offers no CONFIG protocol feature (QEMU keeps virtio-net's config itself), so the
driver goes without the config features and says so; it does take RING_PACKED and IN_ORDER
(DPDK returns a transmit batch as one used descriptor, which the driver walks back).  Frames go
both ways and arrive intact, and the test checks the ring features really negotiated.
"""

from __future__ import annotations

import logging
import os
import shutil
import time

import pytest

from pyvirtio.bench.peers import start_testpmd
from pyvirtio.drivers.net import CONFIG_FEATURES, NetDriver
from pyvirtio.net.frame import frame_seq, mac_bytes, numbered_frame
from pyvirtio.spec.features import Feature
from pyvirtio.spec.ids import DeviceType
from pyvirtio.testing.env import require
from pyvirtio.vhost_user.frontend.transport import VhostUserTransport

pytestmark = [pytest.mark.peer, pytest.mark.timeout(180)]
OURS = mac_bytes("52:54:00:12:34:56")
PEER = mac_bytes("52:54:00:ab:cd:ef")
FRAMES = 300
WINDOW = 16


@pytest.mark.parametrize("ring", ["packed", "split"])
def test_net_driver_moves_frames_both_ways_through_dpdk_net_vhost(tmp_path, ring, caplog):
    require(shutil.which("dpdk-testpmd") is not None, "dpdk-testpmd (Debian: dpdk-dev)")
    sock = str(tmp_path / "nv.sock")
    caplog.set_level(logging.WARNING, logger="pyvirtio.drivers.net")
    with start_testpmd(sock, prefix=f"pvnv-{os.getpid()}-{ring}", mode="macswap") as peer:
        t = VhostUserTransport(sock, device_type=DeviceType.NET, memory_size=32 << 20,
                               split_only=ring == "split")
        try:
            assert not t.has_config_space
            drv = NetDriver.probe(t, mac=OURS)
            assert drv.has_feature(Feature.RING_PACKED) == (ring == "packed")
            assert drv.has_feature(Feature.IN_ORDER)
            assert not drv.negotiated & CONFIG_FEATURES and drv.link_up and drv.mac == OURS
            assert "has no config space: not taking" in caplog.text and " MQ " in caplog.text
            got = []
            # In windows of WINDOW frames, each window back before the next goes out: testpmd
            # drops what finds no receive buffer, so a busy machine that delays our refill must
            # not turn into lost frames (a frame lost with the window paced is a real loss).
            deadline = time.monotonic() + 60
            for start in range(0, FRAMES, WINDOW):
                for seq in range(start, min(start + WINDOW, FRAMES)):
                    drv.send(numbered_frame(PEER, OURS, seq, size=64 + seq % 1400))
                want = min(start + WINDOW, FRAMES)
                while len(got) < want and time.monotonic() < deadline:
                    got += drv.recv_all(0.2)
            drv.remove()
        finally:
            t.close()
        assert peer.alive, peer.log()[-2000:]
    # macswap: the frame comes back to us from the address we sent it to
    assert [frame[:12] for frame in got] == [OURS + PEER] * len(got)
    assert sorted(frame_seq(frame)[0] for frame in got) == list(range(FRAMES))
    assert drv.stats["rx_errors"] == 0


def test_without_a_config_space_the_driver_uses_defaults_and_frames_move():
    """The same rule without DPDK: a transport with no config space (loopback here) gets a
    driver that takes none of the config features and still sends and receives."""
    from pyvirtio.devices.net import NetDevice
    from pyvirtio.loopback import LoopbackTransport
    from pyvirtio.net.mock import MockBackend

    class NoConfig(LoopbackTransport):
        has_config_space = False

        def read_config(self, offset, size):
            raise AssertionError("the driver read a config space the transport does not have")

    backend = MockBackend()
    dev = NetDevice(backend, mac=PEER)
    t = NoConfig(dev)
    try:
        drv = NetDriver.probe(t, mac=OURS)
        assert not drv.negotiated & CONFIG_FEATURES and dev.device_features & CONFIG_FEATURES
        assert (drv.mac, drv.link_up, drv.pairs, drv.mtu) == (OURS, True, 1, None)
        drv.send(numbered_frame(PEER, OURS, 1))
        assert backend.sent == [numbered_frame(PEER, OURS, 1)]
        dev.host_frames([numbered_frame(OURS, PEER, 2)])
        assert frame_seq(drv.recv(1.0)) == (2, 0)
    finally:
        t.close()
