"""Network driver (VIRTIO 1.3, 5.1): sends and receives Ethernet frames over any transport.

Receive buffers stay posted: every buffer the device returns is copied out and posted again at
once.  With MRG_RXBUF a frame may span several buffers (``num_buffers`` in the first one's
header); without it every buffer holds the largest frame.  Control commands (promiscuous,
all-multicast, MAC address and table, announce ack, queue pairs, guest offloads) go through the
control queue and raise :class:`~pyvirtio.errors.RequestError` when the device answers ERR.
Link changes arrive as config interrupts; ``on_link`` / ``on_announce`` callbacks run in the
interrupt's context (keep them short, and do not call the driver from them).

A transport may have no config space at all (a vhost-user back-end without the CONFIG protocol
feature, e.g. DPDK's net_vhost: QEMU keeps virtio-net's config itself).  The driver then does
not take the features whose meaning is a config field (MAC, STATUS, MTU, MQ, GUEST_ANNOUNCE) and
uses what the spec says a driver without them uses: its own MAC address, the link up, one queue
pair, the default MTU — and logs that once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, NamedTuple, Sequence

from ..driver import DriverQueue, VirtioDriver
from ..errors import DeviceFault, RequestError, UsageError
from ..net.frame import ETH_HLEN, mac_bytes, random_mac
from ..spec import net as spec
from ..spec.ids import DeviceType

F = spec.NetFeature
HDR = spec.NET_HDR_SIZE
MAX_FRAME = 65536 + 64
WAIT_SLICE = 0.05
#: Queue pairs used when the caller does not say (Linux uses one per CPU).
DEFAULT_MAX_PAIRS = 8
TX_SLOT = 2048

WANTED = sum(1 << f for f in (F.MAC, F.STATUS, F.MTU, F.MRG_RXBUF, F.CTRL_VQ, F.CTRL_RX, F.CTRL_RX_EXTRA,
                              F.CTRL_MAC_ADDR, F.GUEST_ANNOUNCE, F.MQ))
#: Offloads the driver takes only when asked (``offloads=True``): it then receives frames with
#: partial checksums or GSO and may send them (see ``NetHdr``).
OFFLOADS = sum(1 << f for f in (F.CSUM, F.GUEST_CSUM, F.HOST_TSO4, F.HOST_TSO6, F.GUEST_TSO4,
                                F.GUEST_TSO6, F.HOST_ECN, F.GUEST_ECN, F.CTRL_GUEST_OFFLOADS))
_GUEST_GSO = sum(1 << f for f in (F.GUEST_TSO4, F.GUEST_TSO6, F.GUEST_UFO))
#: Features a driver can only use with a config space (5.1.4: each names a field, or the status
#: field's announce bit).
CONFIG_FEATURES = sum(1 << f for f in (F.MAC, F.STATUS, F.MTU, F.MQ, F.GUEST_ANNOUNCE))

log = logging.getLogger(__name__)


class NetHdr(NamedTuple):
    """``struct virtio_net_hdr`` (5.1.6)."""

    flags: int = 0
    gso_type: int = 0
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    num_buffers: int = 0

    def pack(self) -> bytes:
        """The header as the device reads it (struct virtio_net_hdr, 5.1.6)."""
        return spec.NET_HDR.pack(*self)


def drop_unmet(features: int) -> int:
    """Clear every feature whose requirements (5.1.3.1) are not all in ``features``."""
    changed = True
    while changed:
        changed = False
        for bit, alternatives in spec.FEATURE_REQUIRES.items():
            if features >> bit & 1 and not any(all(features >> r & 1 for r in alt) for alt in alternatives):
                features &= ~(1 << bit)
                changed = True
    return features


class NetDriver(VirtioDriver):
    """The network driver (VIRTIO 1.3, 5.1): frames in and out over one or more queue pairs,
    offloads, the control queue (receive modes, MAC filter, queue pairs, announcements) and
    link state."""

    id_table = (DeviceType.NET,)
    features = WANTED | OFFLOADS
    queue_size = 256

    def __init__(self, transport, *, max_pairs: int | None = None, mrg_rxbuf: bool = True,
                 offloads: bool = False, rx_buffers: int = 128, rx_buffer_size: int | None = None,
                 mac=None):
        super().__init__(transport)
        self.max_pairs = max_pairs
        self.want_mrg = mrg_rxbuf
        self.want_offloads = offloads
        self.rx_buffer_count = rx_buffers
        self.rx_buffer_size = rx_buffer_size
        self.requested_mac = mac_bytes(mac) if mac is not None else None
        self.on_link: list[Callable[[bool], None]] = []
        self.on_announce: list[Callable[[], None]] = []
        self.stats = dict.fromkeys(("rx_packets", "rx_errors", "tx_packets"), 0)
        self._frames: deque[tuple[NetHdr, bytes]] = deque()
        self._partial: list[list | None] = []
        self._rx_lock = threading.Lock()
        self._tx_lock = threading.Lock()
        self._ctrl_lock = threading.Lock()
        self._owned: list[int] = []
        self.ctrlq: DriverQueue | None = None
        self.active_pairs = 1

    # --- initialisation -------------------------------------------------------------------------

    def negotiate(self, offered: int, accepted: int) -> int:
        if not self.want_mrg:
            accepted &= ~(1 << F.MRG_RXBUF)
        if not self.want_offloads:
            accepted &= ~OFFLOADS
        if not self.transport.has_config_space and accepted & CONFIG_FEATURES:
            names = [F(bit).name for bit in range(64) if (accepted & CONFIG_FEATURES) >> bit & 1]
            log.warning("%s has no config space: not taking %s (the driver picks the MAC, assumes "
                        "the link up, one queue pair, the default MTU)", self.transport.describe(),
                        " ".join(names))
            accepted &= ~CONFIG_FEATURES
        return drop_unmet(accepted)

    def setup(self) -> None:
        self.refresh_config()
        self.mac = self.config["mac"] if self.has_feature(F.MAC) else (self.requested_mac or random_mac())
        self.mtu = self.config["mtu"] if self.has_feature(F.MTU) else None
        self.layout_pairs = max(1, self.config["max_virtqueue_pairs"]) if self.has_feature(F.MQ) else 1
        self.pairs = min(self.layout_pairs, self.max_pairs or DEFAULT_MAX_PAIRS)
        self.mrg = self.has_feature(F.MRG_RXBUF)
        self.link = self._read_link()
        self.queues = []
        for i in range(2 * self.pairs):
            self.queues.append(self.create_queue(i))
        self.ctrlq = self.create_queue(2 * self.layout_pairs) if self.has_feature(F.CTRL_VQ) else None
        self._setup_buffers()

    def _initialise(self) -> None:
        super()._initialise()
        for pair in range(self.pairs):
            self.queues[2 * pair].kick()  # buffers posted before DRIVER_OK: tell the device now
        if self.pairs > 1:
            self.set_queue_pairs(self.pairs)
        if self.has_feature(F.CTRL_MAC_ADDR) and not self.has_feature(F.MAC):
            self.set_mac(self.mac)  # the device has no address of ours to filter on: tell it (as Linux)
        elif self.requested_mac and self.requested_mac != self.mac and self.has_feature(F.CTRL_MAC_ADDR):
            self.set_mac(self.requested_mac)

    def refresh_config(self) -> dict:
        """Read the device's configuration again (MAC, status, queue pairs, MTU ...) after a
        configuration change; returns it as a dict."""
        if not self.transport.has_config_space:
            self.config = dict.fromkeys(spec.NET_CONFIG_FIELDS, 0)  # no field is used (negotiate)
            return self.config
        raw = self.read_config(0, spec.NET_CONFIG.size)
        self.config = dict(zip(spec.NET_CONFIG_FIELDS, spec.NET_CONFIG.unpack(raw)))
        return self.config

    def _setup_buffers(self) -> None:
        if self.rx_buffer_size is None:
            big = not self.mrg and self.negotiated & _GUEST_GSO
            self.rx_buffer_size = HDR + (65589 + 4 if big else (self.mtu or 1500) + ETH_HLEN + 4)
        if self.rx_buffer_size < HDR + (1 if self.mrg else ETH_HLEN):
            raise UsageError(f"receive buffers of {self.rx_buffer_size} bytes cannot hold a frame")
        self._partial = [None] * self.pairs
        self._tx_free: list[list[int]] = []
        for pair in range(self.pairs):
            rxq, txq = self.queues[2 * pair], self.queues[2 * pair + 1]
            count = min(self.rx_buffer_count, rxq.vq.size)
            base = self._alloc(count * self.rx_buffer_size)
            for i in range(count):
                rxq.submit_buffers([], [(base + i * self.rx_buffer_size, self.rx_buffer_size)], kick=False, token=i)
            tx_base = self._alloc(txq.vq.size * TX_SLOT)
            self._tx_free.append([tx_base + i * TX_SLOT for i in range(txq.vq.size)])

    def _alloc(self, size: int) -> int:
        addr = self.transport.alloc(size, 64)
        self._owned.append(addr)
        return addr

    def _live(self) -> None:
        if not self.queues:
            raise UsageError("the driver was removed from its device")

    def remove(self) -> None:
        super().remove()
        self.pairs = 0
        if self.ctrlq is not None:
            self.ctrlq.close()
            self.ctrlq = None
        for addr in self._owned:
            self.transport.free(addr)
        self._owned = []

    # --- link and config changes ---------------------------------------------------------------

    def _read_link(self) -> bool:
        if not self.has_feature(F.STATUS):
            return True  # 5.1.4.2: without STATUS the driver assumes the link is up
        return bool(self.config["status"] & spec.NetStatus.LINK_UP)

    @property
    def link_up(self) -> bool:
        """Whether the device says the link is up (VIRTIO_NET_S_LINK_UP; always up without
        VIRTIO_NET_F_STATUS)."""
        return self.link

    @property
    def announce_requested(self) -> bool:
        """Whether the device asks the driver to announce itself (VIRTIO_NET_S_ANNOUNCE); answer
        with :meth:`ack_announce`."""
        return self.has_feature(F.GUEST_ANNOUNCE) and bool(self.config["status"] & spec.NetStatus.ANNOUNCE)

    def on_config_change(self) -> None:
        self.refresh_config()
        link = self._read_link()
        if link != self.link:
            self.link = link
            for callback in list(self.on_link):
                callback(link)
        if self.announce_requested:
            for announce in list(self.on_announce):
                announce()

    def wait_link(self, up: bool, timeout: float = 5.0) -> bool:
        """Block until the link is ``up`` (or not); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.link != up:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.transport.wait_for_interrupt(min(left, WAIT_SLICE))
        return True

    # --- transmit ------------------------------------------------------------------------------

    def send(self, frame: bytes, *, pair: int = 0, header: NetHdr | None = None,
             timeout: float = 10.0) -> None:
        """Queue one frame on transmitq ``pair`` (waits for a free slot, not for the device)."""
        self._live()
        if not 0 <= pair < self.pairs:
            raise UsageError(f"no queue pair {pair}")
        self._check_tx(frame, header)
        raw = (header or NetHdr()).pack() + bytes(frame)
        with self._tx_lock:
            txq = self.queues[2 * pair + 1]
            addr, owned = self._tx_buffer(pair, txq, len(raw), timeout)
            self.transport.memory.write(addr, raw)
            txq.submit_buffers([(addr, len(raw))], [], owned=owned, token=addr)
            self.stats["tx_packets"] += 1

    def send_batch(self, frames: Sequence[bytes], *, pair: int = 0, timeout: float = 10.0) -> None:
        """Queue several frames with one notification at the end."""
        self._live()
        if not 0 <= pair < self.pairs:
            raise UsageError(f"no queue pair {pair}")
        txq = self.queues[2 * pair + 1]
        with self._tx_lock:
            for frame in frames:
                self._check_tx(frame, None)
                raw = NetHdr().pack() + bytes(frame)
                addr, owned = self._tx_buffer(pair, txq, len(raw), timeout)
                self.transport.memory.write(addr, raw)
                txq.submit_buffers([(addr, len(raw))], [], owned=owned, token=addr, kick=False)
                self.stats["tx_packets"] += 1
            txq.kick()

    def _check_tx(self, frame: bytes, header: NetHdr | None) -> None:
        if len(frame) < ETH_HLEN:
            raise UsageError(f"a frame of {len(frame)} bytes has no Ethernet header")
        gso = header is not None and header.gso_type != spec.NetGsoType.NONE
        if self.mtu and not gso and len(frame) > self.mtu + ETH_HLEN + 4:
            raise UsageError(f"frame of {len(frame)} bytes exceeds the device MTU {self.mtu} (5.1.4.2)")
        if len(frame) > MAX_FRAME:
            raise UsageError(f"frame of {len(frame)} bytes is too long")

    def _tx_buffer(self, pair: int, txq: DriverQueue, size: int, timeout: float) -> tuple[int, list]:
        if size > TX_SLOT:
            addr = self.transport.alloc(size, 64)
            return addr, [addr]
        free = self._tx_free[pair]
        deadline = time.monotonic() + timeout
        while True:
            self._reclaim(pair, txq)
            if free:
                return free.pop(), []
            txq.kick()  # frames added with kick=False must reach the device before we wait
            if txq.vq.enable_cb(txq.mem):
                continue
            if time.monotonic() > deadline:
                raise DeviceFault(f"transmitq {pair}: no buffer came back within {timeout}s")
            self.transport.wait_for_interrupt(WAIT_SLICE)

    def _reclaim(self, pair: int, txq: DriverQueue) -> None:
        for pending in txq.poll():
            if pending.owned:
                txq.release(pending)
            else:
                self._tx_free[pair].append(pending.token)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the device has taken every queued frame."""
        deadline = time.monotonic() + timeout
        for pair in range(self.pairs):
            txq = self.queues[2 * pair + 1]
            while True:
                with self._tx_lock:
                    self._reclaim(pair, txq)
                    if txq.vq.outstanding == 0:
                        break
                if time.monotonic() > deadline:
                    raise DeviceFault(f"transmitq {pair}: frames not taken within {timeout}s")
                txq.kick()
                self.transport.wait_for_interrupt(WAIT_SLICE)

    # --- receive -------------------------------------------------------------------------------

    def recv(self, timeout: float | None = 1.0) -> bytes | None:
        """The next received frame, or None after ``timeout`` seconds."""
        got = self.recv_with_header(timeout)
        return None if got is None else got[1]

    def recv_with_header(self, timeout: float | None = 1.0) -> tuple[NetHdr, bytes] | None:
        """The next received frame with its virtio-net header, waiting up to ``timeout`` seconds;
        None when none came."""
        self._live()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._rx_lock:
                if self._frames or self._collect():
                    return self._frames.popleft()
                if any(self.queues[2 * p].vq.enable_cb(self.transport.memory) for p in range(self.pairs)):
                    continue  # buffers raced in
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self.transport.wait_for_interrupt(WAIT_SLICE if left is None else min(left, WAIT_SLICE))

    def recv_all(self, timeout: float = 0.2) -> list[bytes]:
        """Every frame that arrives until none came for ``timeout`` seconds."""
        out = []
        while (frame := self.recv(timeout)) is not None:
            out.append(frame)
        return out

    def _collect(self) -> int:
        """Take every used receive buffer, repost it; returns the frames completed."""
        before = len(self._frames)
        for pair in range(self.pairs):
            rxq = self.queues[2 * pair]
            done = rxq.poll()
            for pending in done:
                self._rx_piece(pair, pending)
                rxq.submit_buffers([], pending.in_bufs, kick=False, token=pending.token)
            if done:
                rxq.kick()
        return len(self._frames) - before

    def _rx_piece(self, pair: int, pending) -> None:
        addr, _size = pending.in_bufs[0]
        data = self.transport.memory.read(addr, pending.written)
        partial = self._partial[pair]
        if partial is not None:
            partial[1].append(data)
            partial[2] -= 1
            if partial[2] == 0:
                self._partial[pair] = None
                self._deliver(partial[0], b"".join(partial[1]))
            return
        if len(data) < HDR:
            self.stats["rx_errors"] += 1  # a buffer without a whole header: the device's fault
            return
        hdr = NetHdr(*spec.NET_HDR.unpack_from(data))
        count = hdr.num_buffers if self.mrg else 1
        if count < 1 or count > self.queues[2 * pair].vq.size:
            self.stats["rx_errors"] += 1
            return
        if count == 1:
            self._deliver(hdr, data[HDR:])
        else:
            self._partial[pair] = [hdr, [data[HDR:]], count - 1]

    def _deliver(self, hdr: NetHdr, frame: bytes) -> None:
        if len(frame) < ETH_HLEN:
            self.stats["rx_errors"] += 1
            return
        self.stats["rx_packets"] += 1
        self._frames.append((hdr, frame))

    # --- control queue (5.1.6.5) ---------------------------------------------------------------

    def ctrl_raw(self, cls: int, command: int, data: Sequence[bytes] = (), timeout: float = 10.0) -> int:
        """Send one control command as given (no feature checks); returns the device's ack."""
        if self.ctrlq is None:
            raise UsageError("the device has no control queue (CTRL_VQ not negotiated)")
        out = [spec.NET_CTRL_HDR.pack(cls, command), *[bytes(d) for d in data if len(d)]]
        with self._ctrl_lock:
            reply = self.ctrlq.call(out, [1], timeout)
        if len(reply) != 1:
            raise DeviceFault(f"control command ({cls}, {command}): the device wrote no ack")
        return reply[0]

    def ctrl(self, feature: int, cls: int, command: int, *data: bytes) -> None:
        """Send a control command (class ``cls``, ``command``, ``data``) that needs ``feature``;
        raises when the device answers VIRTIO_NET_ERR."""
        if not self.has_feature(feature):
            raise UsageError(f"{F(feature).name} was not negotiated")
        ack = self.ctrl_raw(cls, command, data)
        if ack != spec.NetCtrlAck.OK:
            raise RequestError(f"control command ({cls}, {command}) failed: ack {ack}", ack)

    def _rx_mode(self, feature: int, command: int, on: bool) -> None:
        self.ctrl(feature, spec.NetCtrlClass.RX, command, bytes((int(bool(on)),)))

    def set_promisc(self, on: bool) -> None:
        """Receive every frame (VIRTIO_NET_CTRL_RX_PROMISC)."""
        self._rx_mode(F.CTRL_RX, spec.NetCtrlRx.PROMISC, on)

    def set_allmulti(self, on: bool) -> None:
        """Receive every multicast frame (VIRTIO_NET_CTRL_RX_ALLMULTI)."""
        self._rx_mode(F.CTRL_RX, spec.NetCtrlRx.ALLMULTI, on)

    def set_alluni(self, on: bool) -> None:
        """Receive every unicast frame (VIRTIO_NET_CTRL_RX_ALLUNI)."""
        self._rx_mode(F.CTRL_RX_EXTRA, spec.NetCtrlRx.ALLUNI, on)

    def set_nomulti(self, on: bool) -> None:
        """Receive no multicast frame (VIRTIO_NET_CTRL_RX_NOMULTI)."""
        self._rx_mode(F.CTRL_RX_EXTRA, spec.NetCtrlRx.NOMULTI, on)

    def set_nouni(self, on: bool) -> None:
        """Receive no unicast frame (VIRTIO_NET_CTRL_RX_NOUNI)."""
        self._rx_mode(F.CTRL_RX_EXTRA, spec.NetCtrlRx.NOUNI, on)

    def set_nobcast(self, on: bool) -> None:
        """Receive no broadcast frame (VIRTIO_NET_CTRL_RX_NOBCAST)."""
        self._rx_mode(F.CTRL_RX_EXTRA, spec.NetCtrlRx.NOBCAST, on)

    def set_mac(self, mac) -> None:
        """Set the device's MAC address (VIRTIO_NET_CTRL_MAC_ADDR_SET)."""
        mac = mac_bytes(mac)
        self.ctrl(F.CTRL_MAC_ADDR, spec.NetCtrlClass.MAC, spec.NetCtrlMac.ADDR_SET, mac)
        self.mac = mac

    def set_mac_table(self, unicast: Sequence = (), multicast: Sequence = ()) -> None:
        """Set the receive filter's unicast and multicast MAC tables
        (VIRTIO_NET_CTRL_MAC_TABLE_SET)."""
        tables = [spec.NET_CTRL_MAC_ENTRIES.pack(len(t)) + b"".join(mac_bytes(m) for m in t)
                  for t in (unicast, multicast)]
        self.ctrl(F.CTRL_RX, spec.NetCtrlClass.MAC, spec.NetCtrlMac.TABLE_SET, *tables)

    def ack_announce(self) -> None:
        """Tell the device the announcement it asked for was sent (VIRTIO_NET_CTRL_ANNOUNCE_ACK)."""
        self.ctrl(F.GUEST_ANNOUNCE, spec.NetCtrlClass.ANNOUNCE, spec.NetCtrlAnnounce.ACK)

    def set_queue_pairs(self, pairs: int) -> None:
        """Use ``pairs`` queue pairs from now (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET)."""
        if not 1 <= pairs <= self.pairs:
            raise UsageError(f"{pairs} queue pairs: this driver set up 1..{self.pairs}")
        self.ctrl(F.MQ, spec.NetCtrlClass.MQ, spec.NetCtrlMq.VQ_PAIRS_SET,
                  spec.NET_CTRL_MQ_PAIRS_SET.pack(pairs))
        self.active_pairs = pairs

    def set_guest_offloads(self, offloads: int) -> None:
        """Change which receive offloads the device may use (VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET)."""
        self.ctrl(F.CTRL_GUEST_OFFLOADS, spec.NetCtrlClass.GUEST_OFFLOADS, spec.NetCtrlGuestOffloads.SET,
                  spec.NET_CTRL_GUEST_OFFLOADS.pack(offloads))
