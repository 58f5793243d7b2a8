"""pyvirtio's virtio PCI function (device side, VIRTIO 1.3 4.1): configuration space, BARs,
common configuration registers, MSI-X and INTx, as a guest sees them register by register."""

import pytest

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.memory import GuestMemory
from pyvirtio.pci.function import COMMON_OFFSET, ISR_OFFSET, NOTIFY_OFFSET, VIRTIO_BAR, VirtioPciFunction
from pyvirtio.spec.features import Feature
from pyvirtio.spec.pci import (MSIX_ENTRY_SIZE, MSIX_FLAGS_ENABLE, MSIX_FLAGS_MASKALL, VIRTIO_MSI_NO_VECTOR,
                               CommonCfg, MsixCap, PciCapId, PciCapType, PciCfg, PciCommand, PciStatus,
                               VirtioPciCap)
from pyvirtio.spec.status import DeviceStatus as S
from pyvirtio.virtq import SplitRingLayout

RAM = 0x10_0000


class Fn:
    """A function plus what it sent: MSI messages and INTx levels."""

    def __init__(self, device=None, **kw):
        self.mem = GuestMemory.anonymous(1 << 20, gpa=RAM)
        self.msis, self.levels = [], []
        self.f = VirtioPciFunction(device or RngDevice(), self.mem, msi=lambda a, d: self.msis.append((a, d)),
                                   intx=self.levels.append, **kw)

    def cfg(self, off, size=4):
        return self.f.config_read(off, size)

    def common(self, field, size):
        return self.f.bar_read(VIRTIO_BAR, COMMON_OFFSET + field, size)

    def set_common(self, field, size, value):
        self.f.bar_write(VIRTIO_BAR, COMMON_OFFSET + field, size, value)

    def status(self, value):
        self.set_common(CommonCfg.DEVICE_STATUS, 1, value)

    def caps(self):
        out, ptr = [], self.cfg(PciCfg.CAPABILITY_LIST, 1)
        while ptr:
            out.append((ptr, self.cfg(ptr, 1)))
            ptr = self.cfg(ptr + 1, 1)
        return out

    def vcap(self, cfg_type):
        return next(p for p, cid in self.caps() if cid == PciCapId.VNDR and self.cfg(p + 3, 1) == cfg_type)

    def init(self, features=None):
        self.status(0)
        self.status(S.ACKNOWLEDGE | S.DRIVER)
        feats = self.f.device.device_features if features is None else features
        for word in range(2):
            self.set_common(CommonCfg.DRIVER_FEATURE_SELECT, 4, word)
            self.set_common(CommonCfg.DRIVER_FEATURE, 4, (feats >> (32 * word)) & 0xFFFFFFFF)
        self.status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)

    def queue(self, index=0, size=8, base=RAM + 0x1000):
        layout = SplitRingLayout.contiguous(base, size) if base % 16 == 0 else \
            SplitRingLayout(size, base, base + 16 * size, base + 0x1000)
        self.set_common(CommonCfg.QUEUE_SELECT, 2, index)
        self.set_common(CommonCfg.QUEUE_SIZE, 2, size)
        for field, addr in ((CommonCfg.QUEUE_DESC, layout.desc_table), (CommonCfg.QUEUE_DRIVER, layout.avail_ring),
                            (CommonCfg.QUEUE_DEVICE, layout.used_ring)):
            self.set_common(field, 4, addr & 0xFFFFFFFF)
            self.set_common(field + 4, 4, addr >> 32)
        self.set_common(CommonCfg.QUEUE_ENABLE, 2, 1)
        return layout


# --- identity and header ---------------------------------------------------------------------------

def test_modern_identity_follows_4_1_2():
    t = Fn()
    assert t.cfg(PciCfg.VENDOR_ID, 2) == 0x1AF4
    assert t.cfg(PciCfg.DEVICE_ID, 2) == 0x1040 + 4
    assert t.cfg(PciCfg.REVISION_ID, 1) >= 1
    assert t.cfg(PciCfg.SUBSYSTEM_ID, 2) >= 0x40
    assert t.cfg(PciCfg.REVISION_ID, 4) >> 8 == 0x00FF00  # "other" class for rng, as QEMU does
    assert t.cfg(PciCfg.STATUS, 2) & PciStatus.CAP_LIST
    assert t.cfg(PciCfg.INTERRUPT_PIN, 1) == 1


def test_transitional_identity_follows_4_1_2_3(tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 16))
    t = Fn(BlkDevice(str(img)), transitional=True)
    assert t.cfg(PciCfg.DEVICE_ID, 2) == 0x1001
    assert t.cfg(PciCfg.REVISION_ID, 1) == 0
    assert t.cfg(PciCfg.SUBSYSTEM_ID, 2) == 2
    assert t.cfg(PciCfg.REVISION_ID, 4) >> 8 == 0x010000


def test_read_only_header_fields_ignore_writes():
    t = Fn()
    for off in (PciCfg.VENDOR_ID, PciCfg.DEVICE_ID, PciCfg.CLASS_PROG, PciCfg.SUBSYSTEM_ID, PciCfg.CAPABILITY_LIST):
        before = t.cfg(off, 2)
        t.f.config_write(off, 2, 0xABCD)
        assert t.cfg(off, 2) == before


def test_bar_sizing_returns_the_size_mask():
    t = Fn()
    bar2 = PciCfg.BAR2
    t.f.config_write(bar2, 4, 0xFFFFFFFF)
    t.f.config_write(bar2 + 4, 4, 0xFFFFFFFF)
    low, high = t.cfg(bar2), t.cfg(bar2 + 4)
    size = t.f.bars[2].size
    assert low & 0x6 == 0x4  # 64-bit memory BAR
    assert ((high << 32) | (low & ~0xF)) == (1 << 64) - size
    t.f.config_write(bar2, 4, 0xE0000000)
    t.f.config_write(bar2 + 4, 4, 0)
    assert t.cfg(bar2) & ~0xF == 0xE0000000
    t.f.config_write(PciCfg.BAR0, 4, 0xFFFFFFFF)
    assert t.cfg(PciCfg.BAR0) == (0xFFFFFFFF & ~(t.f.bars[0].size - 1))
    t.f.config_write(PciCfg.BAR1, 4, 0xFFFFFFFF)
    assert t.cfg(PciCfg.BAR1) == 0  # unimplemented BAR


def test_command_register_keeps_only_implemented_bits():
    t = Fn()
    t.f.config_write(PciCfg.COMMAND, 2, 0xFFFF)
    assert t.cfg(PciCfg.COMMAND, 2) & PciCommand.MEMORY and t.cfg(PciCfg.COMMAND, 2) & PciCommand.MASTER
    assert not t.cfg(PciCfg.COMMAND, 2) & 0xF800


def test_capability_list_has_every_virtio_structure_then_msix():
    t = Fn()
    ids = [cid for _, cid in t.caps()]
    assert ids.count(PciCapId.VNDR) == 4 and PciCapId.MSIX in ids  # rng: no device config
    types = [t.cfg(p + 3, 1) for p, cid in t.caps() if cid == PciCapId.VNDR]
    assert types == [PciCapType.COMMON_CFG, PciCapType.NOTIFY_CFG, PciCapType.ISR_CFG, PciCapType.PCI_CFG]
    notify = t.vcap(PciCapType.NOTIFY_CFG)
    assert t.cfg(notify + 2, 1) == 20 and t.cfg(notify + VirtioPciCap.NOTIFY_OFF_MULTIPLIER) == 4


def test_device_cfg_capability_exists_when_the_device_has_config(tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 16))
    t = Fn(BlkDevice(str(img)))
    cap = t.vcap(PciCapType.DEVICE_CFG)
    offset, length = t.cfg(cap + 8), t.cfg(cap + 12)
    assert offset % 4 == 0 and length == len(t.f.device.config_bytes())
    assert t.f.bar_read(VIRTIO_BAR, offset, 8) == 128  # capacity in sectors


# --- common configuration ----------------------------------------------------------------------------

def test_feature_windows_select_32_bits_at_a_time():
    t = Fn()
    feats = t.f.device.device_features
    for sel in range(4):
        t.set_common(CommonCfg.DEVICE_FEATURE_SELECT, 4, sel)
        assert t.common(CommonCfg.DEVICE_FEATURE, 4) == (feats >> (32 * sel)) & 0xFFFFFFFF
    t.set_common(CommonCfg.DEVICE_FEATURE_SELECT, 4, 0xFFFFFFFF)
    assert t.common(CommonCfg.DEVICE_FEATURE, 4) == 0


def test_driver_features_are_refused_after_features_ok():
    t = Fn()
    t.init()
    accepted = t.f.device.driver_features
    t.set_common(CommonCfg.DRIVER_FEATURE_SELECT, 4, 1)
    t.set_common(CommonCfg.DRIVER_FEATURE, 4, 0)
    assert t.f.device.driver_features == accepted


def test_status_write_0_resets_and_reads_0():
    t = Fn()
    t.init()
    t.queue()
    t.set_common(CommonCfg.CONFIG_MSIX_VECTOR, 2, 0)
    t.status(0)
    assert t.common(CommonCfg.DEVICE_STATUS, 1) == 0
    assert t.common(CommonCfg.QUEUE_ENABLE, 2) == 0
    assert t.common(CommonCfg.CONFIG_MSIX_VECTOR, 2) == VIRTIO_MSI_NO_VECTOR  # 4.1.5.1.2
    assert t.common(CommonCfg.QUEUE_SIZE, 2) == t.f.device.queues[0].max_size


def test_clearing_status_bits_is_ignored():
    t = Fn()
    t.init()
    t.status(S.ACKNOWLEDGE)
    assert t.common(CommonCfg.DEVICE_STATUS, 1) & S.FEATURES_OK


def test_queue_select_out_of_range_reads_size_0_and_ignores_writes():
    t = Fn()
    t.set_common(CommonCfg.QUEUE_SELECT, 2, 7)
    assert t.common(CommonCfg.QUEUE_SIZE, 2) == 0
    t.set_common(CommonCfg.QUEUE_SIZE, 2, 8)
    t.set_common(CommonCfg.QUEUE_ENABLE, 2, 1)
    assert t.common(CommonCfg.QUEUE_ENABLE, 2) == 0
    assert t.common(CommonCfg.NUM_QUEUES, 2) == 1


@pytest.mark.parametrize("size", [0, 3, 100, 512, 0xFFFF])
def test_bad_queue_size_sets_device_needs_reset(size):
    t = Fn()
    t.init()
    t.set_common(CommonCfg.QUEUE_SELECT, 2, 0)
    t.set_common(CommonCfg.QUEUE_SIZE, 2, size)
    assert t.common(CommonCfg.DEVICE_STATUS, 1) & S.DEVICE_NEEDS_RESET
    assert t.common(CommonCfg.QUEUE_SIZE, 2) == 256  # never presents an invalid size (4.1.4.3.1)


@pytest.mark.parametrize("base", [0, RAM + (1 << 20), RAM + 0x1003])
def test_enabling_a_queue_with_bad_addresses_sets_device_needs_reset(base):
    t = Fn()
    t.init()
    t.queue(base=base)
    assert t.common(CommonCfg.QUEUE_ENABLE, 2) == 0
    assert t.common(CommonCfg.DEVICE_STATUS, 1) & S.DEVICE_NEEDS_RESET


def test_queue_fields_are_frozen_once_enabled_and_64_bit_halves_are_independent():
    t = Fn()
    t.init()
    layout = t.queue()
    t.set_common(CommonCfg.QUEUE_DESC, 4, 0x1234)
    t.set_common(CommonCfg.QUEUE_SIZE, 2, 4)
    assert t.common(CommonCfg.QUEUE_DESC, 8) == layout.desc_table
    assert t.common(CommonCfg.QUEUE_SIZE, 2) == 8
    assert t.common(CommonCfg.QUEUE_DEVICE + 4, 4) == layout.used_ring >> 32


def test_queue_reset_needs_ring_reset():
    t = Fn()
    t.init()
    t.queue()
    t.set_common(CommonCfg.QUEUE_RESET, 2, 1)
    assert t.common(CommonCfg.QUEUE_ENABLE, 2) == 1  # not negotiated: ignored
    t.f.device.device_features |= 1 << Feature.RING_RESET
    t.init()
    t.queue()
    t.set_common(CommonCfg.QUEUE_RESET, 2, 1)
    assert t.common(CommonCfg.QUEUE_RESET, 2) == 0 and t.common(CommonCfg.QUEUE_ENABLE, 2) == 0


def test_wrong_width_and_unaligned_common_accesses_are_ignored():
    t = Fn()
    t.set_common(CommonCfg.QUEUE_SELECT, 4, 0x10000)  # 32-bit write to a 16-bit field
    t.set_common(CommonCfg.DEVICE_STATUS - 1, 2, 0xFFFF)  # straddles num_queues/status
    assert t.common(CommonCfg.QUEUE_SELECT, 2) == 0 and t.common(CommonCfg.DEVICE_STATUS, 1) == 0
    # reads of any width give the bytes of the fields they cover
    both = t.common(CommonCfg.NUM_QUEUES, 4)
    assert both & 0xFFFF == 1 and both >> 16 == 0


def test_config_generation_moves_with_config_changes():
    t = Fn()
    before = t.common(CommonCfg.CONFIG_GENERATION, 1)
    t.f.device.config_changed()
    assert t.common(CommonCfg.CONFIG_GENERATION, 1) != before


def test_vectors_outside_the_table_read_back_no_vector():
    t = Fn()
    t.set_common(CommonCfg.CONFIG_MSIX_VECTOR, 2, 5)
    assert t.common(CommonCfg.CONFIG_MSIX_VECTOR, 2) == VIRTIO_MSI_NO_VECTOR
    t.set_common(CommonCfg.CONFIG_MSIX_VECTOR, 2, 1)
    assert t.common(CommonCfg.CONFIG_MSIX_VECTOR, 2) == 1
    t2 = Fn(msix_vectors=0)
    t2.set_common(CommonCfg.CONFIG_MSIX_VECTOR, 2, 0)
    assert t2.common(CommonCfg.CONFIG_MSIX_VECTOR, 2) == VIRTIO_MSI_NO_VECTOR
    assert PciCapId.MSIX not in [cid for _, cid in t2.caps()]


# --- interrupts ------------------------------------------------------------------------------------------

def _enable_msix(t, maskall=False):
    cap = next(p for p, cid in t.caps() if cid == PciCapId.MSIX)
    t.f.config_write(cap + MsixCap.MESSAGE_CONTROL, 2, MSIX_FLAGS_ENABLE | (MSIX_FLAGS_MASKALL if maskall else 0))
    return cap


def _program(t, vector, address, data, masked=False):
    base = vector * MSIX_ENTRY_SIZE
    t.f.bar_write(0, base, 4, address & 0xFFFFFFFF)
    t.f.bar_write(0, base + 4, 4, address >> 32)
    t.f.bar_write(0, base + 8, 4, data)
    t.f.bar_write(0, base + 12, 4, int(masked))


def test_intx_follows_isr_and_reading_isr_clears_it():
    t = Fn()
    t.f.config_write(PciCfg.COMMAND, 2, PciCommand.MEMORY | PciCommand.MASTER)
    t.f.device.config_changed()  # before DRIVER_OK: no notification
    t.init()
    t.status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
    t.f.device.config_changed()
    assert t.levels == [True]
    assert t.cfg(PciCfg.STATUS, 2) & PciStatus.INTERRUPT
    assert t.f.bar_read(VIRTIO_BAR, ISR_OFFSET, 1) == 2
    assert t.levels == [True, False] and t.f.bar_read(VIRTIO_BAR, ISR_OFFSET, 1) == 0
    assert not t.cfg(PciCfg.STATUS, 2) & PciStatus.INTERRUPT


def test_intx_disable_masks_the_line_but_not_the_status_bit():
    t = Fn()
    t.f.config_write(PciCfg.COMMAND, 2, PciCommand.MEMORY | PciCommand.INTX_DISABLE)
    t.init()
    t.status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
    t.f.device.config_changed()
    assert t.levels == [] and t.cfg(PciCfg.STATUS, 2) & PciStatus.INTERRUPT


def test_msix_masked_vector_goes_pending_then_fires_on_unmask():
    t = Fn()
    t.f.config_write(PciCfg.COMMAND, 2, PciCommand.MEMORY | PciCommand.MASTER)
    _enable_msix(t)
    _program(t, 0, 0xFEE01000, 0x41, masked=True)
    t.init()
    t.set_common(CommonCfg.CONFIG_MSIX_VECTOR, 2, 0)
    t.status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
    t.f.device.config_changed()
    assert t.msis == [] and t.f.bar_read(0, t.f.pba_offset, 8) & 1
    t.f.bar_write(0, 12, 4, 0)  # unmask
    assert t.msis == [(0xFEE01000, 0x41)] and not t.f.bar_read(0, t.f.pba_offset, 8) & 1
    assert t.levels == []  # no INTx while MSI-X is on


def test_msix_function_mask_and_bus_master():
    t = Fn()
    cap = _enable_msix(t, maskall=True)
    _program(t, 0, 0xFEE00000, 7)
    t.init()
    t.set_common(CommonCfg.CONFIG_MSIX_VECTOR, 2, 0)
    t.status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
    t.f.device.config_changed()
    assert t.msis == []
    t.f.config_write(PciCfg.COMMAND, 2, PciCommand.MEMORY)  # no bus mastering: the message is lost
    t.f.config_write(cap + MsixCap.MESSAGE_CONTROL, 2, MSIX_FLAGS_ENABLE)
    assert t.msis == []
    t.f.config_write(PciCfg.COMMAND, 2, PciCommand.MEMORY | PciCommand.MASTER)
    t.f.device.config_changed()
    assert t.msis == [(0xFEE00000, 7)]


def test_no_vector_means_no_interrupt():
    t = Fn()
    t.f.config_write(PciCfg.COMMAND, 2, PciCommand.MEMORY | PciCommand.MASTER)
    _enable_msix(t)
    _program(t, 0, 0xFEE00000, 1)
    t.init()
    t.status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
    t.f.device.config_changed()
    assert t.msis == [] and t.levels == []


def test_notify_processes_the_queue_only_with_bus_mastering():
    from pyvirtio.virtq import SplitDriverQueue
    t = Fn()
    t.init()
    layout = t.queue()
    t.status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
    vq = SplitDriverQueue(layout)
    vq.setup(t.mem)
    t.queue()  # setup() zeroed the ring; the queue is already enabled, so this changes nothing
    vq.add(t.mem, [], [(RAM + 0x8000, 32)], "tok")
    t.f.bar_write(VIRTIO_BAR, NOTIFY_OFFSET, 2, 0)
    assert vq.get_buf(t.mem) is None  # bus mastering is off
    t.f.config_write(PciCfg.COMMAND, 2, PciCommand.MEMORY | PciCommand.MASTER)
    t.f.bar_write(VIRTIO_BAR, NOTIFY_OFFSET, 2, 0)
    assert vq.get_buf(t.mem) == ("tok", 32)


def test_pci_cfg_window_reaches_bar_registers():
    t = Fn()
    cap = t.vcap(PciCapType.PCI_CFG)
    t.f.config_write(cap + VirtioPciCap.BAR, 1, VIRTIO_BAR)
    t.f.config_write(cap + VirtioPciCap.LENGTH, 4, 2)
    t.f.config_write(cap + VirtioPciCap.OFFSET, 4, COMMON_OFFSET + CommonCfg.NUM_QUEUES)
    assert t.cfg(cap + VirtioPciCap.PCI_CFG_DATA, 2) == 1
    t.f.config_write(cap + VirtioPciCap.LENGTH, 4, 1)
    t.f.config_write(cap + VirtioPciCap.OFFSET, 4, COMMON_OFFSET + CommonCfg.DEVICE_STATUS)
    t.f.config_write(cap + VirtioPciCap.PCI_CFG_DATA, 1, S.ACKNOWLEDGE)
    assert t.common(CommonCfg.DEVICE_STATUS, 1) == S.ACKNOWLEDGE
    t.f.config_write(cap + VirtioPciCap.LENGTH, 4, 3)  # not 1, 2 or 4: ignored
    t.f.config_write(cap + VirtioPciCap.PCI_CFG_DATA, 1, 0)
    assert t.common(CommonCfg.DEVICE_STATUS, 1) == S.ACKNOWLEDGE
