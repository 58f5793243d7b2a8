"""A scriptable device for driver tests: any type, features, config and per-queue behaviour.

``MockDevice(device_type=..., features=..., config=b"...", handlers={0: fn})`` — each handler
gets the chain and returns the bytes written (or None to complete later).  By default a queue
echoes its readable bytes into its writable buffers.  Tests that need a lying device override
``handle_chain`` or write the used ring by hand through ``queues[i]``.
"""

from __future__ import annotations

from typing import Callable

from ..device import VirtioDevice
from ..virtq import DescriptorChain


def echo(chain: DescriptorChain) -> int:
    data = chain.read()[:chain.writable_len]
    return chain.write(data) if data else 0


class MockDevice(VirtioDevice):
    def __init__(self, device_type: int = 0x7F, *, features: int = 0, config: bytes = b"",
                 num_queues: int = 1, queue_max_size: int = 64,
                 handlers: dict[int, Callable[[DescriptorChain], int | None]] | None = None,
                 accept_features: Callable[[int], bool] | None = None):
        self.device_type = device_type
        self.num_queues = num_queues
        self.queue_max_size = queue_max_size
        self.device_specific_features = features
        super().__init__()
        self.config = bytearray(config)
        self.handlers = handlers or {}
        self.chains: list[tuple[int, DescriptorChain]] = []
        self._accept = accept_features
        self.resets = 0

    def features_acceptable(self, features: int) -> bool:
        if self._accept is not None:
            return self._accept(features)
        return super().features_acceptable(features)

    def config_bytes(self) -> bytes:
        return bytes(self.config)

    def write_config(self, offset: int, data: bytes) -> None:
        if 0 <= offset and offset + len(data) <= len(self.config):
            self.config[offset:offset + len(data)] = data

    def set_config(self, offset: int, data: bytes) -> None:
        """Change the config as the device (bumps the generation, interrupts when running)."""
        self.config[offset:offset + len(data)] = data
        self.config_changed()

    def handle_chain(self, queue_index: int, chain: DescriptorChain) -> int | None:
        self.chains.append((queue_index, chain))
        return self.handlers.get(queue_index, echo)(chain)

    def on_reset(self) -> None:
        self.resets += 1
