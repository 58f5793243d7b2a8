"""Entropy device (VIRTIO 1.3, 5.4): fills device-writable buffers from the host's CSPRNG.

One queue (requestq), no device-specific features, no config; requests complete in the order
they came (VIRTIO_F_IN_ORDER is offered).  The entropy is private to the guest that asked
(a fresh read per request; nothing is shared or replayed).

Fault rules (:mod:`pyvirtio.faults`): ``short`` serves at most ``bytes`` bytes to a request;
``stall`` stops serving the queue for the delay (requests wait in the ring, in order) and a
timerfd returned from :meth:`RngDevice.host_fds` wakes the worker when it ends."""

from __future__ import annotations

import os
import select
import time

from ..device import VirtioDevice
from ..faults import RNG_KINDS
from ..memory import GuestMemory
from ..spec.ids import DeviceType
from ..timerfd import TimerFd
from ..virtq import DescriptorChain, DeviceQueue
from ..virtq.drain import drain_single

#: Bytes served per request at most (the Linux driver asks for up to a page or so).
MAX_REQUEST = 64 * 1024
_STALL = frozenset({"stall"})


class RngDevice(VirtioDevice):
    """The entropy device (VIRTIO 1.3, 5.4): fills every device-writable buffer the driver makes
    available with bytes from ``source`` (the host's getrandom by default)."""

    device_type = DeviceType.ENTROPY
    num_queues = 1
    completes_in_order = True

    def __init__(self, source=os.getrandom):
        super().__init__()
        self._source = source
        self._stall: TimerFd | None = None  # armed while a ``stall`` rule holds the queue

    def _fill(self, heads, lengths, offsets, buf: memoryview) -> list[int]:
        """A batch of one-buffer requests (:func:`~pyvirtio.virtq.drain.drain_single`): each
        buffer filled in place, at most MAX_REQUEST bytes."""
        source, out = self._source, []
        for off, length in zip(offsets, lengths):
            want = min(length, MAX_REQUEST)
            if want:
                data = source(want)
                buf[off:off + len(data)] = data
                want = len(data)
            out.append(want)
        return out

    def handle_chain(self, queue_index: int, chain: DescriptorChain) -> int:
        want = min(chain.writable_len, MAX_REQUEST)  # 5.4.6: the device MUST NOT write more than
        if want == 0:
            return 0
        if self.faults.rules:
            for rule in self.faults.firing(frozenset({"short"}), queue_index):
                want = min(want, rule.bytes)
        return chain.write(self._source(want))

    # --- fault rules: a stalled queue -----------------------------------------------------------

    def process_queue(self, mem: GuestMemory, queue: DeviceQueue) -> bool:
        """Requests of one buffer (what Linux sends) in batches, with no DescriptorChain each;
        any other shape, and every request while fault rules are set, one by one."""
        if self.faults.rules:
            if self._stalled(queue):
                return False
            return super().process_queue(mem, queue)
        return drain_single(queue, mem, self._fill, lambda chain: self.handle_chain(queue.index, chain))

    def _stalled(self, queue: DeviceQueue) -> bool:
        """A ``stall`` rule holds the queue (or starts to, for this kick)."""
        timer = self._stall
        if timer is not None and timer.deadline is not None:
            return timer.deadline > time.monotonic()
        fired = self.faults.firing(_STALL, queue.index) if self.faults.has(RNG_KINDS) else []
        delays = [r.sample_delay() for r in fired]
        if not delays or max(delays) <= 0:
            return False
        if timer is None:
            timer = self._stall = TimerFd()
        timer.arm(time.monotonic() + max(delays))
        return True

    def host_fds(self, group: int) -> list[tuple[int, int]]:
        timer = self._stall
        return [(timer.fd, select.POLLIN)] if timer is not None and timer.deadline is not None else []

    def host_ready(self, mem: GuestMemory, group: int, events: list[tuple[int, int]]) -> set[int]:
        timer = self._stall
        if timer is None or timer.deadline is None or timer.deadline > time.monotonic():
            return set()
        timer.drain()  # the stall is over: serve what waited
        queue = self.queues[0]
        if not queue.ready or not self.driver_ok or queue.broken:
            return set()
        return {0} if super().process_queue(mem, queue) else set()

    def on_reset(self) -> None:
        if self._stall is not None:
            self._stall.disarm()

    def close(self) -> None:
        if self._stall is not None:
            self._stall.close()
            self._stall = None
