import pytest
from hypothesis import given, strategies as st

from pyvirtio.alloc import GuestAllocator
from pyvirtio.errors import UsageError


def test_alignment_and_exhaustion():
    a = GuestAllocator(0x1000, 0x1000)
    x = a.alloc(10, 256)
    assert x % 256 == 0
    with pytest.raises(UsageError):
        a.alloc(0x1000)
    a.free(x)
    assert a.free_bytes == 0x1000
    with pytest.raises(UsageError):
        a.free(x)


@given(st.lists(st.tuples(st.integers(1, 300), st.sampled_from([1, 8, 16, 4096]), st.booleans()), max_size=60))
def test_allocations_never_overlap_and_frees_coalesce(ops):
    a = GuestAllocator(0, 1 << 16)
    live = {}
    for size, align, free_one in ops:
        try:
            addr = a.alloc(size, align)
        except UsageError:
            continue
        assert addr % align == 0 and addr + size <= 1 << 16
        for other, osize in live.items():
            assert addr + size <= other or other + osize <= addr
        live[addr] = size
        if free_one and live:
            victim = next(iter(live))
            a.free(victim)
            del live[victim]
    for addr in list(live):
        a.free(addr)
    assert a.free_bytes == 1 << 16 and a._free == [(0, 1 << 16)]
