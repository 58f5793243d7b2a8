"""Deadlines an engine worker can poll: a timerfd(2) (through ctypes: Python 3.11 has no
``os.timerfd_create``) and a queue of things due at given times.

Why a file descriptor and not a thread or a poll timeout: the engine's workers already poll the
device's host fds (:meth:`pyvirtio.device.VirtioDevice.host_fds`), so a device that holds work
until a deadline (a delayed completion, a delayed frame) returns the timer's fd with its others
and is called back through ``host_ready`` when it fires — in its own worker, under its lock,
without a second thread or a change to the worker loop.

Deadlines are ``time.monotonic()`` values; the timer is armed on CLOCK_MONOTONIC with an absolute
time, which is the clock ``time.monotonic()`` reads on Linux.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import heapq
import itertools
import os
import time
from typing import Generic, TypeVar

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
TFD_TIMER_ABSTIME = 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec),
                                  ctypes.c_void_p]


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


class TimerFd:
    """A one-shot monotonic timer as a file descriptor, readable once its deadline passed."""

    def __init__(self) -> None:
        self.fd = _check(_libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC))
        self.deadline: float | None = None

    def arm(self, deadline: float) -> None:
        """Fire at ``deadline`` (a ``time.monotonic()`` value; one already past fires at once)."""
        if self.deadline == deadline:
            return
        sec = max(deadline, 1e-9)
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(int(sec), int((sec % 1) * 1e9) or 1))
        _check(_libc.timerfd_settime(self.fd, TFD_TIMER_ABSTIME, ctypes.byref(spec), None))
        self.deadline = deadline

    def disarm(self) -> None:
        if self.deadline is not None:
            spec = _Itimerspec(_Timespec(0, 0), _Timespec(0, 0))
            _check(_libc.timerfd_settime(self.fd, 0, ctypes.byref(spec), None))
            self.deadline = None

    def drain(self) -> None:
        """Consume an expiry (so the fd stops being readable until armed again)."""
        try:
            os.read(self.fd, 8)
        except (BlockingIOError, InterruptedError):
            pass
        self.deadline = None

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


T = TypeVar("T")


class DueQueue(Generic[T]):
    """Items held until their deadline, with a :class:`TimerFd` armed for the earliest one.
    Owned by one worker (no lock)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()
        self._timer: TimerFd | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    @property
    def fd(self) -> int:
        """The timer's fd (-1 while nothing is held): what the worker watches."""
        return self._timer.fd if self._heap and self._timer is not None else -1

    def push(self, deadline: float, item: T) -> None:
        heapq.heappush(self._heap, (deadline, next(self._seq), item))
        self._rearm()

    def pop_due(self, now: float | None = None) -> list[T]:
        """Items whose deadline passed, earliest first; the timer is re-armed for the rest."""
        now = time.monotonic() if now is None else now
        if self._timer is not None:
            self._timer.drain()
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            out.append(heapq.heappop(heap)[2])
        self._rearm()
        return out

    def pop_all(self) -> list[T]:
        """Everything held, earliest first (a quiesce or reset does not wait)."""
        out = [item for _, _, item in sorted(self._heap)]
        self._heap.clear()
        self._rearm()
        return out

    def _rearm(self) -> None:
        if self._heap:
            if self._timer is None:
                self._timer = TimerFd()
            self._timer.arm(self._heap[0][0])
        elif self._timer is not None:
            self._timer.disarm()

    def close(self) -> None:
        self._heap.clear()
        if self._timer is not None:
            self._timer.close()
            self._timer = None


__all__ = ["TimerFd", "DueQueue"]
