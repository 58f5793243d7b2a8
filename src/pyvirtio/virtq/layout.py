"""Where the three parts of a split ring live in guest memory (VIRTIO 1.3, 2.7)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import UsageError
from ..spec import ring


def align_up(value: int, alignment: int) -> int:
    """``value`` rounded up to a multiple of ``alignment`` (a power of two)."""
    return (value + alignment - 1) & ~(alignment - 1)


_TABLES: dict[int, struct.Struct] = {}


def descriptor_table_fields(table, count: int) -> tuple[int, ...]:
    """The ``count`` 16-byte descriptors of an indirect table (split or packed: both are
    ``<QIHH``), read at once as one flat tuple: descriptor ``i``'s addr, len, flags and next (or
    id) are items ``4i`` to ``4i + 3``.  (One Struct per table length, made on first use; not
    ``struct.iter_unpack``, whose iterator, caught in a reference cycle while it holds the
    table's buffer, crashed CPython 3.11's garbage collector.)"""
    unpacker = _TABLES.get(count)
    if unpacker is None:
        unpacker = _TABLES[count] = struct.Struct("<" + "QIHH" * count)
    return unpacker.unpack_from(table)


def unpack_descriptor_table(table, count: int) -> list[tuple[int, int, int, int]]:
    """:func:`descriptor_table_fields` as one ``(addr, len, flags, next)`` tuple per descriptor."""
    fields = iter(descriptor_table_fields(table, count))
    return list(zip(fields, fields, fields, fields))


def desc_table_size(size: int) -> int:
    """Bytes of a split ring's descriptor table for ``size`` descriptors (2.7.5)."""
    return ring.VIRTQ_DESC_SIZE * size


def avail_ring_size(size: int) -> int:
    """Bytes of a split ring's available ring for ``size`` entries, used_event included (2.7.6)."""
    return 6 + 2 * size  # flags, idx, ring[size], used_event


def used_ring_size(size: int) -> int:
    """Bytes of a split ring's used ring for ``size`` entries, avail_event included (2.7.8)."""
    return 6 + ring.VIRTQ_USED_ELEM_SIZE * size  # flags, idx, ring[size], avail_event


def is_valid_split_size(size: int) -> bool:
    """Split queue sizes are powers of two, at most 32768 (2.7)."""
    return 0 < size <= ring.SPLIT_QUEUE_MAX_SIZE and size & (size - 1) == 0


@dataclass(frozen=True)
class SplitRingLayout:
    """Guest-physical addresses of a split ring's descriptor table, driver and device areas."""

    size: int
    desc_table: int
    avail_ring: int
    used_ring: int

    @classmethod
    def contiguous(cls, base: int, size: int, used_align: int = ring.VIRTQ_USED_ALIGN) -> "SplitRingLayout":
        """Place the three parts one after another from ``base`` (16-byte aligned)."""
        if not is_valid_split_size(size):
            raise UsageError(f"split queue size {size} is not a power of two <= 32768")
        if base % ring.VIRTQ_DESC_ALIGN:
            raise UsageError("descriptor table must be 16-byte aligned")
        avail = base + desc_table_size(size)
        used = align_up(avail + avail_ring_size(size), used_align)
        return cls(size, base, avail, used)

    @staticmethod
    def bytes_needed(size: int, used_align: int = ring.VIRTQ_USED_ALIGN) -> int:
        """Guest memory a split ring of ``size`` descriptors takes, laid out contiguously with the
        spec's alignments."""
        avail_end = desc_table_size(size) + avail_ring_size(size)
        return align_up(avail_end, used_align) + used_ring_size(size)

    @property
    def end(self) -> int:
        """The first guest address past the ring's last part."""
        return self.used_ring + used_ring_size(self.size)
