"""Ethernet frames: MAC addresses, and a small builder/parser for the frames tests and demos send.

Nothing here knows about virtio.  ``ethernet``, ``arp_request``, ``ipv4_udp`` and ``icmp_echo``
build valid frames (checksums included); ``parse_ethernet`` / ``parse_arp`` take them apart;
``numbered_frame`` makes a frame of an exact size carrying a sequence number, so a test can tell
which frames arrived, in which order, and that none was corrupted.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from typing import NamedTuple, Union

ETH_HLEN = 14
ETH_ZLEN = 60  # minimum frame without FCS
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = 0x8100
#: An IEEE 802 "local experimental" ethertype for test frames.
ETHERTYPE_TEST = 0x88B5
BROADCAST = b"\xff" * 6

_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_ICMP = struct.Struct("!BBHHH")
_SEQ = struct.Struct("!IH")

MacLike = Union[str, bytes, bytearray]


# --- MAC addresses --------------------------------------------------------------------------------

def mac_bytes(mac: MacLike) -> bytes:
    """``"52:54:00:12:34:56"`` (or ``-`` separated, or 6 raw bytes) → 6 bytes; ValueError else."""
    if isinstance(mac, (bytes, bytearray)):
        if len(mac) != 6:
            raise ValueError(f"a MAC address has 6 bytes, not {len(mac)}")
        return bytes(mac)
    parts = mac.replace("-", ":").split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        raise ValueError(f"not a MAC address: {mac!r}")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"not a MAC address: {mac!r}") from None


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def random_mac() -> bytes:
    """A random unicast, locally administered address (IEEE 802, 9.2)."""
    first = (os.urandom(1)[0] & 0xFC) | 0x02
    return bytes((first,)) + os.urandom(5)


def is_multicast(mac: bytes) -> bool:
    """Group bit set (broadcast included)."""
    return bool(mac[0] & 1)


def is_broadcast(mac: bytes) -> bool:
    return mac == BROADCAST


# --- Ethernet -------------------------------------------------------------------------------------

class Ethernet(NamedTuple):
    dst: bytes
    src: bytes
    ethertype: int
    payload: bytes


def ethernet(dst: MacLike, src: MacLike, ethertype: int, payload: bytes, *, pad: bool = True) -> bytes:
    frame = _ETH.pack(mac_bytes(dst), mac_bytes(src), ethertype) + payload
    if pad and len(frame) < ETH_ZLEN:
        frame += bytes(ETH_ZLEN - len(frame))
    return frame


def parse_ethernet(frame: bytes) -> Ethernet:
    if len(frame) < ETH_HLEN:
        raise ValueError(f"frame of {len(frame)} bytes is shorter than an Ethernet header")
    dst, src, ethertype = _ETH.unpack_from(frame)
    return Ethernet(dst, src, ethertype, bytes(frame[ETH_HLEN:]))


# --- checksums ------------------------------------------------------------------------------------

def inet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# --- ARP ------------------------------------------------------------------------------------------

class Arp(NamedTuple):
    op: int  # 1 request, 2 reply
    sender_mac: bytes
    sender_ip: str
    target_mac: bytes
    target_ip: str


def _ip4(addr: str) -> bytes:
    return ipaddress.IPv4Address(addr).packed


def arp_packet(op: int, sender_mac: MacLike, sender_ip: str, target_mac: MacLike, target_ip: str) -> bytes:
    return _ARP.pack(1, ETHERTYPE_IPV4, 6, 4, op, mac_bytes(sender_mac), _ip4(sender_ip),
                     mac_bytes(target_mac), _ip4(target_ip))


def arp_request(src_mac: MacLike, src_ip: str, target_ip: str) -> bytes:
    """A broadcast "who has ``target_ip``?" frame."""
    body = arp_packet(1, src_mac, src_ip, bytes(6), target_ip)
    return ethernet(BROADCAST, src_mac, ETHERTYPE_ARP, body)


def gratuitous_arp(mac: MacLike, ip: str) -> bytes:
    """The announcement a driver sends after VIRTIO_NET_S_ANNOUNCE (5.1.6.5.4)."""
    return ethernet(BROADCAST, mac, ETHERTYPE_ARP, arp_packet(1, mac, ip, bytes(6), ip))


def parse_arp(frame: bytes) -> Arp | None:
    """The ARP packet in ``frame``, or None if it is not an Ethernet/IPv4 ARP frame."""
    eth = parse_ethernet(frame)
    if eth.ethertype != ETHERTYPE_ARP or len(eth.payload) < _ARP.size:
        return None
    htype, ptype, hlen, plen, op, smac, sip, tmac, tip = _ARP.unpack_from(eth.payload)
    if (htype, ptype, hlen, plen) != (1, ETHERTYPE_IPV4, 6, 4):
        return None
    return Arp(op, smac, str(ipaddress.IPv4Address(sip)), tmac, str(ipaddress.IPv4Address(tip)))


# --- IPv4, UDP, ICMP ------------------------------------------------------------------------------

def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64, ident: int = 0) -> bytes:
    total = 20 + len(payload)
    head = _IPV4.pack(0x45, 0, total, ident, 0x4000, ttl, proto, 0, _ip4(src), _ip4(dst))
    csum = inet_checksum(head)
    return head[:10] + struct.pack("!H", csum) + head[12:] + payload


def udp(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    """A UDP datagram with its checksum over the IPv4 pseudo header."""
    length = 8 + len(data)
    pseudo = _ip4(src) + _ip4(dst) + struct.pack("!BBH", 0, 17, length)
    head = _UDP.pack(sport, dport, length, 0)
    csum = inet_checksum(pseudo + head + data) or 0xFFFF
    return _UDP.pack(sport, dport, length, csum) + data


def ipv4_udp(dst_mac: MacLike, src_mac: MacLike, src: str, dst: str, sport: int, dport: int,
             data: bytes) -> bytes:
    packet = ipv4(src, dst, 17, udp(src, dst, sport, dport, data))
    return ethernet(dst_mac, src_mac, ETHERTYPE_IPV4, packet)


def icmp_echo(dst_mac: MacLike, src_mac: MacLike, src: str, dst: str, ident: int, seq: int,
              data: bytes = b"pyvirtio", *, reply: bool = False) -> bytes:
    head = _ICMP.pack(0 if reply else 8, 0, 0, ident, seq)
    csum = inet_checksum(head + data)
    icmp = _ICMP.pack(0 if reply else 8, 0, csum, ident, seq) + data
    return ethernet(dst_mac, src_mac, ETHERTYPE_IPV4, ipv4(src, dst, 1, icmp))


class Ipv4(NamedTuple):
    src: str
    dst: str
    proto: int
    payload: bytes


def parse_ipv4(frame: bytes) -> Ipv4 | None:
    eth = parse_ethernet(frame)
    if eth.ethertype != ETHERTYPE_IPV4 or len(eth.payload) < 20:
        return None
    vihl, _tos, total, _id, _frag, _ttl, proto, _csum, src, dst = _IPV4.unpack_from(eth.payload)
    ihl = (vihl & 0xF) * 4
    if vihl >> 4 != 4 or ihl < 20 or total < ihl or total > len(eth.payload):
        return None
    return Ipv4(str(ipaddress.IPv4Address(src)), str(ipaddress.IPv4Address(dst)), proto,
                eth.payload[ihl:total])


# --- numbered test frames -------------------------------------------------------------------------

def numbered_frame(dst: MacLike, src: MacLike, seq: int, size: int = 64, *, stream: int = 0) -> bytes:
    """A frame of exactly ``size`` bytes (no FCS) carrying ``seq`` and a payload derived from it."""
    if size < ETH_HLEN + _SEQ.size:
        raise ValueError(f"a numbered frame needs at least {ETH_HLEN + _SEQ.size} bytes")
    head = _ETH.pack(mac_bytes(dst), mac_bytes(src), ETHERTYPE_TEST) + _SEQ.pack(seq, stream)
    fill = size - len(head)
    pattern = bytes((seq + i) & 0xFF for i in range(min(fill, 256)))
    body = (pattern * (fill // 256 + 1))[:fill] if pattern else b""
    return head + body


def frame_seq(frame: bytes) -> tuple[int, int] | None:
    """``(seq, stream)`` of a numbered frame whose payload is intact, else None."""
    if len(frame) < ETH_HLEN + _SEQ.size or _ETH.unpack_from(frame)[2] != ETHERTYPE_TEST:
        return None
    seq, stream = _SEQ.unpack_from(frame, ETH_HLEN)
    expect = numbered_frame(frame[:6], frame[6:12], seq, len(frame), stream=stream)
    return (seq, stream) if expect == bytes(frame) else None
