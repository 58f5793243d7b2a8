"""Guest memory: guest-physical addresses mapped onto host buffers.

A :class:`GuestMemory` is a sorted set of :class:`Region` objects, each a guest-physical range
``[gpa, gpa + size)`` backed by a writable host buffer (a ``bytearray``, an ``mmap`` of a shared
memfd, ...).  Regions may leave holes between them; an access that touches a hole, or that wraps
past 2**64, raises :class:`~pyvirtio.errors.GuestMemoryError`.

All views are zero-copy ``memoryview`` slices of the host buffer, so storage and network I/O can go
straight into guest memory (``os.preadv``, ``os.pwritev``, ``socket.recv_into``).

The memory is a *parameter* of every ring operation (STYLE.md, vm-virtio): the same virtqueue code
runs over an mmap of a real guest, a test buffer, or a fuzzer's input.
"""

from __future__ import annotations

import bisect
import fcntl
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from .errors import GuestMemoryError, UsageError

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

_U64_LIMIT = 1 << 64
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(eq=False)
class Region:
    """One guest-physical range backed by a host buffer.

    ``userspace_addr`` is the front-end's virtual address of the region (vhost-user: ring addresses
    arrive in that address space); ``fd`` and ``mmap_offset`` record where a shared region came from.
    """

    gpa: int
    size: int
    buf: memoryview
    userspace_addr: int = 0
    fd: int = -1
    mmap_offset: int = 0
    _owner: object = field(default=None, repr=False)
    #: whether closing the memory closes ``_owner`` (an mmap) and ``fd``; ``from_buffers`` sets it
    #: False: buffers a caller handed in stay the caller's to close
    owns: bool = True
    _address: int = field(default=-2, init=False, repr=False)  # -2: not looked up; -1: none
    #: numpy views of ``buf`` (pyvirtio.virtq.vector), made on first use, dropped with the region
    _arrays: dict | None = field(default=None, init=False, repr=False)

    @property
    def end(self) -> int:
        """The first guest-physical address past the region."""
        return self.gpa + self.size

    def host_address(self) -> int | None:
        """The host virtual address of ``buf[0]`` — what the kernel is given for I/O straight
        into guest memory (an iovec) — or None for a buffer that cannot be written (looked up
        once)."""
        if self._address == -2:
            import ctypes
            try:
                self._address = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
            except (TypeError, ValueError):  # read-only or empty
                self._address = -1
        return self._address if self._address >= 0 else None


class GuestMemory:
    """Guest-physical memory made of one or more non-overlapping regions."""

    def __init__(self, regions: Iterable[Region] = ()):
        self._regions: list[Region] = []
        self._starts: list[int] = []
        #: (gpa, size, buf, host address) of the region the last lookup found: most accesses fall
        #: in it (:meth:`window`)
        self._hot: tuple[int, int, memoryview, int | None] | None = None
        #: bumped on every change of the region set, so cached ring views know to re-resolve
        self.generation = 0
        #: whether any region is mapped (a plain attribute: the queue workers look every turn)
        self.mapped = False
        for region in regions:
            self.add_region(region)

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def from_buffers(cls, *layout: tuple[int, Buffer]) -> "GuestMemory":
        """Build from ``(gpa, buffer)`` pairs; each buffer must be writable (bytearray, mmap...)."""
        mem = cls()
        for gpa, buffer in layout:
            view = memoryview(buffer).cast("B")
            mem.add_region(Region(gpa, len(view), view, userspace_addr=gpa, _owner=buffer, owns=False))
        return mem

    @classmethod
    def anonymous(cls, size: int, gpa: int = 0) -> "GuestMemory":
        """A single zero-filled bytearray-backed region, for tests and in-process use."""
        return cls.from_buffers((gpa, bytearray(size)))

    @classmethod
    def memfd(cls, size: int, gpa: int = 0, name: str = "pyvirtio-guest") -> "GuestMemory":
        """A single region backed by a shareable memfd (for vhost-user front-ends)."""
        return cls([memfd_region(gpa, size, name)])

    def add_region(self, region: Region) -> None:
        """Map one more region; it must not overlap the others (the generation counter moves)."""
        if region.size <= 0 or region.gpa < 0 or region.end > _U64_LIMIT:
            raise UsageError(f"bad region gpa={region.gpa:#x} size={region.size:#x}")
        if len(region.buf) < region.size:
            raise UsageError("region buffer is smaller than the region")
        i = bisect.bisect_right(self._starts, region.gpa)
        if i > 0 and self._regions[i - 1].end > region.gpa:
            raise UsageError(f"region at {region.gpa:#x} overlaps another")
        if i < len(self._regions) and region.end > self._regions[i].gpa:
            raise UsageError(f"region at {region.gpa:#x} overlaps another")
        self._regions.insert(i, region)
        self._starts.insert(i, region.gpa)
        self._hot = None
        self.generation += 1
        self.mapped = True

    def remove_region(self, gpa: int, size: int) -> Region:
        """Take out the region that starts at ``gpa`` with ``size`` (vhost-user REM_MEM_REG)."""
        i = bisect.bisect_left(self._starts, gpa)
        if i == len(self._regions) or self._regions[i].gpa != gpa or self._regions[i].size != size:
            raise UsageError(f"no region at {gpa:#x} of size {size:#x}")
        del self._starts[i]
        self._hot = None
        self.generation += 1
        region = self._regions.pop(i)
        self.mapped = bool(self._regions)
        return region

    @property
    def regions(self) -> tuple[Region, ...]:
        """The mapped regions, in address order."""
        return tuple(self._regions)

    def close(self) -> None:
        """Drop every region; close the mappings and fds of regions that own them (``owns``)."""
        for region in self._regions:
            release_region(region)
        self._regions.clear()
        self._starts.clear()
        self._hot = None
        self.generation += 1
        self.mapped = False

    # --- address translation --------------------------------------------------------------------

    def region_at(self, addr: int) -> Region:
        """The region holding guest-physical ``addr``; :class:`~pyvirtio.errors.GuestMemoryError`
        outside every region."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            region = self._regions[i]
            if addr < region.end:
                return region
        raise GuestMemoryError(addr, 1)

    def window(self) -> tuple[int, int, memoryview, int | None] | None:
        """The region the last translation found, as ``(gpa, size, buf, address)``, for a caller
        that translates several addresses in a row (a descriptor table): a range
        ``[addr, addr+n)`` with ``0 <= addr - gpa`` and ``addr - gpa + n <= size`` is
        ``buf[addr - gpa:addr - gpa + n]``, exactly what :meth:`views` would return for it, with
        no call, and starts at host address ``address + addr - gpa`` (``address``:
        :meth:`Region.host_address`, None if the buffer has none); anything else goes through
        :meth:`views`.  None when there is no such region yet — or when a subclass's
        :meth:`views` does more than slice (``QtestMemory`` fetches the bytes first)."""
        return self._hot

    def view(self, addr: int, length: int) -> memoryview:
        """A zero-copy view of ``[addr, addr+length)``, which must lie in one region."""
        hot = self._hot
        if hot is not None:
            off = addr - hot[0]
            if 0 <= off and 0 <= length and off + length <= hot[1]:
                return hot[2][off:off + length]
        if length < 0 or addr < 0 or addr + length > _U64_LIMIT:
            raise GuestMemoryError(addr, length, "is negative or wraps past 2**64")
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            region = self._regions[i]
            off = addr - region.gpa
            if off + length <= region.size:
                self._hot = (region.gpa, region.size, region.buf, region.host_address())
                return region.buf[off:off + length]
        raise GuestMemoryError(addr, length)

    def views(self, addr: int, length: int) -> list[memoryview]:
        """Zero-copy views of ``[addr, addr+length)``, one per region the range crosses."""
        hot = self._hot
        if hot is not None:
            off = addr - hot[0]
            if 0 <= off and 0 < length and off + length <= hot[1]:
                return [hot[2][off:off + length]]
        if length < 0 or addr < 0 or addr + length > _U64_LIMIT:
            raise GuestMemoryError(addr, length, "is negative or wraps past 2**64")
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:  # fast path: the whole range in one region
            region = self._regions[i]
            off = addr - region.gpa
            if off + length <= region.size:
                self._hot = (region.gpa, region.size, region.buf, region.host_address())
                return [region.buf[off:off + length]] if length else []
        out = []
        start, remaining = addr, length
        while remaining:
            region = self._region_or_fail(addr, start, length)
            off = start - region.gpa
            n = min(remaining, region.size - off)
            out.append(region.buf[off:off + n])
            start += n
            remaining -= n
        return out

    def uva_to_gpa(self, uva: int, length: int = 1) -> int:
        """Translate a front-end virtual address (vhost-user ring addresses) to guest-physical."""
        for region in self._regions:
            off = uva - region.userspace_addr
            if 0 <= off and off + length <= region.size:
                return region.gpa + off
        raise GuestMemoryError(uva, length, "is in no region's front-end address range")

    def gpa_to_uva(self, gpa: int) -> int:
        """The front-end's user address of guest-physical ``gpa`` (vhost-user speaks in those)."""
        region = self.region_at(gpa)
        return region.userspace_addr + (gpa - region.gpa)

    def check(self, addr: int, length: int) -> None:
        """Raise GuestMemoryError unless every byte of the range is mapped."""
        self.views(addr, length)

    def _region_or_fail(self, addr: int, at: int, length: int) -> Region:
        try:
            return self.region_at(at)
        except GuestMemoryError:
            raise GuestMemoryError(addr, length) from None

    # --- byte and scalar access -----------------------------------------------------------------

    def read(self, addr: int, length: int) -> bytes:
        """A copy of ``length`` bytes at ``addr`` (use :meth:`view` or :meth:`views` for zero-
        copy)."""
        return b"".join(bytes(v) for v in self.views(addr, length))

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into guest memory at ``addr``."""
        pos = 0
        for v in self.views(addr, len(data)):
            v[:] = data[pos:pos + len(v)]
            pos += len(v)

    def _aligned(self, addr: int, size: int) -> memoryview:
        if addr % size:
            raise GuestMemoryError(addr, size, f"is not {size}-byte aligned")
        return self.view(addr, size)

    def load16(self, addr: int) -> int:
        """The little-endian 16-bit value at ``addr`` (one aligned load)."""
        return _U16.unpack(self._aligned(addr, 2))[0]

    def load32(self, addr: int) -> int:
        """The little-endian 32-bit value at ``addr`` (one aligned load)."""
        return _U32.unpack(self._aligned(addr, 4))[0]

    def load64(self, addr: int) -> int:
        """The little-endian 64-bit value at ``addr`` (one aligned load)."""
        return _U64.unpack(self._aligned(addr, 8))[0]

    def store16(self, addr: int, value: int) -> None:
        """Store ``value`` as 16 little-endian bits at ``addr`` (one aligned store)."""
        _U16.pack_into(self._aligned(addr, 2), 0, value & 0xFFFF)

    def store32(self, addr: int, value: int) -> None:
        """Store ``value`` as 32 little-endian bits at ``addr`` (one aligned store)."""
        _U32.pack_into(self._aligned(addr, 4), 0, value & 0xFFFFFFFF)

    def store64(self, addr: int, value: int) -> None:
        """Store ``value`` as 64 little-endian bits at ``addr`` (one aligned store)."""
        _U64.pack_into(self._aligned(addr, 8), 0, value & 0xFFFFFFFFFFFFFFFF)


def memfd_region(gpa: int, size: int, name: str = "pyvirtio-guest") -> Region:
    """A region backed by a new memfd of ``size`` bytes (rounded up to whole pages), mapped
    shared; its ``fd`` can be handed to another process (vhost-user SET_MEM_TABLE).  Sealed as
    QEMU's memory-backend-memfd seals (a back-end requires F_SEAL_SHRINK: issue 12)."""
    size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return Region(gpa, size, memoryview(m), userspace_addr=_buffer_address(m) or gpa, fd=fd, _owner=m)


def release_region(region: Region) -> None:
    """Drop a region's views and close the mapping and fd it owns (safe to call twice)."""
    region._arrays = None
    try:
        region.buf.release()
    except BufferError:
        pass  # someone still holds a slice; the mapping goes when they let go
    if not region.owns:
        return
    owner = region._owner
    if isinstance(owner, mmap.mmap):
        try:
            owner.close()
        except BufferError:
            pass
    if region.fd >= 0:
        os.close(region.fd)
        region.fd = -1


def _buffer_address(buffer: Buffer) -> int:
    """The host virtual address of a writable buffer (what a vhost-user front-end sends)."""
    import ctypes

    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    except (TypeError, ValueError):
        return 0
