"""Asynchronous file I/O for the block back-end: many requests of one ring in flight at once.

One ``AioEngine`` belongs to one thread (a blk ring worker): it *prepares* operations, *submits*
them in one go, and *reaps* completions in whatever order the kernel finishes them.  Its ``fd`` is
readable while completions wait to be reaped (io_uring: the ring's own fd; threads: an eventfd),
so the worker polls it next to its kick fds.  Two back-ends implement the same protocol:

* ``io_uring`` (``uring.py``): a thin ctypes binding over the raw syscalls; every prepared op is
  handed to the kernel by one ``io_uring_enter`` per ``submit()``;
* ``threads`` (``threads.py``): a small pool of worker threads doing ``os.preadv``/``os.pwritev``
  (the GIL is released while they block); used where io_uring is disabled or refused.

Rules the caller keeps (both back-ends):

* at most ``depth`` operations prepared or in flight (``available`` says how many more fit);
  one more raises ``AioQueueFull`` (a ``UsageError``: the caller must limit itself);
* tokens are the caller's ints, returned as ``(token, result)``; ``result`` is the byte count
  (short reads and writes included, 0 at end of file) or ``-errno``;
* the iovecs are kept referenced until their op is reaped; the caller must not release or resize
  the memory under them while the op is in flight;
* the engine is not thread-safe: one thread calls ``prep_*``/``submit``/``reap``/``wait``/``close``;
* offset -1 means "at the file position" (pipes, sockets), as in io_uring;
* reading into a read-only buffer is the caller's bug: io_uring raises ``UsageError`` at prep,
  threads completes it with ``-EINVAL``; writing from one works (io_uring copies it first);
* O_DIRECT files need buffers, offsets and lengths aligned as the file system says (4096 is
  safe); guest memory views are page-aligned where the guest's buffers are.
"""

from __future__ import annotations

from ..errors import UsageError
from .base import AioEngine, AioError, AioQueueFull, AioSetupError

__all__ = ["AioEngine", "AioError", "AioQueueFull", "AioSetupError", "open_aio",
           "io_uring_unavailable_reason"]


def io_uring_unavailable_reason() -> str | None:
    """None if an io_uring can be set up here; else a sentence saying why not."""
    from . import uring

    return uring.unavailable_reason()


def open_aio(kind: str = "auto", depth: int = 128, *, workers: int = 4) -> AioEngine:
    """An engine of ``kind`` ("io_uring", "threads" or "auto": io_uring where allowed)."""
    if depth < 1 or depth > 4096:
        raise UsageError(f"aio depth {depth} is not in 1..4096")
    if kind not in ("auto", "io_uring", "threads"):
        raise UsageError(f"unknown aio kind {kind!r} (auto, io_uring or threads)")
    if kind == "auto":
        kind = "io_uring" if io_uring_unavailable_reason() is None else "threads"
    if kind == "io_uring":
        from .uring import IoUringEngine

        return IoUringEngine(depth)
    from .threads import ThreadEngine

    return ThreadEngine(depth, workers=workers)
