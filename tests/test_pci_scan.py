"""The driver side of virtio-pci over pyvirtio's in-process machine: enumeration, BAR assignment,
capability parsing, interrupts, and typed errors for devices that lie."""

import pytest

from pyvirtio.bus import Bus
from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.driver import VirtioDriver
from pyvirtio.drivers import ALL_DRIVERS
from pyvirtio.drivers.blk import BlkDriver
from pyvirtio.drivers.rng import RngDriver
from pyvirtio.errors import ConfigGenerationError, DeviceFault
from pyvirtio.pci import PciAddress, PciCapabilityError, VirtioPciLayoutError, scan_pci
from pyvirtio.platform.machine import InProcessMachine
from pyvirtio.pci.function import VIRTIO_BAR
from pyvirtio.pci.scan import ResourceAllocator, enumerate_bus, probe_bars, walk_capabilities
from pyvirtio.spec.pci import CommonCfg, PciCapId, PciCapType, PciCfg, PciCommand, VirtioPciCap
from pyvirtio.spec.status import DeviceStatus as S


@pytest.fixture
def machine():
    m = InProcessMachine(ram_size=4 << 20)
    yield m
    m.close()


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(1 << 20))
    return str(path)


def vcap(fn, cfg_type):
    ptr = fn.config_read(PciCfg.CAPABILITY_LIST, 1)
    while ptr:
        if fn.config_read(ptr, 1) == PciCapId.VNDR and fn.config_read(ptr + 3, 1) == cfg_type:
            return ptr
        ptr = fn.config_read(ptr + 1, 1)
    raise LookupError(cfg_type)


# --- enumeration and resources -----------------------------------------------------------------------

def test_scan_finds_functions_assigns_bars_and_enables_decoding(machine, image):
    machine.add_pci(RngDevice())
    machine.add_pci(BlkDevice(image), slot=5)
    assert enumerate_bus(machine) == [PciAddress(0, 1, 0), PciAddress(0, 5, 0)]
    scan = scan_pci(machine)
    assert [t.device_type for t in scan.transports] == [4, 2] and not scan.rejected
    seen = []
    for t in scan.transports:
        fn = machine.functions[t.fn.address]
        assert fn.config_read(PciCfg.COMMAND, 2) & (PciCommand.MEMORY | PciCommand.MASTER) == 6
        for index, bar in t.fn.bars.items():
            assert bar.address and bar.address % bar.size == 0
            assert fn.header.bar_address(index) == bar.address
            assert machine.mmio_window[0] <= bar.address < machine.mmio_window[1]
            seen.append((bar.address, bar.address + bar.size))
    seen.sort()
    assert all(a[1] <= b[0] for a, b in zip(seen, seen[1:])), "BARs overlap"


def test_multi_function_devices_are_enumerated(machine, image):
    machine.add_pci(RngDevice(), slot=3)
    machine.add_pci(BlkDevice(image), slot=3, function=2)
    assert enumerate_bus(machine) == [PciAddress(0, 3, 0), PciAddress(0, 3, 2)]
    assert [t.device_type for t in scan_pci(machine).transports] == [4, 2]


def test_bar_probe_restores_the_registers(machine):
    fn = machine.add_pci(RngDevice())
    fn.config_write(PciCfg.BAR0, 4, 0xE0001000)
    bars = probe_bars(machine, PciAddress(0, 1, 0))
    assert bars[0].address == 0xE0001000 and bars[0].size == fn.bars[0].size
    assert bars[2].kind.value == "mem64" and bars[2].size == fn.bars[2].size
    assert fn.config_read(PciCfg.BAR0, 4) == 0xE0001000


def test_resource_allocator_avoids_firmware_ranges():
    alloc = ResourceAllocator((0xE0000000, 0xE0100000), (0xC000, 0x10000))
    alloc.reserve(0xE0000000, 0x4000)
    a = alloc.allocate(0x4000, io=False)
    b = alloc.allocate(0x1000, io=False)
    assert a == 0xE0004000 and b == 0xE0008000
    assert alloc.allocate(0x20, io=True) == 0xC000


def test_bus_binds_drivers_by_id_table(machine, image):
    machine.add_pci(RngDevice())
    machine.add_pci(BlkDevice(image))
    bus = Bus(drivers=ALL_DRIVERS)
    bus.extend(scan_pci(machine).transports)
    bus.probe()
    assert isinstance(bus.find(4)[0], RngDriver) and isinstance(bus.find(2)[0], BlkDriver)
    assert len(bus.find(4)[0].read(100)) == 100


@pytest.mark.parametrize("mode", ["msix", "intx"])
def test_interrupt_modes_deliver_queue_interrupts(machine, mode):
    machine.add_pci(RngDevice())
    (t,) = scan_pci(machine, interrupts=mode).transports
    got = []

    class Recording(RngDriver):
        def on_queue_interrupt(self, index):
            got.append(index)

    drv = Recording.probe(t)
    assert t.mode == mode
    drv.read(10)
    assert got == [0]
    assert t.wait_for_interrupt(0)


def test_config_change_interrupt_reaches_the_driver(machine, image):
    dev = BlkDevice(image)
    machine.add_pci(dev)
    (t,) = scan_pci(machine).transports
    drv = BlkDriver.probe(t)
    dev.capacity = 1024
    dev.config_changed()
    assert drv.config_changes == 1 and drv.capacity == 1024


def test_msix_refused_falls_back_to_intx(machine):
    fn = machine.add_pci(RngDevice())
    fn._map_vector = lambda vector: 0xFFFF  # a device that cannot map any vector
    (t,) = scan_pci(machine).transports
    drv = RngDriver.probe(t)
    assert t.mode == "intx" and len(drv.read(8)) == 8


def test_transitional_function_is_driven_through_its_modern_interface(machine, image):
    machine.add_pci(BlkDevice(image), transitional=True)
    (t,) = scan_pci(machine).transports
    assert t.fn.device_id == 0x1001 and t.device_type == 2
    drv = BlkDriver.probe(t)
    drv.write(0, b"t" * 512)
    assert drv.read(0, 512) == b"t" * 512


# --- lying devices --------------------------------------------------------------------------------

def test_looping_capability_list_is_a_typed_error(machine):
    fn = machine.add_pci(RngDevice())
    first = fn.config_read(PciCfg.CAPABILITY_LIST, 1)
    second = fn.config_read(first + 1, 1)
    fn.space.put(second + 1, 1, first)  # second -> first -> second ...
    with pytest.raises(PciCapabilityError, match="loops"):
        walk_capabilities(machine, PciAddress(0, 1, 0))
    scan = scan_pci(machine)
    assert not scan.transports and isinstance(scan.rejected[0][1], PciCapabilityError)


@pytest.mark.parametrize("pointer", [0x04, 0x10, 0x3C])
def test_capability_pointer_out_of_range_is_a_typed_error(machine, pointer):
    fn = machine.add_pci(RngDevice())
    fn.space.put(PciCfg.CAPABILITY_LIST, 1, pointer)
    with pytest.raises(PciCapabilityError):
        walk_capabilities(machine, PciAddress(0, 1, 0))


def test_capability_pointing_outside_its_bar_is_rejected(machine):
    fn = machine.add_pci(RngDevice())
    fn.space.put(vcap(fn, PciCapType.COMMON_CFG) + VirtioPciCap.OFFSET, 4, fn.bars[VIRTIO_BAR].size - 8)
    scan = scan_pci(machine)
    assert not scan.transports
    err = scan.rejected[0][1]
    assert isinstance(err, VirtioPciLayoutError) and isinstance(err, DeviceFault) and "outside BAR" in str(err)


def test_capability_naming_a_missing_bar_is_rejected(machine):
    fn = machine.add_pci(RngDevice())
    fn.space.put(vcap(fn, PciCapType.NOTIFY_CFG) + VirtioPciCap.BAR, 1, 4)
    scan = scan_pci(machine)
    assert "does not have" in str(scan.rejected[0][1])


def test_reserved_bar_and_cfg_type_are_ignored_and_a_later_cap_is_used(machine):
    fn = machine.add_pci(RngDevice())
    isr = vcap(fn, PciCapType.ISR_CFG)
    fn.space.put(isr + VirtioPciCap.CFG_TYPE, 1, 0x33)  # a reserved type: ignored
    scan = scan_pci(machine)
    assert "no usable ISR_CFG" in str(scan.rejected[0][1])


def test_misaligned_common_cfg_is_rejected(machine):
    fn = machine.add_pci(RngDevice())
    fn.space.put(vcap(fn, PciCapType.COMMON_CFG) + VirtioPciCap.OFFSET, 4, 2)
    assert "aligned" in str(scan_pci(machine).rejected[0][1])


def test_notify_offset_past_the_structure_is_a_typed_error(machine):
    fn = machine.add_pci(RngDevice())
    (t,) = scan_pci(machine).transports
    # one queue, multiplier 4: the structure is 4 bytes; queue_notify_off 1 puts the doorbell at 4
    fn._common_field = lambda f, orig=fn._common_field: 1 if f == CommonCfg.QUEUE_NOTIFY_OFF else orig(f)
    with pytest.raises(VirtioPciLayoutError, match="notify"):
        RngDriver.probe(t)


def test_queue_size_0_is_a_device_fault(machine):
    fn = machine.add_pci(RngDevice())
    fn._common_field = lambda f, orig=fn._common_field: 0 if f == CommonCfg.QUEUE_SIZE else orig(f)
    (t,) = scan_pci(machine).transports
    with pytest.raises(DeviceFault, match="queue size 0|does not exist"):
        RngDriver.probe(t)
    assert t.get_status() & S.FAILED


def test_config_generation_that_never_settles_is_a_typed_error(machine, image):
    class Restless(BlkDevice):
        @property
        def config_generation(self):
            self._g = getattr(self, "_g", 0) + 1
            return self._g & 0xFF

        @config_generation.setter
        def config_generation(self, value):
            pass

    machine.add_pci(Restless(image))
    (t,) = scan_pci(machine).transports
    with pytest.raises(ConfigGenerationError):
        BlkDriver.probe(t)


def test_reset_that_never_completes_is_a_typed_error(machine, monkeypatch):
    fn = machine.add_pci(RngDevice())
    monkeypatch.setattr("pyvirtio.transport.DriverTransport.RESET_POLLS", 3)
    fn.regs.reset = lambda: None  # a device that ignores the reset
    (t,) = scan_pci(machine).transports
    t.set_status(S.ACKNOWLEDGE)
    with pytest.raises(VirtioPciLayoutError, match="never read 0"):
        t.reset()


def test_msix_table_outside_its_bar_is_rejected(machine):
    fn = machine.add_pci(RngDevice())
    fn.space.put(fn.msix_cap + 4, 4, fn.bars[0].size)
    assert "MSI-X table" in str(scan_pci(machine).rejected[0][1])


def test_driver_for_unknown_type_leaves_device_unbound(machine):
    class Nothing(VirtioDriver):
        id_table = (99,)

    machine.add_pci(RngDevice())
    bus = Bus(drivers=(Nothing,))
    bus.extend(scan_pci(machine).transports)
    assert bus.probe()[0].driver is None
