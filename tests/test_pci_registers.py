"""Register semantics the PCI and MMIO models share (pyvirtio.platform.registers), end to end with our
drivers on an in-process machine: VIRTIO_F_NOTIFICATION_DATA on both transports and both ring
layouts (issue 11), a driver lying in its notifications, and packed queue sizes that are not
powers of two."""

import contextlib
import logging

import pytest

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.driver import DriverQueue
from pyvirtio.drivers.blk import BlkDriver
from pyvirtio.drivers.rng import RngDriver
from pyvirtio.mmio import MmioTransport
from pyvirtio.pci import scan_pci
from pyvirtio.platform.machine import InProcessMachine
from pyvirtio.spec.features import Feature
from pyvirtio.spec.status import DeviceStatus as S
from pyvirtio.virtq.notification import driver_position, encode

MMIO_BASE, MMIO_IRQ = 0xFEB00000, 16


@contextlib.contextmanager
def machine(bus, device, **options):
    """(driver transport, device-side window/function) for ``device`` on ``bus``."""
    with InProcessMachine(ram_size=4 << 20) as m:
        if bus == "pci":
            fn = m.add_pci(device, **options)
            (t,) = scan_pci(m).transports
        else:
            fn = m.add_mmio(device, base=MMIO_BASE, irq=MMIO_IRQ, **options)
            t = MmioTransport(m, MMIO_BASE, 0x200, irq=MMIO_IRQ)
        yield t, fn


def record_notifies(fn):
    """Wrap the registers' notify: every (queue, position) the device got, in order."""
    seen, real = [], fn.regs.notify

    def spy(index, position=None):
        seen.append((index, position))
        real(index, position)
    fn.regs.notify = spy
    return seen


@pytest.mark.parametrize("bus", ["pci", "mmio"])
@pytest.mark.parametrize("packed", [False, True])
def test_kicks_carry_the_position_the_ring_agrees_with(bus, packed, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(64 * 512))
    device = BlkDevice(str(image))
    if packed:
        device.offer_packed_ring()
    with machine(bus, device) as (t, fn):
        seen = record_notifies(fn)
        drv = BlkDriver.probe(t)
        assert drv.has_feature(Feature.NOTIFICATION_DATA)
        assert drv.has_feature(Feature.RING_PACKED) == packed
        (q,) = drv.queues
        positions, n = [], 3 * q.vq.size // 2
        for i in range(n):  # one request per kick, past the ring's end
            drv.write(i % 64, bytes([i & 0xFF]) * 512)
            positions.append(driver_position(q.vq))
        assert drv.read(5, 512) == bytes([max(i for i in range(n) if i % 64 == 5) & 0xFF]) * 512
        positions.append(driver_position(q.vq))
        # every kick carried the position the driver had then (EVENT_IDX may skip some kicks)
        kicked = iter(positions)
        assert seen and all(any(p == k for k in kicked) for _, p in seen), (seen, positions)
        assert all(index == 0 for index, _ in seen)
        assert fn.regs.notification_faults == 0
        if packed:
            assert any(p >> 15 == 0 for _, p in seen), "the wrap counter went round"
        drv.remove()


@pytest.mark.parametrize("bus", ["pci", "mmio"])
@pytest.mark.parametrize("packed", [False, True])
def test_a_position_the_ring_does_not_show_is_logged_and_the_kick_still_served(bus, packed, caplog):
    device = RngDevice()
    if packed:
        device.offer_packed_ring()
    with machine(bus, device) as (t, fn):
        drv = RngDriver.probe(t)
        q = drv.requestq
        pending = q.submit([], [16], kick=False)
        lie = (driver_position(q.vq) + 5) & 0x7FFF | (driver_position(q.vq) & 0x8000)
        with caplog.at_level(logging.WARNING):
            if bus == "pci":
                t._write(t.notify_cap, t._notify_addr[0], 4, encode(0, lie))
            else:
                fn.write(0x50, 4, encode(0, lie))  # QueueNotify
        assert fn.regs.notification_faults == 1
        assert any("(2.9)" in r.getMessage() for r in caplog.records)
        assert q.wait(pending, timeout=5).written == 16  # the ring, not the hint, decides
        assert not t.get_status() & S.DEVICE_NEEDS_RESET
        drv.remove()


@pytest.mark.parametrize("bus", ["pci", "mmio"])
def test_without_notification_data_kicks_are_plain_indexes(bus):
    with machine(bus, RngDevice(), notification_data=False) as (t, fn):
        seen = record_notifies(fn)
        drv = RngDriver.probe(t)
        assert not drv.has_feature(Feature.NOTIFICATION_DATA)
        assert len(drv.read(32)) == 32
        assert seen and all(position is None for _, position in seen)
        drv.remove()


@pytest.mark.parametrize("bus", ["pci", "mmio"])
def test_split_only_hides_packed_rings_from_the_driver(bus):
    device = RngDevice()
    device.offer_packed_ring()
    with machine(bus, device) as (t, fn):
        t.split_only = True
        drv = RngDriver.probe(t)
        assert not drv.has_feature(Feature.RING_PACKED) and not fn.device.has_feature(Feature.RING_PACKED)
        assert len(drv.read(32)) == 32
        drv.remove()


def _bring_up(t, features):
    t.reset()
    t.set_status(S.ACKNOWLEDGE | S.DRIVER)
    t.set_driver_features(features)
    t.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
    assert t.get_status() & S.FEATURES_OK


@pytest.mark.parametrize("bus", ["pci", "mmio"])
def test_packed_queue_sizes_need_not_be_powers_of_two(bus):
    device = RngDevice()
    device.offer_packed_ring()
    with machine(bus, device) as (t, fn):
        _bring_up(t, 1 << Feature.VERSION_1 | 1 << Feature.RING_PACKED)
        q = DriverQueue(t, 0, 100, event_idx=False, indirect=False, packed=True)
        t.setup_queue(0, q.vq.layout)
        t.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
        assert not t.get_status() & S.DEVICE_NEEDS_RESET
        for _ in range(150):  # past the end of the 100-entry ring
            assert len(q.call([], [8])) == 8
        assert q.vq.avail_wrap == 0
        q.close()


@pytest.mark.parametrize("bus", ["pci", "mmio"])
def test_split_queue_sizes_still_must_be_powers_of_two(bus):
    with machine(bus, RngDevice()) as (t, fn):
        _bring_up(t, 1 << Feature.VERSION_1)
        from pyvirtio.virtq import SplitRingLayout
        t.setup_queue(0, SplitRingLayout(100, 0x1000_0000, 0x1000_1000, 0x1000_2000))
        assert t.get_status() & S.DEVICE_NEEDS_RESET
