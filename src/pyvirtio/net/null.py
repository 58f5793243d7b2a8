"""``--null``: a back-end that drops every transmitted frame and never receives one (benchmarks)."""

from __future__ import annotations

from .backend import NetBackend, Views


class NullBackend(NetBackend):
    kind = "null"
    sink = True  # the device does not even call send: it counts the frames itself

    def send(self, views: Views) -> bool:
        self.stats["tx_frames"] += 1
        return True
