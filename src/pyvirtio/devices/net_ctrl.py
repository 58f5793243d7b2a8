"""The network device's control queue (VIRTIO 1.3, 5.1.6.5) and the receive filter it programs.

A command is ``{u8 class; u8 command; data[]}`` in device-readable buffers, then an ``ack`` byte
in a device-writable one.  Commands are a table from ``(class, command)`` to the feature that
must have been negotiated and a handler; a handler returns normally for VIRTIO_NET_OK and raises
:class:`CtrlRejected` for VIRTIO_NET_ERR.  Data lengths are checked exactly: a command with too
few or too many bytes, an unknown class or command, or one whose feature was not negotiated is
answered ERR and changes nothing.
"""

from __future__ import annotations

from typing import Callable, Protocol

from ..errors import DriverFault, Scope
from ..spec.net import (NET_CTRL_GUEST_OFFLOADS, NET_CTRL_MAC_ENTRIES, NET_CTRL_MQ_PAIRS_SET,
                        NET_CTRL_MQ_VQ_PAIRS_MIN, NetCtrlAck, NetCtrlAnnounce, NetCtrlClass,
                        NetCtrlGuestOffloads, NetCtrlMac, NetCtrlMq, NetCtrlRx, NetFeature as F)
from ..net.frame import BROADCAST, is_multicast

#: Entries kept per MAC table; a longer table turns on all-unicast / all-multicast instead
#: (5.1.6.5.2 allows "silently switch to allmulti or promiscuous mode").
MAC_TABLE_MAX = 64
#: Longest command data we read (a full MAC table with room to spare).
CTRL_DATA_MAX = 64 * 1024

GUEST_OFFLOAD_BITS = (F.GUEST_CSUM, F.GUEST_TSO4, F.GUEST_TSO6, F.GUEST_ECN, F.GUEST_UFO,
                      F.GUEST_USO4, F.GUEST_USO6)
GUEST_OFFLOADS = sum(1 << f for f in GUEST_OFFLOAD_BITS)
_GUEST_NEEDS_CSUM = sum(1 << f for f in (F.GUEST_TSO4, F.GUEST_TSO6, F.GUEST_ECN, F.GUEST_UFO,
                                         F.GUEST_USO4, F.GUEST_USO6))


class CtrlRejected(DriverFault):
    """A control command the device answers with VIRTIO_NET_ERR; only that command fails."""

    scope = Scope.REQUEST


class RxFilter:
    """Receive filtering state (5.1.6.5.1, 5.1.6.5.2).  ``enabled`` once CTRL_RX is negotiated:
    without it the driver cannot program a filter, so the device accepts every frame."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.enabled = False
        self.promisc = self.allmulti = self.alluni = False
        self.nomulti = self.nouni = self.nobcast = False
        self.unicast: frozenset[bytes] = frozenset()
        self.multicast: frozenset[bytes] = frozenset()
        self.unicast_overflow = self.multicast_overflow = False

    def accepts(self, dst: bytes, mac: bytes) -> bool:
        """Whether a frame to ``dst`` reaches a driver whose own address is ``mac``."""
        if not self.enabled or self.promisc:
            return True
        if dst == BROADCAST:
            return not self.nobcast
        if dst[0] & 1:
            if self.nomulti:
                return False
            return self.allmulti or self.multicast_overflow or dst in self.multicast
        if self.nouni:
            return False
        return dst == mac or self.alluni or self.unicast_overflow or dst in self.unicast

    def set_tables(self, unicast: list[bytes], multicast: list[bytes]) -> None:
        self.unicast_overflow = len(unicast) > MAC_TABLE_MAX
        self.multicast_overflow = len(multicast) > MAC_TABLE_MAX
        self.unicast = frozenset() if self.unicast_overflow else frozenset(unicast)
        self.multicast = frozenset() if self.multicast_overflow else frozenset(multicast)


class CtrlTarget(Protocol):
    """What the control queue changes on a network device."""

    filter: RxFilter
    max_pairs: int

    def has_feature(self, bit: int) -> bool: ...
    def set_mac_from_driver(self, mac: bytes) -> None: ...
    def ack_announce(self) -> None: ...
    def set_active_pairs(self, pairs: int) -> None: ...
    def set_guest_offloads(self, offloads: int) -> None: ...


# --- handlers ---------------------------------------------------------------------------------------

def _expect(data: bytes, size: int, what: str) -> None:
    if len(data) != size:
        raise CtrlRejected(f"{what}: {len(data)} data bytes, expected {size}")


def _rx_mode(attr: str) -> Callable[[CtrlTarget, bytes], None]:
    def handler(dev: CtrlTarget, data: bytes) -> None:
        _expect(data, 1, f"RX {attr}")
        if data[0] > 1:
            raise CtrlRejected(f"RX {attr}: value {data[0]} is neither 0 nor 1")
        setattr(dev.filter, attr, bool(data[0]))
    return handler


def parse_mac_table(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """Two ``struct virtio_net_ctrl_mac`` back to back: unicast, then multicast (5.1.6.5.2)."""
    tables, pos = [], 0
    for _ in range(2):
        if len(data) - pos < NET_CTRL_MAC_ENTRIES.size:
            raise CtrlRejected("MAC TABLE_SET: truncated entry count")
        (entries,) = NET_CTRL_MAC_ENTRIES.unpack_from(data, pos)
        pos += NET_CTRL_MAC_ENTRIES.size
        if entries > (len(data) - pos) // 6:
            raise CtrlRejected(f"MAC TABLE_SET: {entries} entries do not fit the command")
        tables.append([bytes(data[pos + 6 * i:pos + 6 * i + 6]) for i in range(entries)])
        pos += 6 * entries
    if pos != len(data):
        raise CtrlRejected(f"MAC TABLE_SET: {len(data) - pos} bytes after the tables")
    return tables[0], tables[1]


def _mac_table(dev: CtrlTarget, data: bytes) -> None:
    unicast, multicast = parse_mac_table(data)
    dev.filter.set_tables(unicast, multicast)


def _mac_addr(dev: CtrlTarget, data: bytes) -> None:
    _expect(data, 6, "MAC ADDR_SET")
    if is_multicast(data) or data == bytes(6):
        raise CtrlRejected("MAC ADDR_SET: not a unicast address")
    dev.set_mac_from_driver(bytes(data))


def _announce_ack(dev: CtrlTarget, data: bytes) -> None:
    _expect(data, 0, "ANNOUNCE ACK")
    dev.ack_announce()


def _mq_pairs(dev: CtrlTarget, data: bytes) -> None:
    _expect(data, NET_CTRL_MQ_PAIRS_SET.size, "MQ VQ_PAIRS_SET")
    (pairs,) = NET_CTRL_MQ_PAIRS_SET.unpack(data)
    if not NET_CTRL_MQ_VQ_PAIRS_MIN <= pairs <= dev.max_pairs:
        raise CtrlRejected(f"MQ VQ_PAIRS_SET: {pairs} pairs, the device has 1..{dev.max_pairs}")
    dev.set_active_pairs(pairs)


def _guest_offloads(dev: CtrlTarget, data: bytes) -> None:
    _expect(data, NET_CTRL_GUEST_OFFLOADS.size, "GUEST_OFFLOADS SET")
    (offloads,) = NET_CTRL_GUEST_OFFLOADS.unpack(data)
    allowed = sum(1 << b for b in GUEST_OFFLOAD_BITS if dev.has_feature(b))
    if offloads & ~allowed:
        raise CtrlRejected(f"GUEST_OFFLOADS SET: {offloads:#x} is not a subset of the negotiated offloads")
    if offloads & _GUEST_NEEDS_CSUM and not offloads & (1 << F.GUEST_CSUM):
        raise CtrlRejected("GUEST_OFFLOADS SET: segmentation offloads need GUEST_CSUM")
    dev.set_guest_offloads(offloads)


Handler = Callable[[CtrlTarget, bytes], None]
COMMANDS: dict[tuple[int, int], tuple[int, Handler]] = {
    (NetCtrlClass.RX, NetCtrlRx.PROMISC): (F.CTRL_RX, _rx_mode("promisc")),
    (NetCtrlClass.RX, NetCtrlRx.ALLMULTI): (F.CTRL_RX, _rx_mode("allmulti")),
    (NetCtrlClass.RX, NetCtrlRx.ALLUNI): (F.CTRL_RX_EXTRA, _rx_mode("alluni")),
    (NetCtrlClass.RX, NetCtrlRx.NOMULTI): (F.CTRL_RX_EXTRA, _rx_mode("nomulti")),
    (NetCtrlClass.RX, NetCtrlRx.NOUNI): (F.CTRL_RX_EXTRA, _rx_mode("nouni")),
    (NetCtrlClass.RX, NetCtrlRx.NOBCAST): (F.CTRL_RX_EXTRA, _rx_mode("nobcast")),
    (NetCtrlClass.MAC, NetCtrlMac.TABLE_SET): (F.CTRL_RX, _mac_table),
    (NetCtrlClass.MAC, NetCtrlMac.ADDR_SET): (F.CTRL_MAC_ADDR, _mac_addr),
    (NetCtrlClass.ANNOUNCE, NetCtrlAnnounce.ACK): (F.GUEST_ANNOUNCE, _announce_ack),
    (NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET): (F.MQ, _mq_pairs),
    (NetCtrlClass.GUEST_OFFLOADS, NetCtrlGuestOffloads.SET): (F.CTRL_GUEST_OFFLOADS, _guest_offloads),
}


def execute(dev: CtrlTarget, cls: int, command: int, data: bytes) -> int:
    """Run one command; returns the ack byte.  Raises CtrlRejected (the ack is then ERR)."""
    entry = COMMANDS.get((cls, command))
    if entry is None:
        raise CtrlRejected(f"unknown control command class {cls} command {command}")
    feature, handler = entry
    if not dev.has_feature(feature):
        raise CtrlRejected(f"control command ({cls}, {command}) needs {F(feature).name}, not negotiated")
    handler(dev, data)
    return NetCtrlAck.OK

