"""A real TAP interface, created in a network namespace of our own, with the kernel on the other
side: ARP and ping answered by the kernel, UDP both ways with and without checksum offload."""

import os
import shutil
import socket
import subprocess
import time

import pytest

from pyvirtio.devices.net import NetDevice
from pyvirtio.drivers.net import NetDriver, NetHdr
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.net import frame as fr
from pyvirtio.net.tap import TapBackend, run_in_netns, tun_available
from pyvirtio.spec import net as spec
from pyvirtio.testing.env import require

F = spec.NetFeature
HOST_IP, GUEST_IP = "10.77.0.1", "10.77.0.2"
GUEST_MAC = fr.mac_bytes("52:54:00:aa:00:02")




def _unavailable() -> str | None:
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    if os.geteuid() != 0:
        return "creating TAP devices and network namespaces needs root"
    return tun_available()


@pytest.fixture(scope="module")
def netns():
    why = _unavailable()
    require(not why, "the TAP test", f"cannot run: {why}")
    name = f"pyvirtio-net-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def tap_guest(netns, request):
    """A TAP in ``netns`` with HOST_IP on it, a NetDevice on the TAP, and a driver for it."""
    made = []

    def _make(**driver_kw):
        name = f"pvt{len(made)}{os.getpid() % 10000}"
        tap = TapBackend(name, netns=netns)
        ip = ["ip", "netns", "exec", netns, "ip"]
        subprocess.run(ip + ["addr", "add", f"{HOST_IP}/24", "dev", tap.name], check=True)
        subprocess.run(ip + ["link", "set", tap.name, "up"], check=True)
        subprocess.run(ip + ["neigh", "replace", GUEST_IP, "lladdr", fr.mac_str(GUEST_MAC), "dev", tap.name],
                       check=True)
        dev = NetDevice(tap, mac=GUEST_MAC)
        t = LoopbackTransport(dev)
        made.append((dev, t))
        return tap, dev, NetDriver.probe(t, **driver_kw)

    yield _make
    for dev, t in made:
        t.close()
        dev.close()


def wait_for(drv, match, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = drv.recv_with_header(0.5)
        if got is not None and match(got[1]):
            return got
    return None


def test_kernel_answers_arp_and_ping(tap_guest):
    tap, dev, drv = tap_guest()
    drv.send(fr.arp_request(drv.mac, GUEST_IP, HOST_IP))
    _, reply = wait_for(drv, lambda f: (a := fr.parse_arp(f)) is not None and a.op == 2)
    arp = fr.parse_arp(reply)
    assert arp.sender_ip == HOST_IP and arp.target_mac == drv.mac
    drv.send(fr.icmp_echo(arp.sender_mac, drv.mac, GUEST_IP, HOST_IP, 0x77, 1, b"x" * 1000))
    _, echo = wait_for(drv, lambda f: (p := fr.parse_ipv4(f)) is not None and p.proto == 1)
    ip = fr.parse_ipv4(echo)
    assert (ip.src, ip.dst) == (HOST_IP, GUEST_IP)
    assert ip.payload[0] == 0 and fr.inet_checksum(ip.payload) == 0  # an echo reply, intact
    assert ip.payload.endswith(b"x" * 1000)
    assert dev.stats["tx_errors"] == 0 and tap.stats["errors"] == 0


def _host_udp_socket(netns, port):
    def make():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST_IP, port))
        s.settimeout(5)
        return s
    return run_in_netns(netns, make)


@pytest.mark.parametrize("offloads", [False, True])
def test_udp_both_ways(tap_guest, netns, offloads):
    tap, dev, drv = tap_guest(offloads=offloads)
    assert drv.has_feature(F.CSUM) == offloads and drv.has_feature(F.GUEST_CSUM) == offloads
    sock = _host_udp_socket(netns, 5000)
    try:
        host_mac = _tap_mac(netns, tap.name)
        data = b"guest says hello " * 20
        frame, header = _udp_from_guest(host_mac, data, partial=offloads)
        drv.send(frame, header=header)
        got, addr = sock.recvfrom(2000)
        assert got == data and addr == (GUEST_IP, 4000)  # the kernel checked (or finished) the sum
        sock.sendto(b"host answers" * 50, (GUEST_IP, 4000))
        hdr, answer = wait_for(drv, lambda f: (p := fr.parse_ipv4(f)) is not None and p.proto == 17)
        assert fr.parse_ipv4(answer).payload[8:] == b"host answers" * 50
        if offloads:  # the kernel left the checksum to us (TUNSETOFFLOAD passed GUEST_CSUM on)
            assert hdr.flags == spec.NetHdrFlag.NEEDS_CSUM
            assert (hdr.csum_start, hdr.csum_offset) == (fr.ETH_HLEN + 20, 6)
            answer = _finish_checksum(answer, hdr)
        else:
            assert hdr.flags == 0  # 5.1.6.4.2: no flags without GUEST_CSUM, a full checksum
        assert _udp_sum_ok(fr.parse_ipv4(answer))
    finally:
        sock.close()


def _tap_mac(netns, name):
    out = subprocess.run(["ip", "netns", "exec", netns, "cat", f"/sys/class/net/{name}/address"],
                         check=True, capture_output=True, text=True).stdout.strip()
    return fr.mac_bytes(out)


def _udp_from_guest(host_mac, data, *, partial):
    frame = fr.ipv4_udp(host_mac, GUEST_MAC, GUEST_IP, HOST_IP, 4000, 5000, data)
    if not partial:
        return frame, None
    # CSUM offload: the UDP checksum field holds only the pseudo-header sum (5.1.6.2)
    length = 8 + len(data)
    pseudo = fr._ip4(GUEST_IP) + fr._ip4(HOST_IP) + bytes((0, 17)) + length.to_bytes(2, "big")
    partial_sum = (~fr.inet_checksum(pseudo)) & 0xFFFF
    start = fr.ETH_HLEN + 20
    frame = frame[:start + 6] + partial_sum.to_bytes(2, "big") + frame[start + 8:]
    return frame, NetHdr(flags=spec.NetHdrFlag.NEEDS_CSUM, csum_start=start, csum_offset=6)


def _finish_checksum(frame, hdr):
    """What a driver does with NEEDS_CSUM: sum from csum_start, store at csum_offset."""
    at = hdr.csum_start + hdr.csum_offset
    total = fr.inet_checksum(frame[hdr.csum_start:])
    return frame[:at] + total.to_bytes(2, "big") + frame[at + 2:]


def _udp_sum_ok(ip):
    length = len(ip.payload)
    pseudo = fr._ip4(ip.src) + fr._ip4(ip.dst) + bytes((0, 17)) + length.to_bytes(2, "big")
    return fr.inet_checksum(pseudo + ip.payload) == 0
