"""A full memory fence reachable from Python.

Why: the event-index protocol (VIRTIO 1.3, 2.7.7 and 2.7.10) has each side *store* its index or
its event field and then *load* the other side's.  x86-64 keeps loads ordered with loads and stores
with stores (TSO), but may let a later load pass an earlier store to another location (the store
sits in the store buffer).  Without a fence between "re-enable notifications / publish used idx"
and "re-read avail idx / read used_event", both sides can miss each other's update and sleep
forever: the lost wake-up.  Linux uses ``virtio_mb()`` (``mfence`` or a locked instruction) at
exactly these points.

CPython has no fence primitive.  Plain Python statements are not fences: a ``memoryview`` store is
a ``memcpy`` and the interpreter issues no locked instruction between it and the next load (the GIL
is only touched on a thread switch).  So we execute one on purpose:

1. Preferred: a 4-byte machine-code stub ``mfence; ret`` (``0f ae f0 c3``) in an executable
   anonymous mapping, called through ``ctypes``.  ``mfence`` orders every earlier load and store
   before every later one.
2. Fallback (executable mappings refused, or not x86-64): ``pthread_spin_lock`` +
   ``pthread_spin_unlock`` on a private spinlock in glibc.  The lock is a ``lock``-prefixed
   read-modify-write, which on x86 is a full barrier; on other architectures glibc's acquire/release
   pair brackets it.

``full_fence()`` costs one ctypes call (~0.1-0.3 µs); the rings call it only on the slow path
(re-enabling notifications, deciding to notify), never per descriptor.

The three barriers the rings name, as Linux's ``virtio_ring.c`` does (``virtio_mb``,
``virtio_rmb``, ``virtio_wmb``):

* :func:`mb` — a store, then a load of another location (the lost-wake-up points): the full
  fence everywhere.
* :func:`rmb` — a load, then loads that depend on what it said (the avail idx, then the ring
  entries and descriptors it covers; a packed descriptor's flags, then its body).
* :func:`wmb` — stores, then the store that publishes them (used elements, then the used idx;
  a packed descriptor's body, then its flags; an inflight record, then the ring write).

On x86-64 (TSO) loads are not reordered with loads nor stores with stores, so ``rmb`` and ``wmb``
are no-ops there (a plain call); on weakly ordered CPUs (aarch64 …) they are the full fence.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import platform

_MFENCE_RET = b"\x0f\xae\xf0\xc3"


def _machine_code_fence():
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError):
        return None
    page.write(_MFENCE_RET)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    func = ctypes.CFUNCTYPE(None)(address)
    func._page = page  # keep the mapping alive as long as the function
    return func, "mfence"


def _spinlock_fence():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    lock = ctypes.c_int(0)
    libc.pthread_spin_init(ctypes.byref(lock), 0)
    spin_lock, spin_unlock = libc.pthread_spin_lock, libc.pthread_spin_unlock
    ref = ctypes.byref(lock)

    def fence() -> None:
        spin_lock(ref)
        spin_unlock(ref)

    fence._lock = lock
    return fence, "pthread_spin_lock"


_fence, KIND = _machine_code_fence() or _spinlock_fence()
full_fence = _fence
full_fence.__doc__ = "Order every earlier load/store of this thread before every later one."

#: Whether this CPU may reorder loads with loads or stores with stores (everything but x86).
WEAK_ORDERING = platform.machine() not in ("x86_64", "AMD64", "i386", "i686")


def _ordered() -> None:
    """Nothing to do: the CPU keeps this kind of access in program order (x86 TSO)."""


mb = full_fence
rmb = full_fence if WEAK_ORDERING else _ordered
wmb = full_fence if WEAK_ORDERING else _ordered
