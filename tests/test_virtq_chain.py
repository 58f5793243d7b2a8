"""DescriptorChain: reading and writing a popped chain's buffers, across descriptors and regions."""

from __future__ import annotations

import pytest

from pyvirtio.errors import UsageError
from pyvirtio.testing import MockSplitDriver, make_device_queue
from pyvirtio.testing.mock_driver import F_WRITE
from pyvirtio.virtq import DescriptorChain


def _pop(mock, **kw):
    q = make_device_queue(mock, **kw)
    chain = q.pop_descriptor_chain(mock.mem)
    assert chain is not None
    return q, chain


def test_read_whole_and_ranges_across_descriptors():
    mock = MockSplitDriver(8)
    mock.add_request(out=[b"abc", b"defgh", b"ij"], in_lens=[4])
    _, chain = _pop(mock)
    assert chain.readable_len == 10 and chain.writable_len == 4
    assert chain.read() == b"abcdefghij"
    assert chain.read(2, 4) == b"cdef"  # spans descriptors 0 and 1
    assert chain.read(8) == b"ij"
    assert chain.read(10) == b""
    assert chain.read(3, 0) == b""
    assert [bytes(v) for v in chain.readable_views(1, 7)] == [b"bc", b"defgh"]
    for offset, length in ((0, 11), (-1, 2), (5, -1), (11, None)):
        with pytest.raises(UsageError):
            chain.read(offset, length)


def test_write_sequential_and_at_offset_across_descriptors():
    mock = MockSplitDriver(8)
    req = mock.add_request(out=[b"x"], in_lens=[3, 5])
    _, chain = _pop(mock)
    assert chain.written == 0
    assert chain.write(b"12") == 2
    assert chain.write(b"345") == 3  # continues after the last write, crossing descriptors
    assert chain.written == 5
    (a0, _), (a1, _) = req.writable
    assert mock.read(a0, 3) == b"123" and mock.read(a1, 2) == b"45"
    chain.write(b"Z", offset=0)
    assert chain.written == 5  # an earlier rewrite does not shrink what was written
    assert chain.write(b"END", offset=5) == 3
    assert chain.written == 8
    assert mock.read(a0, 3) + mock.read(a1, 5) == b"Z2345END"
    assert chain.write(b"") == 0


def test_write_refuses_to_overflow():
    mock = MockSplitDriver(8)
    req = mock.add_request(in_lens=[4])
    _, chain = _pop(mock)
    with pytest.raises(UsageError, match="overflows"):
        chain.write(b"12345")
    with pytest.raises(UsageError):
        chain.write(b"ab", offset=3)
    with pytest.raises(UsageError):
        chain.write(b"a", offset=-1)
    assert chain.written == 0
    assert mock.read(req.writable[0][0], 4) == bytes(4)  # nothing partially written


def test_writable_views_are_zero_copy():
    mock = MockSplitDriver(8)
    req = mock.add_request(in_lens=[2, 6])
    _, chain = _pop(mock)
    views = chain.writable_views(1, 4)
    assert [len(v) for v in views] == [1, 3]
    views[0][:] = b"A"
    views[1][:] = b"BCD"
    assert mock.read(req.writable[0][0] + 1, 1) == b"A"
    assert mock.read(req.writable[1][0], 3) == b"BCD"
    with pytest.raises(UsageError):
        chain.writable_views(0, 9)
    assert chain.readable_views() == [] and chain.read() == b""


def test_buffer_across_two_regions_gives_two_views():
    mock = MockSplitDriver(8, regions=((0, 0x4000), (0x4000, 0x1000)), data_addr=0x3000)
    mock.write(0x3ffc, b"LEFTRIGHT")
    mock.add_chain([(0x3ffc, 9, 0), (0x3ff0, 0x20, F_WRITE)])
    _, chain = _pop(mock)
    assert [len(v) for v in chain.readable] == [4, 5]
    assert chain.read() == b"LEFTRIGHT"
    assert chain.read(3, 3) == b"TRI"
    assert [len(v) for v in chain.writable] == [16, 16]
    chain.write(bytes(range(0x20)))
    assert mock.read(0x3ff0, 0x20) == bytes(range(0x20))


def test_zero_length_descriptors_add_no_views():
    mock = MockSplitDriver(8)
    addr = mock.alloc(16)
    mock.write(addr, b"data")
    mock.add_chain([(addr, 0, 0), (addr, 4, 0), (addr, 0, F_WRITE), (addr + 8, 2, F_WRITE)])
    _, chain = _pop(mock)
    assert (chain.readable_len, chain.writable_len) == (4, 2)
    assert len(chain.readable) == 1 and len(chain.writable) == 1


def test_repr_names_head_and_lengths():
    chain = DescriptorChain(3, [memoryview(b"ab")], [], 2, 0)
    assert repr(chain) == "DescriptorChain(head=3, readable=2, writable=0)"
    assert chain.read() == b"ab"
