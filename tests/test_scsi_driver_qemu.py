"""The virtio-scsi driver against QEMU 7.2's own ``virtio-scsi-pci`` / ``virtio-scsi-device`` with
``scsi-hd`` and ``scsi-cd`` over qtest: identity, data, many commands across request queues,
sense data of failing commands, task management, asynchronous notification, and the events QEMU
sends on hot-plug, unplug and resize (QMP ``device_add``/``device_del``/``block_resize``).

Needs qemu-system-x86_64 and xorriso (skipped without them, failed under CI=true).
"""

from __future__ import annotations

import contextlib
import hashlib

import pytest

from pyvirtio.drivers.scsi import ScsiDriver, ScsiCommandError, encode_lun
from pyvirtio.spec.scsi import ScsiResponse, ScsiTmf
from pyvirtio.spec.scsi_cmd import AdditionalSense, PeripheralDeviceType, SenseKey, Status
from pyvirtio.testing.env import require
from pyvirtio.testing.scsi_media import make_disk, make_iso, sample_files, xorriso_available

pytestmark = pytest.mark.peer
DISK_SIZE = 4 << 20
SERIAL = "PYVSCSI0001"


@pytest.fixture
def media(tmp_path):
    require(xorriso_available(), "xorriso")
    disk = tmp_path / "disk.img"
    data = make_disk(disk, DISK_SIZE)
    iso = make_iso(tmp_path / "cd.iso", sample_files())
    return str(disk), data, iso


def scsi_args(disk: str, iso: str, bus: str = "pci", extra: str = "") -> list[str]:
    """QEMU arguments: one virtio-scsi HBA, scsi-hd at target 0, scsi-cd at target 1."""
    hba = "virtio-scsi-pci,disable-legacy=on" if bus == "pci" else "virtio-scsi-device"
    return ["-device", f"{hba},id=scsi0{extra}",
            "-drive", f"if=none,id=hd0,file={disk},format=raw",
            "-device", f"scsi-hd,drive=hd0,bus=scsi0.0,scsi-id=0,lun=0,serial={SERIAL}",
            "-drive", f"if=none,id=cd0,file={iso},format=raw,media=cdrom",
            "-device", "scsi-cd,drive=cd0,bus=scsi0.0,scsi-id=1,lun=0"]


@contextlib.contextmanager
def qemu_scsi(args, machine="q35", qmp=None, **probe):
    from pyvirtio.qtest import QemuMachine, qemu_available
    require(qemu_available(), "qemu-system-x86_64")
    if qmp:
        args = [*args, "-qmp", f"unix:{qmp},server=on,wait=off"]
    with QemuMachine(args, machine=machine) as qemu:
        (t,) = qemu.discover().transports
        drv = ScsiDriver.probe(t, **probe)
        try:
            yield drv
        finally:
            drv.remove()


def settle(drv, target):
    """Clear the power-on UNIT ATTENTION (both QEMU's units and ours report one first)."""
    for _ in range(3):
        if drv.lun(target).test_unit_ready().ok:
            return
    raise AssertionError(f"target {target} never became ready")


def what_the_driver_reads(drv) -> dict:
    """Everything the comparison looks at, read through the driver: identity basics, capacity,
    sampled disk blocks, the CD's TOC and its whole image."""
    settle(drv, 0)
    settle(drv, 1)
    hd, cd = drv.lun(0), drv.lun(1)
    hd_inq, cd_inq = hd.inquiry(), cd.inquiry()
    out = {"hd_type": hd_inq.device_type, "hd_removable": hd_inq.removable,
           "cd_type": cd_inq.device_type, "cd_removable": cd_inq.removable,
           "hd_cap16": tuple(hd.read_capacity16()), "hd_cap10": tuple(hd.read_capacity10()),
           "cd_cap": tuple(cd.read_capacity10()), "toc": [(e.track, e.lba) for e in cd.read_toc()],
           "hd_serial": hd.serial(), "hd_vpd_pages_has_80_83": {0x80, 0x83} <= set(hd.vpd(0))}
    blocks = out["hd_cap16"][0]
    samples = [0, 1, 7, 4096, blocks // 2, blocks - 8]
    out["hd_blocks"] = {lba: hashlib.sha256(hd.read(lba, 8)).hexdigest() for lba in samples}
    cd_blocks = out["cd_cap"][0]
    out["iso_sha256"] = hashlib.sha256(b"".join(cd.read10(lba, min(32, cd_blocks - lba))
                                                for lba in range(0, cd_blocks, 32))).hexdigest()
    return out


def test_scsi_hd_and_scsi_cd_read_as_the_files_hold(media):
    disk, data, iso = media
    with qemu_scsi(scsi_args(disk, iso.path)) as drv:
        got = what_the_driver_reads(drv)
        assert drv.lun(0).inquiry().vendor == "QEMU"
    assert got["hd_type"] == PeripheralDeviceType.DIRECT_ACCESS_BLOCK and not got["hd_removable"]
    assert got["cd_type"] == PeripheralDeviceType.CD_DVD and got["cd_removable"]
    assert got["hd_cap16"] == got["hd_cap10"] == (DISK_SIZE // 512, 512)
    assert got["cd_cap"] == (iso.blocks, 2048)
    assert got["toc"] == [(1, 0), (0xAA, iso.blocks)]  # track 1 at LBA 0, the lead-out
    assert got["hd_serial"] == SERIAL and got["hd_vpd_pages_has_80_83"]
    for lba, digest in got["hd_blocks"].items():
        assert digest == hashlib.sha256(data[lba * 512:(lba + 8) * 512]).hexdigest()
    with open(iso.path, "rb") as f:
        assert got["iso_sha256"] == hashlib.sha256(f.read()).hexdigest()


def test_our_device_reads_what_qemus_reads(media, tmp_path):
    """The Done-when row: our driver reads the same identity basics, capacities, blocks, TOC
    and ISO from QEMU's scsi-hd/scsi-cd (qtest) as from pyvirtio's device (its vhost-user
    daemon, in-process, driven through our vhost-user front-end), over the same two files."""
    from pyvirtio.bench.peers import InProcessBackend
    from pyvirtio.devices.scsi import CdromUnit, DiskUnit, ScsiDevice
    from pyvirtio.devices.scsi.media import ImageMedium
    from pyvirtio.vhost_user.frontend.transport import VhostUserTransport
    disk, _, iso = media
    with qemu_scsi(scsi_args(disk, iso.path)) as drv:
        qemus = what_the_driver_reads(drv)
    device = ScsiDevice(request_queues=2)
    device.add_unit(0, 0, DiskUnit(ImageMedium(disk), serial=SERIAL))
    device.add_unit(1, 0, CdromUnit(ImageMedium(iso.path, read_only=True)))
    sock = str(tmp_path / "scsi.sock")
    with InProcessBackend(device, sock):
        t = VhostUserTransport(sock, device_type=device.device_type, memory_size=8 << 20)
        try:
            drv = ScsiDriver.probe(t)
            ours = what_the_driver_reads(drv)
            assert drv.lun(0).inquiry().vendor == "PYVIRTIO"
            drv.remove()
        finally:
            t.close()
    assert ours == qemus


@pytest.mark.parametrize("machine, bus, extra", [("q35", "pci", ",num_queues=4"),
                                                 ("q35", "pci", ",num_queues=2,packed=on"),
                                                 ("microvm", "mmio", "")])
def test_many_commands_in_flight_across_request_queues(media, machine, bus, extra):
    disk, _, iso = media
    with qemu_scsi(scsi_args(disk, iso.path, bus, extra), machine=machine) as drv:
        settle(drv, 0)
        want = int(extra.split("num_queues=")[1].split(",")[0]) if "num_queues" in extra else 1
        assert len(drv.request_queues) == want
        write16 = lambda lba: bytes((0x8A, 0)) + lba.to_bytes(8, "big") + (1).to_bytes(4, "big") + bytes(2)  # noqa: E731
        read16 = lambda lba: bytes((0x88, 0)) + lba.to_bytes(8, "big") + (1).to_bytes(4, "big") + bytes(2)  # noqa: E731
        blocks = {lba: bytes([lba % 251]) * 512 for lba in range(0, 96, 3)}
        writes = [drv.submit(0, 0, write16(lba), data_out=d, kick=False) for lba, d in blocks.items()]
        for q in drv.request_queues:
            q.kick()
        assert {w.queue.index for w in writes} == {2 + i for i in range(want)}
        assert all(drv.wait(w).ok for w in writes)
        reads = [(lba, drv.submit(0, 0, read16(lba), data_in_len=512)) for lba in blocks]
        for lba, r in reads:
            result = drv.wait(r).check()
            assert result.data == blocks[lba] and result.residual == 0


def test_failing_commands_come_back_with_sense(media):
    disk, _, iso = media
    with qemu_scsi(scsi_args(disk, iso.path)) as drv:
        first = drv.lun(0).test_unit_ready()  # power-on unit attention
        assert first.status == Status.CHECK_CONDITION and first.sense.key == SenseKey.UNIT_ATTENTION
        settle(drv, 0)
        bad = drv.execute(0, 0, bytes((0xFF, 0, 0, 0, 0, 0)))
        assert (bad.status, bad.sense.key, bad.sense.condition) == (
            Status.CHECK_CONDITION, SenseKey.ILLEGAL_REQUEST, AdditionalSense.INVALID_COMMAND_OPERATION_CODE)
        past = drv.execute(0, 0, bytes((0x88, 0)) + (DISK_SIZE // 512).to_bytes(8, "big") + (1).to_bytes(4, "big") + bytes(2),
                           data_in_len=512)
        assert past.sense.key == SenseKey.ILLEGAL_REQUEST
        assert past.sense.condition == AdditionalSense.LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE
        with pytest.raises(ScsiCommandError, match="ILLEGAL_REQUEST"):
            past.check()
        assert drv.execute(9, 0, bytes(6)).response == ScsiResponse.BAD_TARGET
        # a data-in buffer longer than the transfer: the residual says how much was not written
        short = drv.execute(0, 0, bytes((0x12, 0, 0, 0, 36, 0)), data_in_len=100).check()
        assert (len(short.data), short.residual) == (36, 64)
        # a LUN the target does not have
        absent = drv.execute(0, 5, bytes((0x12, 0, 0, 0, 36, 0)), data_in_len=36)
        assert absent.response == ScsiResponse.BAD_TARGET or (absent.data[:1] == b"\x7f")  # qualifier 3, type 0x1f
        # no medium after an eject
        settle(drv, 1)
        drv.lun(1).eject()
        gone = drv.lun(1).test_unit_ready()
        assert gone.sense.key == SenseKey.NOT_READY and gone.sense.asc == AdditionalSense.MEDIUM_NOT_PRESENT >> 8
        media_event = drv.lun(1).media_event()
        assert media_event.door_open and not media_event.media_present


def test_task_management_and_async_notification(media):
    disk, _, iso = media
    with qemu_scsi(scsi_args(disk, iso.path)) as drv:
        settle(drv, 0)
        assert drv.reset_lun(0, 0) == ScsiResponse.FUNCTION_COMPLETE
        after = drv.lun(0).test_unit_ready()  # the reset leaves a unit attention behind
        assert after.sense.key == SenseKey.UNIT_ATTENTION
        assert after.sense.asc == AdditionalSense.POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED >> 8  # 0x29/any
        assert drv.task_management(ScsiTmf.ABORT_TASK, 0, 0, tag=12345) == ScsiResponse.FUNCTION_COMPLETE
        assert drv.task_management(ScsiTmf.ABORT_TASK, 7, 0, tag=1) == ScsiResponse.BAD_TARGET
        actual, response = drv.async_notification(1, 0, 0x10)  # QEMU supports no AN events
        assert (actual, response) == (0, ScsiResponse.OK)


def test_hotplug_unplug_and_resize_events(media, tmp_path):
    from test_input_qemu import Qmp  # the tests' minimal QMP client
    disk, _, iso = media
    extra = tmp_path / "extra.img"
    make_disk(extra, 1 << 20, seed=3)
    qmp_path = str(tmp_path / "qmp.sock")
    seen = []
    with qemu_scsi(scsi_args(disk, iso.path), qmp=qmp_path, on_event=seen.append) as drv:
        assert drv.has_feature(1) and drv.has_feature(2)  # HOTPLUG, CHANGE
        qmp = Qmp(qmp_path)
        try:
            qmp.execute("blockdev-add", driver="raw", **{"node-name": "hd1"},
                        file={"driver": "file", "filename": str(extra)})
            qmp.execute("device_add", driver="scsi-hd", id="hd1", drive="hd1", bus="scsi0.0",
                        **{"scsi-id": 2, "lun": 0})
            plugged = drv.wait_event(lambda e: e.hotplugged, timeout=10)
            assert (plugged.target, plugged.lun) == (2, 0)
            settle(drv, 2)
            assert drv.lun(2).read_capacity16().blocks == (1 << 20) // 512
            qmp.execute("block_resize", device="hd0", size=DISK_SIZE * 2)
            change = drv.wait_event(lambda e: e.event == 3, timeout=10)  # PARAM_CHANGE
            assert (change.target, change.asc_ascq) == (0, (0x2A, 0x09))  # CAPACITY DATA HAS CHANGED
            qmp.execute("device_del", id="hd1")
            removed = drv.wait_event(lambda e: e.unplugged, timeout=10)
            assert (removed.target, removed.lun) == (2, 0)
        finally:
            qmp.close()
        assert drv.execute(2, 0, bytes(6)).response == ScsiResponse.BAD_TARGET
    assert [e.event for e in seen] == [1, 3, 1] and not any(e.missed for e in seen)


def test_lun_field_encoding():
    assert encode_lun(3, 0) == bytes((1, 3, 0x40, 0, 0, 0, 0, 0))
    assert encode_lun(0, 0x1234) == bytes((1, 0, 0x52, 0x34, 0, 0, 0, 0))


def test_scan_and_qtest_probe_find_the_units(media, capsys):
    import argparse
    import json
    from pyvirtio.commands import qtest_probe
    disk, _, iso = media
    with qemu_scsi(scsi_args(disk, iso.path)) as drv:
        units = [(t, lun, inq.device_type, inq.product) for t, lun, inq in drv.scan(range(4))]
    assert units == [(0, 0, 0, "QEMU HARDDISK"), (1, 0, 5, "QEMU CD-ROM")]
    parser = argparse.ArgumentParser()
    qtest_probe.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["qtest-probe", "--json", "--", *scsi_args(disk, iso.path)])
    assert qtest_probe.run(args) == 0
    (row,) = json.loads(capsys.readouterr().out)["devices"]
    assert (row["type"], row["driver"]) == ("scsi", "ScsiDriver")
    assert row["smoke"] == "2 unit(s) on targets 0-7: 0:0 QEMU HARDDISK, 1:0 QEMU CD-ROM"


def test_our_driver_on_qemus_vhost_user_scsi_pci_with_our_backend(media, tmp_path):
    """QEMU's vhost-user-scsi-pci (its virtio-pci function and config; every ring served by
    pyvirtio's device over vhost-user) driven by our driver over qtest: the path a real guest
    takes in tests/guest/test_guest_scsi.py, with the driver in Python."""
    from pyvirtio.bench.peers import InProcessBackend
    from pyvirtio.devices.scsi import CdromUnit, DiskUnit, ScsiDevice
    from pyvirtio.devices.scsi.media import ImageMedium, MemoryMedium
    disk, data, iso = media
    device = ScsiDevice(request_queues=2)
    device.add_unit(0, 0, DiskUnit(ImageMedium(disk), serial=SERIAL))
    device.add_unit(1, 0, CdromUnit(ImageMedium(iso.path, read_only=True)))
    sock = str(tmp_path / "vus.sock")
    with InProcessBackend(device, sock):
        args = ["-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem",
                "-chardev", f"socket,id=vs,path={sock}", "-device", "vhost-user-scsi-pci,chardev=vs,num_queues=2"]
        with qemu_scsi(args) as drv:
            assert len(drv.request_queues) == 2
            assert [(t, lun, inq.product) for t, lun, inq in drv.scan(range(4))] == [
                (0, 0, "PYVIRTIO DISK"), (1, 0, "PYVIRTIO CD-ROM")]
            settle(drv, 0)
            assert drv.lun(0).read(100, 16) == data[100 * 512:116 * 512]
            drv.lun(0).write(3, b"w" * 1024)
            assert drv.lun(0).read(3, 2) == b"w" * 1024
            device.attach(2, 0, DiskUnit(MemoryMedium(1 << 20), serial="HOT"))
            plugged = drv.wait_event(lambda e: e.hotplugged, timeout=10)
            assert (plugged.target, plugged.lun) == (2, 0)
