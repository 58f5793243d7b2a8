"""Interrupts as callbacks carrying what happened, not IRQ numbers (the seed thread's ask)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Interrupt:
    """A device-to-driver notification: a used buffer on ``queue``, or a config change."""

    queue: int | None = None  # the virtqueue with new used buffers; None for a config change

    @property
    def config_changed(self) -> bool:
        """Whether this is a configuration change notification (not a queue's)."""
        return self.queue is None


CONFIG_CHANGE = Interrupt(None)

InterruptHandler = Callable[[Interrupt], None]
