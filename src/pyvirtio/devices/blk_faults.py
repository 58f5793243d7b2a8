"""Fault injection for the block device (issue 16; rules: :mod:`pyvirtio.faults`).

The device asks this module only when it has a rule (``if self.faults.rules:``, one attribute
test per request).  For one request every matching rule of the blk kinds is asked (each counts
the request for its ``after``/``count``), then:

* ``ioerr`` / ``flusherr`` / ``unsupp``: the request is not done; its status byte says IOERR
  (which wins) or UNSUPP;
* ``torn``: a write whose first ``keep`` sectors reach the image, then IOERR;
* ``latency``: the request runs as usual, but its used entry is held until the delay after the
  request arrived has passed: :class:`Holding` keeps it in a :class:`~pyvirtio.timerfd.DueQueue`
  per queue whose timerfd the device returns from ``host_fds``, so the queue's worker goes on
  with other requests and publishes the held one from ``host_ready`` when the timer fires.
  A quiesce or reset publishes what is held at once.
"""

from __future__ import annotations

import mmap
import os
import time
from typing import TYPE_CHECKING

from ..faults import BLK_KINDS
from ..spec import blk as spec
from ..timerfd import DueQueue
from ..virtq import DescriptorChain

if TYPE_CHECKING:
    from .blk import BlkDevice

SECTOR = spec.SECTOR_SIZE
_HDR_SIZE = spec.BLK_REQ_HEADER.size
_T = spec.BlkReqType
_OPS = {int(_T.IN): "read", int(_T.OUT): "write", int(_T.FLUSH): "flush", int(_T.GET_ID): "get-id",
        int(_T.DISCARD): "discard", int(_T.WRITE_ZEROES): "write-zeroes"}


def describe_request(rtype: int, sector: int, chain: DescriptorChain) -> tuple[str, tuple[int, int] | None]:
    """The operation's name (``ops=``) and the sectors it covers (first, count) or None."""
    op = _OPS.get(rtype, "other")
    if rtype == _T.IN:
        return op, (sector, max(chain.writable_len - 1, 0) // SECTOR)
    if rtype == _T.OUT:
        return op, (sector, max(chain.readable_len - _HDR_SIZE, 0) // SECTOR)
    return op, None


class Holding:
    """Used entries held back by ``latency`` rules, per queue; owned by the queues' workers."""

    def __init__(self) -> None:
        self.queues: dict[int, DueQueue[tuple[int, int]]] = {}
        #: (queue, head) of requests still in the kernel -> the time their completion is due.
        self.late: dict[tuple[int, int], float] = {}

    def __bool__(self) -> bool:
        return bool(self.late) or any(self.queues.values())

    def fd(self, index: int) -> int:
        due = self.queues.get(index)
        return due.fd if due is not None else -1

    def hold(self, index: int, deadline: float, head: int, written: int) -> None:
        due = self.queues.get(index)
        if due is None:
            due = self.queues[index] = DueQueue()
        due.push(deadline, (head, written))

    def divert(self, index: int, done: list[tuple[int, int]], now: float | None = None) -> list[tuple[int, int]]:
        """Of finished requests, those to publish now; the ones whose delay has not passed are held."""
        now = time.monotonic() if now is None else now
        out = []
        for head, written in done:
            deadline = self.late.pop((index, head), None)
            if deadline is not None and deadline > now:
                self.hold(index, deadline, head, written)
            else:
                out.append((head, written))
        return out

    def due(self, index: int) -> list[tuple[int, int]]:
        due = self.queues.get(index)
        return due.pop_due() if due is not None else []

    def release(self, index: int) -> list[tuple[int, int]]:
        """Everything of queue ``index``: held entries at once, and no delay for those in flight."""
        for key in [k for k in self.late if k[0] == index]:
            del self.late[key]
        due = self.queues.get(index)
        return due.pop_all() if due is not None else []

    def close(self) -> None:
        self.late.clear()
        for due in self.queues.values():
            due.close()
        self.queues.clear()


def faulty_request(dev: "BlkDevice", queue_index: int, rtype: int, sector: int,
                   chain: DescriptorChain) -> int | None:
    """One request while the device has fault rules (see the module's docstring)."""
    op, span = describe_request(rtype, sector, chain)
    arrived = time.monotonic()
    fired = dev.faults.firing(BLK_KINDS, queue_index, op, span)
    kinds = {r.kind for r in fired}
    status = None
    if kinds & {"ioerr", "flusherr"}:
        status = spec.BlkStatus.IOERR
    elif "unsupp" in kinds:
        status = spec.BlkStatus.UNSUPP
    elif "torn" in kinds and rtype == _T.OUT and span is not None:
        keep = min(min(r.keep for r in fired if r.kind == "torn"), span[1])
        _write_prefix(dev, chain, sector, keep * SECTOR)
        status = spec.BlkStatus.IOERR
    if status is not None:
        chain.writable[-1][-1] = int(status)
        dev.stats["requests"] += 1
        dev.count_error(queue_index)
        result: int | None = 1
    else:
        result = dev.request(queue_index, rtype, sector, chain)
    delays = [r.sample_delay() for r in fired if r.kind == "latency"]
    if not delays:
        return result
    deadline = arrived + max(delays)
    if result is None:  # in the kernel: held when it finishes (BlkDevice._publish)
        dev.holding.late[(queue_index, chain.head_index)] = deadline
    else:
        dev.holding.hold(queue_index, deadline, chain.head_index, result)
    return None


def _write_prefix(dev: "BlkDevice", chain: DescriptorChain, sector: int, nbytes: int) -> None:
    """The first ``nbytes`` of a write's data to the image (a torn write), synchronously; with
    O_DIRECT through an aligned buffer (read, patch, write the aligned blocks around it)."""
    if nbytes <= 0:
        return
    data = chain.read(_HDR_SIZE, nbytes)
    offset = sector * SECTOR
    try:
        if not dev.direct:
            os.pwrite(dev.fd, data, offset)
            return
        align = max(dev.image.align, SECTOR)
        lo = offset // align * align
        hi = -(-(offset + nbytes) // align) * align
        with mmap.mmap(-1, hi - lo) as buf:
            os.preadv(dev.fd, [buf], lo)
            buf[offset - lo:offset - lo + nbytes] = data
            os.pwritev(dev.fd, [buf], lo)
    except OSError as exc:
        dev.guest_log.warning("blk %s: torn write at sector %d: %s", dev.path, sector, exc)


__all__ = ["Holding", "faulty_request", "describe_request"]
