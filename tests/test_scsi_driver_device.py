"""The virtio-scsi driver against pyvirtio's own device over every in-process transport: loopback,
the PCI and MMIO models, the vhost-user daemon (in a thread, through our vhost-user front-end),
split and packed rings.  Identity, data, many commands in flight over two request queues, task
management; and the events the device sends: hot-plug, unplug, parameter change, and a media
change reported through asynchronous notification (AN subscribe)."""

from __future__ import annotations

import contextlib

import pytest

from pyvirtio.devices.scsi import CdromUnit, DiskUnit, ScsiDevice
from pyvirtio.devices.scsi.media import MemoryMedium
from pyvirtio.drivers.scsi import ScsiDriver
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec.features import Feature
from pyvirtio.spec.scsi import ScsiAsyncEvent, ScsiEventType, ScsiResponse
from pyvirtio.spec.scsi_cmd import AdditionalSense, SenseKey

DISK = bytes(range(256)) * 4096  # 1 MiB
ISO = b"".join(i.to_bytes(4, "big") * 512 for i in range(64))  # 64 blocks of 2048


def make_device(packed: bool = False) -> ScsiDevice:
    device = ScsiDevice(request_queues=2)
    device.add_unit(0, 0, DiskUnit(MemoryMedium(data=DISK), serial="DRV-DISK"))
    device.add_unit(1, 0, CdromUnit(MemoryMedium(data=ISO, read_only=True)))
    if packed:
        device.offer_packed_ring()
    return device


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
    from pyvirtio.bench.peers import InProcessBackend
    from pyvirtio.vhost_user.frontend.transport import VhostUserTransport
    sock = str(tmp_path / "scsi.sock")
    with InProcessBackend(device, sock):
        t = VhostUserTransport(sock, device_type=device.device_type, memory_size=8 << 20)
        try:
            yield t
        finally:
            t.close()


TRANSPORTS = {"loopback": (loopback, False), "pci-model": (pci_model, False), "mmio-model": (mmio_model, False),
              "vhost-user": (vhost_user, False), "loopback-packed": (loopback, True),
              "vhost-user-packed": (vhost_user, True)}


@pytest.fixture(params=sorted(TRANSPORTS))
def rig(request, tmp_path):
    factory, packed = TRANSPORTS[request.param]
    device = make_device(packed)
    with factory(device, tmp_path) as t:
        seen = []
        drv = ScsiDriver.probe(t, on_event=seen.append)
        assert drv.has_feature(Feature.RING_PACKED) == packed
        try:
            yield device, drv, seen
        finally:
            drv.remove()


def ready(drv, target):
    first = drv.lun(target).test_unit_ready()
    assert first.sense.key == SenseKey.UNIT_ATTENTION  # power on
    assert drv.lun(target).test_unit_ready().ok


def test_identity_data_and_many_in_flight(rig):
    _, drv, _ = rig
    ready(drv, 0)
    hd = drv.lun(0)
    inq = hd.inquiry()
    assert (inq.vendor, inq.device_type, hd.serial()) == ("PYVIRTIO", 0, "DRV-DISK")
    assert tuple(hd.read_capacity16()) == (len(DISK) // 512, 512)
    assert hd.read(5, 3) == DISK[5 * 512:8 * 512]
    assert hd.read16(len(DISK) // 512 - 2, 2) == DISK[-1024:]
    write16 = lambda lba: bytes((0x8A, 0)) + lba.to_bytes(8, "big") + (1).to_bytes(4, "big") + bytes(2)  # noqa: E731
    blocks = {lba: bytes([lba]) * 512 for lba in range(0, 120, 4)}
    writes = [drv.submit(0, 0, write16(lba), data_out=d) for lba, d in blocks.items()]
    assert {w.queue.index for w in writes} == {2, 3}
    assert all(drv.wait(w).ok for w in writes)
    reads = [(lba, drv.submit(0, 0, bytes((0x88, 0)) + lba.to_bytes(8, "big") + (1).to_bytes(4, "big") + bytes(2),
                              data_in_len=512)) for lba in blocks]
    assert all(drv.wait(r).check().data == blocks[lba] for lba, r in reads)
    ready(drv, 1)
    assert drv.lun(1).read(3, 1) == ISO[3 * 2048:4 * 2048]  # the block size asked for first
    cd = drv.lun(1)
    assert tuple(cd.read_capacity10()) == (64, 2048)
    assert cd.read10(10, 2) == ISO[10 * 2048:12 * 2048]
    assert [(e.track, e.lba) for e in cd.read_toc()] == [(1, 0), (0xAA, 64)]


def test_failures_and_task_management(rig):
    _, drv, _ = rig
    ready(drv, 0)
    bad = drv.execute(0, 0, bytes((0xFF, 0, 0, 0, 0, 0)))
    assert bad.sense.condition == AdditionalSense.INVALID_COMMAND_OPERATION_CODE
    assert drv.execute(9, 0, bytes(6)).response == ScsiResponse.BAD_TARGET
    assert drv.reset_lun(0, 0) == ScsiResponse.FUNCTION_COMPLETE
    assert drv.lun(0).test_unit_ready().sense.key == SenseKey.UNIT_ATTENTION
    assert drv.task_management(0, 0, 0, tag=999) == ScsiResponse.FUNCTION_COMPLETE  # ABORT TASK, none such


def test_hotplug_unplug_param_change_and_media_change_events(rig):
    device, drv, seen = rig
    ready(drv, 1)
    actual, response = drv.async_notification(1, 0, ScsiAsyncEvent.MEDIA_CHANGE, subscribe=True)
    assert response == ScsiResponse.OK and actual & ScsiAsyncEvent.MEDIA_CHANGE
    device.attach(3, 0, DiskUnit(MemoryMedium(data=bytes([7]) * 65536), serial="HOT"))
    plugged = drv.wait_event(lambda e: e.hotplugged, timeout=10)
    assert (plugged.target, plugged.lun) == (3, 0)
    ready(drv, 3)
    assert drv.lun(3).read(0, 1) == bytes([7]) * 512
    device.param_change(0, 0, AdditionalSense.CAPACITY_DATA_HAS_CHANGED)
    change = drv.wait_event(lambda e: e.event == ScsiEventType.PARAM_CHANGE, timeout=10)
    assert (change.target, change.asc_ascq) == (0, (0x2A, 0x09))
    device.eject((1, 0))
    notified = drv.wait_event(lambda e: e.event == ScsiEventType.ASYNC_NOTIFY, timeout=10)
    assert (notified.target, notified.reason) == (1, ScsiAsyncEvent.MEDIA_CHANGE)
    assert drv.lun(1).test_unit_ready().sense.asc == AdditionalSense.MEDIUM_NOT_PRESENT >> 8
    device.detach(3, 0).close()
    removed = drv.wait_event(lambda e: e.unplugged, timeout=10)
    assert (removed.target, removed.lun) == (3, 0)
    assert drv.execute(3, 0, bytes(6)).response == ScsiResponse.BAD_TARGET
    # hot-plug, PARAM_CHANGE 2Ah/09h, ASYNC_NOTIFY and PARAM_CHANGE 28h/00h of the eject, unplug
    assert [e.event for e in seen] == [1, 3, 2, 3, 1] and drv.events_missed == 0


def test_scan_finds_every_lun_of_every_target(tmp_path):
    device = make_device()
    device.add_unit(0, 2, DiskUnit(MemoryMedium(65536), serial="LUN2"))
    device.add_unit(5, 0, CdromUnit(None))
    with loopback(device, tmp_path) as t:
        drv = ScsiDriver.probe(t)
        found = [(t_, lun, inq.device_type) for t_, lun, inq in drv.scan(range(8))]
        drv.remove()
    assert found == [(0, 0, 0), (0, 2, 0), (1, 0, 5), (5, 0, 5)]


def test_more_commands_than_the_rings_hold(tmp_path):
    """600 reads submitted before any is waited for, over two 128-entry request queues: submit
    waits for room as the device completes them; every result comes back right."""
    with loopback(make_device(), tmp_path) as t:
        drv = ScsiDriver.probe(t)
        ready(drv, 0)
        cdb = lambda lba: bytes((0x28, 0)) + lba.to_bytes(4, "big") + bytes((0, 0, 1, 0))  # noqa: E731
        requests = [(lba, drv.submit(0, 0, cdb(lba), data_in_len=512)) for lba in range(600)]
        assert all(drv.wait(r).check().data == DISK[lba * 512:(lba + 1) * 512] for lba, r in requests)
        drv.remove()
