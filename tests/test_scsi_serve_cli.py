"""``pyvirtio serve scsi``'s unit specs and numbering, and the ``ctl`` words of the SCSI control
commands (in-process: no daemon)."""

import argparse

import pytest

from pyvirtio.commands.serve_scsi import build_device, parse_unit_spec
from pyvirtio.control.scsi import parse_unit, scsi_request
from pyvirtio.devices.scsi import CdromUnit, DiskUnit
from pyvirtio.errors import CliUsageError, UsageError


def args(disk=(), cdrom=(), passthrough=(), queues=1):
    return argparse.Namespace(disk=list(disk), cdrom=list(cdrom), passthrough=list(passthrough),
                              request_queues=queues)


@pytest.fixture
def images(tmp_path):
    paths = []
    for name in ("a", "b", "c"):
        p = tmp_path / f"{name}.img"
        p.write_bytes(bytes(8192))
        paths.append(str(p))
    return paths


def test_unit_specs():
    assert parse_unit_spec("x.img,ro,serial=S1,target=3") == ("x.img", {"ro": "on", "serial": "S1", "target": "3"})
    with pytest.raises(UsageError):
        parse_unit_spec(",ro")
    with pytest.raises(UsageError):
        parse_unit_spec("x.img,,ro")


def test_each_unit_takes_the_next_free_target_unless_placed(images):
    a, b, c = images
    dev = build_device(args(disk=[a, f"{b},target=0,lun=2", f"{c},target=1"], cdrom=["empty"]))
    try:
        placed = {addr: type(u) for addr, u in dev.units()}
        assert placed == {(0, 2): DiskUnit, (1, 0): DiskUnit, (2, 0): DiskUnit, (3, 0): CdromUnit}
        disk = dev.unit(2, 0)
        assert isinstance(disk, DiskUnit) and disk.serial == "pyvirtio-2-0"
    finally:
        dev.close()


def test_disk_options(images):
    dev = build_device(args(disk=[f"{images[0]},ro,serial=XYZ,block-size=4096,wce=off,discard=off"]))
    try:
        unit = dev.unit(0, 0)
        assert isinstance(unit, DiskUnit)
        assert (unit.read_only, unit.serial, unit.block_size, unit.writeback, unit.discard) == \
            (True, "XYZ", 4096, False, False)
    finally:
        dev.close()
    with pytest.raises(CliUsageError):
        build_device(args(disk=[f"{images[0]},wce=maybe"]))
    with pytest.raises(CliUsageError):
        build_device(args(disk=[f"{images[0]},target=x"]))
    with pytest.raises(CliUsageError):
        build_device(args(disk=[f"{images[0]},lun=20000"]))
    with pytest.raises(CliUsageError):
        build_device(args(disk=[images[0]], queues=65))


def test_ctl_words():
    assert scsi_request(["units"]) == ("scsi.units", {})
    assert scsi_request(["eject"]) == ("scsi.eject", {})
    assert scsi_request(["eject", "1:0", "--force"]) == ("scsi.eject", {"unit": "1:0", "force": True})
    assert scsi_request(["insert", "x.iso"]) == ("scsi.insert", {"path": "x.iso"})
    assert scsi_request(["insert", "x.iso", "2"]) == ("scsi.insert", {"path": "x.iso", "unit": "2"})
    assert scsi_request(["attach", "disk", "a.img,ro", "4:1"]) == \
        ("scsi.attach", {"kind": "disk", "path": "a.img,ro", "unit": "4:1"})
    assert scsi_request(["detach", "4:1"]) == ("scsi.detach", {"unit": "4:1"})
    assert scsi_request(["resize", "0:0", "1G"]) == ("scsi.resize", {"unit": "0:0", "size": "1G"})
    assert scsi_request(["resize", "0:0", "4096", "--shrink"]) == \
        ("scsi.resize", {"unit": "0:0", "size": 4096, "shrink": True})
    for bad in ([], ["detach"], ["units", "x"], ["attach", "disk"], ["frobnicate"]):
        with pytest.raises(CliUsageError):
            scsi_request(bad)
    assert parse_unit("3:7", "x") == (3, 7) and parse_unit(2, "x") == (2, 0) and parse_unit(None, "x") is None
    with pytest.raises(UsageError):
        parse_unit("a:b", "x")
