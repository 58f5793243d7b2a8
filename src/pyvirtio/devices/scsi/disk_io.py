"""Asynchronous READ/WRITE for disk units on image files: the block device's I/O engine.

A :class:`~.disk.DiskUnit` whose medium is an :class:`~.media.ImageMedium` and whose ``defer``
is set does not move the data itself: it checks the command as always, then leaves
``task.deferred = (kind, offset, length, dsync)``.  :class:`DeferredIO` (owned by the HBA, run in
its worker) hands that to :class:`pyvirtio.devices.blk_io.QueueIO` — io_uring or a thread pool,
straight between the image and guest memory, short transfers resubmitted, ``RWF_DSYNC`` for FUA
and write-through — and completes the request when the kernel finishes it: GOOD, or CHECK
CONDITION, MEDIUM ERROR (WRITE ERROR / UNRECOVERED READ ERROR) if the I/O failed.  Requests
complete in the order the kernel finishes them.

One ``QueueIO`` per (request queue, unit): its token is the chain's head index, unique in its
queue.  Everything in flight is waited for (and its used entry published) before a task
management function runs, before a unit is unplugged, when a ring stops (``quiesce``) and on
reset — so no command ever completes after the driver was told it was aborted or gone.
"""

from __future__ import annotations

import logging
from typing import Callable

from ...memory import GuestMemory
from ...spec.scsi import ScsiResponse
from ..blk_io import READ, QueueIO, Request
from .sense import medium_error
from .task import Task

log = logging.getLogger(__name__)

#: What the HBA writes once a deferred task ends: ``respond(chain, task, resp_size) -> written``.
Respond = Callable[..., int]


class DeferredIO:
    """The deferred tasks of one HBA, per request queue."""

    def __init__(self, respond: Respond, depth: int):
        self.respond = respond
        self.depth = depth
        self.ios: dict[tuple[int, int], QueueIO] = {}  # (queue, id(unit)) -> engine
        self.units: dict[tuple[int, int], object] = {}  # the same key -> unit (to close by unit)
        self.pending: dict[tuple[int, int], tuple[Task, int, object]] = {}  # (queue, head) -> ...

    @property
    def inflight(self) -> bool:
        """Whether any request is in the kernel."""
        return any(io.inflight for io in self.ios.values())

    def fds(self) -> list[int]:
        """Completion fds of the engines with requests in flight."""
        return [io.completion_fd for io in self.ios.values() if io.inflight]

    def start(self, queue: int, unit, chain, task: Task, resp_size: int) -> int | None:
        """Send ``task.deferred`` to the kernel; the bytes written if it finished at once (a
        cached read), else None (completed by :meth:`reap`)."""
        kind, offset, length, dsync = task.deferred  # type: ignore[misc]
        views = task.in_views(length) if task.in_len else task.out_views(length)
        key = (queue, id(unit))
        io = self.ios.get(key)
        if io is None:
            medium = unit.medium
            io = self.ios[key] = QueueIO(medium.image.fd, aio=unit.aio, depth=self.depth, align=1, direct=False)
            self.units[key] = unit
        self.pending[(queue, chain.head_index)] = (task, resp_size, unit)
        if kind == READ and io.copy_now(views, offset, length):
            return self._finish(queue, chain, None)  # done at once: never in flight
        io.start(Request(chain, kind, views, offset, length, dsync))
        return None

    def submit(self, queue: int) -> None:
        """Send what the queue's drain prepared."""
        for (q, _), io in self.ios.items():
            if q == queue:
                io.submit()

    def reap(self, only: int | None = None) -> dict[int, list[tuple[int, int]]]:
        """Completions that arrived (of queue ``only``): per queue, (head, written) ready for
        the used ring."""
        done: dict[int, list[tuple[int, int]]] = {}
        for (queue, _), io in list(self.ios.items()):
            if io.inflight and (only is None or queue == only):
                io.reap(self._collect(done, queue))
        return done

    def wait(self, queue: int | None = None, unit=None, timeout: float = 30.0) -> tuple[bool, dict[int, list[tuple[int, int]]]]:
        """Wait for everything in flight (of ``queue``, of ``unit``); (all finished, completions)."""
        done: dict[int, list[tuple[int, int]]] = {}
        ok = True
        for (q, uid), io in list(self.ios.items()):
            if (queue is not None and q != queue) or (unit is not None and uid != id(unit)) or not io.inflight:
                continue
            ok = io.wait_all(self._collect(done, q), timeout) and ok
        return ok, done

    def _collect(self, done: dict[int, list[tuple[int, int]]], queue: int) -> Callable[[Request, OSError | None], None]:
        def finished(req: Request, error: OSError | None) -> None:
            done.setdefault(queue, []).append((req.chain.head_index, self._finish(queue, req.chain, error)))
        return finished

    def _finish(self, queue: int, chain, error: OSError | None) -> int:
        task, resp_size, unit = self.pending.pop((queue, chain.head_index))
        if error is not None:
            log.warning("scsi: I/O on %s failed: %s", getattr(unit, "serial", "?"), error)
            write = task.out_len > 0
            task.check_condition(medium_error(write).sense(getattr(unit, "descriptor_sense", False)))
            task.response = ScsiResponse.OK
        return self.respond(chain, task, resp_size)

    def close(self, unit=None) -> None:
        """Close the engines (of ``unit``); call after :meth:`wait`."""
        for key in [k for k in self.ios if unit is None or k[1] == id(unit)]:
            self.ios.pop(key).close()
            self.units.pop(key, None)
        if unit is None:
            self.pending.clear()


def publish(queues, mem: GuestMemory | None, done: dict[int, list[tuple[int, int]]]) -> set[int]:
    """Put completions in their used rings; the queues whose driver wants an interrupt."""
    notify = set()
    for index, entries in done.items():
        queue = queues[index]
        if not entries or mem is None or queue.broken or not queue.ready:
            continue
        queue.add_used_batch(mem, entries)
        if queue.needs_notification(mem):
            notify.add(index)
    return notify
