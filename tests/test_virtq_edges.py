"""Edge cases found in review: zero-length descriptors, u32 used lengths, raising handlers."""

import mmap

import pytest

from pyvirtio.errors import DriverFault, UsageError
from pyvirtio.memory import GuestMemory
from pyvirtio.testing import MockSplitDriver, make_device_queue
from pyvirtio.testing.mock_driver import F_WRITE
from pyvirtio.virtq import SplitDriverQueue, SplitRingLayout


def test_zero_length_writable_before_readable_is_still_an_order_fault():
    mock = MockSplitDriver(4)
    q = make_device_queue(mock)
    mock.add_chain([(mock.alloc(4), 0, F_WRITE), (mock.alloc(4), 4, 0)])
    with pytest.raises(DriverFault, match="readable descriptor after a writable"):
        q.pop_descriptor_chain(mock.mem)


def test_add_used_out_of_range_is_a_usage_error_not_a_value_error():
    mock = MockSplitDriver(4)
    q = make_device_queue(mock)
    with pytest.raises(UsageError):
        q.add_used(mock.mem, 0, 1 << 32)
    with pytest.raises(UsageError):
        q.add_used_batch(mock.mem, [(9, 0)])


def test_driver_add_out_of_range_keeps_the_free_list_intact():
    mem = GuestMemory.anonymous(1 << 16)
    drv = SplitDriverQueue(SplitRingLayout.contiguous(0x1000, 4))
    drv.setup(mem)
    with pytest.raises(UsageError):
        drv.add(mem, [(0x2000, 1 << 32)], [], token=1)
    assert drv.num_free == 4 and drv.outstanding == 0


def test_drain_returns_completed_chains_even_when_a_handler_raises():
    mock = MockSplitDriver(8)
    for _ in range(3):
        mock.add_request(in_lens=[1])
    q = make_device_queue(mock)
    calls = []

    def handle(chain):
        calls.append(chain.head_index)
        if len(calls) == 2:
            raise RuntimeError("device failure")
        return 0

    with pytest.raises(RuntimeError):
        q.drain(mock.mem, handle)
    assert len(mock.used_elems()) == 1  # the first one was completed before the failure


def test_closing_memory_leaves_caller_buffers_open():
    m = mmap.mmap(-1, 4096)
    mem = GuestMemory.from_buffers((0, m))
    mem.close()
    m[0:1] = b"x"  # still open
    m.close()
