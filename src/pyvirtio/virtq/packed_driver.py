"""The driver side of a packed virtqueue (VIRTIO 1.3, 2.8), as a sans-I/O core.

Same calls as :class:`~pyvirtio.virtq.split_driver.SplitDriverQueue` (``add``, ``kick_prepare``,
``get_buf``, ``enable_cb`` …).  Buffer ids come from a free pool; a chain's descriptors are written
tail first and the head's flags last, so the device never sees half a chain.  The device is
untrusted: a used id that is not in flight or a used length above the chain's writable bytes
raises :class:`~pyvirtio.errors.DeviceFault` and marks the queue broken.

With VIRTIO_F_IN_ORDER (2.8.21, ``in_order=True``) the device may return a batch with one used
descriptor carrying the buffer id of the batch's *last* buffer, written where the batch's first
buffer was, and skip forward by the descriptors of the whole batch.  The driver keeps its buffers
in the order it made them available, completes every one up to that id (each with all its
device-writable bytes, as Linux counts them) and moves past their descriptors.
"""

from __future__ import annotations

import array
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import DeviceFault, GuestMemoryError, QueueFull, UsageError
from ..fence import mb, rmb, wmb
from ..memory import GuestMemory
from ..spec import ring
from .base import DriverRingSide
from .packed_device import is_valid_packed_size, leading_run, packed_need_event, store_flags

_DESC = ring.PVIRTQ_DESC
_ADDR_LEN_ID = struct.Struct("<QIH")
_F_NEXT = ring.VIRTQ_DESC_F_NEXT
_F_WRITE = ring.VIRTQ_DESC_F_WRITE
_F_INDIRECT = ring.VIRTQ_DESC_F_INDIRECT
_F_AVAIL = ring.VIRTQ_DESC_F_AVAIL
_F_USED = ring.VIRTQ_DESC_F_USED

Buffer = tuple[int, int]


@dataclass(frozen=True)
class PackedRingLayout:
    """Where a packed ring lives: descriptor ring, driver area, device area (2.8.10).

    The attribute names match :class:`SplitRingLayout` so transports pass either the same way."""

    size: int
    desc_table: int
    avail_ring: int  # the driver event suppression area
    used_ring: int  # the device event suppression area

    @classmethod
    def contiguous(cls, base: int, size: int) -> "PackedRingLayout":
        """The ring of ``size`` descriptors laid out from ``base``: the descriptor ring, then the
        driver and device event areas."""
        if not is_valid_packed_size(size):
            raise UsageError(f"packed queue size {size} is not in 1..32768")
        if base % 16:
            raise UsageError("descriptor ring must be 16-byte aligned")
        return cls(size, base, base + 16 * size, base + 16 * size + 4)

    @staticmethod
    def bytes_needed(size: int) -> int:
        """Guest memory a ring of ``size`` descriptors takes, laid out contiguously."""
        return 16 * size + 8


def _avail_flags(wrap: int) -> int:
    return _F_AVAIL if wrap else _F_USED


class PackedDriverQueue(DriverRingSide):
    """Driver-side state of one packed virtqueue (2.8): descriptors made available in place, wrap
    counters, buffer ids and the two event areas."""

    packed = True

    def __init__(self, layout: PackedRingLayout, *, index: int = 0, event_idx: bool = False,
                 indirect_area: int | None = None, max_indirect: int = 0, in_order: bool = False):
        """The driver's side of the packed ring ``layout`` (the options: :class:`DriverRingSide`)."""
        self.layout = layout
        super().__init__(layout.size, index, event_idx, indirect_area, max_indirect, in_order)

    def _init_state(self) -> None:
        self.next_avail, self.avail_wrap = 0, 1
        self.last_used, self.used_wrap = 0, 1
        self.num_free = self.size
        self._free_ids = list(range(self.size - 1, -1, -1))
        self._tokens: list[Any] = [None] * self.size
        self._count = [0] * self.size
        self._in_len = [0] * self.size
        self._order: deque[int] = deque()  # IN_ORDER: buffer ids in flight, oldest first
        self._batch_last = -1  # IN_ORDER: the id closing the batch being collected, else -1
        self._batch_len = 0
        self._added = 0
        self.callbacks_enabled = True
        self.outstanding = 0

    def setup(self, mem: GuestMemory) -> None:
        """Zero the ring's shared parts, ready to hand the addresses to the device."""
        self.broken, self.fault = False, None
        self._bind(mem)
        self._desc[:] = bytes(len(self._desc))
        self._driver16[0] = self._driver16[1] = 0
        self._device16[0] = self._device16[1] = 0
        self._init_state()

    def _bind(self, mem: GuestMemory) -> None:
        lay = self.layout
        try:
            self._desc = mem.view(lay.desc_table, 16 * self.size)
            self._driver16 = mem.view(lay.avail_ring, 4).cast("H")
            self._device16 = mem.view(lay.used_ring, 4).cast("H")
            if self.max_indirect:
                self._indirect = mem.view(self._indirect_base,
                                          self.indirect_area_size(self.size, self.max_indirect))
        except GuestMemoryError as exc:
            raise UsageError(f"queue {self.index}: ring is not in guest memory: {exc}") from None
        self._desc16 = self._desc.cast("H")
        self._desc32, self._desc64 = self._desc.cast("I"), self._desc.cast("Q")  # the batch path's
        self._mem, self._gen = mem, mem.generation



    # --- making buffers available ---------------------------------------------------------------

    def add(self, mem: GuestMemory, out_bufs: Sequence[Buffer], in_bufs: Sequence[Buffer], token: Any) -> int:
        """Expose device-readable ``out_bufs`` then device-writable ``in_bufs`` as one chain.
        Returns the head index; ``token`` (anything but None) comes back from
        :meth:`get_buf`."""
        self._check(mem)
        if token is None:
            raise UsageError("token must not be None")
        bufs = [(a, n, 0) for a, n in out_bufs] + [(a, n, _F_WRITE) for a, n in in_bufs]
        if not bufs:
            raise UsageError("a chain needs at least one buffer")
        for addr, length, _ in bufs:
            if not (0 <= addr <= 0xFFFFFFFFFFFFFFFF and 0 <= length <= 0xFFFFFFFF):
                raise UsageError(f"queue {self.index}: buffer ({addr:#x}, {length:#x}) out of range")
        if not self._free_ids:
            raise QueueFull(f"queue {self.index}: no free buffer id")
        use_indirect = 1 < len(bufs) <= self.max_indirect
        count = 1 if use_indirect else len(bufs)
        if count > self.num_free:
            raise QueueFull(f"queue {self.index}: {count} descriptors needed, {self.num_free} free")
        buf_id = self._free_ids.pop()
        if use_indirect:
            bufs = [self._write_indirect(buf_id, bufs)]
        self._write_chain(buf_id, bufs)
        self._tokens[buf_id] = token
        self._count[buf_id] = count
        self._in_len[buf_id] = sum(n for _, n in in_bufs)
        if self.in_order:
            self._order.append(buf_id)
        self.num_free -= count
        self._added += count
        self.outstanding += 1
        return buf_id

    def add_single(self, mem: GuestMemory, addrs: Sequence[int], lengths: Sequence[int],
                   tokens: Sequence[Any], *, writable: bool = False) -> list[int]:
        """Expose a batch of chains of one buffer each, ``(addrs[i], lengths[i])`` with token
        ``tokens[i]``, device-writable if ``writable``: what :meth:`add` writes for each (the
        same buffer ids, ring positions and flags), with one strided store per descriptor field
        — every address, length and id first, then every flags word, one store each
        (:func:`~pyvirtio.virtq.packed_device.store_flags`; 2.8.6: a descriptor's flags after
        the rest).  Returns the buffer ids.

        The whole batch or nothing: :class:`~pyvirtio.errors.QueueFull` when fewer than
        ``len(tokens)`` buffer ids or descriptors are free, :class:`~pyvirtio.errors.UsageError`
        for a None token or an address or length out of range, before anything is written."""
        self._check(mem)
        n = len(tokens)
        addr_a, len_a = self._single_args(addrs, lengths, tokens)
        if not n:
            return []
        if n > len(self._free_ids) or n > self.num_free:
            raise QueueFull(f"queue {self.index}: {n} buffers needed, "
                            f"{min(len(self._free_ids), self.num_free)} free")
        free = self._free_ids
        ids = free[-n:]
        ids.reverse()  # the order add's pops take them in
        del free[-n:]
        size, pos, wrap = self.size, self.next_avail, self.avail_wrap
        bit = _F_WRITE if writable else 0
        desc16, d32, q64 = self._desc16, self._desc32, self._desc64
        first = min(n, size - pos)
        parts = ((pos, 0, first, wrap), (0, first, n, wrap ^ 1))
        for at, lo, hi, _ in parts:
            if hi > lo:
                end = at + hi - lo
                q64[2 * at:2 * end:2] = addr_a[lo:hi]
                d32[4 * at + 2:4 * end:4] = len_a[lo:hi]
                desc16[8 * at + 6:8 * end:8] = array.array("H", ids[lo:hi])
        wmb()  # every descriptor's other fields before the flags that make it available (2.8.6)
        for at, lo, hi, lap in parts:
            if hi > lo:
                store_flags(desc16, at, hi - lo, _avail_flags(lap) | bit)
        pos += n
        if pos >= size:
            pos, wrap = pos - size, wrap ^ 1
        self.next_avail, self.avail_wrap = pos, wrap
        tok, count, in_len = self._tokens, self._count, self._in_len
        low = ids[0]
        if ids == list(range(low, low + n)):
            tok[low:low + n] = tokens
            count[low:low + n] = [1] * n
            in_len[low:low + n] = len_a.tolist() if writable else [0] * n
        else:
            for buf_id, t, length in zip(ids, tokens, len_a):
                tok[buf_id] = t
                count[buf_id] = 1
                in_len[buf_id] = length if writable else 0
        if self.in_order:
            self._order.extend(ids)
        self.num_free -= n
        self._added += n
        self.outstanding += n
        return ids

    def _write_indirect(self, buf_id: int, bufs) -> tuple[int, int, int]:
        off = buf_id * self.max_indirect * 16
        for i, (addr, length, wflag) in enumerate(bufs):
            _DESC.pack_into(self._indirect, off + i * 16, addr, length, 0, wflag)
        return self._indirect_base + off, len(bufs) * 16, _F_INDIRECT

    def _write_chain(self, buf_id: int, bufs) -> None:
        size, desc, desc16 = self.size, self._desc, self._desc16
        pos, wrap = self.next_avail, self.avail_wrap
        head_pos, head_flags = pos, 0
        last = len(bufs) - 1
        for i, (addr, length, kind) in enumerate(bufs):
            flags = kind | (_F_NEXT if i < last else 0) | _avail_flags(wrap)
            _ADDR_LEN_ID.pack_into(desc, pos * 16, addr, length, buf_id)
            if i == 0:
                head_flags = flags
            else:
                desc16[pos * 8 + 7] = flags
            pos += 1
            if pos == size:
                pos, wrap = 0, wrap ^ 1
        wmb()  # the whole chain (and its indirect table) before the head's flags (2.8.6)
        desc16[head_pos * 8 + 7] = head_flags  # last: makes the whole chain available at once
        self.next_avail, self.avail_wrap = pos, wrap

    def kick_prepare(self, mem: GuestMemory) -> bool:
        """Whether the device wants a notification for the buffers added since the last call."""
        self._check(mem)
        added, self._added = self._added, 0
        if not added:
            return False
        mb()  # descriptors visible before reading the device's event suppression
        off_wrap, flags = self._device16[0], self._device16[1]
        if flags == ring.RING_EVENT_FLAGS_DISABLE:
            return False
        if flags == ring.RING_EVENT_FLAGS_DESC and self.event_idx:
            return packed_need_event(off_wrap, self.avail_wrap, self.next_avail, added, self.size)
        return True

    # --- collecting used buffers ----------------------------------------------------------------

    def _is_used(self, flags: int) -> bool:
        w = bool(self.used_wrap)
        return bool(flags & _F_AVAIL) == w and bool(flags & _F_USED) == w

    def has_used(self, mem: GuestMemory) -> bool:
        """Whether the device has returned a buffer not yet taken with :meth:`get_buf`."""
        self._check(mem)
        return self._batch_last >= 0 or self._is_used(self._desc16[self.last_used * 8 + 7])

    def get_buf(self, mem: GuestMemory) -> tuple[Any, int] | None:
        self._check(mem)
        pos = self.last_used
        if self._batch_last >= 0:  # IN_ORDER: inside a batch the used descriptor closed
            buf_id = self._order.popleft()
            if buf_id == self._batch_last:
                self._batch_last, length = -1, self._batch_len
            else:
                length = self._in_len[buf_id]
            return self._complete(buf_id, length, pos)
        if not self._is_used(self._desc16[pos * 8 + 7]):
            return None
        rmb()  # the used flags, then the id and length they published (2.8.9)
        _, length, buf_id = _ADDR_LEN_ID.unpack_from(self._desc, pos * 16)
        if buf_id >= self.size or self._tokens[buf_id] is None:
            self._break(DeviceFault(f"queue {self.index}: used id {buf_id} is not in flight"))
        if length > self._in_len[buf_id]:
            if not self._in_len[buf_id]:
                # Nothing to write, nothing to read back: DPDK's vhost (22.11) leaves a transmit
                # descriptor's len as the driver wrote it when it marks the buffer used.
                length = 0
            elif self.clamp_used_len:
                length = self._in_len[buf_id]
            else:
                self._break(DeviceFault(f"queue {self.index}: used len {length} > "
                                        f"{self._in_len[buf_id]} writable bytes of buffer {buf_id}"))
        if self.in_order:
            first = self._order.popleft()
            if first != buf_id:  # a batch: ``first`` up to ``buf_id`` are all used
                self._batch_last, self._batch_len = buf_id, length
                buf_id, length = first, self._in_len[first]
        return self._complete(buf_id, length, pos)

    def collect(self, mem: GuestMemory) -> list[tuple[Any, int]]:
        """Every used buffer there is now, as :meth:`get_bufs` returns them, the leading run of
        used descriptors of one-descriptor chains read as a batch: flags, then ids and lengths
        with one strided slice each (across the ring's end too).

        The batch path checks what :meth:`get_buf` checks (each id in range and in flight, not
        twice, each length within the buffer's writable bytes); a run failing any check, or
        holding a chain of several descriptors, goes through :meth:`get_bufs` instead — which
        breaks the queue with the same :class:`~pyvirtio.errors.DeviceFault` (or takes the
        length as :meth:`get_buf` does) at the same buffer — and so does whatever follows the run.
        With VIRTIO_F_IN_ORDER this is ``get_bufs``."""
        self._check(mem)
        n = min(self.outstanding, self.size)
        if self.in_order or self._batch_last >= 0 or not n:
            return self.get_bufs(mem)
        size, desc16, pos, wrap = self.size, self._desc16, self.last_used, self.used_wrap
        used = (_F_AVAIL | _F_USED) if wrap else 0
        first = min(n, size - pos)
        k = leading_run(desc16[8 * pos + 7:8 * (pos + first):8], used)
        k2 = 0
        if k == first < n:  # up to the ring's end: the next lap, with the other wrap counter
            k2 = leading_run(desc16[7:8 * (n - k):8], used ^ (_F_AVAIL | _F_USED))
        if not k:
            return self.get_bufs(mem)
        rmb()  # the used flags, then the ids and lengths they published (2.8.9)
        d32 = self._desc32
        ids = desc16[8 * pos + 6:8 * (pos + k):8].tolist()
        lens = d32[4 * pos + 2:4 * (pos + k):4].tolist()
        if k2:
            ids += desc16[6:8 * k2:8].tolist()
            lens += d32[2:4 * k2:4].tolist()
        total = len(ids)
        checked = self._used_batch(ids, lens, self._count)
        if checked is None:
            return self.get_bufs(mem)
        tokens, lens = checked
        tok = self._tokens
        low = ids[0]
        if ids == list(range(low, low + total)):
            tok[low:low + total] = [None] * total
        else:
            for buf_id in ids:
                tok[buf_id] = None
        self._free_ids += reversed(ids)  # the next adds take them in this order
        self.num_free += total
        self.outstanding -= total
        pos += total
        if pos >= size:
            pos -= size
            self.used_wrap ^= 1
        self.last_used = pos
        if self.event_idx and self.callbacks_enabled:
            self._driver16[0] = pos | (self.used_wrap << 15)
        out = list(zip(tokens, lens))
        if self.outstanding:
            out += self.get_bufs(mem)
        return out

    def _complete(self, buf_id: int, length: int, pos: int) -> tuple[Any, int]:
        token = self._tokens[buf_id]
        self._tokens[buf_id] = None
        count = self._count[buf_id]
        self.num_free += count
        self._free_ids.append(buf_id)
        self.outstanding -= 1
        pos += count
        if pos >= self.size:
            pos -= self.size
            self.used_wrap ^= 1
        self.last_used = pos
        if self.event_idx and self.callbacks_enabled:
            self._driver16[0] = pos | (self.used_wrap << 15)
        return token, length

    # --- interrupt suppression ------------------------------------------------------------------

    def disable_cb(self, mem: GuestMemory) -> None:
        """Ask the device not to notify (2.8.21: the driver event area's flags); it may still do
        so."""
        self._check(mem)
        self.callbacks_enabled = False
        self._driver16[1] = ring.RING_EVENT_FLAGS_DISABLE

    def enable_cb(self, mem: GuestMemory) -> bool:
        """Re-enable used-buffer notifications. Returns True if used buffers are already pending
        (work raced in: poll again instead of sleeping)."""
        self._check(mem)
        self.callbacks_enabled = True
        if self.event_idx:
            self._driver16[0] = self.last_used | (self.used_wrap << 15)
            self._driver16[1] = ring.RING_EVENT_FLAGS_DESC
        else:
            self._driver16[1] = ring.RING_EVENT_FLAGS_ENABLE
        mb()  # publish the change before re-checking for used buffers
        return self._batch_last >= 0 or self._is_used(self._desc16[self.last_used * 8 + 7])
