"""pyvirtio's virtio-mmio version 2 window (device side, VIRTIO 1.3 4.2), register by register."""

import pytest

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.memory import GuestMemory
from pyvirtio.mmio.device import PYVIRTIO_VENDOR_ID, VirtioMmioDevice
from pyvirtio.spec.features import Feature
from pyvirtio.spec.mmio import MAGIC_VALUE, MmioReg as R
from pyvirtio.spec.status import DeviceStatus as S
from pyvirtio.virtq import SplitDriverQueue, SplitRingLayout

RAM = 0x10_0000


class Win:
    def __init__(self, device=None):
        self.mem = GuestMemory.anonymous(1 << 20, gpa=RAM)
        self.levels = []
        self.w = VirtioMmioDevice(device or RngDevice(), self.mem, irq=self.levels.append)

    def r(self, off):
        return self.w.read(off, 4)

    def wr(self, off, value):
        self.w.write(off, 4, value)

    def init(self):
        self.wr(R.STATUS, 0)
        self.wr(R.STATUS, S.ACKNOWLEDGE | S.DRIVER)
        feats = self.w.device.device_features
        for word in range(2):
            self.wr(R.DRIVER_FEATURES_SEL, word)
            self.wr(R.DRIVER_FEATURES, (feats >> (32 * word)) & 0xFFFFFFFF)
        self.wr(R.STATUS, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)

    def queue(self, size=8, base=RAM + 0x1000):
        layout = SplitRingLayout.contiguous(base, size) if base % 16 == 0 else \
            SplitRingLayout(size, base, base + 16 * size, base + 0x1000)
        self.wr(R.QUEUE_SEL, 0)
        self.wr(R.QUEUE_SIZE, size)
        for low, addr in ((R.QUEUE_DESC_LOW, layout.desc_table), (R.QUEUE_DRIVER_LOW, layout.avail_ring),
                          (R.QUEUE_DEVICE_LOW, layout.used_ring)):
            self.wr(low, addr & 0xFFFFFFFF)
            self.wr(low + 4, addr >> 32)
        self.wr(R.QUEUE_READY, 1)
        return layout


def test_identity_registers():
    t = Win()
    assert t.r(R.MAGIC_VALUE) == MAGIC_VALUE and t.r(R.VERSION) == 2
    assert t.r(R.DEVICE_ID) == 4 and t.r(R.VENDOR_ID) == PYVIRTIO_VENDOR_ID
    for reg in (R.MAGIC_VALUE, R.VERSION, R.DEVICE_ID):
        before = t.r(reg)
        t.wr(reg, 0)
        assert t.r(reg) == before


def test_only_aligned_32_bit_register_accesses_count():
    t = Win()
    assert t.w.read(R.MAGIC_VALUE, 2) == 0 and t.w.read(R.MAGIC_VALUE + 1, 4) == 0
    t.w.write(R.STATUS, 1, S.ACKNOWLEDGE)
    t.w.write(R.STATUS + 2, 4, S.ACKNOWLEDGE)
    assert t.r(R.STATUS) == 0


def test_feature_windows():
    t = Win()
    feats = t.w.device.device_features
    t.wr(R.DEVICE_FEATURES_SEL, 1)
    assert t.r(R.DEVICE_FEATURES) == feats >> 32
    assert t.r(R.DEVICE_FEATURES) & (1 << (Feature.VERSION_1 - 32))
    t.wr(R.DEVICE_FEATURES_SEL, 99)
    assert t.r(R.DEVICE_FEATURES) == 0


def test_queue_registers_and_ready():
    t = Win()
    t.init()
    assert t.r(R.QUEUE_SIZE_MAX) == 256 and t.r(R.QUEUE_READY) == 0
    t.queue()
    assert t.r(R.QUEUE_READY) == 1
    t.wr(R.QUEUE_SIZE, 4)  # ignored while ready (the driver MUST NOT)
    assert t.w.regs.queues[0].size == 8
    t.wr(R.QUEUE_READY, 0)  # MMIO lets the driver stop a queue
    assert t.r(R.QUEUE_READY) == 0 and not t.w.device.queues[0].ready
    t.wr(R.QUEUE_SEL, 5)
    assert t.r(R.QUEUE_SIZE_MAX) == 0 and t.r(R.QUEUE_READY) == 0


@pytest.mark.parametrize("size", [0, 6, 512])
def test_bad_queue_num_sets_device_needs_reset(size):
    t = Win()
    t.init()
    t.wr(R.QUEUE_SEL, 0)
    t.wr(R.QUEUE_SIZE, size)
    assert t.r(R.STATUS) & S.DEVICE_NEEDS_RESET


@pytest.mark.parametrize("base", [0, RAM + (1 << 20) - 16, RAM + 0x1008])
def test_ready_with_bad_rings_sets_device_needs_reset(base):
    t = Win()
    t.init()
    t.queue(base=base)
    assert t.r(R.QUEUE_READY) == 0 and t.r(R.STATUS) & S.DEVICE_NEEDS_RESET


def test_used_buffer_interrupt_status_and_ack():
    t = Win()
    t.init()
    layout = t.queue()
    t.wr(R.STATUS, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
    vq = SplitDriverQueue(layout)
    vq.setup(t.mem)
    vq.add(t.mem, [], [(RAM + 0x8000, 16)], "tok")
    t.wr(R.QUEUE_NOTIFY, 0)
    assert vq.get_buf(t.mem) == ("tok", 16)
    assert t.r(R.INTERRUPT_STATUS) == 1 and t.levels == [True]
    t.wr(R.INTERRUPT_ACK, 1)
    assert t.r(R.INTERRUPT_STATUS) == 0 and t.levels == [True, False]


def test_config_change_interrupt_and_generation(tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 16))
    t = Win(BlkDevice(str(img)))
    t.init()
    t.wr(R.STATUS, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
    gen = t.r(R.CONFIG_GENERATION)
    t.w.device.config_changed()
    assert t.r(R.CONFIG_GENERATION) != gen and t.r(R.INTERRUPT_STATUS) == 2
    assert t.w.read(R.CONFIG, 8) == 128 and t.w.read(R.CONFIG, 1) == 128  # any width in config space


def test_reset_clears_interrupts_and_queues():
    t = Win()
    t.init()
    t.queue()
    t.wr(R.STATUS, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
    t.w.device.config_changed()
    t.wr(R.STATUS, 0)
    assert t.r(R.STATUS) == 0 and t.r(R.INTERRUPT_STATUS) == 0 and t.r(R.QUEUE_READY) == 0
    assert t.levels == [True, False]


def test_no_shared_memory_regions():
    t = Win()
    t.wr(R.SHM_SEL, 0)
    assert t.r(R.SHM_LEN_LOW) == t.r(R.SHM_LEN_HIGH) == 0xFFFFFFFF
    assert t.r(R.SHM_BASE_LOW) == t.r(R.SHM_BASE_HIGH) == 0xFFFFFFFF


def test_queue_reset_only_with_ring_reset():
    t = Win()
    t.w.device.device_features |= 1 << Feature.RING_RESET
    t.init()
    t.queue()
    t.wr(R.QUEUE_RESET, 1)
    assert t.r(R.QUEUE_RESET) == 0 and t.r(R.QUEUE_READY) == 0
