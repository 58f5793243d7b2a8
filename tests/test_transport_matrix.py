"""One driver suite, every transport: the rng and blk drivers against their device over loopback,
pyvirtio's PCI and MMIO models, pyvirtio's vhost-user daemon and qemu-storage-daemon over
vhost-user, and QEMU's own devices over qtest (q35 PCI, modern and transitional, and microvm
virtio-mmio).  The same tests, the same assertions.

Adding a transport is one line in :data:`TRANSPORTS`: a name and a factory.  A factory is a
context manager ``factory(spec, tmp_path)`` that yields a :class:`~pyvirtio.transport.DriverTransport`
carrying the device ``spec`` describes (``spec.kind`` is ``"rng"``, ``"blk"`` or ``"console"``; a
blk device is backed by the raw image ``spec.image`` of ``spec.sectors`` sectors, with serial
``spec.serial``, read-only with ``spec.read_only``; a console has one port, ``spec.port_name``,
whose host side listens on the UNIX socket ``spec.port_path``), and cleans up on exit.
Factories that need an external program call :func:`require` first.

QEMU transports (split, packed=on, and packed=on with the transport told to use split rings)
run whenever ``qemu-system-x86_64`` exists; without it they are skipped, except
under ``CI=true``, where they fail.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest

from pyvirtio.bus import Bus
from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.drivers import ALL_DRIVERS
from pyvirtio.drivers.blk import BlkDriver
from pyvirtio.drivers.rng import RngDriver
from pyvirtio.errors import RequestError
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec.blk import BlkStatus
from pyvirtio.testing.env import require


@dataclass
class DeviceSpec:
    kind: str  # "rng" | "blk" | "console"
    image: str = ""
    sectors: int = 0
    serial: str = "pyvirtio-matrix"
    packed: bool = False  # the device offers VIRTIO_F_RING_PACKED (a "-packed" column)
    split_only: bool = False  # the transport hides RING_PACKED from the drivers (a "-split-only" column)
    read_only: bool = False  # blk: the device offers VIRTIO_BLK_F_RO
    port_path: str = ""  # console: the UNIX socket its one port (named port_name) listens on
    port_name: str = "org.pyvirtio.matrix"






def _device(spec: DeviceSpec):
    if spec.kind == "console":
        from pyvirtio.devices.console import ConsoleDevice, PortSpec
        from pyvirtio.devices.console_endpoints import UnixListenEndpoint
        device = ConsoleDevice(None, [PortSpec(UnixListenEndpoint(spec.port_path), spec.port_name)], max_nr_ports=2)
    else:
        device = RngDevice() if spec.kind == "rng" else BlkDevice(spec.image, serial=spec.serial, read_only=spec.read_only)
    if spec.packed:
        device.offer_packed_ring()
    return device


# --- transports ------------------------------------------------------------------------------------

@contextlib.contextmanager
def loopback(spec, tmp_path):
    device = _device(spec)
    t = LoopbackTransport(device, memory_size=4 << 20)
    try:
        yield t
    finally:
        t.close()
        device.close()


@contextlib.contextmanager
def pci_model(spec, tmp_path):
    from pyvirtio.pci import scan_pci
    from pyvirtio.platform.machine import InProcessMachine
    with InProcessMachine(ram_size=4 << 20) as machine:
        machine.add_pci(_device(spec))
        (t,) = scan_pci(machine).transports
        yield t


@contextlib.contextmanager
def mmio_model(spec, tmp_path):
    from pyvirtio.mmio import discover_mmio, parse_kernel_cmdline
    from pyvirtio.platform.machine import InProcessMachine
    with InProcessMachine(ram_size=4 << 20) as machine:
        machine.add_empty_mmio()
        machine.add_mmio(_device(spec))
        (t,) = discover_mmio(machine, parse_kernel_cmdline(machine.kernel_cmdline())).transports
        yield t


def _qemu_args(spec: DeviceSpec, bus: str, legacy: str) -> list[str]:
    suffix = "pci" if bus == "pci" else "device"
    extra = f",disable-legacy={legacy}" if bus == "pci" else ""
    if spec.packed:
        extra += ",packed=on"
    if spec.kind == "rng":
        return ["-device", f"virtio-rng-{suffix}{extra}"]
    if spec.kind == "console":
        return ["-chardev", f"socket,id=c0,path={spec.port_path},server=on,wait=off",
                "-device", f"virtio-serial-{suffix}{extra}", "-device", f"virtserialport,chardev=c0,name={spec.port_name}"]
    return ["-drive", f"if=none,id=d0,file={spec.image},format=raw" + (",readonly=on" if spec.read_only else ""),
            "-device", f"virtio-blk-{suffix}{extra},drive=d0,serial={spec.serial}"]


@contextlib.contextmanager
def _qemu(spec, machine, bus, legacy="on"):
    from pyvirtio.qtest import QemuMachine, qemu_available
    require(qemu_available(), "qemu-system-x86_64")
    with QemuMachine(_qemu_args(spec, bus, legacy), machine=machine, split_only=spec.split_only) as qemu:
        found = qemu.discover()
        assert not found.rejected, found.rejected
        (t,) = found.transports
        yield t


def qemu_pci(spec, tmp_path):
    return _qemu(spec, "q35", "pci", legacy="on")


def qemu_pci_transitional(spec, tmp_path):
    return _qemu(spec, "q35", "pci", legacy="off")


def qemu_mmio(spec, tmp_path):
    return _qemu(spec, "microvm", "mmio")


@contextlib.contextmanager
def vhost_user(spec, tmp_path):
    """pyvirtio's own vhost-user daemon (a thread here), driven through VhostUserTransport."""
    from pyvirtio.bench.peers import InProcessBackend
    from pyvirtio.vhost_user.frontend.transport import VhostUserTransport
    sock = str(tmp_path / f"vu-{spec.kind}.sock")
    device = _device(spec)
    with InProcessBackend(device, sock) as backend:
        if spec.kind == "console":  # its rings are gated by the vhost-user ring state
            from pyvirtio.devices.console import attach
            attach(device, backend.server.endpoints[0])
        t = VhostUserTransport(sock, device_type=device.device_type, memory_size=4 << 20)
        try:
            yield t
        finally:
            t.close()


@contextlib.contextmanager
def vhost_user_qsd(spec, tmp_path):
    """qemu-storage-daemon's vhost-user-blk export (it has no entropy device)."""
    from pyvirtio.bench.peers import QSD, start_qsd, which
    from pyvirtio.spec.ids import DeviceType
    from pyvirtio.vhost_user.frontend.transport import VhostUserTransport
    if spec.kind != "blk":
        pytest.skip("qemu-storage-daemon exports block devices only")
    require(which(QSD) is not None, "qemu-storage-daemon")
    sock = str(tmp_path / "qsd.sock")
    spec.serial = "vhost_user_blk"  # qemu-storage-daemon's fixed serial (it has no option for it)
    with start_qsd(sock, spec.image, writable=not spec.read_only):
        t = VhostUserTransport(sock, device_type=DeviceType.BLOCK, memory_size=4 << 20)
        try:
            yield t
        finally:
            t.close()


@contextlib.contextmanager
def _virtio_msg(spec, tmp_path, binding):
    """pyvirtio's device on a virtio-msg bus: the socket binding (memfds over a UNIX socket) or
    the in-process queue binding, driven through VirtioMsgTransport."""
    from pyvirtio.virtio_msg.local import device_transport
    device = _device(spec)
    try:
        with device_transport(device, binding, str(tmp_path / f"vmsg-{spec.kind}.sock"),
                              memory_size=4 << 20, split_only=spec.split_only) as t:
            yield t
    finally:
        device.close()


def virtio_msg(spec, tmp_path):
    return _virtio_msg(spec, tmp_path, "socket")


def virtio_msg_queue(spec, tmp_path):
    return _virtio_msg(spec, tmp_path, "queue")


def packed(factory):
    """The same transport with a device that offers packed rings (QEMU's: ``packed=on``).  Every
    test of the column fails if the device does not offer VIRTIO_F_RING_PACKED (our drivers take
    it whenever it is offered; test_ring_layout_is_the_one_the_column_names checks they did)."""
    @contextlib.contextmanager
    def with_packed(spec, tmp_path):
        from pyvirtio.spec.features import Feature
        spec.packed = True
        with factory(spec, tmp_path) as t:
            assert t.get_device_features() >> Feature.RING_PACKED & 1, "the device does not offer packed rings"
            yield t
    return with_packed


def split_only(factory):
    """A device that offers packed rings behind a transport told to hide them (``split_only``)."""
    def hiding_packed(spec, tmp_path):
        spec.packed = spec.split_only = True
        return factory(spec, tmp_path)
    return hiding_packed


#: name -> factory.  One line per transport.
TRANSPORTS = {
    "loopback": loopback,
    "vhost-user": vhost_user,
    "vhost-user-qsd": vhost_user_qsd,
    "pci-model": pci_model,
    "mmio-model": mmio_model,
    "qemu-pci": qemu_pci,
    "qemu-pci-transitional": qemu_pci_transitional,
    "qemu-mmio": qemu_mmio,
    "loopback-packed": packed(loopback),
    "vhost-user-packed": packed(vhost_user),
    "pci-model-packed": packed(pci_model),
    "mmio-model-packed": packed(mmio_model),
    "qemu-pci-packed": packed(qemu_pci),
    "qemu-pci-transitional-packed": packed(qemu_pci_transitional),
    "qemu-mmio-packed": packed(qemu_mmio),
    "qemu-pci-split-only": split_only(qemu_pci),
    "virtio-msg": virtio_msg,
    "virtio-msg-queue": virtio_msg_queue,
    "virtio-msg-packed": packed(virtio_msg),
}

QEMU = {"qemu-pci", "qemu-pci-transitional", "qemu-mmio", "vhost-user-qsd", "qemu-pci-packed",
        "qemu-pci-transitional-packed", "qemu-mmio-packed", "qemu-pci-split-only"}
#: Columns whose transport carries VIRTIO_F_NOTIFICATION_DATA and whose device offers it
#: (pyvirtio's PCI and MMIO models; QEMU 7.2's devices do not offer it).
NOTIFICATION_DATA = {"pci-model", "mmio-model", "pci-model-packed", "mmio-model-packed",
                     "virtio-msg", "virtio-msg-queue", "virtio-msg-packed"}


def _marks(name):
    return [pytest.mark.peer] if name in QEMU else []


@pytest.fixture(params=[pytest.param(n, marks=_marks(n)) for n in TRANSPORTS])
def transport_name(request):
    return request.param


@pytest.fixture
def open_transport(transport_name, tmp_path):
    """``open_transport(kind)`` -> a DriverTransport to a fresh device of that kind."""
    stack = contextlib.ExitStack()

    def _open(kind: str):
        spec = DeviceSpec(kind)
        if kind == "blk":
            spec.image = str(tmp_path / "disk.img")
            spec.sectors = 2048
            with open(spec.image, "wb") as f:
                f.truncate(spec.sectors * 512)
        return stack.enter_context(TRANSPORTS[transport_name](spec, tmp_path)), spec

    with stack:
        yield _open


# --- the suite -----------------------------------------------------------------------------------

def test_ring_layout_is_the_one_the_column_names(open_transport, transport_name):
    """A "-packed" column must really run packed rings (a device that does not offer them would
    silently fall back to split); every other column runs split rings."""
    from pyvirtio.spec.features import Feature
    for kind in ("rng", "blk"):
        t, _ = open_transport(kind)
        drv = (RngDriver if kind == "rng" else BlkDriver).probe(t)
        assert drv.has_feature(Feature.RING_PACKED) == transport_name.endswith("-packed"), kind
        assert all(getattr(q.vq, "packed", False) == transport_name.endswith("-packed")
                   for q in drv.queues)
        drv.remove()
        if transport_name.endswith("-split-only"):  # the device does offer packed rings
            t.split_only = False
            assert t.get_device_features() >> Feature.RING_PACKED & 1, kind
            t.split_only = True


def test_notification_data_where_the_transport_carries_it(open_transport, transport_name):
    """Our PCI and MMIO models offer VIRTIO_F_NOTIFICATION_DATA and our drivers take it there,
    with split and packed rings alike; nowhere else is it negotiated."""
    from pyvirtio.spec.features import Feature
    t, _ = open_transport("blk")
    drv = BlkDriver.probe(t)
    expected = transport_name in NOTIFICATION_DATA
    assert drv.has_feature(Feature.NOTIFICATION_DATA) == expected
    assert all(q.notification_data == expected for q in drv.queues)
    drv.write(3, b"\x5a" * 1024)  # kicks carry the position where negotiated
    assert drv.read(3, 1024) == b"\x5a" * 1024
    drv.remove()


def test_bus_binds_each_driver_by_its_id(open_transport):
    rng_t, _ = open_transport("rng")
    blk_t, _ = open_transport("blk")
    bus = Bus(drivers=ALL_DRIVERS)
    bus.extend([rng_t, blk_t])
    bindings = bus.probe()
    assert [b.type_name for b in bindings] == ["entropy", "block"]
    assert all(b.error is None for b in bindings)
    assert isinstance(bus.find(4)[0], RngDriver) and isinstance(bus.find(2)[0], BlkDriver)
    for b in bindings:
        b.driver.remove()


@pytest.mark.parametrize("n", [1, 64, 5000])
def test_rng_reads_exactly_what_was_asked(open_transport, n):
    t, _ = open_transport("rng")
    drv = RngDriver.probe(t)
    data = drv.read(n)
    assert len(data) == n
    if n >= 64:
        assert data != bytes(n) and drv.read(n) != data
    drv.remove()


def test_blk_identity_and_config(open_transport):
    t, spec = open_transport("blk")
    drv = BlkDriver.probe(t)
    assert drv.capacity == spec.sectors
    assert drv.block_size == 512
    assert drv.get_id() == spec.serial
    before = drv.read_config(0, 8)
    assert drv.read_config(0, 8) == before  # a stable generation settles at once
    drv.remove()


def test_blk_write_flush_read(open_transport):
    t, spec = open_transport("blk")
    drv = BlkDriver.probe(t)
    payload = bytes(range(256)) * 32  # 8 KiB
    drv.write(100, payload)
    drv.flush()
    assert drv.read(100, len(payload)) == payload
    assert drv.read(0, 512) == bytes(512)
    drv.remove()
    with open(spec.image, "rb") as f:
        f.seek(100 * 512)
        assert f.read(len(payload)) == payload  # it reached the image


def test_blk_many_requests_in_flight(open_transport):
    t, _ = open_transport("blk")
    drv = BlkDriver.probe(t)
    writes = [drv.submit_write(i * 16, bytes([i + 1]) * 4096) for i in range(24)]
    for w in writes:
        drv.wait(w)
    drv.flush()
    reads = [drv.submit_read(i * 16, 4096) for i in range(24)]
    assert [drv.wait(r) for r in reads] == [bytes([i + 1]) * 4096 for i in range(24)]
    drv.remove()


def test_blk_request_past_the_end_fails_with_ioerr(open_transport):
    t, spec = open_transport("blk")
    drv = BlkDriver.probe(t)
    with pytest.raises(RequestError) as err:
        drv.read(spec.sectors, 512)
    assert err.value.status == BlkStatus.IOERR
    assert drv.read(spec.sectors - 1, 512) == bytes(512)  # the queue goes on
    drv.remove()


def test_driver_can_unbind_and_bind_again(open_transport):
    t, _ = open_transport("blk")
    drv = BlkDriver.probe(t)
    drv.write(7, b"\xa5" * 512)
    drv.remove()
    again = BlkDriver.probe(t)
    assert again.read(7, 512) == b"\xa5" * 512
    again.remove()
