"""The daemons' stop signals: SIGTERM, SIGINT and SIGHUP end them cleanly, whichever thread the
kernel hands the signal to.

Python runs a signal handler in the main thread only, and only when that thread next runs
bytecode.  A process-directed signal may be delivered to any thread that does not block it (an
aio worker, a ring's engine); the main thread, asleep in ``select()`` or on a lock, then never
wakes up to run the handler.  The interpreter writes the number of every signal it catches to
the *wakeup fd* (:func:`signal.set_wakeup_fd`) in whichever thread caught it: a daemon's loop
watches :class:`StopSignals` (a pipe) beside its other fds, and the handler has run by the time
the loop looks at its stop flag again.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopSignals:
    """Call ``stop`` on SIGTERM, SIGINT or SIGHUP; :meth:`fileno` becomes readable on each.
    Made (and closed) in the main thread."""

    def __init__(self, stop: Callable[[], None]) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("signal handlers are installed from the main thread")
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

        def handler(signum, frame):
            stop()
        for sig in STOP_SIGNALS:
            signal.signal(sig, handler)
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def fileno(self) -> int:
        return self._read

    def drain(self) -> None:
        """Read what the signals wrote (the loop calls this when :meth:`fileno` is readable)."""
        try:
            while os.read(self._read, 512):
                pass
        except OSError:  # BlockingIOError: empty
            pass

    def close(self) -> None:
        """Stop writing to the pipe and close it (the handlers stay: a late signal still stops).
        Off the main thread the pipe stays open: a signal must never be written into whatever
        file takes the number next."""
        if self._read < 0 or threading.current_thread() is not threading.main_thread():
            return
        current = signal.set_wakeup_fd(self._previous)  # the one before ours, back
        if current != self._write:  # set by someone else since: theirs stays
            signal.set_wakeup_fd(current)
        os.close(self._read)
        os.close(self._write)
        self._read = self._write = -1


__all__ = ["StopSignals", "STOP_SIGNALS"]
