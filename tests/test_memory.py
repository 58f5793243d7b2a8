"""GuestMemory: regions with holes, zero-copy views, aligned scalar access, memfd sharing."""

from __future__ import annotations

import mmap
import os

import pytest

from pyvirtio.errors import GuestMemoryError, UsageError, VirtioError
from pyvirtio.memory import GuestMemory, Region

U64 = 1 << 64


@pytest.fixture
def holey():
    """[0x1000, 0x2000) and [0x2000, 0x3000) adjacent, a hole, then [0x5000, 0x6000)."""
    return GuestMemory.from_buffers((0x1000, bytearray(0x1000)), (0x2000, bytearray(0x1000)),
                                    (0x5000, bytearray(0x1000)))


def test_single_region_read_write_roundtrip():
    mem = GuestMemory.anonymous(0x1000)
    mem.write(0x10, b"hello")
    assert mem.read(0x10, 5) == b"hello"
    assert mem.read(0, 2) == b"\0\0"
    assert len(mem.regions) == 1 and mem.regions[0].gpa == 0 and mem.regions[0].size == 0x1000


def test_anonymous_at_nonzero_gpa():
    mem = GuestMemory.anonymous(0x100, gpa=0x4000)
    mem.write(0x40ff, b"x")
    assert mem.read(0x40ff, 1) == b"x"
    with pytest.raises(GuestMemoryError):
        mem.read(0x3fff, 1)
    with pytest.raises(GuestMemoryError):
        mem.read(0x4100, 1)


def test_view_is_zero_copy_into_the_backing_buffer():
    buf = bytearray(0x100)
    mem = GuestMemory.from_buffers((0x1000, buf))
    v = mem.view(0x1010, 4)
    v[:] = b"abcd"
    assert buf[0x10:0x14] == b"abcd"
    buf[0x20] = 0x7F
    assert mem.view(0x1020, 1)[0] == 0x7F


def test_region_at(holey):
    assert holey.region_at(0x1000).gpa == 0x1000
    assert holey.region_at(0x2fff).gpa == 0x2000
    assert holey.region_at(0x5abc).gpa == 0x5000
    for addr in (0, 0xfff, 0x3000, 0x4fff, 0x6000, -1, U64):
        with pytest.raises(GuestMemoryError):
            holey.region_at(addr)


def test_view_must_lie_in_one_region(holey):
    assert len(holey.view(0x1ff0, 0x10)) == 0x10
    with pytest.raises(GuestMemoryError):
        holey.view(0x1ff0, 0x20)  # crosses into the adjacent region: a single view cannot


def test_views_cross_adjacent_regions(holey):
    views = holey.views(0x1ffc, 8)
    assert [len(v) for v in views] == [4, 4]
    holey.write(0x1ffc, b"ABCDEFGH")  # write across the boundary
    assert bytes(views[0]) == b"ABCD" and bytes(views[1]) == b"EFGH"
    assert holey.read(0x1ffc, 8) == b"ABCDEFGH"
    assert holey.read(0x2000, 4) == b"EFGH"
    assert len(holey.views(0x1000, 0x2000)) == 2


def test_views_into_or_across_a_hole_fail(holey):
    for addr, length in ((0x2ffc, 8), (0x3000, 1), (0x4fff, 2), (0x1000, 0x4001), (0x5fff, 2)):
        with pytest.raises(GuestMemoryError) as exc:
            holey.views(addr, length)
        assert exc.value.addr == addr and exc.value.length == length
    with pytest.raises(GuestMemoryError):
        holey.write(0x2ffe, b"1234")
    with pytest.raises(GuestMemoryError):
        holey.check(0x2ffe, 4)
    holey.check(0x1000, 0x2000)


def test_failed_write_across_a_hole_changes_nothing(holey):
    with pytest.raises(GuestMemoryError):
        holey.write(0x2ffe, b"1234")
    assert holey.read(0x2ffe, 2) == b"\0\0"


def test_past_the_end_negative_and_wrapping(holey):
    bad = [(0x6000, 1), (0x5fff, 2), (-1, 1), (-0x1000, 0x10), (U64 - 1, 2), (U64, 1),
           (U64 + 0x1000, 1), (0x1000, -1)]
    for addr, length in bad:
        for fn in (holey.view, holey.views, holey.read, holey.check):
            with pytest.raises(GuestMemoryError):
                fn(addr, length)


def test_region_at_the_top_of_the_address_space():
    top = U64 - 0x1000
    mem = GuestMemory.from_buffers((top, bytearray(0x1000)))
    mem.store64(U64 - 8, 0x0102030405060708)
    assert mem.load64(U64 - 8) == 0x0102030405060708
    assert mem.read(U64 - 2, 2) == b"\x02\x01"
    with pytest.raises(GuestMemoryError, match="2\\*\\*64"):
        mem.view(U64 - 8, 16)
    with pytest.raises(GuestMemoryError):
        mem.views(U64 - 1, 2)
    with pytest.raises(UsageError):
        mem.add_region(Region(U64 - 0x10, 0x20, memoryview(bytearray(0x20))))


@pytest.mark.parametrize("size,load,store", [(2, "load16", "store16"), (4, "load32", "store32"),
                                             (8, "load64", "store64")])
def test_aligned_scalars(holey, size, load, store):
    value = int.from_bytes(bytes(range(1, size + 1)), "little")
    getattr(holey, store)(0x1000 + 8 * size, value)
    assert getattr(holey, load)(0x1000 + 8 * size) == value
    assert holey.read(0x1000 + 8 * size, size) == bytes(range(1, size + 1))  # little-endian
    # stores truncate to the width
    getattr(holey, store)(0x5000, (1 << (8 * size)) + 5)
    assert getattr(holey, load)(0x5000) == 5
    # the last aligned slot before the hole, and in the adjacent region
    getattr(holey, store)(0x3000 - size, value)
    assert getattr(holey, load)(0x3000 - size) == value


@pytest.mark.parametrize("size,load,store", [(2, "load16", "store16"), (4, "load32", "store32"),
                                             (8, "load64", "store64")])
def test_misaligned_or_unmapped_scalars_fail(holey, size, load, store):
    for addr in range(0x1001, 0x1000 + size):
        with pytest.raises(GuestMemoryError, match="aligned"):
            getattr(holey, load)(addr)
        with pytest.raises(GuestMemoryError, match="aligned"):
            getattr(holey, store)(addr, 1)
    for addr in (0x3000, 0x4ff8, 0x6000, -size, U64 - size + 0, U64):
        with pytest.raises(GuestMemoryError):
            getattr(holey, load)(addr)
        with pytest.raises(GuestMemoryError):
            getattr(holey, store)(addr, 1)


def test_overlapping_regions_are_refused(holey):
    for gpa, size in ((0x1800, 0x100), (0x800, 0x1000), (0x2fff, 0x10), (0x4800, 0x1000),
                      (0x0, 0x10000), (0x5000, 0x1000)):
        with pytest.raises(UsageError, match="overlaps"):
            holey.add_region(Region(gpa, size, memoryview(bytearray(size))))
    gen = holey.generation
    holey.add_region(Region(0x3000, 0x2000, memoryview(bytearray(0x2000))))  # fills the hole exactly
    assert holey.generation == gen + 1
    assert len(holey.views(0x1000, 0x5000)) == 4


def test_bad_regions_are_refused():
    mem = GuestMemory()
    for region in (Region(0, 0, memoryview(bytearray(0))), Region(-0x1000, 0x10, memoryview(bytearray(0x10))),
                   Region(0, 0x20, memoryview(bytearray(0x10)))):
        with pytest.raises(UsageError):
            mem.add_region(region)
    assert mem.regions == () and mem.generation == 0


def test_remove_region_and_generation(holey):
    gen = holey.generation
    assert gen == 3
    with pytest.raises(UsageError):
        holey.remove_region(0x2000, 0x800)  # wrong size
    with pytest.raises(UsageError):
        holey.remove_region(0x2800, 0x800)  # not a region start
    assert holey.generation == gen
    region = holey.remove_region(0x2000, 0x1000)
    assert region.gpa == 0x2000 and holey.generation == gen + 1
    assert [r.gpa for r in holey.regions] == [0x1000, 0x5000]
    with pytest.raises(GuestMemoryError):
        holey.read(0x2000, 1)
    with pytest.raises(GuestMemoryError):
        holey.views(0x1ffc, 8)  # what used to be adjacent is now a hole
    holey.read(0x5000, 1)
    # put it back: the same bytes are visible again
    holey.add_region(region)
    assert holey.generation == gen + 2
    assert len(holey.views(0x1ffc, 8)) == 2


def test_uva_translation():
    mem = GuestMemory()
    mem.add_region(Region(0x1000, 0x1000, memoryview(bytearray(0x1000)), userspace_addr=0x7f0000))
    mem.add_region(Region(0x8000, 0x1000, memoryview(bytearray(0x1000)), userspace_addr=0x100000))
    assert mem.uva_to_gpa(0x7f0010) == 0x1010
    assert mem.uva_to_gpa(0x100ff0, 0x10) == 0x8ff0
    assert mem.gpa_to_uva(0x8ff0) == 0x100ff0
    for uva, length in ((0x7f0ff0, 0x20), (0x6fffff, 1), (0x101000, 1)):
        with pytest.raises(GuestMemoryError):
            mem.uva_to_gpa(uva, length)
    with pytest.raises(GuestMemoryError):
        mem.gpa_to_uva(0x3000)


def test_memfd_memory_is_shared_with_another_mapping():
    mem = GuestMemory.memfd(0x4000, gpa=0x10000)
    try:
        region = mem.regions[0]
        assert region.fd >= 0 and region.userspace_addr != 0
        other = mmap.mmap(region.fd, 0x4000, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            mem.write(0x10100, b"from pyvirtio")
            assert other[0x100:0x100 + 13] == b"from pyvirtio"
            other[0x3ff8:0x4000] = (0x1122334455667788).to_bytes(8, "little")
            assert mem.load64(0x13ff8) == 0x1122334455667788
        finally:
            other.close()
        # a second, independent GuestMemory over the same memfd sees the same bytes
        again = mmap.mmap(region.fd, 0x4000)
        twin = GuestMemory.from_buffers((0x10000, again))
        twin.store32(0x10200, 0xdeadbeef)
        assert mem.load32(0x10200) == 0xdeadbeef
        twin.close()
        if not again.closed:
            again.close()
    finally:
        mem.close()


def test_close_releases_the_memfd_and_mapping():
    mem = GuestMemory.memfd(0x2000)
    region = mem.regions[0]
    fd, mapping, buf = region.fd, region._owner, region.buf
    os.fstat(fd)  # open
    gen = mem.generation
    mem.close()
    assert region.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)
    assert mapping.closed
    with pytest.raises(ValueError):
        buf[0]  # the region's view was released
    assert mem.regions == () and mem.generation > gen
    with pytest.raises(GuestMemoryError):
        mem.read(0, 1)
    mem.close()  # twice is harmless


def test_close_with_a_view_still_held_does_not_raise():
    mem = GuestMemory.memfd(0x1000)
    region = mem.regions[0]
    fd = region.fd
    held = mem.view(0, 16)
    mem.close()  # the mapping stays until `held` goes, but the fd is closed now
    assert region.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)
    held[0] = 1  # still a valid mapping for its holder
    held.release()


def test_errors_are_typed():
    mem = GuestMemory.anonymous(0x10)
    with pytest.raises(VirtioError):
        mem.read(0x10, 1)
    err = pytest.raises(GuestMemoryError, mem.view, 0x20, 4).value
    assert (err.addr, err.length) == (0x20, 4) and "0x20" in str(err)
