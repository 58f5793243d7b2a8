"""Frame builder and parser, MAC helpers, and flow keys."""

import struct

import pytest

from pyvirtio.net import frame as fr
from pyvirtio.devices.net_steer import FlowTable, flow_key


def test_mac_parsing_round_trips():
    mac = fr.mac_bytes("52:54:00:AB:cd:0f")
    assert mac == bytes.fromhex("525400abcd0f")
    assert fr.mac_str(mac) == "52:54:00:ab:cd:0f"
    assert fr.mac_bytes("52-54-00-ab-cd-0f") == mac
    assert fr.mac_bytes(mac) == mac


@pytest.mark.parametrize("bad", ["", "52:54:00:ab:cd", "52:54:00:ab:cd:0f:11", "zz:54:00:ab:cd:0f",
                                 "525:4:00:ab:cd:0f", b"\x00" * 5])
def test_bad_macs_raise_value_error(bad):
    with pytest.raises(ValueError):
        fr.mac_bytes(bad)


def test_random_mac_is_local_unicast():
    for _ in range(50):
        mac = fr.random_mac()
        assert len(mac) == 6 and not fr.is_multicast(mac) and mac[0] & 2


def test_multicast_and_broadcast():
    assert fr.is_broadcast(fr.BROADCAST) and fr.is_multicast(fr.BROADCAST)
    assert fr.is_multicast(bytes.fromhex("01005e000001")) and not fr.is_broadcast(bytes.fromhex("01005e000001"))
    assert not fr.is_multicast(bytes.fromhex("525400000001"))


def test_short_frames_are_padded_to_the_ethernet_minimum():
    frame = fr.ethernet(fr.BROADCAST, "52:54:00:00:00:01", fr.ETHERTYPE_TEST, b"x")
    assert len(frame) == fr.ETH_ZLEN
    eth = fr.parse_ethernet(frame)
    assert eth.dst == fr.BROADCAST and eth.ethertype == fr.ETHERTYPE_TEST
    with pytest.raises(ValueError):
        fr.parse_ethernet(b"\x00" * 13)


def test_ipv4_header_checksum_verifies():
    packet = fr.ipv4("10.0.0.1", "10.0.0.2", 17, b"payload")
    assert fr.inet_checksum(packet[:20]) == 0
    assert fr.inet_checksum(b"\x00\x01\xf2\x03\xf4\xf5\xf6\xf7") == (~0xDDF2 & 0xFFFF)  # RFC 1071


def test_udp_checksum_covers_the_pseudo_header():
    datagram = fr.udp("10.0.0.1", "10.0.0.2", 1000, 2000, b"hello")
    pseudo = fr._ip4("10.0.0.1") + fr._ip4("10.0.0.2") + struct.pack("!BBH", 0, 17, len(datagram))
    assert fr.inet_checksum(pseudo + datagram) == 0


def test_arp_request_parses_back():
    frame = fr.arp_request("52:54:00:00:00:01", "10.1.0.2", "10.1.0.1")
    arp = fr.parse_arp(frame)
    assert arp == fr.Arp(1, fr.mac_bytes("52:54:00:00:00:01"), "10.1.0.2", bytes(6), "10.1.0.1")
    assert fr.parse_ethernet(frame).dst == fr.BROADCAST
    assert fr.parse_arp(fr.numbered_frame(fr.BROADCAST, "52:54:00:00:00:01", 1)) is None
    garp = fr.parse_arp(fr.gratuitous_arp("52:54:00:00:00:01", "10.1.0.2"))
    assert garp.sender_ip == garp.target_ip == "10.1.0.2"


def test_icmp_echo_parses_as_ipv4():
    frame = fr.icmp_echo("52:54:00:00:00:02", "52:54:00:00:00:01", "10.1.0.2", "10.1.0.1", 7, 3)
    ip = fr.parse_ipv4(frame)
    assert (ip.src, ip.dst, ip.proto) == ("10.1.0.2", "10.1.0.1", 1)
    assert fr.inet_checksum(ip.payload) == 0
    assert fr.parse_ipv4(fr.arp_request("52:54:00:00:00:01", "10.1.0.2", "10.1.0.1")) is None


@pytest.mark.parametrize("size", [20, 60, 64, 1514, 9000])
def test_numbered_frames_have_exact_sizes_and_detect_corruption(size):
    frame = fr.numbered_frame("52:54:00:00:00:02", "52:54:00:00:00:01", 1234, size, stream=5)
    assert len(frame) == size
    assert fr.frame_seq(frame) == (1234, 5)
    if size > 20:
        broken = bytearray(frame)
        broken[-1] ^= 0xFF
        assert fr.frame_seq(bytes(broken)) is None
    with pytest.raises(ValueError):
        fr.numbered_frame(fr.BROADCAST, fr.BROADCAST, 1, 17)


def test_flow_keys_are_the_same_both_ways():
    a, b = "52:54:00:00:00:01", "52:54:00:00:00:02"
    there = fr.ipv4_udp(b, a, "10.0.0.1", "10.0.0.2", 1000, 53, b"q")
    back = fr.ipv4_udp(a, b, "10.0.0.2", "10.0.0.1", 53, 1000, b"r")
    other = fr.ipv4_udp(b, a, "10.0.0.1", "10.0.0.2", 1001, 53, b"q")
    assert flow_key(there) == flow_key(back) != flow_key(other)
    l2 = fr.numbered_frame(b, a, 1)
    assert flow_key(l2) == flow_key(fr.numbered_frame(a, b, 2))


def test_flow_table_steers_answers_to_the_sending_pair():
    table = FlowTable()
    a, b = "52:54:00:00:00:01", "52:54:00:00:00:02"
    there = fr.ipv4_udp(b, a, "10.0.0.1", "10.0.0.2", 1000, 53, b"q")
    back = fr.ipv4_udp(a, b, "10.0.0.2", "10.0.0.1", 53, 1000, b"r")
    table.learn(there, 3)
    assert table.lookup(back, 4) == 3
    assert table.lookup(back, 2) in (0, 1)  # that pair is no longer in use: hash instead


def test_responder_answers_arp_and_ping_for_its_address_only():
    from pyvirtio.net.responder import Responder
    host = Responder("52:54:00:00:00:10", "10.9.0.1")
    guest = fr.mac_bytes("52:54:00:00:00:20")
    reply = fr.parse_arp(host.answer(fr.arp_request(guest, "10.9.0.2", "10.9.0.1")))
    assert (reply.op, reply.sender_ip, reply.target_mac) == (2, "10.9.0.1", guest)
    assert host.answer(fr.arp_request(guest, "10.9.0.2", "10.9.0.3")) is None
    echo = host.answer(fr.icmp_echo(host.mac, guest, "10.9.0.2", "10.9.0.1", 5, 9, b"data"))
    ip = fr.parse_ipv4(echo)
    assert (ip.src, ip.dst, ip.payload[0]) == ("10.9.0.1", "10.9.0.2", 0)
    assert fr.inet_checksum(ip.payload) == 0 and ip.payload.endswith(b"data")
    assert host.answer(fr.icmp_echo(host.mac, guest, "10.9.0.2", "10.9.0.7", 5, 9)) is None
    assert host.stats == {"arp": 1, "ping": 1}
