"""An in-memory back-end for tests: frames to hand to the device, and the frames it sent.

No fd: a test calls ``device.serve_backend()`` itself after queueing ``incoming`` frames.  With
``vnet_hdr`` the frames carry the 12-byte header both ways, as a TAP's do; ``blocked`` makes
``send`` refuse (would block), to exercise transmit back-pressure.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

from .backend import NetBackend, Views, copy_into, join_views


class MockBackend(NetBackend):
    kind = "mock"

    def __init__(self, frames: Iterable[bytes] = (), *, vnet_hdr: bool = False, offload_features: int = 0,
                 link_up: bool = True, can_wait: bool = True):
        super().__init__()
        self.can_wait = can_wait
        self.vnet_hdr = vnet_hdr
        self.offload_features = offload_features
        self.incoming: deque[bytes] = deque(frames)
        self.sent: list[bytes] = []
        self.blocked = False
        self.offloads_set: list[int] = []
        self._link = link_up

    def recv_into(self, views: Views) -> int | None:
        if not self.incoming:
            return None
        frame = self.incoming.popleft()
        copy_into(views, frame)
        self.stats["rx_frames"] += 1
        return len(frame)

    def send(self, views: Views) -> bool:
        if self.blocked:
            return False
        self.sent.append(join_views(views))
        self.stats["tx_frames"] += 1
        return True

    def set_offloads(self, features: int) -> None:
        self.offloads_set.append(features)

    @property
    def link_up(self) -> bool:
        return self._link and not self.closed

    def set_peer(self, up: bool) -> None:
        self._link = up
