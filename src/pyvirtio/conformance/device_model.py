"""Conformance checks every device class passes, whatever its transport (Trio's
``check_two_way_stream`` idea): ``check_device(factory)`` builds fresh devices from ``factory``
and asserts the device-independent rules of VIRTIO 1.3 chapters 2 and 3.

Each check raises AssertionError with the spec section on failure.  Use from pytest::

    def test_rng_conformance():
        check_device(RngDevice)
"""

from __future__ import annotations

from typing import Callable

from ..device import VirtioDevice
from ..errors import DeviceStatusError, DriverFault
from ..loopback import LoopbackTransport
from ..spec.features import Feature
from ..spec.status import DeviceStatus as S
from ..virtq import SplitRingLayout

CHECKS: list[Callable[[Callable[[], VirtioDevice]], None]] = []


def _check(fn):
    CHECKS.append(fn)
    return fn


def check_device(factory: Callable[[], VirtioDevice]) -> list[str]:
    """Run every check against devices made by ``factory``; returns the names that passed."""
    passed = []
    for check in CHECKS:
        made: list[VirtioDevice] = []

        def tracked() -> VirtioDevice:
            made.append(factory())
            return made[-1]
        try:
            check(tracked)
        finally:
            for dev in made:  # host resources (an image's lock) go with each check
                dev.close()
        passed.append(check.__name__)
    return passed


def _init(dev: VirtioDevice, features: int | None = None) -> None:
    dev.set_status(0)
    dev.set_status(S.ACKNOWLEDGE)
    dev.set_status(S.ACKNOWLEDGE | S.DRIVER)
    dev.set_driver_features(dev.device_features if features is None else features)
    dev.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)


@_check
def offers_version_1(factory):
    dev = factory()
    assert dev.device_features & (1 << Feature.VERSION_1), "6: a modern device offers VERSION_1"
    for lo, hi in ((41, 50),):
        reserved = sum(1 << b for b in range(lo + 3, hi))  # 44..49 reserved for future use
        assert not dev.device_features & reserved, "6: reserved feature bits offered"


@_check
def reset_clears_status_and_features(factory):
    dev = factory()
    _init(dev)
    dev.set_status(dev.status | S.DRIVER_OK)
    dev.set_status(0)
    assert dev.status == 0 and dev.driver_features == 0, "2.4: reset returns status and features to 0"
    assert all(not q.ready and q.next_avail == 0 and q.next_used == 0 for q in dev.queues), \
        "2.4: reset returns the virtqueues to their initial state"


@_check
def refuses_features_not_offered(factory):
    dev = factory()
    unoffered = next(b for b in range(64) if not dev.device_features & (1 << b) and b not in (30,))
    _init(dev, dev.device_features | (1 << unoffered))
    assert not dev.status & S.FEATURES_OK, "3.1.1: FEATURES_OK stays clear for features not offered"


@_check
def refuses_legacy_driver(factory):
    dev = factory()
    _init(dev, dev.device_features & ~(1 << Feature.VERSION_1))
    assert not dev.status & S.FEATURES_OK, "7.1: a non-transitional device refuses drivers without VERSION_1"


@_check
def no_feature_changes_after_features_ok(factory):
    dev = factory()
    _init(dev)
    try:
        dev.set_driver_features(0)
    except DriverFault:
        return
    raise AssertionError("2.2.1: features written after FEATURES_OK must be refused")


@_check
def status_bits_only_added(factory):
    dev = factory()
    _init(dev)
    try:
        dev.set_status(S.ACKNOWLEDGE)
    except DeviceStatusError:
        return
    raise AssertionError("2.1.2: clearing status bits without a reset must be refused")


@_check
def config_generation_moves_with_changes(factory):
    dev = factory()
    before = dev.config_generation
    dev.config_changed()
    assert dev.config_generation != before, "2.5.1: a config change bumps config_generation"
    data = dev.read_config(0, len(dev.config_bytes()))
    assert data == dev.config_bytes(), "2.5: config reads return the config space"
    assert dev.read_config(1 << 20, 4) == bytes(4), "reads past the config space give zeros, no error"


@_check
def no_work_before_driver_ok(factory):
    dev = factory()
    t = LoopbackTransport(dev, memory_size=1 << 20)
    try:
        _init(dev)
        layout = SplitRingLayout.contiguous(t.alloc(SplitRingLayout.bytes_needed(8), 4096), 8)
        t.setup_queue(0, layout)
        t.memory.store16(layout.avail_ring + 2, 1)  # a (garbage) chain made available
        t.notify(0)
        assert t.device_memory.load16(layout.used_ring + 2) == 0, "3.1.1: no buffers used before DRIVER_OK"
    finally:
        t.close()


@_check
def broken_queue_sets_needs_reset(factory):
    dev = factory()
    interrupts = []
    t = LoopbackTransport(dev, memory_size=1 << 20)
    try:
        _init(dev)
        layout = SplitRingLayout.contiguous(t.alloc(SplitRingLayout.bytes_needed(8), 4096), 8)
        t.setup_queue(0, layout)
        t.set_interrupt_handler(interrupts.append)
        dev.set_status(dev.status | S.DRIVER_OK)
        t.memory.store16(layout.avail_ring + 2, 100)  # avail idx 100 ahead of a size-8 ring
        t.notify(0)
        assert dev.status & S.DEVICE_NEEDS_RESET, "2.1.2: a broken queue sets DEVICE_NEEDS_RESET"
        assert any(i.config_changed for i in interrupts), "2.1.2: NEEDS_RESET sends a config interrupt"
        dev.set_status(0)
        assert not dev.status & S.DEVICE_NEEDS_RESET and not dev.queues[0].broken, "reset recovers"
    finally:
        t.close()
