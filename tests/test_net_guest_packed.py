"""Real Linux guests (QEMU 7.2, TCG) on pyvirtio's network device with packed rings:
``virtio-net-pci,...,packed=on`` over ``-netdev vhost-user``.  Two guests on one in-daemon switch
ping each other (1400-byte pings too) and move a file with busybox ``nc``, its sha256 checked on
the receiving side.  Each guest prints its negotiated feature bits; the test fails unless bit 34
(VIRTIO_F_RING_PACKED) is there, so a silent fall-back to split rings cannot pass, and unless
the daemon's devices accepted it too.

The daemon, the script helpers and the nc scripts come from ``test_net_guest`` and
``test_net_guest_transfers``.  Without QEMU or busybox these are skipped (failed with CI set).
"""

from __future__ import annotations

import os

import pytest

from pyvirtio.devices.net import NetDevice
from pyvirtio.net.switch import get_switch

from test_net_guest import daemon, ping_until, setup_ip  # noqa: F401 (fixtures)
from test_net_guest_transfers import RECEIVER, SENDER, _values

pytestmark = [pytest.mark.guest, pytest.mark.timeout(600)]
RING_PACKED = 34
FEATURES = r"""
for d in /sys/bus/virtio/devices/virtio*; do echo "features_$(cat $d/device)=$(cat $d/features)"; done
"""


def packed_net_args(sock: str, mac: str) -> list[str]:
    return ["-chardev", f"socket,id=c0,path={sock}", "-netdev", "vhost-user,id=n0,chardev=c0",
            "-device", f"virtio-net-pci,netdev=n0,vectors=0,mac={mac},packed=on"]


def has_bit(features: str, bit: int) -> bool:
    """``features`` as the kernel prints it: one '0'/'1' per bit, bit 0 first."""
    return len(features) > bit and features[bit] == "1"


def _recording(on_features, into: list[int]):
    def record(features: int) -> None:
        into.append(features)
        on_features(features)
    return record


def test_two_packed_ring_guests_ping_and_transfer_a_file(boot, daemon):
    switch_name = f"packed-{os.getpid()}"
    macs = ("52:54:00:84:00:01", "52:54:00:84:00:02")
    devices = [NetDevice(get_switch(switch_name).port(), mac=mac) for mac in macs]
    negotiated: list[int] = []
    for dev in devices:
        dev.offer_packed_ring()
        dev.on_features = _recording(dev.on_features, negotiated)
    socks = [daemon.add(dev) for dev in devices]
    daemon.start()
    receiver = boot.start(FEATURES + setup_ip("10.82.0.1") + RECEIVER,
                          qemu_args=packed_net_args(socks[0], macs[0]), timeout=300)
    receiver.expect("listening=1", timeout=150)
    sent = boot(FEATURES + setup_ip("10.82.0.2") + ping_until("10.82.0.1")
                + "ping -c 3 -s 1400 10.82.0.1\necho ping_rc=$?\n" + SENDER,
                qemu_args=packed_net_args(socks[1], macs[1]), timeout=300).check()
    sv = sent.values()
    assert has_bit(sv["features_0x0001"], RING_PACKED), f"fell back to split rings: {sv}"
    assert sv.get("reached") == "10.82.0.1" and sv["ping_rc"] == "0", sent.output
    assert sv["send_rc"] == "0" and sv["sent_size"] == str(16 * 65536), sent.output
    receiver.expect(r"recv_sha=", timeout=60)
    rv = _values(receiver)
    assert has_bit(rv["features_0x0001"], RING_PACKED), f"fell back to split rings: {rv}"
    assert rv["nc_rc"] == "0" and rv["recv_size"] == sv["sent_size"], receiver.output
    assert rv["recv_sha"] == sv["sent_sha"], receiver.output
    # the daemon's side: both devices took packed rings (QEMU cannot pass the bit on alone)
    assert len(negotiated) >= 2 and all(f >> RING_PACKED & 1 for f in negotiated), negotiated
    for dev in devices:
        assert dev.stats["tx_errors"] == 0 and dev.stats["rx_packets"] > 0
    assert get_switch(switch_name).stats["forwarded"] > 0
