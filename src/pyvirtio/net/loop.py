"""The I/O shell of the network devices: one thread that watches their back-ends' fds.

Each iteration asks every device which fds to watch (``device.poll_fds()``: reads only while the
guest has receive buffers, writes only while a transmit waits for room), registers exactly those,
sleeps in ``select``, and calls ``device.backend_ready()`` for each device whose fd fired.  A
device calls its ``wakeup`` (this loop's :meth:`NetLoop.wake`) when what it wants changes, e.g.
when a kick brought receive buffers after it ran dry.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
from typing import Optional

log = logging.getLogger(__name__)


class NetLoop:
    """Serves the back-ends of any number of network devices from one thread."""

    def __init__(self, name: str = "pyvirtio-net"):
        self.name = name
        # poll(2), not epoll: it keeps no kernel state per fd, so an fd number that a back-end
        # closed and reused (a new peer socket) is simply watched again.
        self._selector = selectors.PollSelector()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._selector.register(self._wake_fd, selectors.EVENT_READ, None)
        self._devices: list = []
        self._registered: dict[int, tuple[int, list]] = {}
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False

    # --- devices -------------------------------------------------------------------------------

    def add(self, device) -> None:
        with self._lock:
            self._devices.append(device)
        device.wakeup = self.wake
        self.wake()

    def remove(self, device) -> None:
        with self._lock:
            if device in self._devices:
                self._devices.remove(device)
        device.wakeup = _noop
        self.wake()

    def wake(self) -> None:
        fd = self._wake_fd
        if fd >= 0:
            try:
                os.eventfd_write(fd, 1)
            except OSError:
                pass

    # --- one iteration -------------------------------------------------------------------------

    def _wanted(self) -> dict[int, tuple[int, list]]:
        wanted: dict[int, tuple[int, list]] = {}
        with self._lock:
            self._devices = [d for d in self._devices if not getattr(d, "closed", False)]
            devices = list(self._devices)
        for device in devices:
            for fd, events in device.poll_fds():
                mask, owners = wanted.get(fd, (0, []))
                wanted[fd] = (mask | events, owners + [device])
        return wanted

    def _sync(self, wanted: dict[int, tuple[int, list]]) -> None:
        for fd in list(self._registered):
            if fd not in wanted:
                self._forget(fd)
        for fd, entry in wanted.items():
            if self._registered.get(fd) == entry:
                continue
            self._forget(fd)
            self._selector.register(fd, *entry)
            self._registered[fd] = entry

    def _forget(self, fd: int) -> None:
        if self._registered.pop(fd, None) is not None:
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    def run_once(self, timeout: Optional[float] = 1.0) -> int:
        """Wait for one batch of events and serve it; returns how many devices were served."""
        self._sync(self._wanted())
        ready = []
        for key, _mask in self._selector.select(timeout):
            if key.data is None:
                try:
                    os.eventfd_read(self._wake_fd)
                except BlockingIOError:
                    pass
                with self._lock:
                    ready += [d for d in self._devices if getattr(d, "wants_service", False)]
                continue
            ready += [d for d in key.data if d not in ready]
        for device in ready:
            try:
                device.backend_ready()
            except OSError as exc:
                log.warning("%s: back-end %s failed: %s", self.name, device.backend.describe(), exc)
        return len(ready)

    # --- the thread ----------------------------------------------------------------------------

    def start(self) -> "NetLoop":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopping:
            try:
                self.run_once(1.0)
            except Exception:  # a bug in one device must not stop the others' networking
                log.exception("%s: iteration failed", self.name)

    def stop(self) -> None:
        self._stopping = True
        self.wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        self._thread = None
        self._selector.close()
        fd, self._wake_fd = self._wake_fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> "NetLoop":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _noop() -> None:
    pass


_default: Optional[NetLoop] = None
_default_lock = threading.Lock()


def default_loop() -> NetLoop:
    """The process-wide loop the command line attaches its devices to (started on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = NetLoop().start()
        return _default
