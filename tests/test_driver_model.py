"""The driver-side model over loopback: the 8-step init, negotiation, config generation, queues."""

import pytest

from pyvirtio.driver import COMMON_DRIVER_FEATURES, VirtioDriver
from pyvirtio.errors import ConfigGenerationError, DeviceFault, FeatureNegotiationError, UsageError
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec.features import Feature
from pyvirtio.spec.status import DeviceStatus as S
from pyvirtio.testing.mock_device import MockDevice


class EchoDriver(VirtioDriver):
    id_table = (0x7F,)
    features = 1 << 3

    def setup(self):
        self.queues = [self.create_queue(0)]


class RecordingTransport(LoopbackTransport):
    def __init__(self, device):
        super().__init__(device, memory_size=1 << 20)
        self.status_writes = []

    def set_status(self, status):
        self.status_writes.append(int(status))
        super().set_status(status)


def test_init_sequence_follows_the_spec_order():
    dev = MockDevice(features=1 << 3)
    t = RecordingTransport(dev)
    drv = EchoDriver.probe(t)
    assert t.status_writes == [0, S.ACKNOWLEDGE, S.ACKNOWLEDGE | S.DRIVER,
                               S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK,
                               S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK]
    assert drv.negotiated == (COMMON_DRIVER_FEATURES & dev.device_features) | 1 << 3
    assert drv.has_feature(3) and drv.has_feature(Feature.EVENT_IDX)


def test_only_offered_features_are_accepted():
    t = LoopbackTransport(MockDevice(features=0), memory_size=1 << 20)
    drv = EchoDriver.probe(t)
    assert not drv.has_feature(3)


def test_device_refusing_features_ok_fails_the_probe_and_sets_failed():
    dev = MockDevice(accept_features=lambda f: False)
    t = LoopbackTransport(dev, memory_size=1 << 20)
    with pytest.raises(FeatureNegotiationError):
        EchoDriver.probe(t)
    assert dev.status & S.FAILED


def test_legacy_only_device_is_refused():
    dev = MockDevice()
    dev.device_features &= ~(1 << Feature.VERSION_1)
    with pytest.raises(FeatureNegotiationError):
        EchoDriver.probe(LoopbackTransport(dev, memory_size=1 << 20))


def test_wrong_device_type_is_a_usage_error():
    with pytest.raises(UsageError):
        EchoDriver.probe(LoopbackTransport(MockDevice(device_type=4), memory_size=1 << 20))


def test_echo_requests_round_trip_many_in_flight():
    t = LoopbackTransport(MockDevice(), memory_size=1 << 20)
    drv = EchoDriver.probe(t)
    q = drv.queues[0]
    pend = [q.submit([bytes([i]) * 100], [100], kick=False) for i in range(40)]
    q.kick()
    for i, p in enumerate(pend):
        q.wait(p)
        assert q.read_in(p) == bytes([i]) * 100
        q.release(p)
    assert q.vq.num_free == q.vq.size


def test_more_requests_than_ring_slots_wait_for_room():
    t = LoopbackTransport(MockDevice(queue_max_size=4), memory_size=1 << 20)
    drv = EchoDriver.probe(t)
    q = drv.queues[0]
    assert q.vq.size == 4
    results = [q.call([b"abc"], [3]) for _ in range(20)]
    assert results == [b"abc"] * 20


def test_config_read_retries_until_generation_settles():
    dev = MockDevice(config=b"\x00" * 8)
    t = LoopbackTransport(dev, memory_size=1 << 20)
    drv = EchoDriver.probe(t)
    reads = {"n": 0}
    real = t.read_config

    def flaky(offset, size):
        reads["n"] += 1
        if reads["n"] < 3:
            dev.config_generation += 1  # a change raced with the read
        return real(offset, size)

    t.read_config = flaky
    assert drv.read_config(0, 4) == bytes(4)
    assert reads["n"] == 3


def test_config_generation_that_never_settles_is_a_device_fault():
    dev = MockDevice(config=b"\x00" * 8)
    t = LoopbackTransport(dev, memory_size=1 << 20)
    drv = EchoDriver.probe(t)
    t.config_generation = lambda: (dev.__dict__.__setitem__("config_generation", dev.config_generation + 1)
                                   or dev.config_generation)
    with pytest.raises(ConfigGenerationError):
        drv.read_config(0, 4)


def test_queue_size_zero_is_rejected():
    class TwoQueueDriver(EchoDriver):
        def setup(self):
            self.queues = [self.create_queue(0), self.create_queue(5)]

    with pytest.raises(DeviceFault):
        TwoQueueDriver.probe(LoopbackTransport(MockDevice(), memory_size=1 << 20))


def test_config_change_reaches_the_driver_as_a_callback():
    dev = MockDevice(config=b"\x00" * 4)
    t = LoopbackTransport(dev, memory_size=1 << 20)
    drv = EchoDriver.probe(t)
    dev.set_config(0, b"\x05")
    assert drv.config_changes == 1
    assert drv.read_config(0, 1) == b"\x05"


def test_device_that_never_answers_times_out_with_a_device_fault():
    t = LoopbackTransport(MockDevice(handlers={0: lambda chain: None}), memory_size=1 << 20)
    drv = EchoDriver.probe(t)
    with pytest.raises(DeviceFault):
        drv.queues[0].call([b"x"], [1], timeout=0.2)


def test_deferred_completion_from_another_thread_wakes_the_driver():
    import threading
    held = []
    dev = MockDevice(handlers={0: lambda chain: held.append(chain) or None})
    t = LoopbackTransport(dev, memory_size=1 << 20)
    drv = EchoDriver.probe(t)
    q = drv.queues[0]
    p = q.submit([b"hi"], [2])
    assert held

    def finish():
        chain = held.pop()
        chain.write(b"ok")
        dev.complete(t.device_memory, 0, chain.head_index, 2)

    threading.Timer(0.05, finish).start()
    q.wait(p, timeout=5)
    assert q.read_in(p) == b"ok"


def test_remove_resets_the_device():
    dev = MockDevice()
    drv = EchoDriver.probe(LoopbackTransport(dev, memory_size=1 << 20))
    drv.remove()
    assert dev.status == 0 and drv.queues == []
