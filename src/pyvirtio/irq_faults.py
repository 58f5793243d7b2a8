"""Notification faults for any device on any transport: the engine's one hook (issue 16).

Every used-buffer notification a device asks for leaves a turn of its group's
:class:`~pyvirtio.engine.GroupWorker` — loopback, the PCI and MMIO models and vhost-user alike —
so the rules ``irq-drop``, ``irq-delay``, ``irq-spurious`` and ``needs-reset``
(:mod:`pyvirtio.faults`) are applied there, once, by an :class:`IrqFaults` the worker makes when
the device first has such a rule.  The worker watches :attr:`IrqFaults.fd` (a timerfd) while a
delayed or spurious notification is pending and sends what :meth:`IrqFaults.due` returns.
"""

from __future__ import annotations

import time
from typing import Sequence

from .faults import FaultRule, FaultSet, InjectedFault
from .timerfd import DueQueue

_RESET = frozenset({"needs-reset"})
_DROP = frozenset({"irq-drop"})
_DELAY = frozenset({"irq-delay"})


class IrqFaults:
    """The notification rules as one group's worker applies them (owned by that worker)."""

    def __init__(self, device, faults: FaultSet, queues: Sequence[int]):
        self.device = device
        self.faults = faults
        self.queues = tuple(queues)
        # Items: a queue index (a delayed notification) or a spurious rule (its next tick).
        self._due: DueQueue[int | FaultRule] = DueQueue()
        self._ticking: set[int] = set()  # ids of the spurious rules scheduled

    @property
    def fd(self) -> int:
        return self._due.fd

    def filter(self, notify: list[int], now: float | None = None) -> list[int]:
        """Of the notifications a turn asks for, those to send now; the rest are dropped or
        held (``irq-delay``).  ``needs-reset`` puts the device in DEVICE_NEEDS_RESET."""
        faults = self.faults
        out: list[int] = []
        for index in notify:
            for rule in faults.firing(_RESET, queue=index):
                if self.device is not None:
                    self.device.needs_reset(InjectedFault(f"fault rule #{rule.id} {rule.describe()}"))
            if faults.firing(_DROP, queue=index):
                continue
            delayed = faults.firing(_DELAY, queue=index)
            if delayed:
                at = (time.monotonic() if now is None else now) + max(r.sample_delay() for r in delayed)
                self._due.push(at, index)
                continue
            out.append(index)
        return out

    def sync(self, now: float | None = None) -> None:
        """Schedule spurious rules added since the last look (the worker was woken)."""
        now = time.monotonic() if now is None else now
        live = {r.id for r in self.faults.irq if r.kind == "irq-spurious"}
        for rule in self.faults.irq:
            if rule.kind == "irq-spurious" and rule.id not in self._ticking and not rule.spent:
                self._ticking.add(rule.id)
                self._due.push(now + rule.every_ms / 1000.0, rule)
        self._ticking &= live

    def due(self, now: float | None = None) -> list[int]:
        """The timer fired: delayed notifications now due, and one per queue of each spurious
        rule that ticked (rescheduled while the rule is still there)."""
        now = time.monotonic() if now is None else now
        out: list[int] = []
        live = {r.id for r in self.faults.irq}
        for item in self._due.pop_due(now):
            if isinstance(item, int):
                out.append(item)
                continue
            if item.id not in live or item.spent:
                self._ticking.discard(item.id)
                continue
            for index in self.queues:
                if item.matches(queue=index) and item.trigger():
                    self.faults.fired(item, index)
                    out.append(index)
            self._due.push(now + item.every_ms / 1000.0, item)
        return out

    def close(self) -> None:
        self._due.close()


__all__ = ["IrqFaults"]
