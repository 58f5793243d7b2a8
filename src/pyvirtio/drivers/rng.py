"""Entropy driver (VIRTIO 1.3, 5.4): reads random bytes from any transport's entropy device."""

from __future__ import annotations

from ..driver import VirtioDriver
from ..spec.ids import DeviceType


class RngDriver(VirtioDriver):
    """The entropy driver (VIRTIO 1.3, 5.4): one request queue; :meth:`read` asks the device for
    random bytes."""

    id_table = (DeviceType.ENTROPY,)
    queue_size = 64

    def setup(self) -> None:
        self.requestq = self.create_queue(0)
        self.queues = [self.requestq]

    def read(self, n: int, chunk: int = 4096) -> bytes:
        """Exactly ``n`` random bytes (the device may hand back fewer per request: ask again)."""
        out = bytearray()
        while len(out) < n:
            want = min(chunk, n - len(out))
            out += self.requestq.call([], [want])
        return bytes(out)
