"""The VIRTIO_F_NOTIFICATION_DATA value (2.9): its layout, the position a driver-side ring
reports, and the device-side check of a position against the ring, for split and packed rings."""

import pytest

from pyvirtio.errors import DriverFault
from pyvirtio.memory import GuestMemory
from pyvirtio.virtq import (PackedDeviceQueue, PackedDriverQueue, PackedRingLayout, SplitDeviceQueue,
                            SplitDriverQueue, SplitRingLayout)
from pyvirtio.virtq.notification import check_position, decode, driver_position, encode

RAM = 0x10_0000
RING = RAM + 0x1000
BUF = RAM + 0x8000


def test_value_layout():
    # le32 { vqn : 16; next_off : 15; next_wrap : 1; }
    assert encode(3, 5 | 1 << 15) == 0x8005_0003
    assert decode(0x8005_0003) == (3, 0x8005)
    assert encode(0x1_0002, 0x1_0001) == 0x0001_0002  # each field keeps its 16 bits


def pair(packed, size=8):
    """A driver-side and a device-side queue on one ring in one memory."""
    mem = GuestMemory.anonymous(1 << 20, gpa=RAM)
    layout_cls, drv_cls, dev_cls = ((PackedRingLayout, PackedDriverQueue, PackedDeviceQueue) if packed
                                    else (SplitRingLayout, SplitDriverQueue, SplitDeviceQueue))
    layout = layout_cls.contiguous(RING, size)
    drv = drv_cls(layout)
    drv.setup(mem)
    dev = dev_cls(size)
    dev.set_addresses(layout.desc_table, layout.avail_ring, layout.used_ring)
    dev.activate(mem)
    return mem, drv, dev


def cycle(mem, drv, dev, n):
    """``n`` one-descriptor chains made available, served and collected."""
    for i in range(n):
        drv.add(mem, [(BUF, 16)], [], i + 1)
        chain = dev.pop_descriptor_chain(mem)
        dev.add_used(mem, chain.head_index, 0)
        assert drv.get_buf(mem) == (i + 1, 0)


def test_driver_position_split_is_the_avail_index():
    mem, drv, dev = pair(packed=False)
    assert driver_position(drv) == 0
    cycle(mem, drv, dev, 11)
    assert driver_position(drv) == 11 == mem.load16(drv.layout.avail_ring + 2)


def test_driver_position_packed_is_offset_and_wrap():
    mem, drv, dev = pair(packed=True)
    assert driver_position(drv) == 0 | 1 << 15  # the avail wrap counter starts at 1 (2.8.1)
    cycle(mem, drv, dev, 11)  # 8 + 3: one lap
    assert driver_position(drv) == 3  # wrap counter 0


@pytest.mark.parametrize("packed", [False, True])
def test_a_position_matching_the_ring_passes(packed):
    mem, drv, dev = pair(packed)
    assert check_position(dev, mem, driver_position(drv)) is None  # nothing available yet
    cycle(mem, drv, dev, 6)
    for i in range(4):  # 6 + 4 runs over the end of the ring
        drv.add(mem, [(BUF, 16)], [], i + 1)
        assert check_position(dev, mem, driver_position(drv)) is None
    chain = dev.pop_descriptor_chain(mem)
    assert chain is not None
    assert check_position(dev, mem, driver_position(drv)) is None


@pytest.mark.parametrize("packed", [False, True])
def test_a_position_ahead_of_the_ring_is_the_drivers_fault(packed):
    mem, drv, dev = pair(packed)
    drv.add(mem, [(BUF, 16)], [], 1)
    claimed = driver_position(drv) + 1  # one more than the ring shows
    fault = check_position(dev, mem, claimed)
    assert isinstance(fault, DriverFault) and "(2.9)" in str(fault)


@pytest.mark.parametrize("packed", [False, True])
def test_an_old_position_behind_the_device_is_allowed(packed):
    """Linux writes the notification outside the queue lock: another CPU's older position can
    arrive after the device moved on."""
    mem, drv, dev = pair(packed)
    old = driver_position(drv)
    cycle(mem, drv, dev, 3)
    assert check_position(dev, mem, old) is None


def test_a_packed_offset_past_the_ring_is_the_drivers_fault():
    mem, drv, dev = pair(packed=True, size=6)  # packed rings need not be powers of two
    assert check_position(dev, mem, 6 | 1 << 15) is not None
    assert check_position(dev, mem, 5 | 1 << 15) is not None  # inside, but nothing is available
    cycle(mem, drv, dev, 5)
    drv.add(mem, [(BUF, 16)], [], 9)  # position 5, the last slot: the next one wraps to 0
    assert check_position(dev, mem, driver_position(drv)) is None
    assert driver_position(drv) == 0


def test_a_packed_position_from_a_lap_ago_is_behind_while_used_buffers_lag():
    """A notification checked late (its worker was busy) after the device went on into the next
    lap: on the two laps a wrap counter tells apart it reads like one ahead, but the driver can
    be at most a ring ahead of what the device returned, so it is an old one."""
    mem, drv, dev = pair(packed=True)
    cycle(mem, drv, dev, 2)
    old = driver_position(drv)  # offset 2, wrap 1
    cycle(mem, drv, dev, 7)  # device and used at offset 1 of the second lap (wrap 0)
    for i in range(4):  # made available and taken, not returned yet
        drv.add(mem, [(BUF, 16)], [], 100 + i)
        assert dev.pop_descriptor_chain(mem) is not None
    assert (dev.next_avail, dev.avail_wrap, dev.next_used, dev.used_wrap) == (5, 0, 1, 0)
    assert check_position(dev, mem, old) is None
    claimed = driver_position(drv) + 1  # one past what the ring shows: still the driver's fault
    assert isinstance(check_position(dev, mem, claimed), DriverFault)
