"""A tiny host on a network: answers ARP requests and pings for one IPv4 address.

It sits on anything that sends and receives frames — a :class:`~pyvirtio.drivers.net.NetDriver`
(over loopback, on a switch port) in tests and demos — and gives a guest something to ping
without a TAP or a second guest.  ``answer(frame)`` is pure (frame in, reply or None out);
:meth:`Responder.run` loops over a driver's ``recv``/``send`` until stopped.
"""

from __future__ import annotations

import struct
import threading

from . import frame as fr

_ECHO = struct.Struct("!BBHHH")


class Responder:
    def __init__(self, mac, ip: str):
        self.mac = fr.mac_bytes(mac)
        self.ip = ip
        self.stats = {"arp": 0, "ping": 0}

    def answer(self, frame: bytes) -> bytes | None:
        """The reply ``frame`` deserves (an ARP reply or an echo reply), or None."""
        arp = fr.parse_arp(frame)
        if arp is not None:
            if arp.op != 1 or arp.target_ip != self.ip:
                return None
            self.stats["arp"] += 1
            body = fr.arp_packet(2, self.mac, self.ip, arp.sender_mac, arp.sender_ip)
            return fr.ethernet(arp.sender_mac, self.mac, fr.ETHERTYPE_ARP, body)
        ip = fr.parse_ipv4(frame)
        if ip is None or ip.proto != 1 or ip.dst != self.ip or len(ip.payload) < _ECHO.size:
            return None
        kind, _code, _sum, ident, seq = _ECHO.unpack_from(ip.payload)
        if kind != 8:
            return None
        self.stats["ping"] += 1
        src_mac = fr.parse_ethernet(frame).src
        return fr.icmp_echo(src_mac, self.mac, self.ip, ip.src, ident, seq, ip.payload[_ECHO.size:],
                            reply=True)

    def run(self, driver, stop: threading.Event, poll: float = 0.1) -> None:
        """Answer what ``driver`` receives until ``stop`` is set."""
        while not stop.is_set():
            frame = driver.recv(poll)
            if frame is None:
                continue
            reply = self.answer(frame)
            if reply is not None:
                driver.send(reply)

    def start(self, driver) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(driver, stop), name=f"responder-{self.ip}",
                                  daemon=True)
        thread.start()
        return thread, stop
