"""``--null``: a back-end that consumes every transmitted frame and never receives one
(benchmarks).

It does the work of a real consumer, not of a counter: the device has translated and checked
each descriptor and read each frame's virtio-net header (:mod:`pyvirtio.devices.net_txhdr`); the
back-end copies every frame out of guest memory into host memory — as DPDK's vhost dequeue
copies each frame into an mbuf before ``rxonly`` frees it — and then drops it.  A batch of views
is copied back to back into one host buffer (``bytes.join``: one C loop, no bytecode per frame);
a batch the device hands over as arrays (:meth:`send_readable`, numpy) is copied with one gather
per frame length into host arrays, an item of that length per frame (one ``memcpy`` each, as a
pool of fixed-size buffers holds them), with no Python object per frame.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from ..virtq import vector
from ..virtq.vector import ReadableBatch
from .backend import NetBackend, Views

#: Frame lengths one array batch is copied in, at most (one gather each); a batch of more
#: different lengths is copied as views.
MAX_LENGTH_GROUPS = 8


class NullBackend(NetBackend):
    kind = "null"

    def __init__(self) -> None:
        super().__init__()
        self._joined = b""
        #: the last array batch's copies: ``(which frames, rows)`` per frame length
        self._groups: list[tuple[Any, Any]] | None = None

    @property
    def frames(self) -> bytes:
        """The frames last copied out of guest memory (one frame, or a batch back to back)."""
        if self._groups is None:
            return self._joined
        if len(self._groups) == 1:
            return self._groups[0][1].tobytes()
        order: dict[int, bytes] = {}
        for where, rows in self._groups:
            order.update(zip(where.tolist(), map(bytes, rows)))
        return b"".join(order[i] for i in sorted(order))

    def send(self, views: Views) -> bool:
        self._joined, self._groups = b"".join(views), None
        self.stats["tx_frames"] += 1
        return True

    def send_batch(self, views: Views, skip: int) -> int:
        self._joined = b"".join(map(itemgetter(slice(skip, None)), views) if skip else views)
        self._groups = None
        self.stats["tx_frames"] += len(views)
        return len(views)

    def send_readable(self, batch: ReadableBatch, skip: int) -> int:
        lengths, offsets, region = batch.lengths, batch.offsets, batch.region
        shortest, longest = batch.bounds()
        if shortest == longest:
            self._groups = [(None, vector.gather_rows(region, offsets, shortest - skip, skip))]
        else:
            kinds = vector.np.unique(lengths).tolist()
            if len(kinds) > MAX_LENGTH_GROUPS:
                return self.send_batch(batch.views(), skip)
            groups = []
            for length in kinds:
                where = vector.np.flatnonzero(lengths == length)
                groups.append((where, vector.gather_rows(region, offsets[where], length - skip, skip)))
            self._groups = groups
        self.stats["tx_frames"] += len(lengths)
        return len(lengths)
