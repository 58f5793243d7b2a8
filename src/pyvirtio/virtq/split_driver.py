"""The driver side of a split virtqueue (VIRTIO 1.3, 2.7), as a sans-I/O core.

Modelled on Linux ``virtio_ring.c``: :meth:`add` buffers with a caller token, :meth:`kick_prepare`
decides whether to notify (the caller does the notifying), :meth:`get_buf` returns the caller's
token with the bytes the device wrote, :meth:`enable_cb` tells whether work raced in.

The device is untrusted too: a used idx that jumps more than the queue size, a used id that is
not an outstanding head, or a used length above the chain's writable bytes (a chain with none
reads as 0) raises
:class:`~pyvirtio.errors.DeviceFault` and marks the queue broken.  The driver keeps shadow copies
of everything it owns (free list, indices) and never re-reads them from shared memory.

With VIRTIO_F_IN_ORDER (2.7.9, ``in_order=True``) the driver takes descriptors in ring order
(from 0, wrapping at the end of the table; a chain's ``next`` is the following slot), and the
device may return a batch of chains with one used entry: the id of the batch's *last* chain,
written at the slot of its first, and the used idx moved by the batch size.  Every chain before
that id is then complete, each with all its device-writable bytes (as Linux counts them); an id
that is not outstanding, or a batch longer than the used idx moved, is a device fault.
"""

from __future__ import annotations

import array
from collections import deque
from typing import Any, Sequence

from ..errors import DeviceFault, GuestMemoryError, QueueFull, UsageError
from ..fence import mb, rmb, wmb
from ..memory import GuestMemory
from ..spec import ring
from .base import DriverRingSide
from .event import vring_need_event
from .layout import SplitRingLayout, avail_ring_size, desc_table_size, used_ring_size

_DESC = ring.VIRTQ_DESC
_F_NEXT = ring.VIRTQ_DESC_F_NEXT
_F_WRITE = ring.VIRTQ_DESC_F_WRITE
_F_INDIRECT = ring.VIRTQ_DESC_F_INDIRECT

Buffer = tuple[int, int]  # (guest-physical address, length)


class SplitDriverQueue(DriverRingSide):
    """Driver-side state of one split virtqueue."""

    def __init__(self, layout: SplitRingLayout, *, index: int = 0, event_idx: bool = False,
                 indirect_area: int | None = None, max_indirect: int = 0, in_order: bool = False):
        """The driver's side of the split ring ``layout`` (the options: :class:`DriverRingSide`)."""
        self.layout = layout
        super().__init__(layout.size, index, event_idx, indirect_area, max_indirect, in_order)

    def _init_state(self) -> None:
        size = self.size
        self._next = [i + 1 for i in range(size)]  # shadow free list links
        if self.in_order:
            self._next[-1] = 0  # 2.7.9: descriptors are taken in ring order, wrapping at the end
        self._order: deque[int] = deque()  # IN_ORDER: outstanding heads, oldest first
        self._seq = [0] * size  # IN_ORDER: when each head was added (a running count)
        self._added_total = 0
        self._batch_last = -1  # IN_ORDER: the id closing the batch being collected, else -1
        self._batch_len = 0  # ... and the bytes the device wrote into that last chain
        self.free_head = 0
        self.num_free = size
        self._tokens: list[Any] = [None] * size
        self._chain_len = [0] * size  # ring descriptors a head holds
        self._in_len = [0] * size  # device-writable bytes a head offers
        self.avail_idx_shadow = 0
        self.kicked_avail = 0
        self.last_used = 0
        self.callbacks_enabled = True
        self.outstanding = 0  # chains added and not yet returned

    def setup(self, mem: GuestMemory) -> None:
        """Zero the ring's shared parts, ready to hand the addresses to the device."""
        self.broken, self.fault = False, None
        self._bind(mem)
        self._avail[:] = b"\0" * len(self._avail)
        self._used[:] = b"\0" * len(self._used)
        self._init_state()

    def _bind(self, mem: GuestMemory) -> None:
        if mem is self._mem and mem.generation == self._gen:
            return
        lay = self.layout
        try:
            self._desc = mem.view(lay.desc_table, desc_table_size(self.size))
            self._avail = mem.view(lay.avail_ring, avail_ring_size(self.size))
            self._used = mem.view(lay.used_ring, used_ring_size(self.size))
            if self.max_indirect:
                self._indirect = mem.view(self._indirect_base,
                                          self.indirect_area_size(self.size, self.max_indirect))
        except GuestMemoryError as exc:
            raise UsageError(f"queue {self.index}: ring is not in guest memory: {exc}") from None
        self._desc64 = self._desc.cast("Q")  # the batch path's field stores (add_single)
        self._desc32 = self._desc.cast("I")
        self._avail16 = self._avail.cast("H")
        self._used16 = self._used.cast("H")
        self._used32 = self._used[:4 + 8 * self.size].cast("I")
        self._mem, self._gen = mem, mem.generation



    # --- making buffers available ---------------------------------------------------------------

    def add(self, mem: GuestMemory, out_bufs: Sequence[Buffer], in_bufs: Sequence[Buffer],
            token: Any) -> int:
        """Expose device-readable ``out_bufs`` then device-writable ``in_bufs`` as one chain.

        Returns the head index; ``token`` (anything but None) comes back from :meth:`get_buf`."""
        self._check(mem)
        if token is None:
            raise UsageError("token must not be None")
        total = len(out_bufs) + len(in_bufs)
        if total == 0:
            raise UsageError("a chain needs at least one buffer")
        in_len = sum(length for _, length in in_bufs)
        for bufs in (out_bufs, in_bufs):
            for addr, length in bufs:
                if not (0 <= addr <= 0xFFFFFFFFFFFFFFFF and 0 <= length <= 0xFFFFFFFF):
                    raise UsageError(f"queue {self.index}: buffer ({addr:#x}, {length:#x}) out of range")
        if 1 < total <= self.max_indirect and self.num_free >= 1:
            head = self._add_indirect(out_bufs, in_bufs)
            used = 1
        else:
            if total > self.num_free:
                raise QueueFull(f"queue {self.index}: {total} descriptors needed, {self.num_free} free")
            head = self._add_direct(out_bufs, in_bufs, total)
            used = total
        self._tokens[head] = token
        self.outstanding += 1
        self._chain_len[head] = used
        if self.in_order:
            self._order.append(head)
            self._seq[head] = self._added_total
            self._added_total += 1
        self._in_len[head] = in_len
        avail16 = self._avail16
        avail16[2 + (self.avail_idx_shadow & (self.size - 1))] = head
        wmb()  # the descriptors and ring entry before the avail idx that publishes them (2.7.13)
        self.avail_idx_shadow = (self.avail_idx_shadow + 1) & 0xFFFF
        avail16[1] = self.avail_idx_shadow
        return head

    def add_single(self, mem: GuestMemory, addrs: Sequence[int], lengths: Sequence[int],
                   tokens: Sequence[Any], *, writable: bool = False) -> list[int]:
        """Expose a batch of chains of one buffer each, ``(addrs[i], lengths[i])`` with token
        ``tokens[i]``, device-writable if ``writable``: what :meth:`add` writes for each, with one
        slice store per descriptor field when the free descriptors are consecutive (as they are
        after :meth:`collect`), one avail ring store and one avail idx store.  Returns the heads.

        The whole batch or nothing: :class:`~pyvirtio.errors.QueueFull` when fewer than
        ``len(tokens)`` descriptors are free (``add`` one by one would add those that fit), and
        :class:`~pyvirtio.errors.UsageError` for a None token or an address or length out of
        range, before anything is written.  With VIRTIO_F_IN_ORDER the chains go through
        :meth:`add` one by one."""
        self._check(mem)
        n = len(tokens)
        addr_a, len_a = self._single_args(addrs, lengths, tokens)
        if not n:
            return []
        if self.in_order:
            if n > self.num_free:
                raise QueueFull(f"queue {self.index}: {n} descriptors needed, {self.num_free} free")
            no: list[Buffer] = []
            return [self.add(mem, no, [(a, ln)], t) if writable else self.add(mem, [(a, ln)], no, t)
                    for a, ln, t in zip(addrs, lengths, tokens)]
        if n > self.num_free:
            raise QueueFull(f"queue {self.index}: {n} descriptors needed, {self.num_free} free")
        size, nxt, first = self.size, self._next, self.free_head
        flag = _F_WRITE if writable else 0
        end = first + n
        if end <= size and nxt[first:end - 1] == list(range(first + 1, end)):
            ids: Sequence[int] = range(first, end)  # consecutive free descriptors: slice stores
            self.free_head = nxt[end - 1]
            self.num_free -= n
            self._desc64[2 * first:2 * end:2] = addr_a
            self._desc32[4 * first + 2:4 * end:4] = len_a
            self._desc32[4 * first + 3:4 * end:4] = array.array("I", (flag,)) * n  # flags, next 0
            self._tokens[first:end] = tokens
            self._chain_len[first:end] = [1] * n
            self._in_len[first:end] = len_a.tolist() if writable else [0] * n
        else:
            ids = self._take(n)
            pack, desc = _DESC.pack_into, self._desc
            tok, chain_len, in_len = self._tokens, self._chain_len, self._in_len
            for i, a, ln, t in zip(ids, addr_a, len_a, tokens):
                pack(desc, i * 16, a, ln, flag, 0)
                tok[i] = t
                chain_len[i] = 1
                in_len[i] = ln if writable else 0
        self.outstanding += n
        heads = array.array("H", ids)
        avail16, shadow = self._avail16, self.avail_idx_shadow
        slot = shadow & (size - 1)
        fit = min(n, size - slot)
        avail16[2 + slot:2 + slot + fit] = heads[:fit] if fit < n else heads
        if fit < n:  # wrapped around the ring
            avail16[2:2 + n - fit] = heads[fit:]
        wmb()  # the descriptors and ring entries before the avail idx that publishes them (2.7.13)
        self.avail_idx_shadow = (shadow + n) & 0xFFFF
        avail16[1] = self.avail_idx_shadow
        return list(ids)

    def _take(self, n: int) -> list[int]:
        ids, idx = [], self.free_head
        nxt = self._next
        for _ in range(n):
            ids.append(idx)
            idx = nxt[idx]
        self.free_head = idx
        self.num_free -= n
        return ids

    def _add_direct(self, out_bufs, in_bufs, total) -> int:
        ids = self._take(total)
        desc = self._desc
        pos = 0
        for bufs, wflag in ((out_bufs, 0), (in_bufs, _F_WRITE)):
            for addr, length in bufs:
                i = ids[pos]
                pos += 1
                if pos < total:
                    _DESC.pack_into(desc, i * 16, addr, length, wflag | _F_NEXT, ids[pos])
                else:
                    _DESC.pack_into(desc, i * 16, addr, length, wflag, 0)
        return ids[0]

    def _add_indirect(self, out_bufs, in_bufs) -> int:
        head = self._take(1)[0]
        table_off = head * self.max_indirect * 16
        table = self._indirect
        total = len(out_bufs) + len(in_bufs)
        pos = 0
        for bufs, wflag in ((out_bufs, 0), (in_bufs, _F_WRITE)):
            for addr, length in bufs:
                pos += 1
                flags = wflag | _F_NEXT if pos < total else wflag
                _DESC.pack_into(table, table_off + (pos - 1) * 16, addr, length, flags, pos)
        _DESC.pack_into(self._desc, head * 16, self._indirect_base + table_off, total * 16, _F_INDIRECT, 0)
        return head

    def kick_prepare(self, mem: GuestMemory) -> bool:
        """Whether the device wants a notification for the buffers added since the last call."""
        self._check(mem)
        old, new = self.kicked_avail, self.avail_idx_shadow
        self.kicked_avail = new
        if old == new:
            return False
        mb()  # the avail idx store must be visible before we read avail_event / flags
        if self.event_idx:
            avail_event = self._used16[2 + 4 * self.size]
            return vring_need_event(avail_event, new, old)
        return not self._used16[0] & ring.VIRTQ_USED_F_NO_NOTIFY

    # --- collecting used buffers ----------------------------------------------------------------

    def has_used(self, mem: GuestMemory) -> bool:
        """Whether the device has returned a buffer not yet taken with :meth:`get_buf` (the used
        index moved)."""
        self._check(mem)
        return self._used16[1] != self.last_used

    def get_buf(self, mem: GuestMemory) -> tuple[Any, int] | None:
        """The next used chain as ``(token, bytes written)``, or None."""
        self._check(mem)
        used_idx = self._used16[1]
        last = self.last_used
        if used_idx == last:
            return None
        ahead = (used_idx - last) & 0xFFFF
        if ahead > self.size:
            self._break(DeviceFault(f"queue {self.index}: used idx {used_idx} jumped past {last} "
                                    f"by more than {self.size}"))
        rmb()  # the used idx, then the elements it published (2.7.8)
        if self.in_order:
            head, length = self._next_in_order(last, ahead)
        else:
            slot = (last & (self.size - 1)) * 2
            head, length = self._used32[1 + slot], self._used32[2 + slot]
            length = self._check_used(head, length)
        token = self._tokens[head]
        self._free_chain(head)
        self.last_used = (last + 1) & 0xFFFF
        if self.event_idx and self.callbacks_enabled:
            self._avail16[2 + self.size] = self.last_used  # used_event
        return token, length

    def collect(self, mem: GuestMemory) -> list[tuple[Any, int]]:
        """Every used chain there is now, as :meth:`get_bufs` returns them, read as a batch: the
        used entries with one slice read, their tokens and lengths gathered at once.

        The batch path checks what :meth:`get_buf` checks (the used idx at most the queue size
        ahead, each id an outstanding head, not twice, each length at most the chain's writable
        bytes — or taken as all of them, as ``get_buf`` takes it for a chain with none or with
        ``clamp_used_len``); a batch that fails any check, or holds a chain of several
        descriptors, goes through :meth:`get_bufs` instead — which breaks the queue with the
        same :class:`~pyvirtio.errors.DeviceFault` at the same chain.  The
        freed descriptors go back to the free list in used order (``get_bufs`` pushes them one
        by one, so its next adds take them in reverse order); with VIRTIO_F_IN_ORDER this is
        ``get_bufs``."""
        self._check(mem)
        size, last = self.size, self.last_used
        ahead = (self._used16[1] - last) & 0xFFFF
        if not ahead or ahead > size or self.in_order:
            return self.get_bufs(mem)
        rmb()  # the used idx, then the elements it published (2.7.8)
        slot = last & (size - 1)
        fit = min(ahead, size - slot)
        used32 = self._used32
        ids = used32[1 + 2 * slot:1 + 2 * (slot + fit):2].tolist()
        lens = used32[2 + 2 * slot:2 + 2 * (slot + fit):2].tolist()
        if fit < ahead:  # wrapped around the ring
            ids += used32[1:1 + 2 * (ahead - fit):2].tolist()
            lens += used32[2:2 + 2 * (ahead - fit):2].tolist()
        checked = self._used_batch(ids, lens, self._chain_len)
        if checked is None:
            return self.get_bufs(mem)
        tokens, lens = checked
        first, nxt = ids[0], self._next
        end = first + ahead
        if ids == list(range(first, end)):
            nxt[first:end - 1] = range(first + 1, end)
            nxt[end - 1] = self.free_head
            self._tokens[first:end] = [None] * ahead
        else:
            ids.append(self.free_head)
            for head, after in zip(ids, ids[1:]):
                nxt[head] = after
            del ids[-1]
            tok = self._tokens
            for head in ids:
                tok[head] = None
        self.free_head = first
        self.num_free += ahead
        self.outstanding -= ahead
        self.last_used = (last + ahead) & 0xFFFF
        if self.event_idx and self.callbacks_enabled:
            self._avail16[2 + size] = self.last_used  # used_event
        return list(zip(tokens, lens))

    def _check_used(self, head: int, length: int) -> int:
        """The used length to hand back (a device fault breaks the queue).  A chain without
        writable bytes reads as 0 whatever the device wrote: nothing can be read back, and QEMU
        7.2's virtio-input statusq (like DPDK's vhost transmit, see ``packed_driver``) credits
        the bytes it read."""
        if head >= self.size or self._tokens[head] is None:
            self._break(DeviceFault(f"queue {self.index}: used id {head} is not an outstanding head"))
        if length > self._in_len[head]:
            if not self._in_len[head] or self.clamp_used_len:
                return self._in_len[head]
            self._break(DeviceFault(f"queue {self.index}: used len {length} > {self._in_len[head]} "
                                    f"writable bytes of head {head}"))
        return length

    def _next_in_order(self, last: int, ahead: int) -> tuple[int, int]:
        """IN_ORDER (2.7.9): the oldest outstanding head and what the device wrote into it.  A
        used entry is read only where a batch starts; its id closes the batch."""
        if self._batch_last < 0:
            slot = (last & (self.size - 1)) * 2
            head, length = self._used32[1 + slot], self._used32[2 + slot]
            length = self._check_used(head, length)
            if not self._order:  # pragma: no cover - an outstanding head is in the order
                self._break(DeviceFault(f"queue {self.index}: used id {head} with nothing in flight"))
            batch = self._seq[head] - self._seq[self._order[0]] + 1
            if batch > ahead:
                self._break(DeviceFault(f"queue {self.index}: used id {head} closes a batch of "
                                        f"{batch} chains but the used idx moved by {ahead}"))
            self._batch_last, self._batch_len = head, length
        head = self._order.popleft()
        if head != self._batch_last:
            return head, self._in_len[head]  # inside a batch: the whole buffer was used
        self._batch_last = -1
        return head, self._batch_len

    def _free_chain(self, head: int) -> None:
        n = self._chain_len[head]
        if self.in_order:  # the oldest chain: its descriptors follow the free ones in ring order
            self.num_free += n
            self._tokens[head] = None
            self.outstanding -= 1
            return
        nxt = self._next
        tail = head
        for _ in range(n - 1):  # a chain was taken from the free list in order: links still hold
            tail = nxt[tail]
        nxt[tail] = self.free_head
        self.free_head = head
        self.num_free += n
        self._tokens[head] = None
        self.outstanding -= 1


    # --- interrupt suppression ------------------------------------------------------------------

    def disable_cb(self, mem: GuestMemory) -> None:
        """Ask the device not to notify (2.7.7: VIRTQ_AVAIL_F_NO_INTERRUPT, or the used event
        index); it may still do so."""
        self._check(mem)
        self.callbacks_enabled = False
        if self.event_idx:
            # Park used_event half the index space away: the device will not cross it.
            self._avail16[2 + self.size] = (self.last_used + 0x8000) & 0xFFFF
        else:
            self._avail16[0] = ring.VIRTQ_AVAIL_F_NO_INTERRUPT

    def enable_cb(self, mem: GuestMemory) -> bool:
        """Re-enable used-buffer notifications.  Returns True if used buffers are already
        pending (work raced in: poll again instead of sleeping)."""
        self._check(mem)
        self.callbacks_enabled = True
        if self.event_idx:
            self._avail16[2 + self.size] = self.last_used
        else:
            self._avail16[0] = 0
        mb()  # publish used_event / flags before re-reading the used idx
        return self._used16[1] != self.last_used
