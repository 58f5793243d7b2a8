"""The host-side engine: one worker model for every device on every transport.

A device declares **queue groups** (:meth:`VirtioDevice.queue_groups`): blk one group per
queue, net and console one group for the whole device (its queues and its back-end), rng (one
queue) the default single group.  For each group it may ask for host file descriptors to be watched
(:meth:`VirtioDevice.host_fds`: a TAP, a socket, a console endpoint, an io_uring completion
eventfd), derived from its state on every turn.  A :class:`GroupWorker` serves one group: it
polls the group's kick fds, those host fds and a wake fd of its own, runs the device through its
:class:`QueueHost` (the transport's adapter) and delivers the notifications the device asks for.

Rules that replace the device lock and the old per-device loops:

* Everything a group's device code does runs in that group's worker thread, or in a thread that
  holds :attr:`GroupWorker.lock` (the transport's control path: a vhost-user message, a PCI/MMIO
  register access, an inline kick).  The lock is held for one turn at a time, and the control
  path takes the locks of all groups in index order — the only lock order there is.
* The device never calls back into the transport to interrupt from a worker: a turn returns the
  set of queues to notify and the worker notifies them after the turn.  Besides
  :meth:`VirtioDevice.complete` (its ``interrupt``), the exception is
  :attr:`VirtioDevice.notify_queue`, which a transport sets only where a notification may go out
  under the turn's lock (vhost-user: a counted eventfd write): a device draining a long ring
  tells the driver of completed chains before the pass ends (blk, chains copied at once).
  And a turn of completions whose device holds the driver's kicks (``kicks_held``: requests in
  flight) notifies what finished *before* it drains those rings again, so the driver's next
  request is on its way meanwhile; with notification fault rules set, everything goes through
  their filter at the end of the turn instead.
* Host code in another thread (set a link down, add a console port) hands the work to the
  worker with :meth:`GroupWorker.call_soon`, or takes :meth:`hold` for a short change.
* Stopping never loses the wake-up (the wake fd is drained *before* the stop flag is read) and
  never blocks forever (the join is bounded; a worker that did not stop is logged).
* A kick fd is read only after poll(2) reported it readable, and with RWF_NOWAIT, so a front-end
  that hands over a blocking fd (or drains it behind our back) cannot make a worker block; a kick
  fd at end of file or in error is logged once and no longer watched until it is replaced.
* Kick fds and polling modes change only on the control path, which wakes the worker after each
  batch of messages: they are derived again after a wake; the host fds after every turn.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import sys
import threading
import time
from collections import deque
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from .errors import DriverFault, GuestMemoryError, QueueBroken
from .faults import FaultSet
from .interrupt import Interrupt
from .irq_faults import IrqFaults
from .memory import GuestMemory
from .stats import QueueCounters

log = logging.getLogger(__name__)

POLLIN, POLLOUT = select.POLLIN, select.POLLOUT
_BAD = select.POLLERR | select.POLLHUP | select.POLLNVAL
#: How often a queue in polling mode (no kick fd: vhost-user NOFD) is looked at.
POLL_INTERVAL = 0.001
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_ONE_KICK = (1).to_bytes(8, sys.byteorder)  # an eventfd's count after one kick
MORE_KICKS = 2  # GroupWorker._take_kick: the read took more than one kick
#: How long stopping a worker may take before it is given up on (and logged).
STOP_TIMEOUT = 5.0
#: Adaptive polling (``GroupWorker(poll_max=…)``, ``serve --poll-us``, off by default): the
#: first window after a short wait, and its growth factor, as QEMU's IOThreads (poll-grow 2,
#: from 4 µs).
POLL_START = 4e-6
POLL_GROW = 2

HostEvents = list[tuple[int, int]]
_NO_FAULTS = FaultSet()  # the rules of a worker without a device: always empty


class QueueHost(Protocol):
    """What a transport gives a worker: kick fds, memory, and where notifications go."""

    def kick_fd(self, index: int) -> int:
        """The fd a kick of queue ``index`` arrives on (-1: none)."""

    def polling(self, index: int) -> bool:
        """Whether queue ``index`` must be looked at without kicks (every POLL_INTERVAL)."""

    def process(self, index: int) -> bool:
        """Run the device on queue ``index`` if it may run; whether to notify the driver."""

    def host_fds(self, group: int) -> list[tuple[int, int]]:
        """The host fds the device wants watched for ``group`` now, (fd, POLLIN|POLLOUT)."""

    def host_ready(self, group: int, events: HostEvents) -> set[int]:
        """Watched host fds fired (or, with no events, a look was asked for); queues to notify."""

    def notify(self, index: int) -> None:
        """Send a used-buffer notification for queue ``index``."""

    # Optional: ``serve_kick(index, fd) -> int``, a kick's turn in one call — -1 if ``fd`` is no
    # longer queue ``index``'s kick fd, else :meth:`process` and, if it says so, :meth:`notify`
    # done, and the notifications sent (0 or 1).


class GroupWorker:
    """Serves one queue group: one thread, one poll set, one lock held per turn."""

    def __init__(self, host: QueueHost, group: int, queues: Sequence[int], *, name: str,
                 idle_interval: float | None = None, transient: bool = False,
                 counters: Sequence[QueueCounters] = (), device=None, poll_max: float = 0.0):
        self.host = host
        #: Adaptive polling, as QEMU's event loop does in an IOThread (``poll-max-ns``): before
        #: sleeping, the worker looks at its fds without blocking for up to ``poll_max`` seconds,
        #: in a window that grows while waits are short and drops to nothing after a long one —
        #: a kick or completion that comes within the window is served without a wake-up, and
        #: an idle worker does not spin.  0: never (in-process transports, whose driver shares
        #: this interpreter: a spinning thread would take its turns from it).
        self.poll_max = poll_max
        self._window = 0.0
        self.polled = 0  # waits that polling ended (pyvirtio.stats)
        self.group = group
        self.queues = tuple(queues)
        self.name = name
        self.idle_interval = idle_interval
        #: A transient worker's thread runs only while there is something to watch (host fds, a
        #: polling queue, an idle interval) and is started again by the next wake — in-process
        #: transports serve kicks inline and need a thread only for the device's host side.
        self.transient = transient
        self.lock = threading.RLock()
        self._life = threading.Lock()  # guards starting/ending the thread and the wake fd
        self._wake_fd = -1
        self._calls: deque[Callable[[], None]] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._dead: set[int] = set()  # kick fds found unusable (until the transport replaces them)
        self._kick_buf = bytearray(8)
        self.turns = 0
        #: The device's per-queue counters, by queue index (pyvirtio.stats): kicks served and
        #: notifications sent are counted here, for every transport.
        self.counters = counters
        #: The device's fault rules: notification rules apply to what every turn sends
        #: (:mod:`pyvirtio.irq_faults`; an empty set costs one attribute test per turn).
        self.device = device
        self.faults: FaultSet = device.faults if device is not None else _NO_FAULTS
        self._irq: IrqFaults | None = None
        #: The host's short way through a kick's turn, if it has one (QueueHost.serve_kick).
        self._serve_one: Callable[[int, int], int] | None = getattr(host, "serve_kick", None)

    # --- control, from any thread ---------------------------------------------------------------

    def start(self) -> "GroupWorker":
        with self._life:
            if not self.transient:
                self._start()
        return self

    def _start(self) -> None:
        """Start the thread (with ``_life`` held) unless it runs or the worker is stopping."""
        if self._thread is None and not self._stopping:
            if self._wake_fd < 0:
                self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._thread = threading.Thread(target=self._run, args=(self._wake_fd,), name=self.name,
                                            daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Make the worker re-derive what it watches and look at every queue of its group."""
        with self._life:
            if self.transient:
                self._start()
            fd = self._wake_fd
            if fd >= 0:
                try:
                    os.eventfd_write(fd, 1)
                except OSError:
                    pass

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the worker's thread, under its lock, before its next turn."""
        self._calls.append(fn)
        self.wake()

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop the thread (bounded); True if it stopped.  Idempotent; closes the wake fd."""
        thread = self._request_stop()
        stopped = True
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            stopped = not thread.is_alive()
            if not stopped:
                log.error("%s: worker did not stop within %.1f s; left behind", self.name, timeout)
        with self._life:
            if stopped:
                self._thread = None
                if self._irq is not None:
                    self._irq.close()
                    self._irq = None
                if self._wake_fd >= 0:
                    fd, self._wake_fd = self._wake_fd, -1
                    os.close(fd)
        return stopped

    def _request_stop(self) -> threading.Thread | None:
        with self._life:
            self._stopping = True
            if self._wake_fd >= 0:
                os.eventfd_write(self._wake_fd, 1)
            return self._thread

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _retire(self, wake_fd: int) -> bool:
        """A transient worker with nothing to watch ends its thread, unless a wake or a call
        came in meanwhile (both are looked at under ``_life``, which wake() writes under), or
        a turn in another thread gave it something to watch (looked at under the turn lock, so a
        kick's turn either sees this thread gone afterwards or happened before this look)."""
        with self.lock, self._life:
            if self._calls or self._stopping or self._wanted() or self._polling():
                return False
            pending = select.poll()
            pending.register(wake_fd, POLLIN)
            if pending.poll(0):
                return False  # woken since the last poll: go round once more (the wake stays)
            self._thread = None
            self._wake_fd = -1
            os.close(wake_fd)
            return True

    # --- one turn (the worker's thread, or inline under the lock) -------------------------------

    def turn(self, kicked: Iterable[int] = (), events: Sequence[tuple[int, int]] = (), *,
             everything: bool = False) -> None:
        """Serve kicked queues (all of the group's with ``everything``) and fired host fds,
        then send the notifications the device asked for."""
        with self.lock:
            notify = self._turn(kicked, events, everything)
        self._send(notify)

    def _send(self, notify: Iterable[int]) -> None:
        """Notify the driver of each of these queues (and count it)."""
        for index in notify:
            self.host.notify(index)
            if self.counters:
                self.counters[index].interrupts += 1

    def _turn(self, kicked: Iterable[int], events: Sequence[tuple[int, int]], everything: bool) -> list[int]:
        """One turn with the lock held: the queues to notify (some may be notified already)."""
        host = self.host
        self.turns += 1
        notify = [i for i in (self.queues if everything else kicked) if host.process(i)]
        if events or everything:
            more = host.host_ready(self.group, list(events))
            held = self.device.kicks_held if self.device is not None else None
            if held:  # kicks off while work was in flight: what finished may let the ring go on
                if more and not self.faults.irq:
                    # What finished goes to the driver before the ring is looked at again, so it
                    # starts its next requests meanwhile (at queue depth 1 that look is then off
                    # the request's path).  A later completion in the look asks again itself.
                    self._send(sorted(more.union(notify)))
                    more, notify = set(), []
                more = more.union(i for i in self.queues if i in held and host.process(i))
            if more:
                notify = sorted(more.union(notify))
        if self.faults.irq and notify:
            notify = self._irq_faults().filter(notify)
        return notify

    def _irq_faults(self) -> IrqFaults:
        if self._irq is None:
            self._irq = IrqFaults(self.device, self.faults, self.queues)
        return self._irq

    def timer_fd(self) -> int:
        """The notification faults' timer while one is pending (-1: none)."""
        return self._irq.fd if self._irq is not None else -1

    # --- the thread -----------------------------------------------------------------------------

    def _run(self, wake_fd: int) -> None:
        poller = select.poll()
        watched: dict[int, tuple[int, int]] = {}  # fd -> (events, queue index or -1 for host fds)
        poller.register(wake_fd, POLLIN)
        host_fds, group = self.host.host_fds, self.group
        # The kick fds and polling modes change only on the control path, which wakes the
        # worker afterwards: they are derived again after each wake; the device's host fds
        # after every turn.
        woken = True
        kicks: dict[int, tuple[int, int]] = {}
        # The watch list of the last turn and what it was derived from.
        want: dict[int, tuple[int, int]] = {}
        last_kicks: dict[int, tuple[int, int]] | None = None
        last_extra: list[tuple[int, int]] = []
        synced: dict[int, tuple[int, int]] | None = None  # the list ``watched`` was last made equal to
        polling = False
        timeout: float | None = None
        while True:
            try:
                if woken:
                    kicks, polling = self._kick_fds(), self._polling()
                    timeout = self._timeout(polling)
                    if self.faults.irq:
                        self._irq_faults().sync()
                extra = host_fds(group)
                if self._irq is not None and self._irq.fd >= 0:
                    extra = extra + [(self._irq.fd, POLLIN)]
                if kicks is not last_kicks or extra != last_extra:  # most turns: as last time
                    want = self._merge(kicks, extra) if extra else kicks
                    last_kicks, last_extra = kicks, extra
                if self.transient and not want and timeout is None:
                    if self._retire(wake_fd):
                        return
                    # Not retired: a kick's turn in another thread may have given the group
                    # something to watch since ``extra`` was read (a request now in flight on a
                    # pool).  That kick saw the fd already wanted before its turn (another
                    # request was in flight then) and this thread running, so it sent no wake:
                    # derive the watch list again, or its completion would never be looked at.
                    extra = host_fds(group)
                    if self._irq is not None and self._irq.fd >= 0:
                        extra = extra + [(self._irq.fd, POLLIN)]
                    want = self._merge(kicks, extra) if extra else kicks
                    last_extra = extra
                if want is not synced:  # a new watch list (after _sync, watched equals it)
                    if want != watched:
                        _sync(poller, watched, want)
                    synced = want
                events = self._wait(poller, timeout) if self.poll_max else poller.poll(timeout)
            except Exception:  # a bug of ours: log, keep the worker alive
                log.exception("%s: poll failed", self.name)
                events = []
            woken = False
            for fd, _ in events:
                if fd == wake_fd:
                    _drain(fd)
                    woken = True
            if self._stopping:  # read after draining the wake fd: a stop cannot be lost
                return
            try:
                dead = len(self._dead)
                if (len(events) == 1 and not woken and not polling and not self._calls
                        and self._irq is None and not self.faults.irq and self._serve_one is not None):
                    # One fd fired, nothing else to do: if it is a plain kick, the usual turn
                    # goes the host's short way.
                    fd, revents = events[0]
                    entry = watched.get(fd)
                    if entry is not None and entry[1] >= 0 and revents == POLLIN:
                        self._serve_kick(fd, entry[1])
                    else:
                        self._serve(events, watched, False)
                else:
                    self._serve(events, watched,
                                woken or polling or (not events and self.idle_interval is not None))
                if len(self._dead) != dead:
                    woken = True
            except Exception:
                log.exception("%s: turn failed", self.name)

    def _wait(self, poller, timeout: float | None) -> list[tuple[int, int]]:
        """Poll for up to the current window, then block; adjust the window as QEMU's
        ``adjust_polling_time``: a wait that polling ended, or no longer than the window, keeps
        it; one longer than ``poll_max`` ends polling until waits are short again; one between
        grows it (from POLL_START, times POLL_GROW, at most ``poll_max``)."""
        window, clock = self._window, time.perf_counter
        start = clock()
        if window:
            end = start + window
            while True:
                events = poller.poll(0)
                if events:
                    self.polled += 1
                    return events
                if clock() >= end:
                    break
        events = poller.poll(timeout)
        waited = clock() - start
        if waited > self.poll_max:
            self._window = 0.0
        elif waited > window and window < self.poll_max:
            self._window = min(self.poll_max, window * POLL_GROW if window else POLL_START)
        return events

    def _wanted(self) -> dict[int, tuple[int, int]]:
        return self._with_host_fds(self._kick_fds())

    def _kick_fds(self) -> dict[int, tuple[int, int]]:
        want: dict[int, tuple[int, int]] = {}
        live = set()
        for index in self.queues:
            fd = self.host.kick_fd(index)
            if fd >= 0:
                live.add(fd)
                if fd not in self._dead:
                    want[fd] = (POLLIN, index)
        self._dead &= live  # a replaced fd number may come back as a good one
        return want

    def _with_host_fds(self, kicks: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
        extra = self.host.host_fds(self.group)
        if self.timer_fd() >= 0:
            extra = extra + [(self.timer_fd(), POLLIN)]
        return self._merge(kicks, extra) if extra else kicks

    @staticmethod
    def _merge(kicks: dict[int, tuple[int, int]], extra: list[tuple[int, int]]) -> dict[int, tuple[int, int]]:
        want = dict(kicks)
        for fd, mask in extra:
            if fd >= 0 and fd not in want:
                want[fd] = (mask, -1)
            elif fd >= 0:
                want[fd] = (want[fd][0] | mask, want[fd][1])
        return want

    def _polling(self) -> bool:
        for index in self.queues:
            if self.host.polling(index):
                return True
        return False

    def _timeout(self, polling: bool) -> float | None:
        if polling:
            return POLL_INTERVAL * 1000
        return self.idle_interval * 1000 if self.idle_interval is not None else None

    def _serve(self, events: list[tuple[int, int]], watched: dict[int, tuple[int, int]],
               everything: bool) -> None:
        """One turn after a poll: pending host calls, then the kicked queues and fired host fds
        (every queue of the group when woken, polling, or idle)."""
        calls = self._calls
        while calls:
            fn = calls.popleft()
            with self.lock:
                fn()
        kicked: list[int] = []
        later: list[tuple[int, int]] = []  # (fd, queue): kicks read after the turn
        host_events: HostEvents = []
        kick_fd = self.host.kick_fd
        timer = self.timer_fd()
        with self.lock:
            for fd, revents in events:
                entry = watched.get(fd)
                if entry is None:
                    continue
                index = entry[1]
                if fd == timer and self._irq is not None:
                    for index in self._irq.due():  # delayed and spurious notifications
                        self.host.notify(index)
                        if self.counters:
                            self.counters[index].interrupts += 1
                elif index < 0:
                    host_events.append((fd, revents))
                elif kick_fd(index) == fd and (revents == POLLIN or self._take_kick(fd, revents, index)):
                    if revents == POLLIN:
                        later.append((fd, index))
                    kicked.append(index)
                    if self.counters:
                        self.counters[index].kicks += 1
            # Notifications go out with the lock still held: a control message that stops or
            # re-plumbs a ring never sees one of this turn arrive after it.
            self._send(self._turn(kicked, host_events, everything))
            if later:
                # A plain kick is read only now, its request served and notified: one system
                # call less before the answer.  The read says how many kicks the eventfd
                # counted: only the one this turn answered, and every chain made available
                # before it was served (and any later one without a kick, by the drain's last
                # look after it asked for kicks again); more, and one may have come after that
                # look, its kick now consumed: serve those rings again.
                again = [index for fd, index in later if self._take_kick(fd, POLLIN, index) == MORE_KICKS]
                if again:
                    self._send(self._turn(again, (), False))

    def _serve_kick(self, fd: int, index: int) -> None:
        """The usual turn, the short way (:meth:`_run` takes it for a host that has one): one
        kick fd readable and nothing else (no host fd, no wake, no host call, no polling, no
        notification faults), served by the host's own ``serve_kick`` in one call — the fd
        check, the ring, the notification — and counted as :meth:`_serve` counts it."""
        counters = self.counters
        with self.lock:
            sent = self._serve_one(index, fd)  # type: ignore[misc]
            if sent < 0:
                return  # replaced since the poll (the control path wakes us to derive it again)
            if counters:
                counters[index].kicks += 1
                counters[index].interrupts += sent
            # As _serve: the kick is read after its request was served and notified; more than
            # this one kick counted, and the ring is served again.
            if self._take_kick(fd, POLLIN, index) == MORE_KICKS:
                self._send(self._turn((index,), (), False))

    def _take_kick(self, fd: int, revents: int, index: int) -> int:
        """Consume a kick: 0 (false) if the fd is unusable, else 1, or MORE_KICKS when the read
        took more than one kick (an eventfd's count above 1) or what it read was not an
        eventfd's count.  An fd at end of file or in error is dropped from the watch list until
        it is replaced, with one log line.  The read is ``RWF_NOWAIT``: it cannot block even if
        the front-end cleared O_NONBLOCK and drained the eventfd between our poll and this read."""
        try:
            if revents & _BAD and not revents & POLLIN:
                raise OSError(errno.EPIPE, "hung up or in error")
            n = os.preadv(fd, [self._kick_buf], -1, _RWF_NOWAIT)
            if not n:
                raise OSError(errno.EPIPE, "at end of file")
        except (BlockingIOError, InterruptedError):
            return 1
        except OSError as exc:
            log.warning("%s: kick fd of queue %d unusable (%s); no longer watched until it is "
                        "replaced", self.name, index, exc.strerror)
            self._dead.add(fd)
            return 0
        return MORE_KICKS if n != 8 or self._kick_buf != _ONE_KICK else 1


def _sync(poller, watched: dict[int, tuple[int, int]], want: dict[int, tuple[int, int]]) -> None:
    for fd in [fd for fd in watched if fd not in want or watched[fd] != want[fd]]:
        try:
            poller.unregister(fd)
        except KeyError:
            pass
        del watched[fd]
    for fd, entry in want.items():
        if fd not in watched:
            poller.register(fd, entry[0])
            watched[fd] = entry


def _drain(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except OSError:
        pass


@contextmanager
def hold(workers: Iterable[GroupWorker]) -> Iterator[None]:
    """Hold every group still (their locks, in index order): the control path's critical section."""
    with ExitStack() as stack:
        for w in workers:
            stack.enter_context(w.lock)
        yield


def stop_all(workers: Iterable[GroupWorker], timeout: float = STOP_TIMEOUT) -> bool:
    """Stop several workers with one overall bound; True if all stopped."""
    workers = list(workers)
    for w in workers:
        w._request_stop()
    ok = True
    for w in workers:
        ok = w.stop(timeout) and ok
    return ok


# --- in-process transports: loopback, the PCI and MMIO register models -------------------------


class LocalEngine:
    """Runs a device's queue groups for an in-process transport.

    A kick is served inline, in the kicking thread, under the group's lock (a register write in
    the driver's thread, as a synchronous device would do it); each group also has a worker
    thread that watches the device's host fds (io_uring completions, a TAP, a console endpoint)
    and is woken when the device's wishes may have changed.  Interrupts go to ``interrupt``."""

    def __init__(self, device, memory: Callable[[], GuestMemory | None],
                 interrupt: Callable[[Interrupt], None], *, name: str | None = None):
        self.device = device
        self._memory = memory
        self._interrupt = interrupt
        self.name = name or type(device).__name__
        self.workers: list[GroupWorker] = []
        self._group_of: dict[int, GroupWorker] = {}
        self._lock = threading.Lock()
        self._stopped = False  # after stop(): kicks and host calls run inline, no thread starts
        device.host_call = self.host_call

    # QueueHost

    def kick_fd(self, index: int) -> int:
        return -1

    def polling(self, index: int) -> bool:
        return False

    def process(self, index: int) -> bool:
        mem = self._memory()
        dev = self.device
        if mem is None or not 0 <= index < len(dev.queues):
            return False
        queue = dev.queues[index]
        if not queue.ready or not dev.driver_ok or queue.broken:
            return False  # 2.1: no buffers are consumed before DRIVER_OK
        try:
            return bool(dev.process_queue(mem, queue))
        except (DriverFault, GuestMemoryError, QueueBroken) as exc:
            queue.stats.errors += 1
            dev.needs_reset(exc)
            return False

    def host_fds(self, group: int) -> list[tuple[int, int]]:
        if self._memory() is None:
            return []
        return self.device.host_fds(group)

    def host_ready(self, group: int, events: HostEvents) -> set[int]:
        mem = self._memory()
        if mem is None:
            return set()
        try:
            return self.device.host_ready(mem, group, events)
        except (DriverFault, GuestMemoryError, QueueBroken) as exc:
            self.device.needs_reset(exc)
            return set()

    def notify(self, index: int) -> None:
        self._interrupt(Interrupt(index))

    # the transport's side

    def host_call(self, fn: Callable[[], None], group: int = 0) -> None:
        """The device's ``host_call``: run ``fn`` in ``group``'s worker."""
        workers = self._ensure()
        if not self._stopped and 0 <= group < len(workers):
            workers[group].call_soon(fn)
        else:
            fn()

    def _ensure(self) -> list[GroupWorker]:
        with self._lock:
            if not self.workers and not self._stopped:
                groups = self.device.queue_groups()
                idle = getattr(self.device, "idle_interval", None)
                counters = [q.stats for q in self.device.queues]
                self.workers = [GroupWorker(self, g, queues, name=f"{self.name}-g{g}",
                                            idle_interval=idle, transient=True, counters=counters,
                                            device=self.device)
                                for g, queues in enumerate(groups)]
                self._group_of = {q: w for w in self.workers for q in w.queues}
            return self.workers

    def kick(self, index: int, check: Callable[[], None] | None = None) -> None:
        """The driver notified queue ``index``: serve it now, in this thread.  ``check`` runs
        first, under the group's lock: what it reads of the ring (a notification's position,
        2.9) is then not moved by the group's worker under it."""
        self._ensure()
        worker = self._group_of.get(index)
        if worker is None:
            log.warning("%s: notify for queue %d that does not exist", self.name, index)
            return
        self.device.queues[index].stats.kicks += 1
        before = self.host_fds(worker.group)
        if check is not None:
            with worker.lock:
                check()
        worker.turn((index,))
        after = self.host_fds(worker.group)
        if after != before or ((after or worker.timer_fd() >= 0) and not worker.running):
            worker.wake()  # the worker thread must watch something new (completions, a TAP)

    def wake(self) -> None:
        for w in self._ensure():
            w.wake()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold every group still while the transport changes the device (status, queues)."""
        with hold(list(self.workers)):
            yield

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            workers, self.workers, self._group_of = self.workers, [], {}
        stop_all(workers)


__all__ = ["GroupWorker", "LocalEngine", "QueueHost", "hold", "stop_all", "POLL_INTERVAL",
           "STOP_TIMEOUT", "POLLIN", "POLLOUT"]
