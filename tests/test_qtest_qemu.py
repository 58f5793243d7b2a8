"""QEMU's own virtio devices through qtest: discovery on q35 and microvm, interrupts in every mode,
register behaviour the spec pins down (checked against QEMU and pyvirtio's models alike), and the
``qtest-probe`` command.  Needs qemu-system-x86_64 (skipped without it, failed under CI=true)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json

import pytest

from pyvirtio.devices.rng import RngDevice
from pyvirtio.drivers.blk import BlkDriver
from pyvirtio.drivers.rng import RngDriver
from pyvirtio.mmio import MmioTransport, discover_mmio, parse_kernel_cmdline
from pyvirtio.pci import PciAddress, scan_pci
from pyvirtio.platform.machine import InProcessMachine
from pyvirtio.qtest import QemuMachine, qemu_available
from pyvirtio.spec.features import Feature
from pyvirtio.spec.mmio import MAGIC_VALUE, MmioReg as R
from pyvirtio.spec.pci import (VIRTIO_MSI_NO_VECTOR, CommonCfg as C, PciCapType, PciCfg, PciCommand,
                               VirtioPciCap)
from pyvirtio.spec.status import DeviceStatus as S
from pyvirtio.testing.env import require

pytestmark = pytest.mark.peer


@pytest.fixture(autouse=True)
def _need_qemu():
    require(qemu_available(), "qemu-system-x86_64")


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(1 << 20))
    return str(path)


def blk_args(image, device="virtio-blk-pci", extra=""):
    return ["-drive", f"if=none,id=d0,file={image},format=raw", "-device", f"{device},drive=d0{extra}"]


# --- discovery -------------------------------------------------------------------------------------

def test_q35_scan_finds_modern_and_transitional_functions(image):
    args = ["-device", "virtio-rng-pci,disable-legacy=on", *blk_args(image, extra=",disable-legacy=off")]
    with QemuMachine(args) as qemu:
        p = qemu.platform
        assert p.pci_config_read(PciAddress(0, 0, 0), PciCfg.VENDOR_ID, 2) == 0x8086  # q35 host bridge
        assert p.pci_config_read(PciAddress(0, 31, 7), PciCfg.VENDOR_ID, 2) == 0xFFFF  # nothing there
        found = qemu.discover()
        rng, blk = found.transports
        assert (rng.fn.device_id, rng.device_type) == (0x1044, 4) and rng.fn.revision >= 1
        assert (blk.fn.device_id, blk.device_type, blk.fn.subsystem_id) == (0x1001, 2, 2)
        assert blk.fn.revision == 0  # transitional (4.1.2.3)
        for t in (rng, blk):
            command = p.pci_config_read(t.fn.address, PciCfg.COMMAND, 2)
            assert command & PciCommand.MEMORY and command & PciCommand.MASTER
            for bar in t.fn.bars.values():
                window = p.io_window if bar.is_io else p.mmio_window
                assert window[0] <= bar.address < window[1] and bar.address % bar.size == 0
            assert t.mode == "msix"


def test_microvm_windows_match_the_kernel_command_line_qemu_would_write(image):
    args = ["-device", "virtio-rng-device", *blk_args(image, "virtio-blk-device")]
    with QemuMachine(args, machine="microvm") as qemu:
        found = qemu.discover()
        assert [t.describe() for t in found.transports] == ["mmio@0xfeb00c00:22", "mmio@0xfeb00e00:23"]
        assert [t.device_type for t in found.transports] == [2, 4]  # QEMU fills transports from the top
        cmdline = "virtio_mmio.device=512@0xfeb00c00:22 virtio_mmio.device=512@0xfeb00e00:23"
        again = discover_mmio(qemu.platform, parse_kernel_cmdline(cmdline)).transports
        assert [t.device_type for t in again] == [2, 4]
        assert qemu.client.mem_read(0xFEB00000, 4) == MAGIC_VALUE
        assert qemu.client.mem_read(0xFEB00000 + R.DEVICE_ID, 4) == 0  # an empty transport


# --- interrupts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("machine, interrupts", [("q35", "msix"), ("q35", "intx"), ("microvm", "auto")])
def test_queue_interrupts_reach_the_driver(machine, interrupts, image):
    args = blk_args(image, "virtio-blk-device" if machine == "microvm" else "virtio-blk-pci")
    got = []

    class Recording(BlkDriver):
        def on_queue_interrupt(self, index):
            got.append(index)

    with QemuMachine(args, machine=machine, interrupts=interrupts) as qemu:
        (t,) = qemu.discover().transports
        drv = Recording.probe(t)
        request = drv.submit_read(0, 4096)
        for _ in range(200):
            if got:
                break
            t.wait_for_interrupt(0.05)
        assert got == [0]
        assert drv.wait(request) == bytes(4096)
        if machine == "microvm":
            assert qemu.client.irq_epoch > 0  # the line really went up (and down)
        drv.remove()


# --- packed rings (issue 11) ------------------------------------------------------------------------

class SmallBlk(BlkDriver):
    queue_size = 16  # the ring wraps after a few requests


def _packed_in_use(drv):
    """RING_PACKED was negotiated and every queue is a packed ring (a device that does not offer
    it would silently give split rings; QEMU's do only with ``packed=on``)."""
    return drv.has_feature(Feature.RING_PACKED) and all(getattr(q.vq, "packed", False) for q in drv.queues)


@pytest.mark.parametrize("machine, interrupts", [("q35", "msix"), ("q35", "intx"), ("microvm", "auto")])
def test_drivers_on_qemu_devices_with_packed_rings(machine, interrupts, image):
    suffix = "device" if machine == "microvm" else "pci"
    args = ["-device", f"virtio-rng-{suffix},packed=on", *blk_args(image, f"virtio-blk-{suffix}", ",packed=on")]
    with QemuMachine(args, machine=machine, interrupts=interrupts) as qemu:
        by_type = {t.device_type: t for t in qemu.discover().transports}
        rng = RngDriver.probe(by_type[4])
        assert _packed_in_use(rng)
        data = rng.read(3000)
        assert len(data) == 3000 and data != bytes(3000) and rng.read(3000) != data
        blk = SmallBlk.probe(by_type[2])
        assert _packed_in_use(blk)
        (q,) = blk.queues
        assert q.vq.size == 16
        for round_ in range(3):  # 3 x 12 requests of one descriptor each (indirect): wraps twice
            writes = [blk.submit_write(8 * i, bytes([round_ * 16 + i + 1]) * 512) for i in range(12)]
            for w in writes:
                blk.wait(w)
        reads = [blk.submit_read(8 * i, 512) for i in range(12)]
        assert [blk.wait(r) for r in reads] == [bytes([32 + i + 1]) * 512 for i in range(12)]
        assert q.vq.avail_wrap == 0 and q.vq.used_wrap == 0  # 48 descriptors on 16 slots: 3 laps
        blk.flush()
        blk.remove()
        rng.remove()
    with open(image, "rb") as f:
        assert f.read(512) == bytes([33]) * 512


@pytest.mark.parametrize("machine, device", [("q35", "virtio-rng-pci,packed=on"),
                                             ("microvm", "virtio-rng-device,packed=on")])
def test_split_only_gives_split_rings_on_a_device_offering_packed(machine, device):
    with QemuMachine(["-device", device], machine=machine, split_only=True) as qemu:
        (t,) = qemu.discover().transports
        assert t.split_only
        drv = RngDriver.probe(t)
        assert not drv.has_feature(Feature.RING_PACKED)
        assert not getattr(drv.queues[0].vq, "packed", False)
        assert len(drv.read(100)) == 100
        drv.remove()
        t.split_only = False
        assert t.get_device_features() >> Feature.RING_PACKED & 1, "QEMU offers it with packed=on"


@pytest.mark.parametrize("machine, device", [("q35", "virtio-rng-pci,packed=on"),
                                             ("microvm", "virtio-rng-device")])
def test_notification_data_is_negotiated_only_when_qemu_offers_it(machine, device):
    """Our drivers take VIRTIO_F_NOTIFICATION_DATA on PCI and MMIO; QEMU 7.2's devices do not
    offer it (no ``notification_data`` property before QEMU 8.2), so the kicks stay 16-bit
    queue indexes and QEMU serves them."""
    with QemuMachine(["-device", device], machine=machine) as qemu:
        (t,) = qemu.discover().transports
        offered = bool(t.get_device_features() >> Feature.NOTIFICATION_DATA & 1)
        drv = RngDriver.probe(t)
        assert drv.has_feature(Feature.NOTIFICATION_DATA) == offered
        assert drv.queues[0].notification_data == offered
        assert len(drv.read(64)) == 64
        drv.remove()


# --- register behaviour the spec pins down: QEMU and pyvirtio's model must agree ---------------------

@contextlib.contextmanager
def pci_rng(where):
    if where == "qemu":
        with QemuMachine(["-device", "virtio-rng-pci,disable-legacy=on"]) as qemu:
            yield qemu.discover().transports[0]
    else:
        with InProcessMachine(ram_size=1 << 20) as machine:
            machine.add_pci(RngDevice())
            yield scan_pci(machine).transports[0]


@contextlib.contextmanager
def mmio_rng(where):
    if where == "qemu":
        with QemuMachine(["-device", "virtio-rng-device"], machine="microvm") as qemu:
            yield qemu.discover().transports[0]
    else:
        with InProcessMachine(ram_size=1 << 20) as machine:
            machine.add_mmio(RngDevice(), irq=16)
            yield MmioTransport(machine, 0xFEB00000, 0x200, irq=16)


@pytest.mark.parametrize("where", ["qemu", "model"])
def test_pci_register_rules(where):
    with pci_rng(where) as t:
        rd, wr = t._common_read, t._common_write
        wr(C.DEVICE_STATUS, 1, S.ACKNOWLEDGE)
        wr(C.DEVICE_STATUS, 1, 0)
        assert rd(C.DEVICE_STATUS, 1) == 0, "4.1.4.3.2: reads 0 after a reset"
        wr(C.QUEUE_SELECT, 2, rd(C.NUM_QUEUES, 2))
        assert rd(C.QUEUE_SIZE, 2) == 0, "4.1.4.3.2: an unavailable queue reads queue_size 0"
        wr(C.QUEUE_SELECT, 2, 0)
        size = rd(C.QUEUE_SIZE, 2)
        assert size and size & (size - 1) == 0
        assert rd(C.QUEUE_ENABLE, 2) == 0, "4.1.4.3.2: queue_enable is 0 after reset"
        wr(C.CONFIG_MSIX_VECTOR, 2, 0x7FF)
        assert rd(C.CONFIG_MSIX_VECTOR, 2) == VIRTIO_MSI_NO_VECTOR, "4.1.5.1.2: unmappable -> NO_VECTOR"
        for sel in (2, 3):
            wr(C.DEVICE_FEATURE_SELECT, 4, sel)
            assert rd(C.DEVICE_FEATURE, 4) == 0, "4.1.4.3.2: no feature bits above 63"
        assert t._read(t.isr, 0, 1) == 0
        mult = t.notify_cap.extra
        assert mult == 0 or (mult & (mult - 1) == 0 and mult % 2 == 0), "4.1.4.4.1: even power of 2 or 0"
        # 4.1.4.9: the PCI_CFG window reaches the same registers through configuration space
        cfg_cap = next(off for off, cid in t.fn.capabilities
                       if cid == 0x09 and t._cfg(off + VirtioPciCap.CFG_TYPE, 1) == PciCapType.PCI_CFG)
        write = functools.partial(t.platform.pci_config_write, t.fn.address)
        write(cfg_cap + VirtioPciCap.BAR, 1, t.common.bar.index)
        write(cfg_cap + VirtioPciCap.LENGTH, 4, 2)
        write(cfg_cap + VirtioPciCap.OFFSET, 4, t.common.offset + C.NUM_QUEUES)
        assert t._cfg(cfg_cap + VirtioPciCap.PCI_CFG_DATA, 2) == rd(C.NUM_QUEUES, 2) == 1
        drv = RngDriver.probe(t)
        assert len(drv.read(32)) == 32
        drv.remove()


@pytest.mark.parametrize("where", ["qemu", "model"])
def test_mmio_register_rules(where):
    with mmio_rng(where) as t:
        base, c = t.base, t.platform
        assert c.mmio_read(base + R.MAGIC_VALUE, 4) == MAGIC_VALUE and c.mmio_read(base + R.VERSION, 4) == 2
        assert c.mmio_read(base + R.MAGIC_VALUE, 2) == 0, "only 32-bit register accesses count"
        c.mmio_write(base + R.STATUS, 4, S.ACKNOWLEDGE)
        c.mmio_write(base + R.STATUS, 1, 0)
        assert c.mmio_read(base + R.STATUS, 4) == S.ACKNOWLEDGE
        c.mmio_write(base + R.STATUS, 4, 0)
        assert c.mmio_read(base + R.STATUS, 4) == 0 and c.mmio_read(base + R.INTERRUPT_STATUS, 4) == 0
        c.mmio_write(base + R.QUEUE_SEL, 4, 1000)
        assert c.mmio_read(base + R.QUEUE_SIZE_MAX, 4) == 0 and c.mmio_read(base + R.QUEUE_READY, 4) == 0
        c.mmio_write(base + R.SHM_SEL, 4, 0)
        assert c.mmio_read(base + R.SHM_LEN_LOW, 4) == c.mmio_read(base + R.SHM_LEN_HIGH, 4) == 0xFFFFFFFF
        drv = RngDriver.probe(t)
        assert len(drv.read(32)) == 32
        drv.remove()


# --- the command ------------------------------------------------------------------------------------

def _cli(argv):
    from pyvirtio.commands import qtest_probe
    parser = argparse.ArgumentParser()
    qtest_probe.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["qtest-probe", *argv])
    return args.func(args)


def test_qtest_probe_prints_a_table(image, capsys):
    before = open(image, "rb").read()
    rc = _cli(["--", "-device", "virtio-rng-pci", *blk_args(image)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "entropy" in out and "RngDriver" in out and "read 64 random bytes" in out
    assert "BlkDriver" in out and "restored" in out
    assert open(image, "rb").read() == before  # the smoke test put the block back


def test_qtest_probe_json_on_microvm(image, capsys):
    rc = _cli(["--json", "--", "-M", "microvm", "-device", "virtio-rng-device",
               *blk_args(image, "virtio-blk-device")])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["ok"] and report["machine"] == "microvm"
    assert sorted(d["type"] for d in report["devices"]) == ["block", "entropy"]
    assert all(d["ok"] and d["transport"].startswith("mmio@") for d in report["devices"])


@pytest.mark.parametrize("split_only", [False, True])
def test_qtest_probe_reports_the_ring_layout(capsys, split_only):
    rc = _cli(["--json", *(["--split-only"] if split_only else []), "--", "-device", "virtio-rng-pci,packed=on"])
    (row,) = json.loads(capsys.readouterr().out)["devices"]
    assert rc == 0 and row["ok"] and row["ring"] == ("split" if split_only else "packed")


# --- the net and console drivers fit the same transports ------------------------------------------

@pytest.mark.parametrize("machine, device", [("q35", "virtio-net-pci,disable-legacy=on"),
                                             ("microvm", "virtio-net-device"),
                                             ("q35", "virtio-net-pci,disable-legacy=on,packed=on"),
                                             ("microvm", "virtio-net-device,packed=on")])
def test_net_driver_over_qemu(machine, device):
    import socket
    NetDriver = pytest.importorskip("pyvirtio.drivers.net").NetDriver
    host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host.bind(("127.0.0.1", 0))
    host.settimeout(5)
    qemu_side = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    qemu_side.bind(("127.0.0.1", 0))
    qport = qemu_side.getsockname()[1]
    qemu_side.close()  # QEMU binds it next
    netdev = f"socket,id=n0,udp=127.0.0.1:{host.getsockname()[1]},localaddr=127.0.0.1:{qport}"
    with QemuMachine(["-netdev", netdev, "-device", f"{device},netdev=n0"], machine=machine) as qemu:
        (t,) = qemu.discover().transports
        drv = NetDriver.probe(t)
        assert _packed_in_use(drv) == ("packed=on" in device)
        frame = b"\xff" * 6 + bytes(drv.config["mac"]) + b"\x08\x00" + b"to the host".ljust(46, b"\0")
        drv.send(frame)
        drv.flush()
        assert host.recvfrom(2048)[0] == frame
        reply = bytes(drv.config["mac"]) + bytes.fromhex("020000000001") + b"\x08\x00" + b"to the guest".ljust(46, b"\0")
        host.sendto(reply, ("127.0.0.1", qport))
        assert drv.recv(timeout=5) == reply
        drv.remove()
    host.close()


@pytest.mark.parametrize("machine, bus", [("q35", "virtio-serial-pci,disable-legacy=on"),
                                          ("microvm", "virtio-serial-device"),
                                          ("q35", "virtio-serial-pci,disable-legacy=on,packed=on")])
def test_console_driver_over_qemu(machine, bus, tmp_path):
    import socket
    ConsoleDriver = pytest.importorskip("pyvirtio.drivers.console").ConsoleDriver
    path = str(tmp_path / "port.sock")
    args = ["-chardev", f"socket,id=c0,path={path},server=on,wait=off", "-device", bus,
            "-device", "virtserialport,chardev=c0,name=org.pyvirtio.test"]
    with QemuMachine(args, machine=machine) as qemu:
        (t,) = qemu.discover().transports
        drv = ConsoleDriver.probe(t)
        assert _packed_in_use(drv) == ("packed=on" in bus)
        host = socket.socket(socket.AF_UNIX)
        host.connect(path)
        host.settimeout(5)
        port = drv.open_port("org.pyvirtio.test")
        port.write(b"hello host\n")
        assert host.recv(100) == b"hello host\n"
        host.sendall(b"hello guest\n")
        assert port.read_exactly(12, timeout=5) == b"hello guest\n"
        drv.remove()
        host.close()


def test_qtest_probe_smoke_tests_net_and_console(capsys):
    from pyvirtio.commands import qtest_probe
    from pyvirtio.drivers import ALL_DRIVERS
    extra = tuple(pytest.importorskip(f"pyvirtio.drivers.{m}").__dict__[c]
                  for m, c in (("net", "NetDriver"), ("console", "ConsoleDriver")))
    parser = argparse.ArgumentParser()
    qtest_probe.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["qtest-probe", "--json", "--", "-netdev", "user,id=n0",
                              "-device", "virtio-net-pci,netdev=n0", "-device", "virtio-serial-pci",
                              "-device", "virtconsole"])
    assert qtest_probe.run(args, drivers=ALL_DRIVERS + extra) == 0
    report = json.loads(capsys.readouterr().out)
    smoke = {d["type"]: d["smoke"] for d in report["devices"]}
    assert "sent an ARP request" in smoke["net"] and "port(s)" in smoke["console"]


def test_qemu_refusing_its_arguments_is_a_typed_error_with_its_message():
    from pyvirtio.qtest import QemuStartError
    with pytest.raises(QemuStartError, match="no-such-device"):
        QemuMachine(["-device", "no-such-device"]).start()
