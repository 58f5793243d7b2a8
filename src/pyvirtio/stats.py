"""Per-queue counters, and a device's statistics as plain data (issue 16, "Live control").

Every device-side virtqueue carries one :class:`QueueCounters`; the device keeps it across a
ring-layout change and a device reset (so rates computed from successive snapshots never go
backwards while a daemon lives).  Each counter is bumped where the thing happens, by the one
thread that owns the queue at that moment (its engine worker, or a thread holding the worker's
lock), with one integer increment — no lookup on the data path:

==============  ==================================================================  ====================
counter         what                                                                counted by
==============  ==================================================================  ====================
chains          descriptor chains popped (resubmitted ones included)               the device queue
bytes_read      device-readable bytes of those chains (what the driver offered)    the device queue
bytes_written   used lengths returned (what the device wrote for the driver)       the device queue
kicks           driver notifications served (a kick eventfd read, a register       the engine
                write); eventfds coalesce, so several kicks may count once
interrupts      used-buffer notifications sent to the driver                       the engine, and the
                                                                                    device's deferred
                                                                                    completions
errors          faults that broke the queue (a hostile ring, memory outside the     the engine, the
                guest's), and requests the device failed where it can tell the      vhost-user back-end,
                queue (see the device's own ``stats`` for its totals)               devices
==============  ==================================================================  ====================

In flight (popped, not yet returned) is read from the queue itself.  Another thread (the control
socket's) reads the counters without a lock: each is one Python int, so a snapshot is exact per
counter though not atomic across counters.

:func:`device_statistics` turns a device into the dict the control socket's ``stats`` command
returns (``VirtioDevice.statistics()`` calls it); :func:`queue_statistics` does one queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .device import VirtioDevice

#: The counters, in the order ``stats`` shows them.
COUNTERS = ("chains", "bytes_read", "bytes_written", "kicks", "interrupts", "errors")


class QueueCounters:
    """The counters of one queue (see the module doc for who bumps which)."""

    __slots__ = COUNTERS

    def __init__(self) -> None:
        self.chains = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.kicks = 0
        self.interrupts = 0
        self.errors = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}

    def __repr__(self) -> str:
        return "QueueCounters(" + ", ".join(f"{k}={v}" for k, v in self.as_dict().items()) + ")"


def queue_statistics(queue: Any) -> dict[str, Any]:
    """One device queue's counters and state, as plain data."""
    out: dict[str, Any] = {"index": queue.index, "size": queue.size, "ready": bool(queue.ready),
                           "layout": "packed" if queue.packed else "split",
                           "broken": bool(queue.broken)}
    out.update(queue.stats.as_dict())
    try:
        out["in_flight"] = int(queue.in_flight())
    except Exception:  # a snapshot from another thread must never fail the whole answer
        out["in_flight"] = 0
    if queue.broken and queue.fault is not None:
        out["fault"] = str(queue.fault)
    return out


def feature_names(device: "VirtioDevice", mask: int) -> list[str]:
    """Names of the bits of ``mask``: the reserved ones by name, the device's own as ``bit N``."""
    from .spec.features import Feature
    names = []
    bit = 0
    while mask >> bit:
        if mask >> bit & 1:
            try:
                names.append(Feature(bit).name)
            except ValueError:
                names.append(_device_feature_name(device, bit))
        bit += 1
    return names


def _device_feature_name(device: "VirtioDevice", bit: int) -> str:
    enum = getattr(device, "feature_enum", None)
    if enum is not None:
        try:
            return str(enum(bit).name)
        except ValueError:
            pass
    return f"bit {bit}"


def device_statistics(device: "VirtioDevice") -> dict[str, Any]:
    """The device's state and every queue's counters, as plain data (JSON-ready)."""
    from .spec.ids import DeviceType
    from .spec.status import DeviceStatus
    try:
        dtype = DeviceType(device.device_type).name.lower()
    except ValueError:
        dtype = str(device.device_type)
    status = DeviceStatus(device.status)
    negotiated = device.driver_features & device.device_features
    out: dict[str, Any] = {
        "type": dtype,
        "class": type(device).__name__,
        "status": [s.name for s in DeviceStatus if s & status and s.name],
        "needs_reset": bool(status & DeviceStatus.DEVICE_NEEDS_RESET),
        "features": {"offered": f"{device.device_features:#x}",
                     "negotiated": f"{negotiated:#x}",
                     "names": feature_names(device, negotiated)},
        "config_generation": device.config_generation,
        "config_interrupts": device.config_interrupts,
        "queues": [queue_statistics(q) for q in list(device.queues)],
    }
    own = getattr(device, "stats", None)
    if isinstance(own, dict):
        out["device"] = {k: v for k, v in own.items() if isinstance(v, (int, float, str, bool))}
    faults = getattr(device, "faults", None)
    if faults is not None:
        out["faults"] = [fault_statistics(rule) for rule in faults.list()]
    return out


def fault_statistics(rule: Any) -> dict[str, Any]:
    """One fault rule (pyvirtio.faults) as plain data: id, canonical text, times fired."""
    return {"id": getattr(rule, "id", None), "rule": rule.describe(),
            "fired": int(getattr(rule, "fired", 0))}


__all__ = ["COUNTERS", "QueueCounters", "device_statistics", "queue_statistics", "feature_names",
           "fault_statistics"]
