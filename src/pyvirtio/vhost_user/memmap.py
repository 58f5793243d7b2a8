"""Map the memory regions a vhost-user front-end sends as fds (SET_MEM_TABLE, ADD_MEM_REG).

A region is ``memory_size`` bytes at ``mmap_offset`` in the fd.  ``mmap`` wants a page-aligned
offset, so the mapping starts at the offset rounded down to the page and the region is a slice
of it.  The fd must be a regular file (a memfd, a hugetlbfs or tmpfs file) that really holds
``mmap_offset + memory_size`` bytes: touching a mapping past the end of its file is a SIGBUS,
which would kill the whole daemon.  (A front-end that *shrinks* the file after handing it over
can still do that; nothing short of memfd seals prevents it.)
"""

from __future__ import annotations

import mmap
import os
import stat

from ..memory import Region
from .errors import BadMemoryRegion
from .wire import MemoryRegion

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
