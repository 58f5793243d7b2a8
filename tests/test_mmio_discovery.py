"""virtio-mmio discovery (kernel command line, device tree) and the driver-side transport over
pyvirtio's in-process machine, including windows that are empty, legacy, or not virtio at all."""

import pytest

from pyvirtio.bus import Bus
from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.drivers import ALL_DRIVERS
from pyvirtio.drivers.rng import RngDriver
from pyvirtio.errors import DeviceFault, UsageError
from pyvirtio.mmio import (MmioTransport, MmioWindow, VirtioMmioError, discover_mmio, parse_device_spec,
                           parse_device_tree, parse_kernel_cmdline)
from pyvirtio.platform.machine import InProcessMachine
from pyvirtio.spec.mmio import MmioReg as R


@pytest.fixture
def machine():
    m = InProcessMachine(ram_size=4 << 20)
    yield m
    m.close()


# --- parsing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, window", [
    ("512@0xfeb00e00:23", MmioWindow(0xFEB00E00, 512, 23)),
    ("0x200@0xd0000000:5:3", MmioWindow(0xD0000000, 0x200, 5, 3)),
    ("4K@0x1e000:42", MmioWindow(0x1E000, 4096, 42)),
    ("1m@3221225472:7", MmioWindow(3 << 30, 1 << 20, 7)),
    ("01000@010:1", MmioWindow(8, 512, 1)),  # C-style octal, as Linux's memparse/%lli read it
])
def test_device_spec_syntax(spec, window):
    assert parse_device_spec(spec) == window


@pytest.mark.parametrize("bad", ["512@0x1000", "@0x1000:5", "512@0x1000:0", "512@0x1000:5x", "0@0x1000:5",
                                 "512#0x1000:5", ""])
def test_bad_device_specs_are_usage_errors(bad):
    with pytest.raises(UsageError):
        parse_device_spec(bad)


def test_kernel_cmdline_picks_every_virtio_mmio_device():
    cmdline = ("console=ttyS0 virtio_mmio.device=512@0xfeb00e00:23 root=/dev/vda "
               "virtio_mmio.device=512@0xfeb00c00:22 virtio_mmio.force_legacy=0")
    assert parse_kernel_cmdline(cmdline) == [MmioWindow(0xFEB00E00, 512, 23), MmioWindow(0xFEB00C00, 512, 22)]


def test_device_tree_nodes():
    nodes = [
        {"compatible": "virtio,mmio", "reg": [0x1E000, 0x200], "interrupts": [42]},
        {"compatible": ["arm,pl011", "arm,primecell"], "reg": [0x9000000, 0x1000]},
        {"base": 0x2000, "irq": 9},
    ]
    assert parse_device_tree(nodes) == [MmioWindow(0x1E000, 0x200, 42), MmioWindow(0x2000, 0x200, 9)]


# --- discovery and the transport -------------------------------------------------------------------------

def test_discovery_skips_empty_windows_silently_and_binds_drivers(machine, tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 20))
    machine.add_empty_mmio()
    machine.add_mmio(RngDevice())
    machine.add_mmio(BlkDevice(str(img)))
    for windows in (parse_kernel_cmdline(machine.kernel_cmdline()), parse_device_tree(machine.device_tree())):
        scan = discover_mmio(machine, windows)
        assert [t.device_type for t in scan.transports] == [4, 2]
        assert len(scan.empty) == 1 and not scan.rejected
    bus = Bus(drivers=ALL_DRIVERS)
    bus.extend(scan.transports)
    bus.probe()
    assert len(bus.find(4)[0].read(33)) == 33
    blk = bus.find(2)[0]
    blk.write(8, b"m" * 1024)
    assert blk.read(8, 1024) == b"m" * 1024


def test_windows_that_are_not_virtio_or_legacy_are_rejected(machine):
    legacy = machine.add_mmio(RngDevice())
    legacy._read_reg = lambda off, orig=legacy._read_reg: 1 if off == R.VERSION else orig(off)
    scan = discover_mmio(machine, [MmioWindow(0xFEB00000, 0x200, 5), MmioWindow(0xC0000000, 0x200, 6)])
    assert not scan.transports and len(scan.rejected) == 2
    assert "legacy" in str(scan.rejected[0][1]) and "magic" in str(scan.rejected[1][1])
    assert all(isinstance(e, VirtioMmioError) for _, e in scan.rejected)


def test_interrupts_come_through_the_line(machine):
    machine.add_mmio(RngDevice())
    t = MmioTransport(machine, 0xFEB00000, 0x200, irq=5)
    got = []

    class Recording(RngDriver):
        def on_queue_interrupt(self, index):
            got.append(index)

    drv = Recording.probe(t)
    drv.read(4)
    assert got == [0] and machine.device_memory is not machine.memory


def test_polling_without_a_line(machine):
    machine.add_mmio(RngDevice())
    t = MmioTransport(machine, 0xFEB00000, 0x200, irq=None)
    drv = RngDriver.probe(t)
    assert len(drv.read(4)) == 4


def test_queue_ready_before_setup_is_a_device_fault(machine):
    w = machine.add_mmio(RngDevice())
    w._read_reg = lambda off, orig=w._read_reg: 1 if off == R.QUEUE_READY else orig(off)
    t = MmioTransport(machine, 0xFEB00000, 0x200, irq=5)
    with pytest.raises(DeviceFault, match="ready before"):
        RngDriver.probe(t)


def test_queue_num_max_0_is_a_device_fault(machine):
    w = machine.add_mmio(RngDevice())
    w._read_reg = lambda off, orig=w._read_reg: 0 if off == R.QUEUE_SIZE_MAX else orig(off)
    t = MmioTransport(machine, 0xFEB00000, 0x200, irq=5)
    assert t.num_queues() == 0
    with pytest.raises(DeviceFault):
        RngDriver.probe(t)


def test_num_queues_counts_available_queues(machine, tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 16))
    machine.add_mmio(BlkDevice(str(img), num_queues=3))
    assert MmioTransport(machine, 0xFEB00000).num_queues() == 3
