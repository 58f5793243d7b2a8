"""What every virtqueue side shares: the broken flag, and re-binding ring views when the guest
memory object or its region set changes."""

from __future__ import annotations

import array
from itertools import repeat
from operator import gt, is_, itemgetter
from typing import Any, Callable, Iterable, NoReturn, Protocol, Sequence

from ..errors import QueueBroken, UsageError
from ..memory import GuestMemory
from .chain import DescriptorChain


class RingSide:
    """Base of the four queue classes (split/packed × device/driver).  Subclasses set ``index``
    and implement ``_bind(mem)``, which resolves the ring views and records ``_mem``/``_gen``."""

    index: int
    broken = False
    fault: Exception | None = None
    _mem: GuestMemory | None = None
    _gen = -1

    def _break(self, fault: Exception) -> NoReturn:
        """Mark the queue broken (every later call raises QueueBroken) and raise ``fault``."""
        self.broken = True
        self.fault = fault
        raise fault

    def _check(self, mem: GuestMemory) -> None:
        if self.broken:
            raise QueueBroken(f"queue {self.index} is broken: {self.fault}")
        if mem is not self._mem or mem.generation != self._gen:
            self._bind(mem)

    def clear_fault(self) -> None:
        """Forget the fault that broke the queue: the driver has set the ring up anew (a vhost-user
        front-end restarting a stopped ring, after a guest reset)."""
        self.broken = False
        self.fault = None

    def _bind(self, mem: GuestMemory) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class DeviceRingSide(RingSide):
    """The device side also refuses work on a queue the driver has not made ready."""

    ready = False
    size: int
    event_idx: bool

    def _described(self, layout: str, **positions: Any) -> dict[str, Any]:
        """What ``describe`` says of every ring, whatever its layout, then ``positions``."""
        return {"layout": layout, "index": self.index, "size": self.size, "ready": self.ready,
                "broken": self.broken, "fault": None if self.fault is None else str(self.fault),
                "event_idx": self.event_idx, **positions}

    def _check(self, mem: GuestMemory) -> None:
        if self.broken:
            raise QueueBroken(f"queue {self.index} is broken: {self.fault}")
        if not self.ready:
            raise UsageError(f"queue {self.index} is not ready")
        if mem is not self._mem or mem.generation != self._gen:
            self._bind(mem)


class DeviceQueue(Protocol):
    """The device side of one virtqueue, split or packed: what a device and a transport may use
    without knowing the layout (:class:`~.SplitDeviceQueue`, :class:`~.PackedDeviceQueue`).
    Addresses and indices are the layout's own: split ring parts and 16-bit indices, or the
    packed descriptor ring, driver/device event areas and ring positions."""

    index: int
    max_size: int
    size: int
    packed: bool
    desc_table: int
    avail_ring: int
    used_ring: int
    ready: bool
    next_avail: int
    next_used: int
    event_idx: bool
    indirect: bool
    in_order: bool
    broken: bool
    fault: Exception | None
    #: Counters (:class:`pyvirtio.stats.QueueCounters`), kept across resets by the device.
    stats: Any
    #: The layout's vhost-user inflight tracker (pyvirtio.vhost_user.backend.inflight) or None.
    inflight: Any
    #: Chains to pop again before the ring's own (the layout's form; see the tracker).
    resubmit: list[Any]

    def reset(self) -> None:
        """Forget the ring (a device or queue reset): size, addresses, indices and fault."""

    def set_size(self, size: int, /) -> None:
        """The queue size the driver chose (a power of two for split rings, 2.7; any up to max_size
        for packed)."""

    def set_addresses(self, desc_table: int, avail_ring: int, used_ring: int, /) -> None:
        """Where the ring's three parts live in guest memory (split: descriptor table, available
        and used rings; packed: descriptor ring, driver and device event areas)."""

    def set_features(self, event_idx: bool, indirect: bool, /) -> None:
        """The negotiated ring features: VIRTIO_F_EVENT_IDX and VIRTIO_F_INDIRECT_DESC."""

    def activate(self, mem: GuestMemory, /) -> None:
        """Check the ring fits ``mem`` and start serving it (the driver enabled the queue)."""

    def set_base(self, base: int, /) -> None:
        """Where to resume: the next available index (vhost-user SET_VRING_BASE; packed: with the
        wrap counters)."""

    def sync_used_from_ring(self, mem: GuestMemory, /) -> None:
        """Take the used index from the ring itself (a back-end taking over a ring another one
        served)."""

    def clear_fault(self) -> None:
        """Forget the fault that broke the queue (the driver set the ring up anew)."""

    def has_available(self, mem: GuestMemory, /) -> bool:
        """Whether the driver has made a chain available that was not popped yet."""

    def pop_descriptor_chain(self, mem: GuestMemory, /) -> DescriptorChain | None:
        """The next available chain (indirect tables followed, every bound checked), or None; a
        malformed chain breaks the queue with a :class:`~pyvirtio.errors.DriverFault`."""

    def pop_many(self, mem: GuestMemory, limit: int = 1 << 30, /) -> list[DescriptorChain]:
        """Up to ``limit`` available chains in one go."""

    def pop_direct(self, mem: GuestMemory, limit: int, /) -> tuple[list[int], list[int], list[memoryview]]:
        """The fast path: up to ``limit`` chains of one readable buffer each, as (heads, lengths,
        views)."""

    def pop_single(self, mem: GuestMemory, limit: int, /, *, writable: bool = False
                   ) -> tuple[list[int], list[int], list[int], memoryview]:
        """The batch path: up to ``limit`` chains of one buffer each, device-writable if
        ``writable`` else readable, as ``(heads, lengths, offsets, buf)`` — chain ``i``'s buffer
        is ``buf[offsets[i]:offsets[i] + lengths[i]]``, ``buf`` the one guest memory region of
        the batch; every descriptor checked as the general path checks it."""

    def add_used_lengths(self, mem: GuestMemory, heads: Sequence[int], lengths: Sequence[int], /) -> None:
        """Return the chains ``heads``, chain ``i`` with ``lengths[i]`` bytes written, published
        with one index update."""

    def add_used(self, mem: GuestMemory, head_index: int, length: int, /) -> None:
        """Return chain ``head_index`` to the driver with ``length`` bytes written (published at
        once)."""

    def add_used_batch(self, mem: GuestMemory, elems: Iterable[tuple[int, int]], /) -> None:
        """Return many ``(head, length)`` chains, published with one index update."""

    def add_used_heads(self, mem: GuestMemory, heads: Sequence[int], length: int = 0, /) -> None:
        """Return the chains ``heads``, each with ``length`` bytes written, published with one
        index update."""

    def needs_notification(self, mem: GuestMemory, /) -> bool:
        """Whether the driver wants a used-buffer notification for what was added since the last
        one (2.7.10, 2.8.10: event index or flags)."""

    def disable_notification(self, mem: GuestMemory, /) -> None:
        """Ask the driver not to kick (it may still do so)."""

    def enable_notification(self, mem: GuestMemory, /) -> bool:
        """Ask the driver to kick again; True when chains raced in meanwhile (so the caller drains
        again, not sleeps)."""

    def drain(self, mem: GuestMemory, handle: Callable[[DescriptorChain], int | None],
              settle: Callable[[], bool | None] | None = None, notify: Callable[[], None] | None = None,
              /) -> bool:
        """The one notification loop (:mod:`pyvirtio.virtq.drain`): pop every chain, ``handle``
        each (the bytes written, or None to keep it), re-enable and re-check; True when
        the driver is to be notified.  ``settle``, ``notify``: see
        :func:`~pyvirtio.virtq.drain.drain_queue`."""

    def in_flight(self) -> int:
        """How many chains were popped and not yet returned."""

    def describe(self, mem: GuestMemory, window: int = 8, /) -> dict[str, Any]:
        """The ring as both sides see it now, for a person (``pyvirtio ctl PATH ring N``);
        only reads, never breaks the queue."""


class DriverRingSide(RingSide):
    """What the split and packed driver sides share beyond the base: the constructor's common part
    (the negotiated ring features) and forgetting every chain after a reset."""

    _tokens: list
    _in_len: list

    def __init__(self, size: int, index: int = 0, event_idx: bool = False,
                 indirect_area: int | None = None, max_indirect: int = 0, in_order: bool = False):
        """A driver-side ring of ``size`` descriptors (the subclass has set ``layout`` first).

        ``event_idx`` and ``in_order`` say whether VIRTIO_F_EVENT_IDX and VIRTIO_F_IN_ORDER were
        negotiated; ``indirect_area`` is the guest address of ``max_indirect`` indirect-table
        entries per descriptor (``indirect_area_size`` bytes), or None for no indirect
        descriptors."""
        self.index = index
        self.size = size
        self.event_idx = event_idx
        self.in_order = in_order
        self.indirect_area = indirect_area
        self._indirect_base = indirect_area if indirect_area is not None else 0  # used when max_indirect
        self.max_indirect = max_indirect if indirect_area is not None else 0
        self.broken = False
        self.fault: Exception | None = None
        #: Take a used length above a chain's writable bytes as "all of them" instead of a device
        #: fault.  For devices known to count readable bytes in it: QEMU 7.2's virtio-scsi adds a
        #: command's data-out bytes (hw/scsi/virtio-scsi.c, virtio_scsi_complete_req).
        self.clamp_used_len = False
        self._mem, self._gen = None, -1
        self._init_state()

    def _single_args(self, addrs: Sequence[int], lengths: Sequence[int],
                     tokens: Sequence[Any]) -> tuple[array.array, array.array]:
        """``add_single``'s arguments checked before anything is written (one address and
        length per token, no None token, every address and length in range): the addresses and
        lengths as arrays, or :class:`~pyvirtio.errors.UsageError`."""
        n = len(tokens)
        if len(addrs) != n or len(lengths) != n:
            raise UsageError(f"queue {self.index}: add_single needs one address and length per token")
        if any(map(is_, tokens, repeat(None))):
            raise UsageError("token must not be None")
        try:
            return array.array("Q", addrs), array.array("I", lengths)
        except (OverflowError, TypeError):
            raise UsageError(f"queue {self.index}: add_single with a buffer out of range") from None

    def _used_batch(self, ids: list[int], lens: list[int],
                    counts: Sequence[int]) -> tuple[Sequence[Any], list[int]] | None:
        """``collect``'s checks of used ``(ids[i], lens[i])`` over the batch, as ``get_buf`` makes
        them one by one: each id in range and outstanding, of a one-descriptor chain
        (``counts``: descriptors per id), not twice; a length above the chain's writable bytes
        taken as all of them where ``get_buf`` takes it so.  Returns the tokens and lengths, or
        None: the batch goes to ``get_bufs``, which answers (or faults) chain by chain."""
        total = len(ids)
        if max(ids) >= self.size:
            return None
        if total > 1:
            get = itemgetter(*ids)
            tokens, in_lens, n = get(self._tokens), get(self._in_len), get(counts)
        else:
            i = ids[0]
            tokens, in_lens, n = (self._tokens[i],), (self._in_len[i],), (counts[i],)
        if any(map(is_, tokens, repeat(None))) or n.count(1) != total or len(set(ids)) != total:
            return None
        if any(map(gt, lens, in_lens)):  # get_buf's answer: nothing writable reads as 0, ...
            if not self.clamp_used_len and any(il for ln, il in zip(lens, in_lens) if ln > il):
                return None  # ... else a fault, which get_bufs raises at that chain
            lens = list(map(min, lens, in_lens))
        return tokens, lens

    @staticmethod
    def indirect_area_size(size: int, max_indirect: int) -> int:
        """Guest memory an indirect area needs: one table of ``max_indirect`` descriptors per head
        (16 bytes each, split and packed alike: 2.7.5, 2.8.13)."""
        return size * max_indirect * 16

    def _init_state(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_buf(self, mem: GuestMemory):  # pragma: no cover - abstract
        """The next used chain as ``(token, bytes written)``, or None; a device that lies (an id
        out of range, not a head) breaks the queue."""
        raise NotImplementedError

    def get_bufs(self, mem: GuestMemory) -> list[tuple[Any, int]]:
        """Every used chain there is now, as ``(token, bytes written)``."""
        out = []
        while (item := self.get_buf(mem)) is not None:
            out.append(item)
        return out

    def detach_unused(self) -> list[Any]:
        """Forget every outstanding chain (after a device reset); returns their tokens."""
        tokens = [t for t in self._tokens if t is not None]
        self._init_state()
        self.broken, self.fault = False, None
        self._mem, self._gen = None, -1
        return tokens
