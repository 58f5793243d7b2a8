"""Either ring layout as one type: what transports take, and the driver queue for a layout."""

from __future__ import annotations

from typing import Union

from .layout import SplitRingLayout
from .packed_driver import PackedDriverQueue, PackedRingLayout
from .split_driver import SplitDriverQueue

#: Where a split or a packed ring lives (the attribute names match, so transports pass either).
RingLayout = Union[SplitRingLayout, PackedRingLayout]
#: The driver side of a split or a packed ring.
DriverRing = Union[SplitDriverQueue, PackedDriverQueue]


def driver_queue(layout: RingLayout, *, index: int = 0, event_idx: bool = False,
                 indirect_area: int | None = None, max_indirect: int = 0, in_order: bool = False) -> DriverRing:
    """The driver queue for ``layout``'s kind of ring (set it up with ``setup(mem)``)."""
    if isinstance(layout, PackedRingLayout):
        return PackedDriverQueue(layout, index=index, event_idx=event_idx, indirect_area=indirect_area,
                                 max_indirect=max_indirect, in_order=in_order)
    return SplitDriverQueue(layout, index=index, event_idx=event_idx, indirect_area=indirect_area,
                            max_indirect=max_indirect, in_order=in_order)
