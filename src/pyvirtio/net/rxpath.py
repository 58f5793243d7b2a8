"""The receive half of the network device (VIRTIO 1.3, 5.1.6.3 and 5.1.6.4), as a mixin of
:class:`~pyvirtio.devices.net.NetDevice`.

Frames reach the guest by three roads, in this order of preference:

1. zero-copy: with one queue pair and buffers posted for the largest frame, the back-end reads
   straight into the guest's buffers (``os.readv`` for a TAP);
2. one copy: with several pairs (the frame picks its queue) or too few buffers for the largest
   frame, the back-end reads into the device's scratch buffer and the frame is copied into the
   buffers it needs;
3. the backlog: a frame that found no buffers (pushed by ``host_frames``, or read by road 2 just
   as the buffers ran out) waits in a bounded queue; nothing is read from the back-end until the
   backlog is empty again, so frames keep their order.

When the driver has no buffers the device stops reading and asks for a kick (``rx_starved``);
the next receive kick starts it again.
"""

from __future__ import annotations

from typing import Iterable, Optional

from ..memory import GuestMemory
from ..spec import net as spec
from ..virtq import DescriptorChain
from .frame import ETH_HLEN
from .rx import RxPlacer

F = spec.NetFeature
HDR = spec.NET_HDR_SIZE
_HDR10 = spec.NET_HDR_LEGACY
ZERO_HDR = bytes(HDR)
#: Frames pulled from the back-end per call before yielding to the loop.
RX_BUDGET = 256
_GSO_ALLOWED = ((spec.NetGsoType.TCPV4, F.GUEST_TSO4), (spec.NetGsoType.TCPV6, F.GUEST_TSO6),
                (spec.NetGsoType.UDP, F.GUEST_UFO), (spec.NetGsoType.UDP_L4, F.GUEST_USO4),
                (spec.NetGsoType.UDP_L4, F.GUEST_USO6))


class ReceivePath:
    """Receive-side methods of NetDevice (they use its queues, back-end, filter and stats)."""

    def _rx_ready(self, mem: Optional[GuestMemory]) -> bool:
        """Whether host-side events may use the queues: the driver is running (DRIVER_OK, or a
        transport without a status field has started serving queues), and the memory is live."""
        return (mem is not None and (self.driver_ok or self.live) and bool(mem.regions)
                and self.queues[0].ready and not self.queues[0].broken)

    def _rx_pump(self, mem: GuestMemory, budget: int = RX_BUDGET) -> set[int]:
        """Fill receive buffers: first the backlog, then frames read from the back-end.
        Returns the receive queues whose driver wants a notification."""
        if not self._rx_ready(mem):
            return set()
        was_starved = self.rx_starved
        self.rx_starved = False
        if self._drain_backlog(mem) and self.link_up:
            self._pull(mem, budget)
        elif not self.link_up:
            self._discard(budget)
        notify = {p.queue.index for p in self.rx if p.flush(mem)}
        if was_starved != self.rx_starved:
            self.wakeup()
        return notify

    def _pull(self, mem: GuestMemory, budget: int) -> None:
        """Read up to ``budget`` frames from the back-end (zero-copy when it can)."""
        if self.active_pairs > 1:
            for _ in range(budget):
                if not self._pull_copy(mem):
                    return
            return
        placer = self.rx[0]
        room, mrg = HDR + self.max_rx_frame, self.mrg
        skip = 0 if self.backend.vnet_hdr else HDR  # where the back-end's bytes start
        recv, packets, nbytes = self.backend.recv_into, 0, 0
        for _ in range(budget):
            chains, have = placer.gather(mem, room, mrg)
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
            n = recv(views)
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

    def _zero_copy_header(self, first: DescriptorChain, views, skip: int, n: int) -> Optional[bytes]:
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
        header = _fix_header(bytes(v0[:10]) if len(v0) >= 10 else _peek(first, 0, 10), self.guest_offloads)
        if header is None:
            self.stats["rx_errors"] += 1
        return header

    def _pull_copy(self, mem: GuestMemory) -> bool:
        """Read one frame into the device's scratch buffer, then place it (or backlog it)."""
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
        placed = self._place(mem, header, frame)
        if placed is None:
            self._backlog_add(header, bytes(frame))
            return self._starve(mem, self.rx[self._steer(frame)])
        return True

    def _starve(self, mem: GuestMemory, placer: RxPlacer) -> bool:
        """No buffers: stop reading until the driver posts some (it will kick) — or, for a
        back-end that cannot hold frames, read and drop (counted) one.  True: go on."""
        if placer.wait_for_buffers(mem):
            return True  # buffers raced in
        if not self.backend.can_wait:
            return self._discard(1) == 1
        self.rx_starved = True
        return False

    def _discard(self, budget: int) -> int:
        """Read and drop up to ``budget`` frames (link down: lost, as on an unplugged cable)."""
        for n in range(budget):
            if self.backend.recv_into([self._scratch]) is None:
                return n
            self.stats["rx_dropped"] += 1
        return budget

    def _scratch_header(self, skip: int) -> Optional[bytes]:
        if skip:
            return ZERO_HDR
        header = _fix_header(bytes(self._scratch[:10]), self.guest_offloads)
        if header is None:
            self.stats["rx_errors"] += 1
            return None
        return header + b"\0\0"

    def _accept(self, dst: bytes) -> bool:
        if self.filter.accepts(dst, self.mac):
            return True
        self.stats["rx_filtered"] += 1
        return False

    def _count_rx(self, length: int) -> None:
        self.stats["rx_packets"] += 1
        self.stats["rx_bytes"] += length

    def _steer(self, frame) -> int:
        if self.active_pairs == 1:
            return 0
        return self.flows.lookup(frame, self.active_pairs)

    def _place(self, mem: GuestMemory, header: bytes, frame) -> Optional[bool]:
        placer = self.rx[self._steer(frame)]
        placed = placer.place(mem, header, frame, self.mrg)
        if placed:
            self._count_rx(len(frame))
        elif placed is False:
            self.stats["rx_dropped"] += 1  # 5.1.6.3.2: never more than one buffer without MRG
        return placed

    # --- backlog and frames pushed by the host ---------------------------------------------------------------------------------

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
                placer = self.rx[self._steer(frame)]
                if not self._starve(mem, placer):
                    return False
                continue
            self.backlog.popleft()
            self.backlog_bytes -= len(frame)
        return True

    def _drop_backlog(self) -> None:
        self.stats["rx_dropped"] += len(self.backlog)
        self.backlog.clear()
        self.backlog_bytes = 0

    def host_frames(self, frames: Iterable[bytes], *, can_wait: bool = True,
                    with_header: bool = False) -> int:
        """Frames arriving from the host side (plain Ethernet, or with a 12-byte header if
        ``with_header``).  Returns how many were taken (placed or backlogged).  When the backlog
        is full the rest is refused — or dropped and counted if the source ``can_wait`` not."""
        taken, notify = 0, set()
        with self.lock:
            mem = self.mem
            for raw in frames:
                if not self._host_frame(mem, raw, with_header, can_wait):
                    break
                taken += 1
            if self._rx_ready(mem):
                notify = self._rx_pump(mem, budget=0)
        self._interrupt(notify)
        return taken

    def _host_frame(self, mem, raw: bytes, with_header: bool, can_wait: bool) -> bool:
        """One pushed frame; False when it was refused (the backlog is full and it can wait)."""
        header, frame = (bytes(raw[:HDR]), bytes(raw[HDR:])) if with_header else (ZERO_HDR, bytes(raw))
        if len(frame) < ETH_HLEN or (with_header and len(header) < HDR):
            self.stats["rx_errors"] += 1
            return True
        if not self.link_up:
            self.stats["rx_dropped"] += 1  # an unplugged cable loses what arrives
            return True
        if with_header:
            fixed = _fix_header(header[:10], self.guest_offloads)
            if fixed is None:
                self.stats["rx_errors"] += 1
                return True
            header = fixed + b"\0\0"
        if not self._accept(frame[:6]):
            return True
        if not self.backlog and self._rx_ready(mem) and self._place(mem, header, frame) is not None:
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


def _fix_header(raw10: bytes, offloads: int) -> Optional[bytes]:
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
