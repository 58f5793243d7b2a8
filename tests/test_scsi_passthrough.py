"""SCSI passthrough (``--passthrough=/dev/sgN``) over the SG_IO ABI.

This machine has no ``/dev/sg*`` and no way to make one (its kernel has no SCSI subsystem, so
no scsi_debug), so the real-device test skips with that reason (it runs where one exists: an
INQUIRY, read-only); every other test runs the
passthrough unit's whole SG_IO path — ``struct sg_io_hdr`` built with real pointers to the CDB,
data and sense buffers — against :class:`~pyvirtio.devices.scsi.sg_io.UnitResponder`, a stand-in
for the kernel's sg driver that answers through the same header with one of our emulated units.
"""

import ctypes
import glob
import os
import shutil
import subprocess

import pytest

from pyvirtio.devices.scsi import CdromUnit, DiskUnit, PassthroughUnit, ScsiDevice
from pyvirtio.devices.scsi.media import MemoryMedium
from pyvirtio.devices.scsi.passthrough import allow_list
from pyvirtio.devices.scsi.sg_io import SgIoHdr, UnitResponder
from pyvirtio.devices.scsi.task import Task
from pyvirtio.spec import scsi_cmd as sc
from pyvirtio.spec.scsi import ScsiResponse

O = sc.Opcode


def run(unit, cdb, in_len=0, out=b""):
    data_in = bytearray(in_len)
    task = Task(cdb=bytes(cdb).ljust(32, b"\0"), data_in=[memoryview(data_in)] if in_len else [],
                data_out=[memoryview(bytearray(out))] if out else [])
    unit.execute(task)
    task.data = bytes(data_in[:task.transferred])
    return task


def passthrough(unit, **kw):
    responder = UnitResponder(unit, **{k: kw.pop(k) for k in ("delay", "fail") if k in kw})
    pt = PassthroughUnit("/dev/sg-standin", sg_io=responder, **kw)
    return pt, responder


@pytest.fixture
def disk():
    return DiskUnit(MemoryMedium(data=bytes(range(256)) * 32), serial="HOSTDISK")


def test_sg_io_hdr_layout_matches_the_c_header(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not os.path.exists("/usr/include/scsi/sg.h"):
        pytest.skip("no C compiler or <scsi/sg.h> to compare struct sg_io_hdr with")
    fields = [name for name, _ in SgIoHdr._fields_]
    src = tmp_path / "sg.c"
    src.write_text("#include <stdio.h>\n#include <stddef.h>\n#include <scsi/sg.h>\nint main(void){\n"
                   + "".join(f'printf("%zu\\n", offsetof(sg_io_hdr_t, {f}));\n' for f in fields)
                   + 'printf("%zu\\n", sizeof(sg_io_hdr_t)); return 0; }\n')
    subprocess.run([cc, "-o", str(tmp_path / "sg"), str(src)], check=True)
    out = [int(x) for x in subprocess.run([str(tmp_path / "sg")], capture_output=True, text=True,
                                          check=True).stdout.split()]
    assert out == [getattr(SgIoHdr, f).offset for f in fields] + [ctypes.sizeof(SgIoHdr)]


def test_the_type_is_probed_with_inquiry_and_data_comes_back(disk):
    pt, responder = passthrough(disk)
    assert pt.peripheral_type == 0 and responder.cdbs[0][0] == O.INQUIRY
    t = run(pt, [O.INQUIRY, 1, 0x80, 0, 64, 0], 64)
    assert t.status == 0 and t.data == b"\0\x80\0\x08HOSTDISK"
    assert run(pt, [O.TEST_UNIT_READY]).sense[12] == 0x29  # the device's own unit attention
    t = run(pt, [O.READ_10, 0, 0, 0, 0, 1, 0, 0, 1, 0], 1024)
    assert t.status == 0 and t.transferred == 512 and t.data == (bytes(range(256)) * 2)
    assert responder.cdbs[-1] == bytes((O.READ_10, 0, 0, 0, 0, 1, 0, 0, 1, 0))  # cut to 10 bytes


def test_sense_and_status_pass_through_unchanged(disk):
    pt, _ = passthrough(disk)
    run(pt, [O.TEST_UNIT_READY])
    t = run(pt, [O.READ_10, 0, 0, 0, 1, 0, 0, 0, 1, 0], 512)
    assert t.status == sc.Status.CHECK_CONDITION
    assert t.sense == bytes((0xF0, 0, 5, 0, 0, 1, 0, 10, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0))


def test_read_only_allow_list_keeps_writes_and_dangerous_codes_from_the_device(disk):
    pt, responder = passthrough(disk)
    before = len(responder.cdbs)
    for cdb in ([O.WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], [O.MODE_SELECT_6, 0x10, 0, 0, 12, 0],
                [O.FORMAT_UNIT], [O.WRITE_BUFFER], [O.ATA_PASS_THROUGH_16], [O.SANITIZE],
                [O.UNMAP, 0, 0, 0, 0, 0, 0, 0, 24, 0], [0xC5], [O.PERSISTENT_RESERVE_OUT],
                [O.SECURITY_PROTOCOL_OUT], [O.READ_SUB_CHANNEL]):
        t = run(pt, cdb, 0, bytes(512))
        assert t.status == 2 and t.sense[2] == 5 and t.sense[12:14] == b"\x20\x00", cdb
    assert len(responder.cdbs) == before  # none reached the device
    t = run(pt, [O.SERVICE_ACTION_IN_16, 0x1F] + [0] * 14, 32)
    assert t.sense[12] == 0x24 and len(responder.cdbs) == before
    assert run(pt, [O.SERVICE_ACTION_IN_16, 0x10] + [0] * 8 + [0, 0, 0, 32, 0, 0], 32).status in (0, 2)


def test_writable_disk_allows_writes(disk):
    pt, _ = passthrough(disk, writable=True)
    run(pt, [O.TEST_UNIT_READY])
    t = run(pt, [O.WRITE_10, 0, 0, 0, 0, 2, 0, 0, 1, 0], 0, b"q" * 512)
    assert t.status == 0 and t.transferred == 512 and bytes(disk.medium.data[1024:1536]) == b"q" * 512
    assert O.BLANK not in allow_list(0, True) and O.BLANK in allow_list(5, True)
    # 0x42: READ SUB-CHANNEL (read-only) on a CD, UNMAP (a write) on a disk
    assert 0x42 in allow_list(5, False) and 0x42 not in allow_list(0, False) and 0x42 in allow_list(0, True)
    # a read-only disk may not be stopped or locked; a CD drive's tray is everyday use
    assert O.START_STOP_UNIT not in allow_list(0, False) and O.START_STOP_UNIT in allow_list(0, True)
    assert {O.START_STOP_UNIT, O.PREVENT_ALLOW_MEDIUM_REMOVAL} <= allow_list(5, False)


def test_cdrom_passthrough_gets_the_mmc_commands():
    cd = CdromUnit(MemoryMedium(2048 * 4, read_only=True))
    pt, _ = passthrough(cd)
    assert pt.peripheral_type == 5
    run(pt, [O.TEST_UNIT_READY])
    t = run(pt, [O.GET_CONFIGURATION, 0, 0, 0, 0, 0, 0, 0, 8, 0], 8)
    assert t.status == 0 and t.data[6:8] == b"\0\x08"
    assert run(pt, [O.READ_TOC_PMA_ATIP, 0, 0, 0, 0, 0, 0, 0, 20, 0], 20).status == 0
    assert run(pt, [O.WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], 0, bytes(2048)).sense[12] == 0x20


def test_timeouts_host_failures_and_bidirectional_requests(disk):
    pt, _ = passthrough(disk, delay=0.05, timeout_ms=10)
    assert run(pt, [O.TEST_UNIT_READY]).response == ScsiResponse.ABORTED
    pt, responder = passthrough(disk, peripheral_type=0)
    responder.fail = 19  # ENODEV: the device went away
    assert run(pt, [O.TEST_UNIT_READY]).response == ScsiResponse.TRANSPORT_FAILURE
    responder.fail = None
    t = Task(cdb=bytes((O.READ_10,)) + bytes(9), data_in=[memoryview(bytearray(512))],
             data_out=[memoryview(bytearray(512))])
    pt.execute(t)
    assert t.status == 2 and t.sense[12] == 0x24
    assert pt.stats["host_errors"] == 1


def test_passthrough_on_the_hba_keeps_our_lun_inventory_attentions(disk):
    dev = ScsiDevice()
    pt, _ = passthrough(disk, peripheral_type=0)
    dev.add_unit(0, 0, pt)
    dev.attach(0, 1, DiskUnit(MemoryMedium(4096)))
    t = run(pt, [O.READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512)
    assert t.sense[12:14] == b"\x3f\x0e"
    assert pt.describe()["type"] == "passthrough"


def test_a_real_scsi_generic_device():
    devices = sorted(glob.glob("/dev/sg[0-9]*"))
    if not devices:
        why = ("the host kernel has no SCSI subsystem (no /sys/bus/scsi), so no scsi_debug either"
               if not os.path.exists("/sys/bus/scsi") else "no SCSI device and no scsi_debug loaded")
        pytest.skip(f"no /dev/sg* here: {why}; the SG_IO path runs against UnitResponder above")
    pt = PassthroughUnit(devices[0])
    try:
        t = run(pt, [O.INQUIRY, 0, 0, 0, 36, 0], 36)
        assert t.response == ScsiResponse.OK and t.status == 0 and len(t.data) >= 36
        assert t.data[0] & 0x1F == pt.peripheral_type
    finally:
        pt.close()


def test_the_real_ioctl_path_maps_a_refusing_fd_to_transport_failure(tmp_path):
    """The real ``fcntl.ioctl(fd, SG_IO, hdr)`` call (the header passed as a mutable buffer) on a
    file that is no SCSI device: the kernel says ENOTTY, the guest gets TRANSPORT_FAILURE;
    ``open_sg`` refuses such a file up front."""
    from pyvirtio.devices.scsi.sg_io import open_sg
    path = tmp_path / "not-sg"
    path.write_bytes(bytes(512))
    with pytest.raises(OSError):
        open_sg(str(path))
    fd = os.open(path, os.O_RDONLY)
    pt = PassthroughUnit(str(path), fd=fd, peripheral_type=0)
    try:
        t = run(pt, [O.INQUIRY, 0, 0, 0, 36, 0], 36)
        assert t.response == ScsiResponse.TRANSPORT_FAILURE and pt.stats["host_errors"] == 1
    finally:
        pt.close()
    assert pt.fd == -1
