"""Map the memory regions a vhost-user front-end sends as fds (SET_MEM_TABLE, ADD_MEM_REG).

A region is ``memory_size`` bytes at ``mmap_offset`` in the fd.  ``mmap`` wants a page-aligned
offset, so the mapping starts at the offset rounded down to the page and the region is a slice
of it.  The fd must be a regular file (a memfd, a hugetlbfs or tmpfs file) that really holds
``mmap_offset + memory_size`` bytes: touching a mapping past the end of its file is a SIGBUS,
which would kill the whole daemon.  A front-end could also *shrink* the file after handing it
over; for a memfd (QEMU's memory-backend-memfd, the usual case) that is prevented with a seal:
QEMU seals its memfds (seal=on, the default) with F_SEAL_SHRINK; a memfd that lacks the seal but
may still be sealed gets it from us, before its size is checked.  A memfd that cannot be sealed
(DPDK's ``--no-huge`` memory is made without MFD_ALLOW_SEALING) is taken like a file on tmpfs or
hugetlbfs (QEMU memory-backend-file, DPDK's hugepages), which have no seals at all: refusing
them would refuse real front-ends, so the daemon logs once that such a front-end could still
SIGBUS it by truncating the file, and serves it.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import stat

from ...memory import Region
from ..errors import BadMemoryRegion
from ..wire import MemoryRegion

log = logging.getLogger(__name__)

PAGE_SIZE = mmap.ALLOCATIONGRANULARITY
_U64 = 1 << 64


def check_region(r: MemoryRegion) -> None:
    """Checks that need no fd: sizes and wrap-around."""
    if r.memory_size == 0:
        raise BadMemoryRegion(f"region at gpa {r.guest_phys_addr:#x} has size 0")
    for name, base in (("guest", r.guest_phys_addr), ("user", r.userspace_addr),
                       ("mmap offset", r.mmap_offset)):
        if base + r.memory_size > _U64:
            raise BadMemoryRegion(f"region {name} range {base:#x}+{r.memory_size:#x} wraps past 2**64")


def is_memfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
    except OSError:
        return False


def seal_against_shrinking(fd: int) -> bool:
    """Make sure a memfd can never shrink under our mapping (F_SEAL_SHRINK: adding it if it is
    missing and the memfd allows it).  True if the region cannot shrink; False for a memfd that
    cannot be sealed and for other files (they have no seals)."""
    if not is_memfd(fd):
        return False
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        if not seals & fcntl.F_SEAL_SHRINK:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    except OSError:
        return False
    return True


def map_region(fd: int, r: MemoryRegion) -> Region:
    """mmap ``r`` from ``fd`` (shared, read-write).  On success the Region owns ``fd`` and the
    mapping (``pyvirtio.memory.release_region`` closes both); on failure the caller still owns
    ``fd``.  Raises BadMemoryRegion."""
    check_region(r)
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise BadMemoryRegion(f"region fd {fd}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadMemoryRegion(f"region fd is not a memfd or regular file (mode {st.st_mode:#o})")
    if not seal_against_shrinking(fd):
        log.warning("memory region at gpa %#x: its file cannot be sealed against shrinking; a "
                    "front-end that truncates it can make this daemon fail (SIGBUS)",
                    r.guest_phys_addr)
    st = os.fstat(fd)  # the size once it can no longer shrink (when sealed)
    if r.mmap_offset + r.memory_size > st.st_size:
        raise BadMemoryRegion(f"region [{r.mmap_offset:#x}, +{r.memory_size:#x}) runs past the end "
                              f"of its {st.st_size:#x}-byte file")
    base = r.mmap_offset - r.mmap_offset % PAGE_SIZE
    delta = r.mmap_offset - base
    try:
        m = mmap.mmap(fd, r.memory_size + delta, mmap.MAP_SHARED,
                      mmap.PROT_READ | mmap.PROT_WRITE, offset=base)
    except (OSError, ValueError, OverflowError) as exc:
        raise BadMemoryRegion(f"cannot map region of {r.memory_size:#x} bytes at offset "
                              f"{r.mmap_offset:#x}: {exc}") from None
    view = memoryview(m)[delta:delta + r.memory_size]
    return Region(r.guest_phys_addr, r.memory_size, view, userspace_addr=r.userspace_addr,
                  fd=fd, mmap_offset=r.mmap_offset, _owner=m)


# --- the inflight buffer (GET_INFLIGHT_FD / SET_INFLIGHT_FD) --------------------------------------


class InflightMapping:
    """A mapped inflight buffer: ``view`` (``size`` bytes) over an mmap this object owns."""

    def __init__(self, m: mmap.mmap, offset: int, size: int):
        self._mmap = m
        self.view = memoryview(m)[offset:offset + size]

    def close(self) -> None:
        """Unmap (every view derived from ``view`` must have been released first)."""
        self.view.release()
        try:
            self._mmap.close()
        except BufferError:  # a view still alive: the mapping goes with the last one
            log.warning("inflight buffer still referenced; left mapped")


def create_inflight(size: int) -> tuple[int, InflightMapping]:
    """A new zeroed memfd of ``size`` bytes, sealed so that it can neither shrink nor grow (the
    front-end maps it too), and its mapping.  Returns (the fd, which the caller owns; the mapping)."""
    fd = os.memfd_create("pyvirtio-inflight", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd, InflightMapping(m, 0, size)


def map_inflight(fd: int, size: int, offset: int) -> InflightMapping:
    """Map the inflight buffer a front-end handed back (SET_INFLIGHT_FD): ``size`` bytes at
    ``offset`` of ``fd``, which must be a file that really holds them (sealed against shrinking
    when it can be, as guest memory is).  The caller keeps ``fd``.  Raises BadMemoryRegion."""
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise BadMemoryRegion(f"inflight fd: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadMemoryRegion(f"inflight fd is not a memfd or regular file (mode {st.st_mode:#o})")
    if not seal_against_shrinking(fd):
        log.warning("inflight buffer: its file cannot be sealed against shrinking")
    st = os.fstat(fd)
    if size == 0 or offset + size > st.st_size:
        raise BadMemoryRegion(f"inflight buffer [{offset:#x}, +{size:#x}) is empty or runs past the "
                              f"end of its {st.st_size:#x}-byte file")
    base = offset - offset % PAGE_SIZE
    try:
        m = mmap.mmap(fd, size + offset - base, mmap.MAP_SHARED,
                      mmap.PROT_READ | mmap.PROT_WRITE, offset=base)
    except (OSError, ValueError, OverflowError) as exc:
        raise BadMemoryRegion(f"cannot map the inflight buffer: {exc}") from None
    return InflightMapping(m, offset - base, size)
