"""The value of an available buffer notification with VIRTIO_F_NOTIFICATION_DATA (VIRTIO 1.3, 2.9).

With the feature negotiated, a PCI (4.1.5.2) or MMIO (4.2.3.3) driver writes one 32-bit value::

    le32 { vqn : 16; next_off : 15; next_wrap : 1; }

``vqn`` is the queue index (or its ``queue_notif_config_data`` with VIRTIO_F_NOTIF_CONFIG_DATA).
Bits 16-31 — here the queue's *position* — say where the driver will write next: a split ring's
next avail index (all 16 bits), a packed ring's next descriptor offset and its wrap counter.

The device may use it; ours checks it against the ring (:func:`check_position`).  It is a hint,
never trusted over the ring itself: a position that names buffers the ring does not show
available is the driver's fault (logged, the kick still served), and a position *behind* the
device is allowed — Linux decides to kick under the queue lock but writes the notification
outside it, so two CPUs' notifications can arrive out of order.
"""

from __future__ import annotations

from ..errors import DriverFault
from ..memory import GuestMemory
from ..spec import ring

_FLAGS = 14  # offset of ``flags`` in a packed descriptor (2.8.13)


def encode(vqn: int, position: int) -> int:
    """The 32-bit notification value."""
    return (vqn & 0xFFFF) | (position & 0xFFFF) << 16


def decode(value: int) -> tuple[int, int]:
    """``(vqn, position)`` from a 32-bit notification value."""
    return value & 0xFFFF, (value >> 16) & 0xFFFF


def driver_position(vq) -> int:
    """Bits 16-31 for a driver-side queue: split, the next avail index (the shadow the driver
    publishes); packed, the next descriptor offset with the avail wrap counter in bit 15."""
    if getattr(vq, "packed", False):
        return vq.next_avail | vq.avail_wrap << 15
    return vq.avail_idx_shadow


def check_position(queue, mem: GuestMemory, position: int) -> DriverFault | None:
    """Whether the notified ``position`` agrees with device-side ``queue`` over ``mem``; returns
    the driver's fault if not (the caller logs it; the ring stays authoritative)."""
    if getattr(queue, "packed", False):
        return _check_packed(queue, mem, position)
    return _check_split(queue, mem, position)


def _check_split(queue, mem: GuestMemory, position: int) -> DriverFault | None:
    published = mem.load16(queue.avail_ring + 2)
    ahead = (position - published) & 0xFFFF
    if 0 < ahead < 0x8000:
        return DriverFault(f"queue {queue.index}: notification names avail index {position}, "
                           f"but the ring's idx is {published} (2.9)")
    return None


def _on_two_laps(offset: int, wrap_counter: int, size: int) -> int:
    """A packed ring position on the two laps a wrap counter tells apart (0 .. 2 * size - 1)."""
    return offset + (0 if wrap_counter else size)


def _check_packed(queue, mem: GuestMemory, position: int) -> DriverFault | None:
    size, off, wrap = queue.size, position & 0x7FFF, position >> 15
    if off >= size:
        return DriverFault(f"queue {queue.index}: notification offset {off} is past the "
                           f"{size}-entry ring (2.9)")
    where = _on_two_laps(off, wrap, size)
    ahead = (where - _on_two_laps(queue.next_avail, queue.avail_wrap, size)) % (2 * size)
    beyond_used = (where - _on_two_laps(queue.next_used, queue.used_wrap, size)) % (2 * size)
    if not ahead or ahead > size or beyond_used > size:
        # Nothing new, or behind the device: an old notification, checked late (the worker was
        # busy).  The driver can be at most a ring ahead of what the device returned (it reuses
        # only used slots): a position further on is one from a lap ago.
        return None
    last, last_wrap = (off - 1, wrap) if off else (size - 1, wrap ^ 1)
    flags = mem.load16(queue.desc_table + ring.PVIRTQ_DESC_SIZE * last + _FLAGS)
    avail, used = bool(flags & ring.VIRTQ_DESC_F_AVAIL), bool(flags & ring.VIRTQ_DESC_F_USED)
    if avail != bool(last_wrap) or used == bool(last_wrap):
        return DriverFault(f"queue {queue.index}: notification names position {off} (wrap "
                           f"{wrap}), but descriptor {last} before it is not available (2.9)")
    return None
