"""Inflight I/O tracking for a vhost-user back-end, sans I/O (vhost-user.rst, "Inflight I/O
tracking", ``VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD``).

A back-end that completes requests out of order cannot tell, after a restart, which of the
chains the driver made available were still in flight: the avail ring may already hold newer
entries in their slots.  So it records every chain it pops in a buffer the front-end keeps for
it (GET_INFLIGHT_FD makes it, SET_INFLIGHT_FD hands it back to a restarted back-end), and the
next back-end resubmits what was in flight, oldest first.

The buffer is one region per queue, ``queue_stride(queue_size)`` bytes apart; QEMU never reads
it, only back-ends do.  pyvirtio's stride fits both layouts (a ring's layout is known only once
the features are set, after GET_INFLIGHT_FD): ``align64(32 + 32 * queue_size)``.

Split rings (the region is ``QueueRegionSplit``; ``DescStateSplit`` per head index).  The order
of the stores is the protocol; a kill -9 between any two of them loses nothing:

* pop: ``desc[i].counter = counter++`` then ``desc[i].inflight = 1``;
* complete a batch: for each head ``desc[i].next = last_batch_head; last_batch_head = i``, then
  the used ring's idx is published (the ring's code), then every ``desc[i].inflight = 0``, then
  ``used_idx = idx``;
* reconnect: if ``used_idx`` differs from the used ring's idx, the back-end died after
  publishing a batch but before clearing it: the ``idx - used_idx`` entries of the
  ``last_batch_head`` list are cleared.  What is still marked is resubmitted in counter order,
  and the ring resumes at ``used idx + in flight`` (every chain popped was either used or is in
  flight) — whatever base the front-end sent (QEMU sends the used idx after a crash).

Packed rings keep a copy of every descriptor of each chain in flight (the descriptor ring slot
is overwritten by used descriptors), see :class:`PackedInflight`.

A region comes from the front-end and is untrusted: wrong sizes, versions, flags, list indices
or a ring size that does not match raise :class:`InflightRegionError` (a rejected message),
never anything untyped, never a loop longer than the ring.
"""

from __future__ import annotations

import struct
from typing import Iterable

from ...spec import ring as _ring
from ...spec import vhost_user as _spec
from ...virtq.layout import align_up
from ..errors import InvalidValue

ALIGN = _spec.INFLIGHT_ALIGNMENT  # 64
VERSION = _spec.INFLIGHT_VERSION  # 1
MAX_QUEUE_SIZE = 32768

SPLIT_HEADER = _spec.QUEUE_REGION_SPLIT  # features u64, version, desc_num, last_batch_head, used_idx
SPLIT_DESC = _spec.DESC_STATE_SPLIT  # inflight u8, pad[5], next u16, counter u64
#: QueueRegionPacked head: features u64; version, desc_num, free_head, old_free_head, used_idx,
#: old_used_idx u16; used_wrap_counter, old_used_wrap_counter u8; padding[7] (then 8-aligned).
PACKED_HEADER = struct.Struct("=QHHHHHHBB7x")  # 29 bytes of fields, 32 with the alignment
PACKED_HEADER_SIZE = 32
#: DescStatePacked: inflight u8, pad u8, next u16, last u16, num u16, counter u64, id u16,
#: flags u16, len u32, addr u64.
PACKED_DESC = struct.Struct("=BxHHHQHHIQ")


class InflightRegionError(InvalidValue):
    """The inflight buffer (its description or its contents) cannot be used."""


def queue_stride(queue_size: int) -> int:
    """Bytes per queue region: room for either layout."""
    return align_up(max(SPLIT_HEADER.size + SPLIT_DESC.size * queue_size,
                        PACKED_HEADER_SIZE + PACKED_DESC.size * queue_size), ALIGN)


def region_size(num_queues: int, queue_size: int) -> int:
    return num_queues * queue_stride(queue_size)


def check_description(num_queues: int, queue_size: int, max_queues: int) -> None:
    """GET/SET_INFLIGHT_FD's num_queues and queue_size."""
    if not 1 <= num_queues <= max_queues:
        raise InflightRegionError(f"inflight num_queues {num_queues} is not in 1..{max_queues}")
    if not 1 <= queue_size <= MAX_QUEUE_SIZE:
        raise InflightRegionError(f"inflight queue_size {queue_size} is not in 1..{MAX_QUEUE_SIZE}")


class InflightRegion:
    """The whole buffer (a mapping the shell made), cut into per-queue regions."""

    def __init__(self, buf: memoryview, num_queues: int, queue_size: int, max_queues: int):
        check_description(num_queues, queue_size, max_queues)
        need = region_size(num_queues, queue_size)
        if len(buf) < need:
            raise InflightRegionError(f"inflight buffer of {len(buf)} bytes, {num_queues} queues "
                                      f"of {queue_size} need {need}")
        self.num_queues, self.queue_size = num_queues, queue_size
        self._buf = buf
        self._trackers: list[SplitInflight | PackedInflight] = []

    def queue_view(self, index: int) -> memoryview:
        stride = queue_stride(self.queue_size)
        return self._buf[index * stride:(index + 1) * stride]

    def tracker(self, index: int, *, packed: bool) -> "SplitInflight | PackedInflight":
        """The tracker of queue ``index`` (raises InflightRegionError when it has none)."""
        return self.packed_tracker(index) if packed else self.split_tracker(index)

    def split_tracker(self, index: int) -> "SplitInflight":
        t = SplitInflight(self._view_of(index), self.queue_size)
        self._trackers.append(t)
        return t

    def packed_tracker(self, index: int) -> "PackedInflight":
        t = PackedInflight(self._view_of(index), self.queue_size)
        self._trackers.append(t)
        return t

    def _view_of(self, index: int) -> memoryview:
        if not 0 <= index < self.num_queues:
            raise InflightRegionError(f"queue {index} has no inflight region ({self.num_queues})")
        return self.queue_view(index)

    def release(self) -> None:
        """Drop every view into the buffer (before the shell unmaps it)."""
        for t in self._trackers:
            t.release()
        self._trackers.clear()
        self._buf.release()


class SplitInflight:
    """One split queue's ``QueueRegionSplit``: the stores in the order the spec gives."""

    packed = False

    def __init__(self, view: memoryview, queue_size: int):
        if len(view) < SPLIT_HEADER.size + SPLIT_DESC.size * queue_size:
            raise InflightRegionError("inflight queue region too small for its ring")
        self.size = queue_size
        self._view = view
        self._h16 = view[:SPLIT_HEADER.size].cast("H")  # [4] version [5] desc_num [6] head [7] used
        descs = view[SPLIT_HEADER.size:SPLIT_HEADER.size + SPLIT_DESC.size * queue_size]
        self._flag = descs.cast("B")  # inflight of head i: [16 i]
        self._next = descs.cast("H")  # next of head i: [8 i + 3]
        self._counter = descs.cast("Q")  # counter of head i: [2 i + 1]
        self.counter = 1

    def release(self) -> None:
        for v in (self._h16, self._flag, self._next, self._counter, self._view):
            v.release()

    # --- the data path (one queue's worker) ------------------------------------------------------

    def popped(self, head: int) -> None:
        """A chain was taken from the avail ring: counter first, then the inflight mark."""
        self._counter[2 * head + 1] = self.counter
        self.counter += 1
        self._flag[16 * head] = 1

    def batch(self, heads: Iterable[int]) -> None:
        """Before the used idx moves: link the batch from ``last_batch_head``."""
        h16, nxt = self._h16, self._next
        for head in heads:
            nxt[8 * head + 3] = h16[6]
            h16[6] = head

    def published(self, heads: Iterable[int], used_idx: int) -> None:
        """After the used idx moved to ``used_idx``: clear the batch, then record the idx."""
        flag = self._flag
        for head in heads:
            flag[16 * head] = 0
        self._h16[7] = used_idx

    # --- ring start ------------------------------------------------------------------------------

    def start(self, ring_size: int, used_idx: int) -> list[int]:
        """The ring starts with the used ring's idx at ``used_idx``: check the region, repair a
        batch left half done, and return the heads to resubmit (oldest first).  A fresh region
        (version 0) is initialised and has none."""
        h16 = self._h16
        features = int.from_bytes(self._view[:8], "little")
        version, desc_num, last_head, region_used = h16[4], h16[5], h16[6], h16[7]
        if ring_size != self.size:
            raise InflightRegionError(f"ring size {ring_size}, but its inflight region was made "
                                      f"for {self.size}")
        if version == 0:
            self._view[:SPLIT_HEADER.size + SPLIT_DESC.size * self.size] = bytes(
                SPLIT_HEADER.size + SPLIT_DESC.size * self.size)
            h16[5], h16[7] = self.size, used_idx
            h16[4] = VERSION
            return []
        if version != VERSION or features:
            raise InflightRegionError(f"inflight region version {version}, features {features:#x} "
                                      f"(expected version {VERSION}, no features)")
        if desc_num != self.size:
            raise InflightRegionError(f"inflight region desc_num {desc_num} does not match the "
                                      f"ring size {self.size}")
        flags = bytes(self._flag[0::16])
        if flags.translate(None, b"\x00\x01"):
            raise InflightRegionError("inflight region has inflight flags other than 0 and 1")
        behind = (used_idx - region_used) & 0xFFFF
        if behind:
            if behind > self.size:
                raise InflightRegionError(f"used idx {used_idx} is {behind} ahead of the region's "
                                          f"{region_used}: more than the ring size {self.size}")
            head = last_head
            for _ in range(behind):  # the batch published before the back-end died
                if head >= self.size:
                    raise InflightRegionError(f"last batch list reaches index {head} >= {self.size}")
                self._flag[16 * head] = 0
                head = self._next[8 * head + 3]
            h16[7] = used_idx
        heads = [i for i, f in enumerate(self._flag[0::16]) if f]
        counters = self._counter
        heads.sort(key=lambda i: (counters[2 * i + 1], i))
        self.counter = max((counters[2 * i + 1] for i in heads), default=0) + 1
        return heads


class PackedInflight:
    """One packed queue's ``QueueRegionPacked``.  A used descriptor overwrites a ring slot that
    may still describe a chain in flight, so every descriptor popped is copied into a free-list
    entry (addr, len, id, flags); a chain's entries are linked by ``next`` from its head entry,
    which holds inflight, counter, num and last.  Completions are recorded one chain at a time:
    free the chain's entries and move ``used_idx`` (with its wrap counter), then the ring
    publishes the used descriptor (its flags), then the head's inflight mark is cleared and the
    ``old_*`` copies take the new values — a kill before the flags store rolls back to them."""

    packed = True

    def __init__(self, view: memoryview, queue_size: int):
        if len(view) < PACKED_HEADER_SIZE + PACKED_DESC.size * queue_size:
            raise InflightRegionError("inflight queue region too small for its ring")
        self.size = queue_size
        self._view = view
        hdr = view[:PACKED_HEADER_SIZE]
        # [4] version [5] desc_num [6] free_head [7] old_free_head [8] used_idx [9] old_used_idx
        self._h16, self._h8 = hdr.cast("H"), hdr.cast("B")  # [20] used wrap, [21] old used wrap
        descs = view[PACKED_HEADER_SIZE:PACKED_HEADER_SIZE + PACKED_DESC.size * queue_size]
        self._d8 = descs.cast("B")  # inflight [32 i]
        self._d16 = descs.cast("H")  # next [16 i + 1] last [+2] num [+3] id [+8] flags [+9]
        self._d32 = descs.cast("I")  # len [8 i + 5]
        self._d64 = descs.cast("Q")  # counter [4 i + 1] addr [4 i + 3]
        self._entry: dict[int, int] = {}  # buffer id -> its head entry (this back-end's book)
        self.counter = 1

    def release(self) -> None:
        for v in (self._h16, self._h8, self._d8, self._d16, self._d32, self._d64, self._view):
            v.release()

    # --- the data path ---------------------------------------------------------------------------

    def popped(self, ring: memoryview, pos: int, count: int) -> None:
        """A chain of ``count`` descriptors was taken from ring positions ``pos``...: copy each
        into the free entry at ``free_head``, in the spec's order."""
        h16, d16, d64 = self._h16, self._d16, self._d64
        head = h16[7]  # old_free_head: where this chain's head entry is
        for k in range(count):
            addr, length, buf_id, flags = _PVIRTQ_DESC.unpack_from(ring, ((pos + k) % self.size) * 16)
            free = h16[6]
            if k == 0:
                d16[16 * head + 3] = 0
                d64[4 * head + 1] = self.counter
                self.counter += 1
                self._d8[32 * head] = 1
                self._entry[buf_id] = head
            if k == count - 1:
                d16[16 * head + 2] = free  # last
            d16[16 * head + 3] += 1
            d64[4 * free + 3], self._d32[8 * free + 5] = addr, length
            d16[16 * free + 8], d16[16 * free + 9] = buf_id, flags
            h16[6] = d16[16 * free + 1]  # free_head = next
        h16[7] = h16[6]

    def batch(self, buf_id: int, count: int) -> None:
        """Before the used descriptor of ``buf_id`` (``count`` ring slots) is published."""
        h16, d16 = self._h16, self._d16
        entry = self._entry[buf_id]
        d16[16 * d16[16 * entry + 2] + 1] = h16[6]  # desc[last].next = free_head
        h16[6] = entry
        used = h16[8] + count
        if used >= self.size:
            used -= self.size
            self._h8[20] ^= 1
        h16[8] = used

    def published(self, buf_id: int) -> None:
        """After the used descriptor's flags were stored."""
        h16, h8 = self._h16, self._h8
        self._d8[32 * self._entry.pop(buf_id)] = 0
        h16[7], h16[9], h8[21] = h16[6], h16[8], h8[20]

    # --- ring start ------------------------------------------------------------------------------

    def start(self, ring_size: int, used: int, used_wrap: int, flags_at) -> tuple[
            list[tuple[int, list[tuple[int, int, int]]]], int, int, int]:
        """Check the region, finish or roll back a completion cut short, and return (chains to
        resubmit oldest first as (buffer id, [(addr, len, flags)...]), used position, used wrap
        counter, ring slots in flight).  ``flags_at(pos)`` reads a ring descriptor's flags.  A
        fresh region (version 0) is initialised at ``used``/``used_wrap``."""
        h16, h8, d16 = self._h16, self._h8, self._d16
        n = self.size
        if ring_size != n:
            raise InflightRegionError(f"ring size {ring_size}, but its inflight region was made for {n}")
        features = int.from_bytes(self._view[:8], "little")
        if h16[4] == 0:
            self._view[:PACKED_HEADER_SIZE + PACKED_DESC.size * n] = bytes(
                PACKED_HEADER_SIZE + PACKED_DESC.size * n)
            for i in range(n):
                d16[16 * i + 1] = i + 1  # the free list: every entry, in order
            h16[5], h16[8], h16[9] = n, used, used
            h8[20] = h8[21] = used_wrap
            h16[4] = VERSION
            return [], used, used_wrap, 0
        if h16[4] != VERSION or features:
            raise InflightRegionError(f"inflight region version {h16[4]}, features {features:#x} "
                                      f"(expected version {VERSION}, no features)")
        if h16[5] != n:
            raise InflightRegionError(f"inflight region desc_num {h16[5]} does not match the ring "
                                      f"size {n}")
        if max(h16[6], h16[7]) > n or max(h16[8], h16[9]) >= n or max(h8[20], h8[21]) > 1:
            raise InflightRegionError("inflight region positions or wrap counters out of range")
        if bytes(self._d8[0::32]).translate(None, b"\x00\x01"):
            raise InflightRegionError("inflight region has inflight flags other than 0 and 1")
        if h16[8] != h16[9] or h8[20] != h8[21]:  # a completion was cut short
            old_wrap = h8[21]
            if flags_at(h16[9]) & _USED_BITS == (_USED_BITS if old_wrap else 0):
                h16[7], h16[9], h8[21] = h16[6], h16[8], h8[20]  # published: commit it
        h16[6], h16[8], h8[20] = h16[7], h16[9], h8[21]  # roll back what was not
        for entry in self._walk(h16[6], n, "free list"):
            self._d8[32 * entry] = 0
        heads = [i for i in range(n) if self._d8[32 * i]]
        heads.sort(key=lambda i: (self._d64[4 * i + 1], i))
        chains, slots = [], 0
        for head in heads:
            num = d16[16 * head + 3]
            if not 1 <= num <= n - slots:
                raise InflightRegionError(f"inflight entry {head} has {num} descriptors")
            entries = list(self._walk(head, num, "chain"))
            if len(entries) != num:
                raise InflightRegionError(f"inflight entry {head}: chain shorter than its {num}")
            slots += num
            descs = [(self._d64[4 * e + 3], self._d32[8 * e + 5], d16[16 * e + 9]) for e in entries]
            chains.append((d16[16 * entries[0] + 8], descs))
            self._entry[d16[16 * entries[0] + 8]] = head
        self.counter = max((self._d64[4 * i + 1] for i in heads), default=0) + 1
        return chains, h16[8], h8[20], slots

    def _walk(self, entry: int, limit: int, what: str):
        """Entries linked by ``next`` from ``entry``: at most ``limit``, ending at one >= size."""
        for _ in range(limit):
            if entry >= self.size:
                return
            yield entry
            entry = self._d16[16 * entry + 1]
        if what == "free list" and entry < self.size:
            raise InflightRegionError("inflight free list loops")


_PVIRTQ_DESC = _ring.PVIRTQ_DESC  # addr, len, id, flags
_USED_BITS = _ring.VIRTQ_DESC_F_AVAIL | _ring.VIRTQ_DESC_F_USED


__all__ = ["InflightRegion", "InflightRegionError", "SplitInflight", "PackedInflight",
           "check_description", "queue_stride", "region_size"]
