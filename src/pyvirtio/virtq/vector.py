"""Vectorised batches of transmit chains over numpy views of a ring (optional: numpy).

The batch pops of :mod:`.split_device` make one C-level call per field, but they still hand out
one Python object per chain — an int per head, a ``memoryview`` per buffer — and creating those
objects is most of what a 64-byte frame costs.  With numpy installed, :func:`pop_readable` takes a
batch of one-descriptor, device-readable chains (what Linux and DPDK put on a transmit queue) and
returns it as arrays: heads, the buffers' offsets into the one guest memory region they all lie
in, and their lengths.  Every check :meth:`~.split_device.SplitDeviceQueue.pop_direct` makes is
made, over the whole batch at once:

* split rings: the avail idx at most the queue size ahead of ``next_avail`` (2.7.13.1: else the
  queue breaks), every head below the queue size, every descriptor's flags exactly 0;
* packed rings: the run of descriptors from ``next_avail`` whose flags words — all read, once,
  before any other field (2.8.6) — are exactly "available in this lap" (across the ring's end
  with the wrap counter flipped), every buffer id neither in flight nor twice in the batch;
* so no NEXT, WRITE or INDIRECT: any other shape ends the batch before it, and the general path
  — ``pop_descriptor_chain`` — takes that chain;
* every buffer wholly inside the region of the batch's first buffer, with the address arithmetic
  in 64 bits (a buffer past 2**64 wraps to an offset beyond the region and is caught there).

A violation by the batch's first chain returns None and leaves the ring as it was, so the general
path meets the same chain and breaks the queue with its own :class:`~pyvirtio.errors.DriverFault`
(a head out of range, a buffer outside guest memory) or takes it (another shape, a buffer that
crosses from one region into the next); a violation later in the batch ends the batch before it.

:func:`add_used` returns such a batch to the used ring with one index update (IN_ORDER: one used
entry for the batch, as :meth:`~.split_device.SplitDeviceQueue.add_used_heads` does), and
:func:`any_u16` reads a header field of every buffer and :func:`gather_rows` copies the frames
out of guest memory into host arrays, each with a numpy call or two.

``ENABLED`` is False without numpy or with ``PYVIRTIO_PURE=1``; callers then use the pure paths,
which stay the reference: the tests run the same hostile rings through both.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import GuestMemoryError
from ..fence import rmb, wmb
from ..memory import GuestMemory, Region
from ..spec import ring as _ring

_F_AVAIL, _F_USED = _ring.VIRTQ_DESC_F_AVAIL, _ring.VIRTQ_DESC_F_USED

try:
    import numpy as np
except ImportError:  # pragma: no cover - the pure install
    np = None  # type: ignore[assignment]

from .base import DeviceQueue
from .packed_device import PackedDeviceQueue
from .split_device import SplitDeviceQueue

ENABLED = np is not None and not os.environ.get("PYVIRTIO_PURE")

if np is not None:
    # the reductions as ufunc methods: a little less per call than ndarray.min/max/sum
    _min, _max, _sum = np.minimum.reduce, np.maximum.reduce, np.add.reduce
    # count_nonzero's C function itself, without the Python wrapper and dispatcher numpy puts in
    # front of it (~0.08 against ~0.22 us a call here, three calls a batch); the wrapper where
    # a numpy keeps it elsewhere
    try:  # (a private module of numpy's, without type stubs)
        from numpy._core._multiarray_umath import (  # type: ignore[import-not-found]
            count_nonzero as _nonzero)
    except ImportError:  # pragma: no cover - numpy 1.x
        _nonzero = np.count_nonzero
    #: struct virtq_desc (2.7.5) as a numpy record: the descriptor table is an array of these.
    DESC = np.dtype([("addr", "<u8"), ("len", "<u4"), ("flags", "<u2"), ("next", "<u2")])
    #: struct pvirtq_desc (2.8.13): the packed descriptor ring is an array of these.
    PACKED_DESC = np.dtype([("addr", "<u8"), ("len", "<u4"), ("id", "<u2"), ("flags", "<u2")])


class ReadableBatch:
    """A batch of one-descriptor device-readable chains, popped: chain ``i`` is ``heads[i]``
    (split: its descriptor's index; packed: its buffer id — what the used ring returns), its
    buffer ``region`` bytes ``[offsets[i], offsets[i] + lengths[i])``; ``total`` is the sum of
    the lengths."""

    __slots__ = ("heads", "offsets", "lengths", "region", "total", "_bounds")

    def __init__(self, heads: Any, offsets: Any, lengths: Any, region: Region, total: int,
                 bounds: tuple[int, int] | None = None):
        self.heads = heads  # numpy integer array (split: intp, packed: uint16 buffer ids)
        self.offsets = offsets  # numpy int64 array: offsets into region.buf
        self.lengths = lengths  # numpy unsigned integer array
        self.region = region
        self.total = total
        self._bounds = bounds

    def __len__(self) -> int:
        return len(self.heads)

    def bounds(self) -> tuple[int, int]:
        """The shortest and the longest buffer's length (computed once)."""
        if self._bounds is None:
            self._bounds = (int(_min(self.lengths)), int(_max(self.lengths)))
        return self._bounds

    def views(self, start: int = 0) -> list[memoryview]:
        """One memoryview per buffer, from chain ``start`` on (for the per-frame paths)."""
        buf = self.region.buf
        ends = (self.offsets[start:] + self.lengths[start:]).tolist()
        return [buf[a:b] for a, b in zip(self.offsets[start:].tolist(), ends)]


#: What :func:`_in_region` finds: region, offsets, lengths, total, bounds (equal lengths only).
_Found = tuple[Region, Any, Any, int, "tuple[int, int] | None"]


class _Rings:
    """numpy views of one bound ring — split: its descriptor table, avail ring and used ring;
    packed: its descriptor ring —, the memory region its last batch's buffers were in, and that
    batch's length with the bound on an offset it gives (numpy scalars: a Python int beside an
    array costs a conversion each call)."""

    __slots__ = ("desc", "avail", "used", "key", "region", "gpa", "end", "length", "length_np",
                 "limit_np")
    desc: Any
    avail: Any
    used: Any

    def __init__(self, queue: Any):
        self.key = queue._desc  # the queue's binding these views belong to
        if queue.packed:
            self.desc = np.frombuffer(queue._desc, PACKED_DESC)
            self.avail = self.used = None
        else:
            self.desc = np.frombuffer(queue._desc, DESC)
            self.avail = np.frombuffer(queue._avail16, np.uint16)  # flags, idx, ring[size], used_event
            # the used elements as one u64 each (id | len << 32), from byte 4 of the used ring
            self.used = np.frombuffer(queue._used32, np.uint64, count=queue.size, offset=4)
        self.region: Region | None = None
        self.gpa: Any = None  # ... its guest-physical start, as a numpy uint64
        self.end = 0
        self.length = -1  # the last batch's buffer length, when they were all one
        self.length_np: Any = None  # ... as a numpy u32
        self.limit_np: Any = None  # the region's size less it, as a numpy u64 (None: below 0)


def _rings(queue: Any) -> _Rings:
    rings = queue._vec
    if rings is None or rings.key is not queue._desc:
        rings = queue._vec = _Rings(queue)
    return rings


def _arrays(region: Region) -> dict[Any, Any]:
    """The region's numpy views (made on first use; ``release_region`` drops them)."""
    arrays = region._arrays
    if arrays is None:
        u8 = np.frombuffer(region.buf, np.uint8)
        arrays = region._arrays = {"u8": u8, "u8+1": u8[1:]}  # (the second: byte k + 1 at index k)
    return arrays


def _window(region: Region, width: int, dtype: Any = None, skip: int = 0) -> Any:
    """Every ``width``-byte run of the region from byte ``skip`` on as one element of a
    read-only view with a stride of one byte (element ``k`` starts at byte ``k + skip``), so a
    fancy index by offsets copies whole buffers in one call.  Its elements are ``dtype``, or,
    with none, opaque items of ``width`` bytes (numpy's void type: numpy copies each with one
    ``memcpy``; a ``(k, width)`` uint8 window would copy byte by byte, ~1.6x the time at 1500
    bytes and 3x at 64 on this machine class)."""
    arrays = _arrays(region)
    key = (width, dtype, skip)
    win = arrays.get(key)
    if win is None:
        u8 = arrays["u8"][skip:]
        item = np.dtype(("V", width)) if dtype is None else dtype
        win = np.ndarray(shape=(max(u8.size - width + 1, 0),), dtype=item, buffer=u8, strides=(1,))
        win.flags.writeable = False
        if len(arrays) > 16:  # a few lengths are usual; do not keep one per length ever seen
            for old in [k for k in arrays if isinstance(k, tuple)]:
                del arrays[old]
        arrays[key] = win
    return win


def any_u16(region: Region, offsets: Any) -> bool:
    """Whether the u16 at any of the offsets of the region (each offset + 2 within it) is not
    zero: its two bytes gathered from two byte views (an index into a u16 view with a stride
    of one byte loads each element unaligned, ~2x the time here)."""
    arrays = _arrays(region)
    return bool(_nonzero(arrays["u8"][offsets]) or _nonzero(arrays["u8+1"][offsets]))


def gather_rows(region: Region, offsets: Any, length: int, skip: int = 0) -> Any:
    """A new array of ``len(offsets)`` items of ``length`` bytes each: item ``i`` a copy of the
    region's bytes ``[offsets[i] + skip, offsets[i] + skip + length)`` (each within the region).
    ``bytes(item)`` is one buffer, ``.tobytes()`` all of them back to back, and
    ``.view(numpy.uint8).reshape(-1, length)`` the rows as bytes."""
    return _window(region, length, None, skip)[offsets]


def pop_readable(queue: DeviceQueue, mem: GuestMemory, limit: int) -> ReadableBatch | None:
    """Pop up to ``limit`` chains that are each one device-readable descriptor, checked as the
    module docstring says; None when the next chain is not for this path (nothing available,
    another shape, a resubmitted or inflight-tracked ring, a buffer not in one region) — the
    general path takes it, or breaks the queue on it."""
    if isinstance(queue, SplitDeviceQueue):
        pop = _pop_split
    elif isinstance(queue, PackedDeviceQueue):
        pop = _pop_packed  # type: ignore[assignment]
    else:
        return None
    queue._check(mem)
    if queue.resubmit or queue.inflight is not None:
        return None
    return pop(queue, mem, limit)  # type: ignore[arg-type]


def _pop_split(queue: SplitDeviceQueue, mem: GuestMemory, limit: int) -> ReadableBatch | None:
    size, next_avail = queue.size, queue.next_avail
    avail16 = queue._avail16
    ahead = (avail16[1] - next_avail) & 0xFFFF
    if ahead == 0 or ahead > size:  # nothing; or too far ahead: the general path breaks the queue
        return None
    n = min(ahead, limit)
    rmb()  # the avail idx, then the entries and descriptors it made available (2.7.6)
    rings = _rings(queue)
    start = next_avail & (size - 1)
    # A copy (the driver may write the ring), as numpy's index type: take() converts any other
    # index array itself, at more than this cast costs (measured in place, 112 heads: the take
    # 1.09 -> 0.84 us, the copy 0.40 -> 0.55).
    if start + n <= size:
        heads = rings.avail[2 + start:2 + start + n].astype(np.intp)
    else:
        heads = np.concatenate((rings.avail[2 + start:2 + size],
                                rings.avail[2:2 + start + n - size])).astype(np.intp)
    try:  # a copy of each head's descriptor (the driver may change the table)
        desc = rings.desc.take(heads)
    except IndexError:  # a head >= the queue size: the batch ends before it
        n = int((heads >= size).argmax())
        if not n:
            return None
        heads = heads[:n]
        desc = rings.desc.take(heads)
    flags = desc["flags"]
    if _nonzero(flags):  # another shape: the batch ends before it
        n = int((flags != 0).argmax())
        if not n:
            return None
        heads, desc = heads[:n], desc[:n]
    found = _in_region(rings, mem, desc["addr"], desc["len"])
    if found is None:
        return None
    region, offsets, lengths, total, bounds = found
    n = len(offsets)
    if n < len(heads):
        heads = heads[:n]
    queue.next_avail = (next_avail + n) & 0xFFFF
    stats = queue.stats
    stats.chains += n
    stats.bytes_read += total
    return ReadableBatch(heads, offsets, lengths, region, total, bounds)


def _pop_packed(queue: PackedDeviceQueue, mem: GuestMemory, limit: int) -> ReadableBatch | None:
    size, pos, wrap = queue.size, queue.next_avail, queue.avail_wrap
    limit = min(limit, size)
    rings = _rings(queue)
    flags = rings.desc["flags"]
    first = min(limit, size - pos)
    # every flags word of the run first, one snapshot each (the driver writes them last, 2.8.6)
    n = _run(flags[pos:pos + first].copy(), _F_AVAIL if wrap else _F_USED)
    n2 = 0
    if n == first < limit:  # up to the ring's end: the next lap, with the other wrap counter
        n2 = _run(flags[:limit - n].copy(), _F_USED if wrap else _F_AVAIL)
    if not n:
        return None
    rmb()  # every flags word read, then the descriptors they made available (2.8.6)
    desc = rings.desc[pos:pos + n].copy()
    if n2:
        desc = np.concatenate((desc, rings.desc[:n2]))
    ids = desc["id"].tolist()
    pending = queue._pending
    if len(set(ids)) != len(ids) or not pending.keys().isdisjoint(ids):  # in flight, or twice
        n = next(k for k, i in enumerate(ids) if i in pending or i in ids[:k])
        if not n:
            return None  # the general path breaks the queue on it
        desc, ids = desc[:n], ids[:n]
    found = _in_region(rings, mem, desc["addr"], desc["len"])
    if found is None:
        return None
    region, offsets, lengths, total, bounds = found
    n = len(offsets)
    del ids[n:]
    queue._took(ids, lengths.tolist(), False, total)  # booked in flight, counted; next_avail and its wrap move
    return ReadableBatch(desc["id"][:n], offsets, lengths, region, total, bounds)


def _run(flags: Any, expected: int) -> int:
    """How many of the flags words from the first equal ``expected``."""
    differ = flags != expected
    k = int(differ.argmax())
    return k if differ[k] else len(flags)


def _in_region(rings: _Rings, mem: GuestMemory, addrs: Any, lengths: Any) -> _Found | None:
    """The buffers at ``addrs`` of ``lengths`` (u64 and u32 arrays: a batch's descriptors, in
    order) that lie wholly inside the region of the first: ``(region, offsets, lengths, total,
    bounds)`` (bounds when all lengths are equal, else None), cut before the first that does
    not; None when the first does not (outside guest memory, or across two regions: the general
    path's to judge).  64-bit arithmetic: an address below the region, or a buffer running past
    2**64, wraps to an offset beyond the region."""
    region = rings.region
    length = int(lengths[0])
    if length != rings.length:
        rings.length, rings.length_np = length, np.uint32(length)
        rings.limit_np = None if region is None or length > region.size else np.uint64(region.size - length)
    same = not _nonzero(lengths != rings.length_np)
    if same and region is not None and rings.limit_np is not None:
        # the usual transmit batch: one length, in the region of the last batch; every offset
        # at most its size less that length puts every buffer in it, and no end can wrap (an
        # address below the region wraps to an offset beyond it); one comparison
        offsets = addrs - rings.gpa if region.gpa else addrs  # (guest RAM usually starts at 0)
        if not _nonzero(offsets > rings.limit_np):
            return region, offsets.view(np.int64), lengths, length * len(lengths), (length, length)
    first = int(addrs[0])
    if region is None or not int(rings.gpa) <= first < rings.end:
        try:
            region = mem.region_at(first)
        except GuestMemoryError:
            return None
        rings.region, rings.gpa, rings.end = region, np.uint64(region.gpa), region.end
        rings.limit_np = None if length > region.size else np.uint64(region.size - length)
    rsize = region.size
    offsets = addrs - rings.gpa if region.gpa else addrs
    if same:  # one length, as above
        if int(_max(offsets)) <= rsize - length:
            return region, offsets.view(np.int64), lengths, length * len(lengths), (length, length)
    elif _max(np.maximum(offsets, offsets + lengths)) <= rsize:
        return region, offsets.view(np.int64), lengths, int(_sum(lengths)), None
    # a buffer beyond the region: the batch ends before the first
    ends = offsets + lengths
    n = int(((offsets > rsize) | (ends > rsize)).argmax())
    if not n:
        return None
    offsets, lengths = offsets[:n], lengths[:n]
    return region, offsets.view(np.int64), lengths, int(_sum(lengths)), None


def add_used(queue: DeviceQueue, mem: GuestMemory, heads: Any) -> None:
    """Put chains ``heads`` (popped by :func:`pop_readable`, nothing written) in the used ring
    with one index update (split); packed rings through ``add_used_heads`` (its used
    descriptors' flags are stored one word at a time: see ``packed_device.store_flags``)."""
    if isinstance(queue, SplitDeviceQueue):
        _add_used_split(queue, mem, heads)
    else:
        queue.add_used_heads(mem, heads.tolist())


def _add_used_split(queue: SplitDeviceQueue, mem: GuestMemory, heads: Any) -> None:
    queue._check(mem)
    count = len(heads)
    if not count:
        return
    rings = _rings(queue)
    size = queue.size
    next_used = queue.next_used
    slot = next_used & (size - 1)
    used = rings.used  # an element is id | len << 32; len is 0 here
    if queue.in_order and count > 1:  # one entry for the batch (2.7.9): its last id, at its first slot
        used[slot] = heads[-1]
    else:
        first = min(count, size - slot)
        used[slot:slot + first] = heads[:first]
        if count > first:  # wrapped around the ring
            used[:count - first] = heads[first:]
    wmb()  # the used elements before the used idx that publishes them (2.7.8)
    queue.next_used = (next_used + count) & 0xFFFF
    queue._used16[1] = queue.next_used
