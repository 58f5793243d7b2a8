"""``--null``: a back-end that consumes every transmitted frame and never receives one
(benchmarks).

It does the work of a real consumer, not of a counter: the device has translated and checked
each descriptor and read each frame's virtio-net header (:mod:`pyvirtio.devices.net_txhdr`); the
back-end copies every frame out of guest memory into host memory — as DPDK's vhost dequeue
copies each frame into an mbuf before ``rxonly`` frees it — and then drops it.  A batch is
copied back to back into one host buffer (``bytes.join``: one C loop, no bytecode per frame).
"""

from __future__ import annotations

from operator import itemgetter

from .backend import NetBackend, Views


class NullBackend(NetBackend):
    kind = "null"

    def __init__(self) -> None:
        super().__init__()
        #: The frames last copied out of guest memory (one frame, or a batch back to back).
        self.frames = b""

    def send(self, views: Views) -> bool:
        self.frames = b"".join(views)
        self.stats["tx_frames"] += 1
        return True

    def send_batch(self, views: Views, skip: int) -> int:
        self.frames = b"".join(map(itemgetter(slice(skip, None)), views) if skip else views)
        self.stats["tx_frames"] += len(views)
        return len(views)
