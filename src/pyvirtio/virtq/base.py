"""What every virtqueue side shares: the broken flag, and re-binding ring views when the guest
memory object or its region set changes."""

from __future__ import annotations

from typing import Any

from ..errors import QueueBroken, UsageError
from ..memory import GuestMemory


class RingSide:
    """Base of the four queue classes (split/packed × device/driver).  Subclasses set ``index``
    and implement ``_bind(mem)``, which resolves the ring views and records ``_mem``/``_gen``."""

    index: int
    broken = False
    fault: Exception | None = None
    _mem: GuestMemory | None = None
    _gen = -1

    def _break(self, fault: Exception):
        """Mark the queue broken (every later call raises QueueBroken) and raise ``fault``."""
        self.broken = True
        self.fault = fault
        raise fault

    def _check(self, mem: GuestMemory) -> None:
        if self.broken:
            raise QueueBroken(f"queue {self.index} is broken: {self.fault}")
        if mem is not self._mem or mem.generation != self._gen:
            self._bind(mem)

    def clear_fault(self) -> None:
        """Forget the fault that broke the queue: the driver has set the ring up anew (a vhost-user
        front-end restarting a stopped ring, after a guest reset)."""
        self.broken = False
        self.fault = None

    def _bind(self, mem: GuestMemory) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class DeviceRingSide(RingSide):
    """The device side also refuses work on a queue the driver has not made ready."""

    ready = False

    def _check(self, mem: GuestMemory) -> None:
        if self.broken:
            raise QueueBroken(f"queue {self.index} is broken: {self.fault}")
        if not self.ready:
            raise UsageError(f"queue {self.index} is not ready")
        if mem is not self._mem or mem.generation != self._gen:
            self._bind(mem)


class DriverRingSide(RingSide):
    """What the split and packed driver sides share beyond the base."""

    _tokens: list

    def _init_state(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_buf(self, mem: GuestMemory):  # pragma: no cover - abstract
        raise NotImplementedError

    def get_bufs(self, mem: GuestMemory) -> list[tuple[Any, int]]:
        """Every used chain there is now, as ``(token, bytes written)``."""
        out = []
        while (item := self.get_buf(mem)) is not None:
            out.append(item)
        return out

    def detach_unused(self) -> list[Any]:
        """Forget every outstanding chain (after a device reset); returns their tokens."""
        tokens = [t for t in self._tokens if t is not None]
        self._init_state()
        self.broken, self.fault = False, None
        self._mem, self._gen = None, -1
        return tokens
