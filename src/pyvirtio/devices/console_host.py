"""The host-side I/O shell of a console: one thread, one selector over the ports' endpoints.

The watch list is derived from the device's state on every turn (:meth:`ConsoleDevice.host_interest`):
an endpoint's read fd is watched only while the guest has a receive buffer waiting, its write fd
only while a transmit chain is held.  The device calls :meth:`ConsoleHostLoop.wake` (its
``wakeup`` hook) whenever that may have changed, and fd-less endpoints call it through their
``waker``; a self-pipe turns that into a selector event.  Any transport works: the loop is given
the device-side guest memory, or a function returning it (vhost-user: the connection's current
memory table, ``None`` while no front-end is attached).
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
from contextlib import nullcontext
from typing import Callable, ContextManager, Optional, Union

from ..memory import GuestMemory
from .console import ConsoleDevice

log = logging.getLogger(__name__)

MemorySource = Union[GuestMemory, Callable[[], Optional[GuestMemory]]]
_WAKE = object()


class ConsoleHostLoop:
    """Moves bytes between a :class:`ConsoleDevice`'s ports and their host endpoints."""

    def __init__(self, device: ConsoleDevice, memory: MemorySource, *, poll_interval: float = 0.5,
                 guard: Optional[Callable[[], ContextManager]] = None):
        self.device = device
        self._memory = memory if callable(memory) else (lambda: memory)
        self._guard = guard or nullcontext
        self.poll_interval = poll_interval
        self._sel = selectors.DefaultSelector()
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._rfd, selectors.EVENT_READ, _WAKE)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        device.wakeup = self.wake

    # --- control --------------------------------------------------------------------------------

    def wake(self) -> None:
        """Make the loop look at the device again (any thread; never blocks).  From the loop's
        own thread it is a no-op: the loop re-derives what to watch on its next turn anyway, and
        waking itself would turn it into a busy loop that starves the other threads."""
        if threading.current_thread() is self._thread:
            return
        try:
            os.write(self._wfd, b"\0")
        except (BlockingIOError, OSError):
            pass  # already pending, or closed

    def start(self) -> "ConsoleHostLoop":
        self._thread = threading.Thread(target=self.run, name="console-host", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        self._thread = None

    def close(self) -> None:
        self.stop()
        self.device.wakeup = lambda: None
        self._sel.close()
        for fd in (self._rfd, self._wfd):
            os.close(fd)
        self._rfd = self._wfd = -1

    def __enter__(self) -> "ConsoleHostLoop":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once(self.poll_interval)
            except Exception:  # the shell logs and goes on; the device stays usable
                log.exception("console host loop: unexpected error")

    def run_once(self, timeout: Optional[float]) -> None:
        """One turn: update the watch list, wait, service the ports that are ready.

        Device calls run inside ``guard()`` (vhost-user: the connection's ring locks, so a
        control message never changes a ring under us); deferred interrupts go out after it."""
        with self._guard():
            self._update(self._memory())
        events = self._sel.select(timeout)
        ready = {key.data for key, _ in events}
        if _WAKE in ready or not events:
            self._drain_wake()
        with self._guard():
            self._service(self._memory(), ready, quiet=not events)
        self.device.fire_deferred()

    def _service(self, mem: Optional[GuestMemory], ready: set, quiet: bool) -> None:
        if mem is None:
            return
        if quiet:
            self.device.poll(mem)  # a quiet turn: make sure nothing was missed
            return
        if _WAKE in ready:
            ready |= self._fdless_ports()
        for pid in sorted(p for p in ready if p is not _WAKE):
            self.device.service_port(mem, pid)

    def _update(self, mem: Optional[GuestMemory]) -> None:
        want: dict[int, list] = {}
        if mem is not None:
            for pid, ep, rd, wr in self.device.host_interest():
                ep.waker = self.wake
                if rd and ep.read_fd >= 0:
                    want.setdefault(ep.read_fd, [0, pid])[0] |= selectors.EVENT_READ
                if wr and ep.write_fd >= 0:
                    want.setdefault(ep.write_fd, [0, pid])[0] |= selectors.EVENT_WRITE
        current = self._sel.get_map()
        for fd, key in list(current.items()):
            if key.data is not _WAKE and (fd not in want or [key.events, key.data] != want[fd]):
                self._sel.unregister(fd)
        for fd, (events, pid) in want.items():
            if fd not in self._sel.get_map():
                self._sel.register(fd, events, pid)

    def _fdless_ports(self) -> set[int]:
        return {pid for pid, ep, _, _ in self.device.host_interest() if ep.read_fd < 0 and ep.write_fd < 0}

    def _drain_wake(self) -> None:
        try:
            while os.read(self._rfd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
