"""Input driver (VIRTIO 1.3, 5.8): reads a virtio input device's identity and its events.

It does what Linux's ``drivers/virtio/virtio_input.c`` does: at probe it asks the config space
for the name, serial, IDs, properties, the codes of every event type and the range of every
absolute axis (select and subsel written as single bytes, then ``size`` read, 5.8.5.1), keeps the
eventq full of one-event buffers (posted before DRIVER_OK, kicked after it), and sends status
events (LEDs) on the statusq.

Events come as a stream: :meth:`InputDriver.read_events` (blocking with a timeout, or
non-blocking with ``timeout=0``), :meth:`InputDriver.events` (an iterator) and
:meth:`InputDriver.read_report` (the events up to the next SYN_REPORT).  Each used buffer is
re-posted as soon as its event is read out, so the device never holds more than the ring's
worth; events are collected from the ring only while fewer than a ring's worth wait unread.

Threads: any method from any thread; one lock guards the rings, and one waiter at a time sleeps
in the transport's ``wait_for_interrupt``.  A device that breaks the rules (a used length shorter
than an event, a config ``size`` past the union) is logged and counted, never trusted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

from ..driver import VirtioDriver
from ..spec.evdev import EV_MAX, EventType, Syn
from ..spec.ids import DeviceType
from ..spec.input import (EVENTQ, INPUT_ABSINFO, INPUT_ABSINFO_SIZE, INPUT_CONFIG_U_SIZE,
                          INPUT_DEVIDS, INPUT_DEVIDS_SIZE, INPUT_EVENT, INPUT_EVENT_SIZE, STATUSQ,
                          InputAbsInfo, InputConfigOffset, InputConfigSelect, InputDevIds,
                          InputEvent)

log = logging.getLogger(__name__)
_S = InputConfigSelect
#: How long one sleep in the transport lasts at most (a lost wake-up costs no more).
WAIT_SLICE = 0.05


@dataclass
class InputInfo:
    """What the device's config space said (5.8.4)."""

    name: str = ""
    serial: str = ""
    devids: InputDevIds | None = None
    props: frozenset[int] = frozenset()
    #: Event type -> codes (EV_BITS answers with a non-zero size).
    events: dict[int, frozenset[int]] = field(default_factory=dict)
    abs_info: dict[int, InputAbsInfo] = field(default_factory=dict)

    def supports(self, etype: int, code: int | None = None) -> bool:
        """Whether the device reports events of type ``etype`` (and, given ``code``, that code)."""
        codes = self.events.get(etype)
        return codes is not None and (code is None or code in codes)


def _string(data: bytes) -> str:
    """A config string: no NUL terminator per 5.8.4, but QEMU 7.2 counts one in ``size``
    ("QEMU Virtio Keyboard\\0"); as C reads it, the string ends at the first NUL."""
    return data.split(b"\0", 1)[0].decode(errors="replace")


def bits(data: bytes) -> frozenset[int]:
    """The codes set in a config bitmap (byte n carries codes 8n..8n+7)."""
    return frozenset(8 * i + b for i, byte in enumerate(data) for b in range(8) if byte >> b & 1)


class InputDriver(VirtioDriver):
    """The input driver (VIRTIO 1.3, 5.8): the device's name, IDs and event bits from its config
    space, its events as they come, and status events (LEDs) sent back."""

    id_table = (DeviceType.INPUT,)
    queue_size = 64  # as many event buffers as Linux posts

    def setup(self) -> None:
        self._lock = threading.RLock()
        self._waiting = threading.Lock()
        self.eventq = self.create_queue(EVENTQ)
        self.statusq = self.create_queue(STATUSQ)
        self.queues = [self.eventq, self.statusq]
        self.stats = {"events": 0, "short_events": 0, "status_sent": 0, "config_oversized": 0}
        self._unread: deque[InputEvent] = deque()
        self._status_out = 0  # status events the device has not returned yet
        self.info = self.query_info()
        n = self.eventq.vq.size
        self._buf_base = self.transport.alloc(n * INPUT_EVENT_SIZE, 8)
        for i in range(n):  # kicked after DRIVER_OK (3.1.1: no notification before it)
            self.eventq.submit_buffers([], [(self._buf_base + i * INPUT_EVENT_SIZE, INPUT_EVENT_SIZE)],
                                       kick=False)

    def _initialise(self) -> None:
        super()._initialise()
        with self._lock:
            self.eventq.kick()

    # --- the config space (5.8.4, 5.8.5.1) ------------------------------------------------------

    def query(self, select: int, subsel: int = 0) -> bytes:
        """The union's bytes for (select, subsel): ``size`` of them (none: unsupported)."""
        with self._lock:
            t = self.transport
            t.write_config(InputConfigOffset.SELECT, bytes([select]))
            t.write_config(InputConfigOffset.SUBSEL, bytes([subsel]))
            size = self.read_config(InputConfigOffset.SIZE, 1)[0]
            if size > INPUT_CONFIG_U_SIZE:
                self.stats["config_oversized"] += 1
                log.warning("input: the device answers select %#x/%d with size %d, past the "
                            "%d-byte union; reading %d", select, subsel, size, INPUT_CONFIG_U_SIZE,
                            INPUT_CONFIG_U_SIZE)
                size = INPUT_CONFIG_U_SIZE
            return self.read_config(InputConfigOffset.U, size) if size else b""

    def query_info(self) -> InputInfo:
        """Everything the config space tells, as Linux's probe reads it."""
        info = InputInfo(name=_string(self.query(_S.ID_NAME)), serial=_string(self.query(_S.ID_SERIAL)))
        ids = self.query(_S.ID_DEVIDS)
        if len(ids) >= INPUT_DEVIDS_SIZE:
            info.devids = InputDevIds(*INPUT_DEVIDS.unpack_from(ids))
        info.props = bits(self.query(_S.PROP_BITS))
        for etype in range(1, EV_MAX + 1):
            data = self.query(_S.EV_BITS, etype)
            if data:
                info.events[etype] = bits(data)
        for axis in sorted(info.events.get(EventType.ABS, ())):
            data = self.query(_S.ABS_INFO, axis)
            if len(data) >= INPUT_ABSINFO_SIZE:
                info.abs_info[axis] = InputAbsInfo(*INPUT_ABSINFO.unpack_from(data))
        return info

    # --- events (device -> driver) --------------------------------------------------------------

    def read_events(self, max_events: int | None = None,
                    timeout: float | None = None) -> list[InputEvent]:
        """The events that arrived, oldest first (at most ``max_events``).  Waits up to
        ``timeout`` seconds for the first one (None: for ever; 0: does not wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._unread:
                    self._collect()
                if self._unread:
                    n = len(self._unread) if max_events is None else min(max_events, len(self._unread))
                    return [self._unread.popleft() for _ in range(n)]
                raced = self.eventq.vq.enable_cb(self.eventq.mem)
            if raced:
                continue
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return []
            self._sleep(WAIT_SLICE if left is None else min(left, WAIT_SLICE))

    def read_event(self, timeout: float | None = None) -> InputEvent | None:
        """The next event, or None if none came within ``timeout``."""
        got = self.read_events(1, timeout)
        return got[0] if got else None

    def read_report(self, timeout: float | None = None) -> list[InputEvent]:
        """The events up to and including the next SYN_REPORT (what came so far if the
        timeout passes first)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out: list[InputEvent] = []
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            event = self.read_event(left)
            if event is None:
                return out
            out.append(event)
            if event.type == EventType.SYN and event.code == Syn.REPORT:
                return out

    def events(self, timeout: float | None = None) -> Iterator[InputEvent]:
        """Every event as it comes; ends when none came within ``timeout`` (None: never)."""
        while (event := self.read_event(timeout)) is not None:
            yield event

    def _collect(self) -> None:
        """Take used event buffers (lock held) and post each one again."""
        q = self.eventq
        reposted = False
        for pending in q.poll():
            if pending.written >= INPUT_EVENT_SIZE:
                self._unread.append(InputEvent(*INPUT_EVENT.unpack(q.read_in(pending, INPUT_EVENT_SIZE))))
                self.stats["events"] += 1
            else:
                self.stats["short_events"] += 1
                log.warning("input: the device returned an event buffer with %d bytes written",
                            pending.written)
            q.submit_buffers([], pending.in_bufs, kick=False)
            reposted = True
        if reposted:
            q.kick()

    def _sleep(self, timeout: float) -> None:
        """One waiter at a time runs the transport's wait (vhost-user delivers interrupts
        there); the others sleep for the slice."""
        if self._waiting.acquire(blocking=False):
            try:
                self.transport.wait_for_interrupt(timeout)
            finally:
                self._waiting.release()
        else:
            time.sleep(timeout)

    # --- status (driver -> device) --------------------------------------------------------------

    def send_status(self, etype: int, code: int, value: int) -> None:
        """Send one status event (an LED, a bell) on the statusq.  Buffers the device has
        returned are reclaimed first; a full ring waits for room."""
        raw = INPUT_EVENT.pack(etype, code, value)
        with self._lock:
            self._reclaim_status()
            self.statusq.submit([raw], [])
            self.stats["status_sent"] += 1
            self._status_out += 1

    def set_led(self, code: int, on: bool) -> None:
        """Switch LED ``code`` on or off (an EV_LED status event to the device)."""
        self.send_status(EventType.LED, code, int(on))

    def flush_status(self, timeout: float = 5.0) -> bool:
        """Wait until the device has taken every status event sent; whether it did."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                self._reclaim_status()
                if not self._status_out:
                    return True
            if time.monotonic() >= deadline:
                return False
            self._sleep(WAIT_SLICE)

    def _reclaim_status(self) -> None:
        for pending in self.statusq.poll():
            self.statusq.release(pending)
            self._status_out -= 1

    def remove(self) -> None:
        with self._lock:
            super().remove()
            self.transport.free(self._buf_base)


__all__ = ["InputDriver", "InputInfo", "bits"]
