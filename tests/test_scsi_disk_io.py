"""Disk units on image files through the block device's I/O engine (devices.scsi.disk_io): many
commands in flight, completions as the kernel ends them, FUA/write-through, a failing read as
MEDIUM ERROR, and nothing left in flight when a TMF is answered, a unit unplugged or the device
reset — over loopback, with io_uring (when the kernel allows it) and the thread pool."""

import os
import struct

import pytest

from pyvirtio.aio import io_uring_unavailable_reason
from pyvirtio.devices.scsi import DiskUnit, ScsiDevice
from pyvirtio.devices.scsi.media import ImageMedium
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec import scsi as spec
from pyvirtio.spec import scsi_cmd as sc
from test_scsi_hba import RawScsi, L

O = sc.Opcode
R = spec.ScsiResponse
MiB = 1 << 20


def _modes():
    modes = ["threads"]
    if io_uring_unavailable_reason() is None:
        modes.append("io_uring")
    return modes


@pytest.fixture(params=_modes())
def rig(request, tmp_path):
    path = tmp_path / "disk.img"
    data = os.urandom(4 * MiB)
    path.write_bytes(data)
    dev = ScsiDevice()
    unit = DiskUnit(ImageMedium(str(path)), serial="ASYNC", aio=request.param)
    dev.add_unit(0, 0, unit)
    t = LoopbackTransport(dev, memory_size=32 * MiB)
    drv = RawScsi.probe(t)
    drv.cmd(L(0), [O.TEST_UNIT_READY])
    yield dev, drv, unit, path, data
    t.close()
    dev.close()


def read10(lba, blocks):
    return [O.READ_10, 0, *lba.to_bytes(4, "big"), 0, *blocks.to_bytes(2, "big"), 0]


def _head(cdb, tag=1):
    return spec.SCSI_REQ_CMD_HEAD.pack(L(0), tag, 0, 0, 0) + bytes(cdb).ljust(32, b"\0")


def test_the_unit_defers_to_the_engine_and_data_is_right(rig):
    dev, drv, unit, _, data = rig
    assert unit.defer
    response, status, _, residual, got = drv.cmd(L(0), read10(16, 64), in_len=64 * 512 + 100)
    assert (response, status, residual) == (R.OK, 0, 100) and got[:64 * 512] == data[16 * 512:80 * 512]


def test_many_reads_and_writes_in_flight(rig):
    dev, drv, unit, path, data = rig
    q = drv.queues[2]
    pend = []
    for i in range(24):
        if i % 3 == 0:
            cdb = [O.WRITE_10, 0x08 if i % 2 else 0, *(2000 + i * 8).to_bytes(4, "big"), 0, 0, 8, 0]
            pend.append((i, q.submit([_head(cdb, i), bytes([i]) * 4096], [108], kick=False)))
        else:
            pend.append((i, q.submit([_head(read10(i * 64, 64), i)], [108, 64 * 512], kick=False)))
    q.kick()
    for i, p in pend:
        q.wait(p, 10)
        raw = q.read_in(p)
        assert RESP_OK(raw), i
        if i % 3:
            assert raw[108:108 + 64 * 512] == data[i * 64 * 512:(i + 1) * 64 * 512]
        q.release(p)
    on_disk = path.read_bytes()
    for i in range(0, 24, 3):
        assert on_disk[(2000 + i * 8) * 512:(2008 + i * 8) * 512] == bytes([i]) * 4096
    assert dev.deferred.pending == {}


def RESP_OK(raw):
    _, _, _, status, response = spec.SCSI_RESP_CMD_HEAD.unpack_from(raw)
    return status == 0 and response == R.OK


def test_write_through_uses_dsync_and_fua(rig):
    dev, drv, unit, path, _ = rig
    unit.writeback = False
    response, status, *_ = drv.cmd(L(0), [O.WRITE_10, 0, 0, 0, 0, 4, 0, 0, 1, 0], data_out=b"z" * 512)
    assert (response, status) == (R.OK, 0)
    assert path.read_bytes()[2048:2560] == b"z" * 512


def test_a_read_the_host_cannot_do_is_a_medium_error(rig):
    dev, drv, unit, path, _ = rig
    os.truncate(path, 4096)  # the image shrinks under the device
    response, status, sense, residual, _ = drv.cmd(L(0), read10(1000, 8), in_len=4096)
    assert (response, status) == (R.OK, 2)
    assert sense == bytes((0x70, 0, 3, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 0))
    assert residual == 4096
    assert drv.cmd(L(0), read10(0, 1), in_len=512)[1] == 0  # and the next command works


def test_tmf_unplug_and_reset_wait_for_what_is_in_flight(rig):
    dev, drv, unit, _, data = rig
    q = drv.queues[2]
    pend = [q.submit([_head(read10(i * 256, 256), i)], [108, 256 * 512], kick=False) for i in range(8)]
    q.kick()
    assert drv.tmf(spec.ScsiTmf.ABORT_TASK_SET, L(0)) == R.FUNCTION_COMPLETE
    assert dev.deferred.pending == {}  # every command ended before the TMF was answered
    for i, p in enumerate(pend):
        q.wait(p, 10)
        assert q.read_in(p)[108:108 + 512] == data[i * 256 * 512:i * 256 * 512 + 512]
        q.release(p)
    pend = [q.submit([_head(read10(i * 256, 256), i)], [108, 256 * 512], kick=False) for i in range(4)]
    q.kick()
    dev.detach(0, 0).close()
    assert dev.deferred.pending == {} and not dev.deferred.ios
    for p in pend:
        q.wait(p, 10)
        q.release(p)


def test_aio_off_and_memory_media_stay_synchronous(tmp_path):
    path = tmp_path / "d.img"
    path.write_bytes(bytes(8192))
    dev = ScsiDevice()
    unit = DiskUnit(ImageMedium(str(path)), aio="off")
    dev.add_unit(0, 0, unit)
    assert not unit.defer
    with pytest.raises(ValueError):
        DiskUnit(ImageMedium(str(tmp_path / "d.img"), locking=False), aio="fast")
    dev.close()
