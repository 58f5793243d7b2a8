"""The device side of MSI-X ([PCI] 6.8.2): the capability's control bits, the table and the PBA.

A vector fires by *sending a message*: a 32-bit ``data`` written to ``address``.  The function
hands the message to a callback ``send(address, data)`` (the platform's interrupt controller).
A masked vector (its entry's mask bit, or the function mask) is remembered in the Pending Bit
Array and sent when it is unmasked.  The table accepts any access a guest makes: bytes are
written through a mask (only bit 0 of Vector Control is writable), reads past the end are 0.
"""

from __future__ import annotations

import logging
from typing import Callable

from ..spec.pci import (MSIX_ENTRY, MSIX_ENTRY_CTRL_MASKBIT, MSIX_ENTRY_SIZE, MSIX_FLAGS_ENABLE,
                        MSIX_FLAGS_MASKALL, MsixEntry)
from ..platform.interface import check_access

log = logging.getLogger(__name__)

MsiSend = Callable[[int, int], None]

#: Writable bits of one table entry: address (dword aligned), upper address, data, mask bit.
_ENTRY_WMASK = (0xFFFFFFFC).to_bytes(4, "little") + b"\xff" * 8 + bytes((MSIX_ENTRY_CTRL_MASKBIT, 0, 0, 0))


class MsixTable:
    """``nvectors`` table entries, the PBA, and the enable / function-mask state."""

    def __init__(self, nvectors: int, send: MsiSend):
        if not 1 <= nvectors <= 0x800:
            raise ValueError(f"MSI-X table size {nvectors} is not 1..2048")
        self.nvectors = nvectors
        self.send = send
        self.table = bytearray(nvectors * MSIX_ENTRY_SIZE)
        self.pending = bytearray((nvectors + 63) // 64 * 8)
        self.enabled = False
        self.function_masked = False
        self.reset()

    @property
    def table_bytes(self) -> int:
        return len(self.table)

    @property
    def pba_bytes(self) -> int:
        return len(self.pending)

    def reset(self) -> None:
        """Every entry masked, nothing pending, MSI-X off ([PCI] 6.8.2.9: the reset state)."""
        for v in range(self.nvectors):
            MSIX_ENTRY.pack_into(self.table, v * MSIX_ENTRY_SIZE, 0, 0, 0, MSIX_ENTRY_CTRL_MASKBIT)
        self.pending[:] = bytes(len(self.pending))
        self.enabled = self.function_masked = False

    # --- capability message control -------------------------------------------------------------

    def set_control(self, control: int) -> None:
        """The driver wrote Message Control: enable and function mask."""
        self.enabled = bool(control & MSIX_FLAGS_ENABLE)
        self.function_masked = bool(control & MSIX_FLAGS_MASKALL)
        self._flush_pending()

    # --- firing ---------------------------------------------------------------------------------

    def entry(self, vector: int) -> tuple[int, int, int, int]:
        return MSIX_ENTRY.unpack_from(self.table, vector * MSIX_ENTRY_SIZE)

    def masked(self, vector: int) -> bool:
        return self.function_masked or bool(self.entry(vector)[3] & MSIX_ENTRY_CTRL_MASKBIT)

    def is_pending(self, vector: int) -> bool:
        return bool(self.pending[vector // 8] & (1 << (vector % 8)))

    def notify(self, vector: int) -> None:
        """Fire ``vector``: send its message, or mark it pending while masked.  Vectors outside
        the table are ignored (the function never maps an event to one, 4.1.5.1.2)."""
        if not self.enabled or not 0 <= vector < self.nvectors:
            return
        if self.masked(vector):
            self.pending[vector // 8] |= 1 << (vector % 8)
            return
        self._send(vector)

    def _send(self, vector: int) -> None:
        lo, hi, data, _ctrl = self.entry(vector)
        self.send((hi << 32) | lo, data)

    def _flush_pending(self) -> None:
        if not self.enabled:
            return
        for vector in range(self.nvectors):
            if self.is_pending(vector) and not self.masked(vector):
                self.pending[vector // 8] &= ~(1 << (vector % 8)) & 0xFF
                self._send(vector)

    # --- BAR accesses ---------------------------------------------------------------------------

    def table_read(self, offset: int, size: int) -> int:
        check_access(size)
        return _read_bytes(self.table, offset, size)

    def table_write(self, offset: int, size: int, value: int) -> None:
        check_access(size)
        raw = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        for i, b in enumerate(raw):
            pos = offset + i
            if 0 <= pos < len(self.table):
                m = _ENTRY_WMASK[pos % MSIX_ENTRY_SIZE]
                self.table[pos] = (self.table[pos] & ~m & 0xFF) | (b & m)
        if offset < len(self.table) and offset + size > MsixEntry.VECTOR_CTRL:
            self._flush_pending()  # an entry may have been unmasked

    def pba_read(self, offset: int, size: int) -> int:
        check_access(size)
        return _read_bytes(self.pending, offset, size)


def _read_bytes(buf: bytearray, offset: int, size: int) -> int:
    out = bytearray(size)
    lo, hi = max(offset, 0), min(offset + size, len(buf))
    if lo < hi:
        out[lo - offset:hi - offset] = buf[lo:hi]
    return int.from_bytes(out, "little")
