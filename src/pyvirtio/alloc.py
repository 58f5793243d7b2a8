"""A small allocator of guest-physical memory for the driver side (rings, request buffers)."""

from __future__ import annotations

import bisect
import threading
from typing import Protocol

from .errors import UsageError


class Allocator(Protocol):
    """What a transport allocates guest memory with: :class:`GuestAllocator` over one range, or
    one per region (vhost-user's ``RegionAllocator``)."""

    def alloc(self, size: int, align: int = 16) -> int:
        """``size`` bytes of guest memory aligned to ``align``; returns the guest-physical address."""

    def free(self, addr: int) -> None:
        """Give back the block at ``addr``."""

    @property
    def free_bytes(self) -> int:
        """How many bytes are still free."""


class GuestAllocator:
    """First-fit allocator over ``[base, base+size)`` with coalescing frees.  Thread-safe."""

    def __init__(self, base: int, size: int):
        self.base, self.size = base, size
        self._free: list[tuple[int, int]] = [(base, size)]  # sorted (addr, length)
        self._used: dict[int, int] = {}
        self._lock = threading.Lock()

    def alloc(self, size: int, align: int = 16) -> int:
        """``size`` bytes aligned to ``align`` (a power of two), first fit; raises
        :class:`~pyvirtio.errors.UsageError` when nothing fits."""
        if size <= 0 or align <= 0 or align & (align - 1):
            raise UsageError(f"bad allocation size={size} align={align}")
        with self._lock:
            for i, (addr, length) in enumerate(self._free):
                start = (addr + align - 1) & ~(align - 1)
                end = start + size
                if end <= addr + length:
                    pieces = []
                    if start > addr:
                        pieces.append((addr, start - addr))
                    if end < addr + length:
                        pieces.append((end, addr + length - end))
                    self._free[i:i + 1] = pieces
                    self._used[start] = size
                    return start
        raise UsageError(f"guest memory exhausted: no {size} bytes free (align {align})")

    def free(self, addr: int) -> None:
        """Give back the block at ``addr`` (merged with free neighbours)."""
        with self._lock:
            size = self._used.pop(addr, None)
            if size is None:
                raise UsageError(f"free of {addr:#x}, which was not allocated")
            i = bisect.bisect_left(self._free, (addr, 0))
            self._free.insert(i, (addr, size))
            # coalesce with the neighbours
            if i + 1 < len(self._free) and addr + size == self._free[i + 1][0]:
                self._free[i] = (addr, size + self._free[i + 1][1])
                del self._free[i + 1]
            if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == addr:
                self._free[i - 1] = (self._free[i - 1][0], self._free[i - 1][1] + self._free[i][1])
                del self._free[i]

    @property
    def free_bytes(self) -> int:
        """How many bytes are still free (in however many pieces)."""
        return sum(length for _, length in self._free)
