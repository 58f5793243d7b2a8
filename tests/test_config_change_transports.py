"""Live config changes reach pyvirtio's drivers as config-change interrupts over every transport:
a blk resize (``BlkDevice.resize``), a net link change (``NetDevice.set_link``) and a console
size (``ConsoleDevice.resize``) over loopback, the PCI and MMIO register models and vhost-user
(CONFIG_CHANGE_MSG on the back-end request channel).  Also ``BlkDevice.resize``'s refusals."""

from __future__ import annotations

import contextlib
import os
import threading
import time

import pytest

from pyvirtio.devices.blk import BlkDevice, ResizeError
from pyvirtio.devices.console import ConsoleDevice
from pyvirtio.devices.console import attach
from pyvirtio.devices.console_endpoints import MemoryEndpoint
from pyvirtio.devices.net import NetDevice
from pyvirtio.drivers.blk import BlkDriver
from pyvirtio.drivers.console import ConsoleDriver
from pyvirtio.drivers.net import NetDriver
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.net.mock import MockBackend
from pyvirtio.spec.ids import DeviceType
from pyvirtio.vhost_user.backend.server import VhostUserServer
from pyvirtio.vhost_user.frontend.transport import VhostUserTransport

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20


@contextlib.contextmanager
def loopback(device, tmp_path):
    t = LoopbackTransport(device, memory_size=8 << 20)
    try:
        yield t
    finally:
        t.close()


@contextlib.contextmanager
def pci_model(device, tmp_path):
    from pyvirtio.pci import scan_pci
    from pyvirtio.platform.machine import InProcessMachine
    with InProcessMachine(ram_size=8 << 20) as machine:
        machine.add_pci(device)
        (t,) = scan_pci(machine).transports
        yield t


@contextlib.contextmanager
def mmio_model(device, tmp_path):
    from pyvirtio.mmio import discover_mmio, parse_kernel_cmdline
    from pyvirtio.platform.machine import InProcessMachine
    with InProcessMachine(ram_size=8 << 20) as machine:
        machine.add_mmio(device)
        (t,) = discover_mmio(machine, parse_kernel_cmdline(machine.kernel_cmdline())).transports
        yield t


@contextlib.contextmanager
def vhost_user(device, tmp_path):
    path = str(tmp_path / "dev.sock")
    server = VhostUserServer()
    ep = server.add(device, socket_path=path)
    if isinstance(device, ConsoleDevice):
        attach(device, ep)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    t = VhostUserTransport(path, device_type=device.device_type)
    try:
        yield t
    finally:
        t.close()
        server.shutdown()
        thread.join(10)


def virtio_msg(device, tmp_path, binding="socket"):
    from pyvirtio.virtio_msg.local import device_transport
    return device_transport(device, binding, str(tmp_path / "vmsg.sock"), memory_size=8 << 20)


TRANSPORTS = {"loopback": loopback, "pci": pci_model, "mmio": mmio_model, "vhost-user": vhost_user,
              "virtio-msg": virtio_msg, "virtio-msg-queue": lambda d, t: virtio_msg(d, t, "queue")}


def until(cond, transport, timeout=10.0) -> bool:
    """Let the transport deliver interrupts until ``cond()`` holds."""
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        transport.wait_for_interrupt(0.05)
    return cond()


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(4 * MiB)
    return str(path)


@pytest.mark.parametrize("name", TRANSPORTS)
def test_blk_resize_reaches_the_driver(name, image, tmp_path):
    device = BlkDevice(image)
    try:
        with TRANSPORTS[name](device, tmp_path) as t:
            disk = BlkDriver.probe(t)
            assert disk.capacity == 4 * MiB // 512
            before = disk.config_changes
            worker = threading.Thread(target=device.resize, args=(12 * MiB,))  # a control thread
            worker.start()
            worker.join(10)
            assert until(lambda: disk.capacity == 12 * MiB // 512, t)
            assert disk.config_changes == before + 1
            disk.write(10 * MiB // 512, b"\x5a" * 4096)  # past the old end
            assert disk.read(10 * MiB // 512, 4096) == b"\x5a" * 4096
            device.resize(8 * MiB, shrink=True)
            assert until(lambda: disk.capacity == 8 * MiB // 512, t)
            with pytest.raises(Exception):
                disk.read(10 * MiB // 512, 4096)  # past the new end: IOERR
            disk.remove()
    finally:
        device.close()
    assert os.path.getsize(image) == 8 * MiB


@pytest.mark.parametrize("name", TRANSPORTS)
def test_net_link_change_reaches_the_driver(name, tmp_path):
    device = NetDevice(MockBackend(), mac="52:54:00:12:34:56")
    try:
        with TRANSPORTS[name](device, tmp_path) as t:
            net = NetDriver.probe(t)
            assert net.link_up
            seen = []
            net.on_link.append(seen.append)
            threading.Thread(target=device.set_link, args=(False,)).start()
            assert until(lambda: not net.link_up, t)
            device.set_link(True)
            assert until(lambda: net.link_up, t)
            assert seen == [False, True]
            net.remove()
    finally:
        device.close()


@pytest.mark.parametrize("name", TRANSPORTS)
def test_console_size_reaches_the_driver_by_config_interrupt(name, tmp_path):
    device = ConsoleDevice(MemoryEndpoint(), size=(80, 25), multiport=False)
    try:
        with TRANSPORTS[name](device, tmp_path) as t:
            drv = ConsoleDriver.probe(t)
            assert not drv.multiport  # no RESIZE control message: only the config space says it
            assert drv.console_size == (80, 25)
            before = drv.config_changes
            device.resize(132, 43)
            assert until(lambda: drv.config_changes > before, t)
            assert drv.console_size == (132, 43)
            drv.remove()
    finally:
        device.close()


# --- BlkDevice.resize refusals -----------------------------------------------------------------


def test_resize_checks_its_argument_and_the_image(image, tmp_path):
    device = BlkDevice(image)
    try:
        for bad in (0, -512, 1000, 4 * MiB + 1, 2.5, True, "8M"):
            with pytest.raises(ResizeError):
                device.resize(bad)  # type: ignore[arg-type]
        with pytest.raises(ResizeError, match="shrink=True"):
            device.resize(2 * MiB)  # a typo must not destroy data
        assert device.capacity == 4 * MiB // 512 and os.path.getsize(image) == 4 * MiB
        generation = device.config_generation
        device.resize(4 * MiB)  # the same size: nothing to do, nothing to tell
        assert device.config_generation == generation
    finally:
        device.close()
    ro = BlkDevice(image, read_only=True)
    try:
        with pytest.raises(ResizeError, match="read-only"):
            ro.resize(8 * MiB)
    finally:
        ro.close()
    assert os.path.getsize(image) == 4 * MiB


def test_a_block_device_is_not_grown_but_its_new_size_is_taken(image, monkeypatch):
    import stat as stat_module

    from pyvirtio.devices import blk as blk_module
    device = BlkDevice(image)
    real_fstat = os.fstat

    class BlockStat:
        def __init__(self, st):
            self.st_mode = stat_module.S_IFBLK | 0o600
            self._st = st

    monkeypatch.setattr(blk_module.os, "fstat",
                        lambda fd: BlockStat(real_fstat(fd)) if fd == device.fd else real_fstat(fd))
    try:
        with pytest.raises(ResizeError, match="block device"):
            device.resize(8 * MiB)  # it is 4 MiB: pyvirtio does not grow a host's device
        os.truncate(image, 8 * MiB)  # "lvextend" done by the user
        device.resize(8 * MiB)
        assert device.capacity == 8 * MiB // 512
    finally:
        monkeypatch.undo()
        device.close()
