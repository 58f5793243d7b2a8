"""Entropy device (VIRTIO 1.3, 5.4): fills device-writable buffers from the host's CSPRNG.

One queue (requestq), no device-specific features, no config; requests complete in the order
they came (VIRTIO_F_IN_ORDER is offered).  The entropy is private to the guest that asked
(a fresh read per request; nothing is shared or replayed)."""

from __future__ import annotations

import os

from ..device import VirtioDevice
from ..spec.ids import DeviceType
from ..virtq import DescriptorChain

#: Bytes served per request at most (the Linux driver asks for up to a page or so).
MAX_REQUEST = 64 * 1024


class RngDevice(VirtioDevice):
    device_type = DeviceType.ENTROPY
    num_queues = 1
    completes_in_order = True

    def __init__(self, source=os.getrandom):
        super().__init__()
        self._source = source

    def handle_chain(self, queue_index: int, chain: DescriptorChain) -> int:
        want = min(chain.writable_len, MAX_REQUEST)  # 5.4.6: the device MUST NOT write more than
        if want == 0:
            return 0
        return chain.write(self._source(want))
