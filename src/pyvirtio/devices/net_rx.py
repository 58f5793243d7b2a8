"""Putting received frames into one receive queue's buffers (VIRTIO 1.3, 5.1.6.3 and 5.1.6.4).

Every frame lands behind a 12-byte ``virtio_net_hdr`` whose ``num_buffers`` says how many
buffers it spans: always 1 without MRG_RXBUF (a frame must fit one buffer, else it is dropped),
and with MRG_RXBUF every buffer but the last is filled to its end (5.1.6.4.2).

:class:`RxPlacer` keeps the chains it popped but has not used yet (``spare``), so a device can
gather enough buffers for the largest frame, let a back-end ``readv`` into all of them, and keep
the ones the frame did not need for the next frame.  Completed buffers collect in ``done`` until
the device publishes them with one ``add_used_batch``.
"""

from __future__ import annotations

import struct
from collections import deque

from ..memory import GuestMemory
from ..spec.net import NET_HDR_SIZE
from ..virtq import DescriptorChain, DeviceQueue
from ..net.backend import Views

_NUM_BUFFERS = struct.Struct("<H")
NUM_BUFFERS_OFFSET = 10
_ONE = _NUM_BUFFERS.pack(1)
#: At most this many buffers for one frame (an iovec list well under IOV_MAX).
MAX_CHAINS_PER_FRAME = 64


class RxPlacer:
    """One receive queue's buffers, as the device sees them."""

    def __init__(self, queue: DeviceQueue):
        self.queue = queue
        self.spare: deque[DescriptorChain] = deque()
        self.done: list[tuple[int, int]] = []
        self.bad_buffers = 0
        self.kicks_wanted = True

    def reset(self) -> None:
        self.spare.clear()
        self.done.clear()
        self.kicks_wanted = True

    # --- gathering buffers ---------------------------------------------------------------------

    def _next(self, mem: GuestMemory, index: int) -> DescriptorChain | None:
        """The ``index``-th spare chain, popping more from the ring as needed."""
        while len(self.spare) <= index:
            chain = self.queue.pop_descriptor_chain(mem)
            if chain is None:
                return None
            if chain.writable_len < NET_HDR_SIZE or chain.readable_len:
                # 5.1.6.3.1: a receive buffer is device-writable and holds at least the header.
                self.bad_buffers += 1
                if self.spare and getattr(self.queue, "in_order", False):
                    # IN_ORDER: nothing goes back ahead of the buffers popped before it, so
                    # those go back (empty) first; the caller starts gathering anew.
                    self.done.extend((c.head_index, 0) for c in self.spare)
                    self.spare.clear()
                    self.done.append((chain.head_index, 0))
                    return None
                self.done.append((chain.head_index, 0))
                continue
            self.spare.append(chain)
        return self.spare[index]

    def gather(self, mem: GuestMemory, room: int, mrg: bool, max_views: int = 0) -> tuple[int, int]:
        """Make spare chains with ``room`` writable bytes ready (one chain without MRG), and
        with no more than ``max_views`` buffers together (if given: what one readv takes; the
        first chain alone never has more, see ``limits.MAX_CHAIN_SEGMENTS``).

        Returns ``(chains, bytes)`` available at the front of ``spare`` — fewer than asked when
        the driver has not posted enough; ``(0, 0)`` when it posted none."""
        if not mrg:
            chain = self._next(mem, 0)
            return (1, chain.writable_len) if chain is not None else (0, 0)
        count = total = views = 0
        while total < room and count < MAX_CHAINS_PER_FRAME:
            chain = self._next(mem, count)
            if chain is None:
                if count > len(self.spare):  # the chains counted went back (IN_ORDER, above)
                    count = total = views = 0
                    continue
                break
            views += len(chain.writable)
            if max_views and count and views > max_views:
                break
            count += 1
            total += chain.writable_len
        return count, total

    def retire_first(self) -> None:
        """Return the first spare chain empty: a buffer the back-end could not read into."""
        self.bad_buffers += 1
        self.done.append((self.spare.popleft().head_index, 0))

    def views(self, chains: int, skip: int) -> list[memoryview]:
        """The writable views of the first ``chains`` spare chains, minus the first ``skip`` bytes."""
        out = self.spare[0].writable_views(skip)
        for i in range(1, chains):
            out.extend(self.spare[i].writable)
        return out

    # --- completing a frame --------------------------------------------------------------------

    def commit(self, total: int, header10: bytes = b"") -> int:
        """The first spare chains now hold a frame of ``total`` bytes (header included): write
        ``header10`` (the header's first 10 bytes, if given) and ``num_buffers``, and queue the
        chains for the used ring.  Returns how many buffers it took."""
        first = self.spare.popleft()
        left = total - first.writable_len
        if left <= 0:  # the common case: one buffer
            self.done.append((first.head_index, total))
            first.write(header10 + _ONE if header10 else _ONE, offset=NUM_BUFFERS_OFFSET - len(header10))
            return 1
        self.done.append((first.head_index, first.writable_len))
        used = 1
        while left > 0:
            chain = self.spare.popleft()
            n = min(chain.writable_len, left)
            self.done.append((chain.head_index, n))
            left -= n
            used += 1
        first.write(header10 + _NUM_BUFFERS.pack(used), offset=NUM_BUFFERS_OFFSET - len(header10))
        return used

    def place(self, mem: GuestMemory, header: bytes, frame, mrg: bool) -> bool | None:
        """Copy ``header`` (12 bytes) and ``frame`` into buffers.  True: placed; False: dropped
        (it can never fit a buffer: no MRG and the buffer is too small); None: not enough
        buffers now (try again once the driver posts more)."""
        total = NET_HDR_SIZE + len(frame)
        chains, room = self.gather(mem, total, mrg)
        if chains == 0:
            return None
        if room < total:
            return False if not mrg else None  # a too-small buffer stays for a smaller frame
        views = self.views(chains, 0)
        _copy(views, header, frame)
        self.commit(total)
        return True

    def flush(self, mem: GuestMemory) -> bool:
        """Publish the completed buffers; returns whether the driver wants a notification."""
        if not self.done:
            return False
        self.queue.add_used_batch(mem, self.done)
        self.done = []
        return self.queue.needs_notification(mem)

    def wait_for_buffers(self, mem: GuestMemory) -> bool:
        """Out of buffers: ask the driver to kick when it posts more.  True if some raced in."""
        self.kicks_wanted = True
        return self.queue.enable_notification(mem)

    def quiet(self, mem: GuestMemory) -> None:
        """Buffers are plentiful: no kick needed for each buffer the driver posts."""
        if self.kicks_wanted:
            self.kicks_wanted = False
            self.queue.disable_notification(mem)


def _copy(views: Views, header: bytes, frame) -> None:
    src_parts = (memoryview(header), memoryview(frame).cast("B"))
    vi, voff = 0, 0
    for src in src_parts:
        pos = 0
        while pos < len(src):
            view = views[vi]
            take = min(len(view) - voff, len(src) - pos)
            view[voff:voff + take] = src[pos:pos + take]
            pos += take
            voff += take
            if voff == len(view):
                vi, voff = vi + 1, 0
