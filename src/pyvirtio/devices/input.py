"""Input device (VIRTIO 1.3, 5.8): a keyboard, mouse, tablet or touch screen fed from the host.

What it is — name, serial, IDs, the event codes it sends, its absolute axes — is an
:class:`~.input_config.InputProfile`; its config space answers every select from that profile
(:mod:`.input_config`).  Two queues (5.8.2):

* **eventq** (device -> driver): host code calls :meth:`InputDevice.inject` (any thread) with
  evdev events.  They are cut into *reports* at each ``EV_SYN/SYN_REPORT`` and wait in a bounded
  inbox (:attr:`InputDevice.max_pending` events).  A report goes to the driver only whole: the
  device pops (and holds) event buffers until it has one per event of the report, then fills and
  returns them at once (5.8.6.2: "SHOULD either buffer or drop the entire sequence").  When the
  guest does not take events and the inbox is full, the oldest whole reports are dropped and
  counted (``dropped_reports``, ``dropped_events``): memory never grows with a guest that
  stopped reading.
* **statusq** (driver -> device): LED and sound events from the guest.  Each accepted one updates
  :attr:`InputDevice.leds`, counts, goes into a short ring of recent events
  (:attr:`InputDevice.recent_status`) and to every callback in :attr:`InputDevice.on_status`
  (called in the device's worker: keep them short; an exception in one is logged).

A driver that breaks 5.8.6.1 — an event buffer too small for one event or not device-writable, a
status buffer shorter than one event, a status event of a type or code the device never
offered — gets its buffer back unused (used length 0), the fault is counted
(``bad_event_buffers``, ``bad_status``) and logged at most ``limits.LOG_LINES_PER_SECOND`` times
a second, and the device goes on.  Ring-level faults (a descriptor outside memory, a loop) break
the queue as on every device.

Threads: the device's code runs in its engine worker (:mod:`pyvirtio.engine`).  The inbox is
the one thing host threads touch: a deque under a leaf lock that nothing else is taken under.
An injection wakes the worker (at most one wake in flight), whose turn moves reports into the
ring.  Over vhost-user, where the device never sees DRIVER_OK, the eventq is used once its ring
has run (a kick or a start), until the ring stops (:meth:`InputDevice.quiesce`).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from ..device import VirtioDevice
from ..errors import DriverFault, Scope, UsageError
from ..memory import GuestMemory
from ..spec.evdev import EventType, Rep, Syn
from ..spec.ids import DeviceType
from ..spec.input import EVENTQ, INPUT_EVENT, INPUT_EVENT_SIZE, InputEvent
from ..virtq import DescriptorChain, DeviceQueue
from .input_config import MAX_PENDING_EVENTS, InputProfile, config_space, profile

log = logging.getLogger(__name__)

#: Events in one report at most: Linux posts 64 event buffers, so a longer one could never fit.
MAX_REPORT_EVENTS = 64
#: Recent status events (LEDs ...) kept for inspection (control socket ``stats``).
RECENT_STATUS = 64
#: Status event types a driver may send the device (Linux passes these to the device).
STATUS_TYPES = frozenset({EventType.LED, EventType.SND, EventType.REP, EventType.FF})
_SYN_REPORT = INPUT_EVENT.pack(EventType.SYN, Syn.REPORT, 0)
#: An event as host code gives it: an InputEvent or any (type, code, value) tuple.
EventLike = tuple[int, int, int]


class InputBufferError(DriverFault):
    """An eventq or statusq buffer that breaks 5.8.6.1, or a status event the device never
    offered; the buffer is returned unused and the device goes on."""

    scope = Scope.REQUEST


@dataclass(frozen=True)
class _Report:
    events: bytes  # packed INPUT_EVENTs, ending with SYN_REPORT

    def __len__(self) -> int:
        return len(self.events) // INPUT_EVENT_SIZE


def pack_events(events: Iterable[EventLike]) -> list[bytes]:
    """Each (type, code, value) packed as struct virtio_input_event; UsageError if a field does
    not fit (type and code le16, value a signed or unsigned 32-bit number)."""
    out = []
    for ev in events:
        try:
            etype, code, value = (int(x) for x in ev)
        except (TypeError, ValueError):
            raise UsageError(f"input event {ev!r}: not three numbers (type, code, value)") from None
        if not (0 <= etype <= 0xFFFF and 0 <= code <= 0xFFFF and -(1 << 31) <= value < (1 << 32)):
            raise UsageError(f"input event {ev!r}: type and code 0..65535, value 32 bits")
        if value >= 1 << 31:
            value -= 1 << 32
        out.append(INPUT_EVENT.pack(etype, code, value))
    return out


def split_reports(packed: Sequence[bytes], sync: bool = True) -> list[_Report]:
    """Cut packed events into reports at each SYN_REPORT; a tail without one gets one appended
    (``sync``) or becomes a report as it is."""
    reports, current = [], []
    for raw in packed:
        current.append(raw)
        if raw[:4] == _SYN_REPORT[:4]:  # EV_SYN/SYN_REPORT, whatever its value
            reports.append(current)
            current = []
    if current:
        reports.append(current + [_SYN_REPORT] if sync else current)
    for r in reports:
        if len(r) > MAX_REPORT_EVENTS:
            raise UsageError(f"an input report of {len(r)} events: at most {MAX_REPORT_EVENTS} "
                             "between two SYN_REPORTs")
    return [_Report(b"".join(r)) for r in reports]


class InputDevice(VirtioDevice):
    """A virtio input device described by ``input_profile`` (default: a keyboard)."""

    device_type = DeviceType.INPUT
    num_queues = 2
    completes_in_order = True  # both queues return buffers in the order they were made available
    idle_interval: float | None = None

    def __init__(self, input_profile: InputProfile | None = None, *,
                 max_pending: int = MAX_PENDING_EVENTS):
        if max_pending < MAX_REPORT_EVENTS:
            raise UsageError(f"max_pending {max_pending}: at least {MAX_REPORT_EVENTS} (one whole report)")
        super().__init__()
        self.profile = (input_profile or profile("keyboard")).check()
        self.max_pending = max_pending
        self.select = self.subsel = 0
        self._config = config_space(self.profile, 0, 0)
        self.stats = {"events_injected": 0, "events_delivered": 0, "reports_delivered": 0,
                      "dropped_reports": 0, "dropped_events": 0, "bad_event_buffers": 0,
                      "status_events": 0, "bad_status": 0, "config_writes_ignored": 0}
        #: LED code -> on (the guest's last EV_LED value for it).
        self.leds: dict[int, bool] = {}
        self.recent_status: deque[InputEvent] = deque(maxlen=RECENT_STATUS)
        #: Called with each accepted status event (in the device's worker).
        self.on_status: list[Callable[[InputEvent], None]] = []
        self._inbox: deque[_Report] = deque()
        self._inbox_events = 0
        self._inbox_lock = threading.Lock()  # leaf lock: the inbox only
        self._wake_pending = False
        self._held: list[DescriptorChain] = []  # popped eventq buffers waiting for a whole report
        self._live: set[int] = set()  # queues seen running without DRIVER_OK (vhost-user)

    # --- config space (5.8.4) -------------------------------------------------------------------

    def config_bytes(self) -> bytes:
        return self._config

    def write_config(self, offset: int, data: bytes) -> None:
        """The driver writes select (byte 0) and subsel (byte 1), in any order (5.8.5.1);
        writes elsewhere are ignored and counted (the driver MUST NOT make them)."""
        ignored = False
        for pos, value in enumerate(data, offset):
            if pos == 0:
                self.select = value
            elif pos == 1:
                self.subsel = value
            else:
                ignored = True
        if ignored:
            self.stats["config_writes_ignored"] += 1
            self.guest_log.warning("input: config write of %d bytes at %d outside select/subsel "
                                   "ignored (5.8.5.1)", len(data), offset)
        self._config = config_space(self.profile, self.select, self.subsel)

    # --- host API (any thread) ------------------------------------------------------------------

    def inject(self, events: Iterable[EventLike], *, sync: bool = True) -> int:
        """Queue evdev events for the guest: (type, code, value) tuples or InputEvents, cut
        into reports at each SYN_REPORT (one is appended to a tail without it unless ``sync`` is
        False).  Returns how many events were queued; the oldest whole reports are dropped
        (and counted) when more than ``max_pending`` events wait.  Never blocks on the guest."""
        reports = split_reports(pack_events(events), sync)
        if not reports:
            return 0
        count = sum(len(r) for r in reports)
        dropped: list[_Report] = []
        with self._inbox_lock:
            self._inbox.extend(reports)
            self._inbox_events += count
            while self._inbox_events > self.max_pending:
                old = self._inbox.popleft()
                self._inbox_events -= len(old)
                dropped.append(old)
            self.stats["events_injected"] += count
            if dropped:
                self.stats["dropped_reports"] += len(dropped)
                self.stats["dropped_events"] += sum(len(r) for r in dropped)
            wake, self._wake_pending = not self._wake_pending, True
        if dropped:
            self.guest_log.warning("input: the guest takes no events; %d old report(s) dropped "
                                   "(%d events wait)", len(dropped), self._inbox_events)
        if wake:
            self.host_call(self._woken, 0)
        return count

    def key(self, code: int, action: str = "tap") -> int:
        """Press, release or tap (press then release) key or button ``code``, each in its own
        report."""
        from .input_script import key_events
        return self.inject(key_events(code, action))

    @property
    def pending_events(self) -> int:
        """Events waiting for the guest (a snapshot)."""
        return self._inbox_events

    def statistics(self) -> dict:
        out = super().statistics()
        out["input"] = {"kind": self.profile.kind, "name": self.profile.name,
                        "pending_events": self._inbox_events, "held_buffers": len(self._held),
                        "leds": {str(code): on for code, on in sorted(self.leds.items())},
                        "recent_status": [list(e) for e in list(self.recent_status)]}
        return out

    def _woken(self) -> None:
        with self._inbox_lock:
            self._wake_pending = False  # the turn after this call moves the inbox (host_ready)

    # --- the engine's entry points (the device's worker, or under its lock) ---------------------

    def process_queue(self, mem: GuestMemory, queue: DeviceQueue) -> bool:
        self._live.add(queue.index)
        if queue.index == EVENTQ:
            return self._flush(mem)
        return super().process_queue(mem, queue)

    def host_ready(self, mem: GuestMemory, group: int, events: list[tuple[int, int]]) -> set[int]:
        return {EVENTQ} if self._flush(mem) else set()

    def handle_chain(self, queue_index: int, chain: DescriptorChain) -> int:
        """One statusq buffer: one event, checked against what the device offered."""
        try:
            self._status(self._status_event(chain))
        except InputBufferError as exc:
            self.stats["bad_status"] += 1
            self.guest_log.warning("input: status buffer dropped: %s", exc)
        return 0

    def quiesce(self, mem: GuestMemory | None, index: int | None = None,
                timeout: float = 30.0) -> bool:
        """The eventq stops (vhost-user GET_VRING_BASE) or its memory goes: held buffers go
        back now, each with an empty report (a lone SYN_REPORT, which the guest's input core
        ignores), so none is lost with the ring."""
        if index in (None, EVENTQ):
            if mem is not None and self._held:
                queue = self.queues[EVENTQ]
                for chain in self._held:
                    queue.add_used(mem, chain.head_index, chain.write(_SYN_REPORT))
            self._held.clear()
        if index is None:
            self._live.clear()
        else:
            self._live.discard(index)
        return True

    def on_reset(self) -> None:
        self._held.clear()
        self._live.clear()
        self.leds.clear()
        self.select = self.subsel = 0
        self._config = config_space(self.profile, 0, 0)

    # --- eventq ---------------------------------------------------------------------------------

    def _usable(self, index: int) -> DeviceQueue | None:
        queue = self.queues[index]
        if not queue.ready or queue.broken or not (self.driver_ok or index in self._live):
            return None
        return queue

    def _flush(self, mem: GuestMemory) -> bool:
        """Move whole reports from the inbox into event buffers; whether to notify the eventq."""
        queue = self._usable(EVENTQ)
        if queue is None:
            return False
        sent = False
        while True:
            with self._inbox_lock:
                report = self._inbox[0] if self._inbox else None
            if report is None:
                break
            need = len(report)
            if need > queue.size:  # the driver's ring is smaller than the report: it never fits
                self._drop_first(report, f"it needs {need} buffers and the eventq has {queue.size}")
                continue
            if not self._hold(mem, queue, need):
                break  # wait for buffers: the driver's next kick
            with self._inbox_lock:
                if not self._inbox or self._inbox[0] is not report:
                    continue  # dropped for room meanwhile: look again
                self._inbox.popleft()
                self._inbox_events -= need
            self._deliver(mem, queue, report)
            sent = True
        return sent and queue.needs_notification(mem)

    def _hold(self, mem: GuestMemory, queue: DeviceQueue, need: int) -> bool:
        """Pop event buffers until ``need`` are held; False if the ring ran out first."""
        while len(self._held) < need:
            chain = queue.pop_descriptor_chain(mem)
            if chain is None and queue.enable_notification(mem):
                chain = queue.pop_descriptor_chain(mem)  # 2.7.10: look once more after enabling
            if chain is None:
                return False
            if chain.writable_len < INPUT_EVENT_SIZE:
                self.stats["bad_event_buffers"] += 1
                self.guest_log.warning("input: %s", InputBufferError(
                    f"eventq buffer {chain.head_index} has {chain.writable_len} device-writable "
                    f"bytes, fewer than one event ({INPUT_EVENT_SIZE}; 5.8.6.1): returned unused"))
                queue.add_used(mem, chain.head_index, 0)
                continue
            self._held.append(chain)
        return True

    def _deliver(self, mem: GuestMemory, queue: DeviceQueue, report: _Report) -> None:
        n = len(report)
        chains, self._held = self._held[:n], self._held[n:]
        used = []
        for i, chain in enumerate(chains):
            raw = report.events[i * INPUT_EVENT_SIZE:(i + 1) * INPUT_EVENT_SIZE]
            used.append((chain.head_index, chain.write(raw)))
        queue.add_used_batch(mem, used)
        self.stats["events_delivered"] += n
        self.stats["reports_delivered"] += 1

    def _drop_first(self, report: _Report, why: str) -> None:
        with self._inbox_lock:
            if self._inbox and self._inbox[0] is report:
                self._inbox.popleft()
                self._inbox_events -= len(report)
                self.stats["dropped_reports"] += 1
                self.stats["dropped_events"] += len(report)
        self.guest_log.warning("input: a report of %d events dropped: %s", len(report), why)

    # --- statusq --------------------------------------------------------------------------------

    def _status_event(self, chain: DescriptorChain) -> InputEvent:
        if chain.readable_len < INPUT_EVENT_SIZE:
            raise InputBufferError(f"statusq buffer {chain.head_index} has {chain.readable_len} "
                                   f"device-readable bytes, fewer than one event (5.8.6.1)")
        event = InputEvent(*INPUT_EVENT.unpack(chain.read(0, INPUT_EVENT_SIZE)))
        if event.type not in STATUS_TYPES:
            raise InputBufferError(f"status event {tuple(event)}: type {event.type:#x} is not "
                                   "one a driver sends the device (LED, SND, REP, FF)")
        offered = event.code <= Rep.PERIOD if event.type == EventType.REP else \
            self.profile.supports(event.type, event.code)
        if not offered:
            raise InputBufferError(f"status event {tuple(event)}: code {event.code:#x} of type "
                                   f"{event.type:#x} was never offered (EV_BITS)")
        if event.type == EventType.LED and event.value not in (0, 1):
            raise InputBufferError(f"LED event {tuple(event)}: value is not 0 or 1")
        return event

    def _status(self, event: InputEvent) -> None:
        self.stats["status_events"] += 1
        if event.type == EventType.LED:
            self.leds[event.code] = bool(event.value)
        self.recent_status.append(event)
        for callback in list(self.on_status):
            try:
                callback(event)
            except Exception:
                log.exception("input: a status callback failed")


__all__ = ["InputBufferError", "InputDevice", "MAX_PENDING_EVENTS", "MAX_REPORT_EVENTS",
           "pack_events", "split_reports"]
