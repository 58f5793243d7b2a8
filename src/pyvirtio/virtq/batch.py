"""What the split and packed batch pops (``pop_direct``) share: turning a batch of buffer
addresses into checked guest-memory views.

A batch pop takes chains of one device-readable descriptor each (a transmit queue's) without a
:class:`~pyvirtio.virtq.chain.DescriptorChain` per chain, but it checks every descriptor as the
general path does: its shape (flags), its length and its buffer, translated through the guest
memory (``GuestMemory.view``) so that a buffer outside guest memory is a
:class:`~pyvirtio.errors.GuestMemoryError` — which the queue turns into a
:class:`~pyvirtio.errors.DriverFault` that breaks it — and never passes unread.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import GuestMemoryError
from ..memory import GuestMemory


def readable_views(mem: GuestMemory, addrs: Sequence[int], lengths: Sequence[int]) -> list[memoryview]:
    """One view per buffer ``(addrs[i], lengths[i])``, each translated and checked.

    Fewer views than buffers when buffer ``i`` is mapped but crosses from one memory region
    into the next (valid, but not one view): the caller ends its batch before that chain and
    the general path takes it.  Raises GuestMemoryError for a buffer not wholly mapped."""
    try:
        return list(map(mem.view, addrs, lengths))  # C-level loop; the usual case
    except GuestMemoryError:
        pass
    out = []
    for addr, length in zip(addrs, lengths):
        try:
            out.append(mem.view(addr, length))
        except GuestMemoryError:
            mem.check(addr, length)  # raises unless every byte is mapped
            break
    return out
