"""The receive half of the network device (VIRTIO 1.3, 5.1.6.3 and 5.1.6.4): a
:class:`ReceivePath` is the ``rx`` part of a :class:`~pyvirtio.devices.net.NetDevice` and owns
the receive queues' placers, the backlog and the scratch buffer; it reads the device's negotiated
state (offloads, MRG_RXBUF, pairs in use, filter, link) and shares its counters.

Frames reach the guest by three roads, in this order of preference:

1. zero-copy: with one queue pair and buffers posted for the largest frame, the back-end reads
   straight into the guest's buffers (``os.readv`` for a TAP);
2. one copy: with several pairs (the frame picks its queue) or too few buffers for the largest
   frame, the back-end reads into the device's scratch buffer and the frame is copied into the
   buffers it needs;
3. the backlog: a frame that found no buffers (pushed by ``host_frames``, or read by road 2 just
   as the buffers ran out) waits in a bounded queue; nothing is read from the back-end until the
   backlog is empty again, so frames keep their order.

When the driver has no buffers the device stops reading and asks for a kick (``starved``);
the next receive kick starts it again.  Like the rest of the device this runs in the device's
worker (``pyvirtio.engine``) and takes no lock.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from ..memory import GuestMemory
from ..spec import net as spec
from ..virtq import DescriptorChain
from ..net.backend import IOV_MAX, MAX_FRAME, BuffersRefused
from ..net.frame import ETH_HLEN
from .net_rx import RxPlacer

if TYPE_CHECKING:
    from .net import NetDevice

F = spec.NetFeature
HDR = spec.NET_HDR_SIZE
_HDR10 = spec.NET_HDR_LEGACY
ZERO_HDR = bytes(HDR)
#: Frames pulled from the back-end per call before the worker looks at its other work.
RX_BUDGET = 256
_GSO_ALLOWED = ((spec.NetGsoType.TCPV4, F.GUEST_TSO4), (spec.NetGsoType.TCPV6, F.GUEST_TSO6),
                (spec.NetGsoType.UDP, F.GUEST_UFO), (spec.NetGsoType.UDP_L4, F.GUEST_USO4),
                (spec.NetGsoType.UDP_L4, F.GUEST_USO6))


class ReceivePath:
    """The receive side of one network device: its receive queues' placers, the backlog of
    frames waiting for buffers, and the road a frame takes into the guest."""

    def __init__(self, device: "NetDevice", backlog_frames: int, backlog_bytes: int):
        self.dev = device
        self.backend = device.backend
        self.stats = device.stats  # the device's counters (rx_*)
        self.placers: list[RxPlacer] = []
        self.backlog: deque[tuple[bytes, bytes]] = deque()  # (header, frame) waiting for buffers
        self.backlog_limit = (backlog_frames, backlog_bytes)
        self.backlog_bytes = 0
        self.starved = False  # no buffers: not reading until the driver kicks
        self._ran_dry = False  # a pump found no buffers (``starved`` once it ends)
        self._scratch = memoryview(bytearray(HDR + MAX_FRAME))

    def reset(self) -> None:
        """As after a device reset: fresh placers, no backlog, not starved."""
        self.new_placers()
        self.starved = False
        self.drop_backlog()

    def new_placers(self) -> None:
        """One RxPlacer per receive queue (the queue objects change when a packed ring is
        negotiated, and back at reset)."""
        dev = self.dev
        self.placers = [RxPlacer(dev.queues[2 * i]) for i in range(dev.max_pairs)]

    def ready(self, mem: GuestMemory | None) -> bool:
        """Whether host-side events may use the queues: the driver is running (DRIVER_OK, or a
        transport without a status field has started serving queues), and the memory is live."""
        dev = self.dev
        return (mem is not None and (dev.driver_ok or dev.live) and bool(mem.regions)
                and dev.queues[0].ready and not dev.queues[0].broken)

    def wants_frames(self, mem: GuestMemory | None) -> bool:
        """Whether the back-end should be watched for frames now."""
        return self.ready(mem) and not self.starved and not self.backlog

    def pump(self, mem: GuestMemory | None, budget: int = RX_BUDGET) -> set[int]:
        """Fill receive buffers: first the backlog, then frames read from the back-end.
        Returns the receive queues whose driver wants a notification."""
        if mem is None or not self.ready(mem):
            return set()
        self._ran_dry = False
        try:
            if self._drain_backlog(mem) and self.dev.link_up:
                self._pull(mem, budget)
            elif not self.dev.link_up:
                self._discard(budget)
        finally:
            self.starved = self._ran_dry  # one change, seen whole from other threads
        return {p.queue.index for p in self.placers if p.flush(mem)}

    def _pull(self, mem: GuestMemory, budget: int) -> None:
        """Read up to ``budget`` frames from the back-end (zero-copy when it can)."""
        if self.dev.active_pairs > 1 or self.dev.faults.rules:  # rules see every frame as a copy
            for _ in range(budget):
                if not self._pull_copy(mem):
                    return
            return
        placer = self.placers[0]
        room, mrg = HDR + self.dev.max_rx_frame, self.dev.mrg
        skip = 0 if self.backend.vnet_hdr else HDR  # where the back-end's bytes start
        recv, packets, nbytes = self.backend.recv_into, 0, 0
        for _ in range(budget):
            chains, have = placer.gather(mem, room, mrg, IOV_MAX)
            if chains == 0:
                if self._starve(mem, placer):
                    continue
                break
            if have < room:  # the buffers cannot take every frame: look at it first
                if self._pull_copy(mem):
                    continue
                break
            placer.quiet(mem)
            views = placer.views(chains, skip)
            try:
                n = recv(views)
            except BuffersRefused as exc:  # never retried: the buffer goes back empty
                self.stats["rx_errors"] += 1
                self.dev.last_error = exc
                placer.retire_first()
                continue
            if n is None:
                break
            if n + skip > have:
                self.stats["rx_errors"] += 1  # truncated: the buffers stay for the next frame
                continue
            header = self._zero_copy_header(placer.spare[0], views, skip, n)
            if header is not None:
                placer.commit(n + skip, header)
                packets += 1
                nbytes += n + skip - HDR
        self.stats["rx_packets"] += packets
        self.stats["rx_bytes"] += nbytes

    def _zero_copy_header(self, first: DescriptorChain, views, skip: int, n: int) -> bytes | None:
        """The 10 header bytes for a frame the back-end read into the buffers, or None to drop
        it (a runt, a header the driver cannot take, or filtered out)."""
        if n + skip < HDR + ETH_HLEN:
            self.stats["rx_errors"] += 1
            return None
        at = HDR - skip  # the frame's offset in ``views``
        v0 = views[0]
        dst = bytes(v0[at:at + 6]) if len(v0) >= at + 6 else _peek(first, HDR, 6)
        if not self._accept(dst):
            return None
        if skip:
            return ZERO_HDR[:10]
        header = _fix_header(bytes(v0[:10]) if len(v0) >= 10 else _peek(first, 0, 10), self.dev.guest_offloads)
        if header is None:
            self.stats["rx_errors"] += 1
        return header

    def _pull_copy(self, mem: GuestMemory) -> bool:
        """Read one frame into the scratch buffer, then place it (or backlog it)."""
        skip = 0 if self.backend.vnet_hdr else HDR
        n = self.backend.recv_into([self._scratch[skip:]])
        if n is None:
            return False
        total = n + skip
        if total > len(self._scratch) or total < HDR:
            self.stats["rx_errors"] += 1
            return True
        header = self._scratch_header(skip)
        if header is None:
            return True
        frame = self._scratch[HDR:total]
        if not self._accept(bytes(frame[:6])):
            return True
        if self.dev.faults.rules:
            return self.dev.net_faults.rx(mem, self, header, bytes(frame))
        placed = self._place(mem, header, frame)
        if placed is None:
            self._backlog_add(header, bytes(frame))
            return self._starve(mem, self.placers[self._steer(frame)])
        return True

    def _starve(self, mem: GuestMemory, placer: RxPlacer) -> bool:
        """No buffers: stop reading until the driver posts some (it will kick) — or, for a
        back-end that cannot hold frames, read and drop (counted) one.  True: go on."""
        if placer.wait_for_buffers(mem):
            return True  # buffers raced in
        if not self.backend.can_wait:
            return self._discard(1) == 1
        self._ran_dry = True
        return False

    def _discard(self, budget: int) -> int:
        """Read and drop up to ``budget`` frames (link down: lost, as on an unplugged cable)."""
        for n in range(budget):
            if self.backend.recv_into([self._scratch]) is None:
                return n
            self.stats["rx_dropped"] += 1
        return budget

    def _scratch_header(self, skip: int) -> bytes | None:
        if skip:
            return ZERO_HDR
        header = _fix_header(bytes(self._scratch[:10]), self.dev.guest_offloads)
        if header is None:
            self.stats["rx_errors"] += 1
            return None
        return header + b"\0\0"

    def _accept(self, dst: bytes) -> bool:
        if self.dev.filter.accepts(dst, self.dev.mac):
            return True
        self.stats["rx_filtered"] += 1
        return False

    def _steer(self, frame) -> int:
        pairs = self.dev.active_pairs
        return 0 if pairs == 1 else self.dev.flows.lookup(frame, pairs)

    def _place(self, mem: GuestMemory, header: bytes, frame) -> bool | None:
        placer = self.placers[self._steer(frame)]
        placed = placer.place(mem, header, frame, self.dev.mrg)
        if placed:
            self.stats["rx_packets"] += 1
            self.stats["rx_bytes"] += len(frame)
        elif placed is False:
            self.stats["rx_dropped"] += 1  # 5.1.6.3.2: never more than one buffer without MRG
        return placed

    # --- backlog and frames pushed by the host -------------------------------------------------

    def _backlog_room(self, length: int) -> bool:
        frames, limit = self.backlog_limit
        return len(self.backlog) < frames and self.backlog_bytes + length <= limit

    def _backlog_add(self, header: bytes, frame: bytes) -> None:
        self.backlog.append((header, frame))
        self.backlog_bytes += len(frame)

    def _drain_backlog(self, mem: GuestMemory) -> bool:
        """Place backlogged frames in order; True once the backlog is empty."""
        while self.backlog:
            header, frame = self.backlog[0]
            if self._place(mem, header, frame) is None:
                placer = self.placers[self._steer(frame)]
                if not self._starve(mem, placer):
                    return False
                continue
            self.backlog.popleft()
            self.backlog_bytes -= len(frame)
        return True

    def deliver(self, mem: GuestMemory | None, header: bytes, frame: bytes) -> bool:
        """Place a frame now, or backlog it behind the others (dropped and counted when the
        backlog is full); False when it had to wait (stop reading)."""
        if not self.backlog and mem is not None and self.ready(mem):
            if self._place(mem, header, frame) is not None:
                return True
        if self._backlog_room(len(frame)):
            self._backlog_add(header, frame)
        else:
            self.stats["rx_dropped"] += 1
        return False

    def drop_backlog(self) -> None:
        self.stats["rx_dropped"] += len(self.backlog)
        self.backlog.clear()
        self.backlog_bytes = 0

    def host_frame(self, mem: GuestMemory | None, raw: bytes, with_header: bool, can_wait: bool) -> bool:
        """One frame pushed by the host (plain Ethernet, or behind a 12-byte header if
        ``with_header``): placed or backlogged; False when it was refused (the backlog is full
        and the source can wait) — dropped and counted if it cannot."""
        header, frame = (bytes(raw[:HDR]), bytes(raw[HDR:])) if with_header else (ZERO_HDR, bytes(raw))
        if len(frame) < ETH_HLEN or (with_header and len(header) < HDR):
            self.stats["rx_errors"] += 1
            return True
        if not self.dev.link_up:
            self.stats["rx_dropped"] += 1  # an unplugged cable loses what arrives
            return True
        if with_header:
            fixed = _fix_header(header[:10], self.dev.guest_offloads)
            if fixed is None:
                self.stats["rx_errors"] += 1
                return True
            header = fixed + b"\0\0"
        if not self._accept(frame[:6]):
            return True
        if self.dev.faults.rules:
            self.dev.net_faults.rx(mem, self, header, frame)
            return True
        if not self.backlog and mem is not None and self.ready(mem) \
                and self._place(mem, header, frame) is not None:
            return True
        if self._backlog_room(len(frame)):
            self._backlog_add(header, frame)
            return True
        if can_wait:
            return False
        self.stats["rx_dropped"] += 1
        return True


def _peek(chain: DescriptorChain, offset: int, length: int) -> bytes:
    return b"".join(chain.writable_views(offset, length))


def _fix_header(raw10: bytes, offloads: int) -> bytes | None:
    """A back-end's header made legal for the driver's offloads (5.1.6.4.2), or None if the
    frame needs an offload the driver does not take (drop it)."""
    flags, gso, hdr_len, gso_size, csum_start, csum_offset = _HDR10.unpack(raw10)
    if not offloads >> F.GUEST_CSUM & 1:
        flags = 0
    flags &= spec.NetHdrFlag.NEEDS_CSUM | spec.NetHdrFlag.DATA_VALID
    base, ecn = gso & ~spec.NET_HDR_GSO_ECN, gso & spec.NET_HDR_GSO_ECN
    if base != spec.NetGsoType.NONE:
        if not any(base == t and offloads >> bit & 1 for t, bit in _GSO_ALLOWED):
            return None
        if ecn and not offloads >> F.GUEST_ECN & 1:
            return None
    elif ecn:
        gso = 0
    return _HDR10.pack(flags, gso, hdr_len, gso_size, csum_start, csum_offset)
