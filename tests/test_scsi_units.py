"""The emulated logical units as sans-I/O cores: every command of the disk (SBC-3) and CD-ROM
(MMC-6) units, with the sense data bytes checked exactly."""

import struct

import pytest

from pyvirtio.devices.scsi import CdromUnit, DiskUnit
from pyvirtio.devices.scsi.cdrom import MediumLocked, lba_to_msf
from pyvirtio.devices.scsi.media import MemoryMedium
from pyvirtio.devices.scsi.sense import build_sense
from pyvirtio.devices.scsi.task import Task
from pyvirtio.spec import scsi_cmd as sc
from pyvirtio.spec.scsi import ScsiResponse

O = sc.Opcode
GOOD, CHECK = sc.Status.GOOD, sc.Status.CHECK_CONDITION
BLOCKS = 2048  # 1 MiB of 512-byte blocks


def run(unit, cdb, in_len=0, out=b""):
    data_in = bytearray(in_len)
    data_out = bytearray(out)
    task = Task(cdb=bytes(cdb).ljust(16, b"\0") if len(cdb) < 16 else bytes(cdb),
                data_in=[memoryview(data_in)] if in_len else [],
                data_out=[memoryview(data_out)] if out else [])
    unit.execute(task)
    task.data = bytes(data_in[:task.transferred])
    return task


def fixed(key, code, *, field=None, bit=None, in_cdb=True, info=None):
    """Fixed-format sense built by hand from SPC-4 4.5.3 (independent of build_sense)."""
    out = bytearray(18)
    out[0] = 0x70 | (0x80 if info is not None else 0)
    if info is not None:
        out[3:7] = info.to_bytes(4, "big")
    out[2] = key
    out[7] = 10
    out[12], out[13] = code >> 8, code & 0xFF
    if field is not None:
        out[15] = 0x80 | (0x40 if in_cdb else 0) | ((0x08 | bit) if bit is not None else 0)
        out[16:18] = field.to_bytes(2, "big")
    return bytes(out)


def ready(unit):
    """Clear the power-on unit attention the way an initiator does (TEST UNIT READY once)."""
    t = run(unit, [O.TEST_UNIT_READY, 0, 0, 0, 0, 0])
    assert t.status == CHECK and t.sense == fixed(sc.SenseKey.UNIT_ATTENTION, 0x2900)
    return unit


@pytest.fixture
def disk():
    data = bytes(range(256)) * (BLOCKS * 2)
    return ready(DiskUnit(MemoryMedium(data=data), serial="SER123"))


@pytest.fixture
def cd():
    iso = bytes(i % 251 for i in range(2048 * 300))
    return ready(CdromUnit(MemoryMedium(data=iso, read_only=True), serial="CD9"))


# --- sense data -------------------------------------------------------------------------------


def test_sense_builders_match_spc4_fixed_and_descriptor_format():
    assert build_sense(5, 0x2400, field=7, bit=3) == fixed(5, 0x2400, field=7, bit=3)
    assert build_sense(5, 0x2600, field=2, in_cdb=False) == fixed(5, 0x2600, field=2, in_cdb=False)
    assert build_sense(5, 0x2100, information=99) == fixed(5, 0x2100, info=99)
    desc = build_sense(5, 0x2400, field=1, descriptor=True)
    assert desc[:8] == bytes((0x72, 5, 0x24, 0, 0, 0, 0, 8))
    assert desc[8:] == bytes((0x02, 0x06, 0, 0, 0xC0, 0, 1, 0))


# --- common: unit attention, INQUIRY, REQUEST SENSE, unknown opcodes ---------------------------


def test_power_on_unit_attention_spares_inquiry_and_is_reported_once():
    unit = DiskUnit(MemoryMedium(4096))
    assert run(unit, [O.INQUIRY, 0, 0, 0, 36, 0], 36).status == GOOD
    t = run(unit, [O.READ_CAPACITY_10] + [0] * 9, 8)
    assert t.status == CHECK and t.sense == fixed(6, 0x2900)
    assert run(unit, [O.READ_CAPACITY_10] + [0] * 9, 8).status == GOOD


def test_request_sense_returns_and_clears_the_pending_attention():
    unit = DiskUnit(MemoryMedium(4096))
    t = run(unit, [O.REQUEST_SENSE, 0, 0, 0, 18, 0], 18)
    assert t.status == GOOD and t.data == fixed(6, 0x2900)
    t = run(unit, [O.REQUEST_SENSE, 0, 0, 0, 18, 0], 18)
    assert t.data == fixed(0, 0)
    t = run(unit, [O.REQUEST_SENSE, 1, 0, 0, 8, 0], 8)  # DESC
    assert t.data == bytes((0x72, 0, 0, 0, 0, 0, 0, 0))


def test_standard_inquiry(disk):
    t = run(disk, [O.INQUIRY, 0, 0, 0, 96, 0], 96)
    d = t.data
    assert t.status == GOOD and len(d) == 96
    assert d[0] == 0 and d[1] == 0 and d[2] == 6 and d[3] == 0x12 and d[4] == 91 and d[7] == 0x02
    assert d[8:16] == b"PYVIRTIO" and d[16:32] == b"PYVIRTIO DISK   " and d[32:36] == b"2.0 "
    assert struct.unpack(">3H", d[58:64]) == (0x00A0, 0x0460, 0x04C0)
    assert run(disk, [O.INQUIRY, 0, 0, 0, 5, 0], 5).data == d[:5]  # short allocation truncates


def test_inquiry_vpd_pages(disk):
    assert run(disk, [O.INQUIRY, 1, 0, 0, 255, 0], 255).data == bytes((0, 0, 0, 6, 0, 0x80, 0x83, 0xB0, 0xB1, 0xB2))
    assert run(disk, [O.INQUIRY, 1, 0x80, 0, 255, 0], 255).data == b"\0\x80\0\x06SER123"
    page = run(disk, [O.INQUIRY, 1, 0x83, 0, 255, 0], 255).data
    assert page[1] == 0x83 and page[4:8] == bytes((2, 1, 0, 14)) and page[8:22] == b"PYVIRTIOSER123"
    assert page[22:26] == bytes((1, 3, 0, 8)) and page[26] >> 4 == 3  # NAA locally assigned
    limits = run(disk, [O.INQUIRY, 1, 0xB0, 0, 255, 0], 255).data
    assert len(limits) == 64 and limits[3] == 0x3C and limits[4] == 1  # WSNZ
    assert struct.unpack(">I", limits[8:12])[0] == (8 << 20) // 512
    assert struct.unpack(">II", limits[20:28]) == (0x3FFFFF, 64)
    assert struct.unpack(">Q", limits[36:44])[0] == 0x3FFFFF
    chars = run(disk, [O.INQUIRY, 1, 0xB1, 0, 255, 0], 255).data
    assert chars[4:6] == b"\0\x01"
    assert run(disk, [O.INQUIRY, 1, 0xB2, 0, 255, 0], 255).data == bytes((0, 0xB2, 0, 4, 0, 0xE4, 2, 0))


def test_inquiry_errors(disk):
    assert run(disk, [O.INQUIRY, 1, 0x89, 0, 255, 0], 255).sense == fixed(5, 0x2400, field=2)
    assert run(disk, [O.INQUIRY, 0, 0x80, 0, 255, 0], 255).sense == fixed(5, 0x2400, field=2)
    assert run(disk, [O.INQUIRY, 2, 0, 0, 255, 0], 255).sense == fixed(5, 0x2400, field=1)


def test_unknown_and_unimplemented_opcodes(disk):
    for op in (0x02, 0x7F, 0xC0, 0xFF, O.FORMAT_UNIT, O.WRITE_BUFFER, O.GET_CONFIGURATION):
        t = run(disk, [op] + [0] * 15, 64)
        assert t.status == CHECK and t.sense == fixed(5, 0x2000, field=0), hex(op)


def test_a_cdb_shorter_than_its_group_is_an_invalid_field(disk):
    task = Task(cdb=bytes((O.READ_16, 0, 0, 0)))
    disk.execute(task)
    assert task.status == CHECK and task.sense == fixed(5, 0x2400, field=4)


def test_allocation_length_past_the_buffer_is_overrun(disk):
    t = run(disk, [O.INQUIRY, 0, 0, 0, 200, 0], 96)
    assert t.response == ScsiResponse.OVERRUN and t.transferred == 0
    t = run(disk, [O.READ_10, 0, 0, 0, 0, 0, 0, 0, 8, 0], 512)
    assert t.response == ScsiResponse.OVERRUN
    t = run(disk, [O.WRITE_10, 0, 0, 0, 0, 0, 0, 0, 2, 0], 0, b"x" * 512)
    assert t.response == ScsiResponse.OVERRUN


# --- disk: capacity, reads and writes ----------------------------------------------------------


def test_read_capacity_10_and_16(disk):
    assert run(disk, [O.READ_CAPACITY_10] + [0] * 9, 8).data == struct.pack(">II", BLOCKS - 1, 512)
    d = run(disk, [O.SERVICE_ACTION_IN_16, 0x10] + [0] * 8 + [0, 0, 0, 32, 0, 0], 32).data
    assert d == struct.pack(">QIBBH", BLOCKS - 1, 512, 0, 0, 0xC000) + bytes(16)
    t = run(disk, [O.SERVICE_ACTION_IN_16, 0x11] + [0] * 8 + [0, 0, 0, 32, 0, 0], 32)
    assert t.sense == fixed(5, 0x2400, field=1, bit=4)


@pytest.mark.parametrize("op,cdb", [
    (O.READ_6, lambda lba, n: [O.READ_6, (lba >> 16) & 0x1F, (lba >> 8) & 0xFF, lba & 0xFF, n, 0]),
    (O.READ_10, lambda lba, n: [O.READ_10, 0, *lba.to_bytes(4, "big"), 0, *n.to_bytes(2, "big"), 0]),
    (O.READ_12, lambda lba, n: [O.READ_12, 0, *lba.to_bytes(4, "big"), *n.to_bytes(4, "big"), 0, 0]),
    (O.READ_16, lambda lba, n: [O.READ_16, 0, *lba.to_bytes(8, "big"), *n.to_bytes(4, "big"), 0, 0]),
])
def test_reads_of_every_size(disk, op, cdb):
    t = run(disk, cdb(5, 3), 3 * 512)
    assert t.status == GOOD and t.data == disk.medium.data[5 * 512:8 * 512]
    t = run(disk, cdb(BLOCKS - 2, 3), 3 * 512)
    assert t.sense == fixed(5, 0x2100, info=BLOCKS - 2)


@pytest.mark.parametrize("cdb", [
    lambda lba, n: [O.WRITE_6, 0, (lba >> 8) & 0xFF, lba & 0xFF, n, 0],
    lambda lba, n: [O.WRITE_10, 0, *lba.to_bytes(4, "big"), 0, *n.to_bytes(2, "big"), 0],
    lambda lba, n: [O.WRITE_12, 0, *lba.to_bytes(4, "big"), *n.to_bytes(4, "big"), 0, 0],
    lambda lba, n: [O.WRITE_16, 0x08, *lba.to_bytes(8, "big"), *n.to_bytes(4, "big"), 0, 0],
])
def test_writes_of_every_size(disk, cdb):
    payload = bytes([0xAB]) * 1024
    assert run(disk, cdb(7, 2), 0, payload).status == GOOD
    assert disk.medium.data[7 * 512:9 * 512] == payload


def test_read_6_zero_length_means_256_blocks(disk):
    t = run(disk, [O.READ_6, 0, 0, 0, 0, 0], 256 * 512)
    assert t.status == GOOD and t.transferred == 256 * 512


def test_zero_length_read_10_moves_nothing_and_a_larger_buffer_leaves_a_residual(disk):
    t = run(disk, [O.READ_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], 512)
    assert t.status == GOOD and t.transferred == 0
    t = run(disk, [O.READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], 4096)
    assert t.status == GOOD and t.transferred == 512


def test_write_protected_and_fua_and_write_through():
    unit = ready(DiskUnit(MemoryMedium(8192, read_only=True)))
    t = run(unit, [O.WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], 0, bytes(512))
    assert t.sense == fixed(7, 0x2700)
    assert run(unit, [O.MODE_SENSE_6, 0, 0x08, 0, 255, 0], 255).data[2] & 0x80  # WP
    unit = ready(DiskUnit(MemoryMedium(8192), writeback=False))
    run(unit, [O.WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], 0, bytes(512))
    assert unit.medium.flushes == 1
    unit = ready(DiskUnit(MemoryMedium(8192)))
    run(unit, [O.WRITE_10, 0x08, 0, 0, 0, 0, 0, 0, 1, 0], 0, bytes(512))
    assert unit.medium.flushes == 1  # FUA


def test_rdprotect_is_refused(disk):
    assert run(disk, [O.READ_10, 0x20, 0, 0, 0, 0, 0, 0, 1, 0], 512).sense == fixed(5, 0x2400, field=1, bit=7)


def test_synchronize_cache(disk):
    assert run(disk, [O.SYNCHRONIZE_CACHE_10] + [0] * 9).status == GOOD
    assert disk.medium.flushes == 1
    assert run(disk, [O.SYNCHRONIZE_CACHE_16] + [0] * 15).status == GOOD
    t = run(disk, [O.SYNCHRONIZE_CACHE_10, 0, 0, 0, 0x10, 0, 0, 0, 1, 0])
    assert t.sense == fixed(5, 0x2100, info=0x1000)


def test_verify(disk):
    assert run(disk, [O.VERIFY_10, 0, 0, 0, 0, 0, 0, 0, 4, 0]).status == GOOD
    assert run(disk, [O.VERIFY_16, 0, *(BLOCKS).to_bytes(8, "big"), 0, 0, 0, 1, 0, 0]).sense[12] == 0x21


# --- UNMAP and WRITE SAME ---------------------------------------------------------------------


def unmap_list(*ranges):
    descs = b"".join(struct.pack(">QI4x", lba, n) for lba, n in ranges)
    return struct.pack(">HH4x", 6 + len(descs), len(descs)) + descs


def test_unmap_zeroes_the_ranges(disk):
    plist = unmap_list((1, 2), (10, 1))
    t = run(disk, [O.UNMAP, 0, 0, 0, 0, 0, 0, 0, len(plist), 0], 0, plist)
    assert t.status == GOOD
    assert disk.medium.data[512:1536] == bytes(1024) and disk.medium.data[5120:5632] == bytes(512)
    assert disk.medium.data[0:512] != bytes(512)


def test_unmap_errors(disk):
    assert run(disk, [O.UNMAP, 0, 0, 0, 0, 0, 0, 0, 0, 0]).status == GOOD  # empty list
    assert run(disk, [O.UNMAP, 0, 0, 0, 0, 0, 0, 0, 4, 0], 0, bytes(4)).sense == fixed(5, 0x1A00)
    bad = bytearray(unmap_list((1, 1)))
    bad[0:2] = (200).to_bytes(2, "big")
    t = run(disk, [O.UNMAP, 0, 0, 0, 0, 0, 0, 0, len(bad), 0], 0, bytes(bad))
    assert t.sense == fixed(5, 0x2600, field=0, in_cdb=False)
    plist = unmap_list((0, 1), (BLOCKS, 1))
    before = bytes(disk.medium.data[:512])
    t = run(disk, [O.UNMAP, 0, 0, 0, 0, 0, 0, 0, len(plist), 0], 0, plist)
    assert t.sense == fixed(5, 0x2100, info=BLOCKS)
    assert disk.medium.data[:512] == before  # nothing unmapped when one descriptor is bad
    plist = unmap_list(*[(i, 1) for i in range(65)])
    t = run(disk, [O.UNMAP, 0, 0, 0, 0, 0, 0, *len(plist).to_bytes(2, "big"), 0], 0, plist)
    assert t.sense == fixed(5, 0x2600, field=2, in_cdb=False)
    assert run(disk, [O.UNMAP, 1, 0, 0, 0, 0, 0, 0, 24, 0], 0, unmap_list((0, 1))).sense == \
        fixed(5, 0x2400, field=1, bit=0)


def test_write_same(disk):
    block = bytes([0x5A]) * 512
    t = run(disk, [O.WRITE_SAME_10, 0, 0, 0, 0, 4, 0, 0, 3, 0], 0, block)
    assert t.status == GOOD and disk.medium.data[4 * 512:7 * 512] == block * 3
    t = run(disk, [O.WRITE_SAME_16, 0x08, *(4).to_bytes(8, "big"), 0, 0, 0, 3, 0, 0], 0, bytes(512))
    assert t.status == GOOD and disk.medium.data[4 * 512:7 * 512] == bytes(1536)
    t = run(disk, [O.WRITE_SAME_16, 0x09, *(0).to_bytes(8, "big"), 0, 0, 0, 2, 0, 0])  # NDOB
    assert t.status == GOOD and disk.medium.data[:1024] == bytes(1024)
    assert run(disk, [O.WRITE_SAME_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, block).sense == fixed(5, 0x2400, field=7)
    t = run(disk, [O.WRITE_SAME_10, 0, *(BLOCKS - 1).to_bytes(4, "big"), 0, 0, 2, 0], 0, block)
    assert t.sense == fixed(5, 0x2100, info=BLOCKS - 1)


# --- MODE SENSE / MODE SELECT ----------------------------------------------------------------


def test_mode_sense_pages(disk):
    d = run(disk, [O.MODE_SENSE_6, 0, 0x3F, 0, 255, 0], 255).data
    assert d[0] == len(d) - 1 and d[2] == 0x10 and d[3] == 8
    assert d[4:12] == BLOCKS.to_bytes(4, "big") + b"\0" + (512).to_bytes(3, "big")
    pages = d[12:]
    assert pages[0:2] == b"\x01\x0a" and pages[12:14] == b"\x08\x12" and pages[14] == 0x04
    d = run(disk, [O.MODE_SENSE_10, 0x08, 0x08, 0, 0, 0, 0, 0, 255, 0], 255).data  # DBD
    assert struct.unpack(">HBBBxH", d[:8]) == (len(d) - 2, 0, 0x10, 0, 0) and d[8:10] == b"\x08\x12"
    changeable = run(disk, [O.MODE_SENSE_6, 0x08, 0x48, 0, 255, 0], 255).data
    assert changeable[4 + 2] == 0x04


def test_mode_sense_errors(disk):
    assert run(disk, [O.MODE_SENSE_6, 0, 0xC8, 0, 255, 0], 255).sense == fixed(5, 0x3900, field=2, bit=7)
    assert run(disk, [O.MODE_SENSE_6, 0, 0x1C, 0, 255, 0], 255).sense == fixed(5, 0x2400, field=2, bit=5)
    assert run(disk, [O.MODE_SENSE_6, 0, 0x08, 5, 255, 0], 255).sense == fixed(5, 0x2400, field=3)


def test_mode_select_turns_the_write_cache_off_and_d_sense_on(disk):
    page = bytearray(run(disk, [O.MODE_SENSE_6, 0x08, 0x08, 0, 255, 0], 255).data[4:])
    page[2] &= ~0x04
    plist = bytes(4) + bytes(page)
    assert run(disk, [O.MODE_SELECT_6, 0x10, 0, 0, len(plist), 0], 0, plist).status == GOOD
    assert not disk.writeback
    control = bytearray(run(disk, [O.MODE_SENSE_6, 0x08, 0x0A, 0, 255, 0], 255).data[4:])
    control[2] |= 0x04
    plist = bytes(8) + bytes(control)
    assert run(disk, [O.MODE_SELECT_10, 0x10, 0, 0, 0, 0, 0, 0, len(plist), 0], 0, plist).status == GOOD
    t = run(disk, [O.INQUIRY, 1, 0x89, 0, 255, 0], 255)
    assert t.sense == build_sense(5, 0x2400, field=2, descriptor=True) and t.sense[0] == 0x72


def test_mode_select_errors(disk):
    cache = bytes(run(disk, [O.MODE_SENSE_6, 0x08, 0x08, 0, 255, 0], 255).data[4:])
    send = lambda plist, flags=0x10: run(disk, [O.MODE_SELECT_6, flags, 0, 0, len(plist), 0], 0, plist)
    assert send(bytes(4) + cache, flags=0x11).sense == fixed(5, 0x2400, field=1, bit=0)  # SP
    assert send(bytes(2)).sense == fixed(5, 0x1A00)
    bad = bytearray(cache)
    bad[2] |= 0x01  # RCD is not changeable
    assert send(bytes(4) + bytes(bad)).sense == fixed(5, 0x2600, field=6, in_cdb=False)
    bad = bytearray(cache)
    bad[1] = 3
    assert send(bytes(4) + bytes(bad)).sense == fixed(5, 0x2600, field=5, in_cdb=False)
    assert send(bytes(4) + b"\x1c\x0a" + bytes(10)).sense == fixed(5, 0x2600, field=4, in_cdb=False)
    assert send(bytes(4) + cache[:10]).sense == fixed(5, 0x1A00)
    desc = bytes((0, 0, 0, 8)) + bytes(5) + (4096).to_bytes(3, "big")
    assert send(desc + cache).sense == fixed(5, 0x2600, field=9, in_cdb=False)
    assert disk.writeback


def test_start_stop_and_prevent_on_a_disk_are_accepted(disk):
    assert run(disk, [O.START_STOP_UNIT, 0, 0, 0, 1, 0]).status == GOOD
    assert run(disk, [O.PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1, 0]).status == GOOD


def test_a_host_io_error_is_a_medium_error():
    class Failing(MemoryMedium):
        def readv(self, offset, views):
            raise OSError(5, "EIO")
    unit = ready(DiskUnit(Failing(4096)))
    assert run(unit, [O.READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512).sense == fixed(3, 0x1100)


def test_lu_reset_queues_its_unit_attention(disk):
    disk.reset()
    assert run(disk, [O.TEST_UNIT_READY] + [0] * 5).sense == fixed(6, 0x2903)


# --- CD-ROM ------------------------------------------------------------------------------------


def test_cd_inquiry_and_capacity(cd):
    d = run(cd, [O.INQUIRY, 0, 0, 0, 96, 0], 96).data
    assert d[0] == 5 and d[1] == 0x80 and d[16:32] == b"PYVIRTIO CD-ROM "
    assert run(cd, [O.READ_CAPACITY] + [0] * 9, 8).data == struct.pack(">II", 299, 2048)
    assert run(cd, [O.INQUIRY, 1, 0, 0, 255, 0], 255).data == bytes((5, 0, 0, 3, 0, 0x80, 0x83))


def test_cd_reads(cd):
    t = run(cd, [O.READ_10, 0, 0, 0, 0, 2, 0, 0, 2, 0], 4096)
    assert t.status == GOOD and t.data == cd.medium.data[4096:8192]
    t = run(cd, [O.READ_12, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0], 2048)
    assert t.data == cd.medium.data[2048:4096]
    assert run(cd, [O.READ_10, 0, 0, 0, 1, 0x2C, 0, 0, 1, 0], 2048).sense == fixed(5, 0x2100, info=300)
    assert run(cd, [O.WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], 0, bytes(2048)).sense == fixed(7, 0x2700)
    assert run(cd, [O.READ_6, 0, 0, 0, 1, 0], 2048).sense == fixed(5, 0x2000, field=0)


def test_get_configuration(cd):
    d = run(cd, [O.GET_CONFIGURATION, 0, 0, 0, 0, 0, 0, 1, 0, 0], 256).data
    length, profile = struct.unpack(">I2xH", d[:8])
    assert length == len(d) - 4 and profile == sc.MmcProfile.CD_ROM
    codes, pos = [], 8
    while pos < len(d):
        code, flags, n = struct.unpack(">HBB", d[pos:pos + 4])
        codes.append((code, flags & 1))
        if code == 0:
            assert d[pos + 4:pos + 4 + n] == bytes((0, 0x10, 0, 0, 0, 0x08, 1, 0))
        pos += 4 + n
    assert codes == [(0, 1), (1, 1), (2, 1), (3, 1), (0x10, 1), (0x1E, 1), (0x1F, 0)]
    one = run(cd, [O.GET_CONFIGURATION, 2, 0, 3, 0, 0, 0, 0, 64, 0], 64).data
    assert one[8:10] == b"\x00\x03" and len(one) == 16 and one[12] == 0x39
    current = run(cd, [O.GET_CONFIGURATION, 1, 0, 0, 0, 0, 0, 1, 0, 0], 256).data
    assert _feature_codes(current) == [0, 1, 2, 3, 0x10, 0x1E]  # RT=1: current ones only
    assert run(cd, [O.GET_CONFIGURATION, 3, 0, 0, 0, 0, 0, 0, 8, 0], 8).sense == fixed(5, 0x2400, field=1, bit=1)


def _feature_codes(data):
    codes, pos = [], 8
    while pos < len(data):
        codes.append(int.from_bytes(data[pos:pos + 2], "big"))
        pos += 4 + data[pos + 3]
    return codes


def test_dvd_profile_for_a_large_disc():
    unit = ready(CdromUnit(MemoryMedium(2048 * 360001, read_only=True)))
    d = run(unit, [O.GET_CONFIGURATION, 0, 0, 0, 0, 0, 0, 0, 8, 0], 8).data
    assert d[6:8] == b"\x00\x10"


def test_read_toc_formats_0_and_1_lba_and_msf(cd):
    d = run(cd, [O.READ_TOC_PMA_ATIP, 0, 0, 0, 0, 0, 0, 0, 100, 0], 100).data
    assert d == struct.pack(">HBB", 18, 1, 1) + bytes((0, 0x14, 1, 0, 0, 0, 0, 0)) + \
        bytes((0, 0x14, 0xAA, 0)) + (300).to_bytes(4, "big")
    d = run(cd, [O.READ_TOC_PMA_ATIP, 2, 0, 0, 0, 0, 0, 0, 100, 0], 100).data
    assert d[8:12] == bytes((0, 0, 2, 0)) and d[16:20] == lba_to_msf(300) == bytes((0, 0, 6, 0))
    d = run(cd, [O.READ_TOC_PMA_ATIP, 0, 1, 0, 0, 0, 0, 0, 12, 0], 12).data
    assert d == struct.pack(">HBB", 10, 1, 1) + bytes((0, 0x14, 1, 0, 0, 0, 0, 0))
    d = run(cd, [O.READ_TOC_PMA_ATIP, 0, 0, 0, 0, 0, 0xAA, 0, 100, 0], 100).data
    assert len(d) == 12 and d[6] == 0xAA
    assert run(cd, [O.READ_TOC_PMA_ATIP, 0, 0, 0, 0, 0, 5, 0, 100, 0], 100).sense == fixed(5, 0x2400, field=6)
    assert run(cd, [O.READ_TOC_PMA_ATIP, 0, 4, 0, 0, 0, 0, 0, 100, 0], 100).sense == fixed(5, 0x2400, field=2)
    assert lba_to_msf(16) == bytes((0, 0, 2, 16)) and lba_to_msf(4350) == bytes((0, 1, 0, 0))


def test_gesn_media_events_after_host_eject_and_insert(cd):
    gesn = [O.GET_EVENT_STATUS_NOTIFICATION, 1, 0, 0, 0x10, 0, 0, 0, 8, 0]
    assert run(cd, gesn, 8).data == bytes((0, 6, 4, 0x10, 0, 2, 0, 0))
    cd.eject()
    assert run(cd, gesn, 8).data == bytes((0, 6, 4, 0x10, 3, 1, 0, 0))  # MEDIA REMOVAL, tray open
    assert run(cd, gesn, 8).data == bytes((0, 6, 4, 0x10, 0, 1, 0, 0))
    assert run(cd, [O.TEST_UNIT_READY] + [0] * 5).sense == fixed(6, 0x3A00)
    assert run(cd, [O.TEST_UNIT_READY] + [0] * 5).sense == fixed(2, 0x3A02)
    assert run(cd, [O.READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], 2048).sense == fixed(2, 0x3A02)
    assert run(cd, [O.REQUEST_SENSE, 0, 0, 0, 18, 0], 18).data == fixed(2, 0x3A02)
    cd.insert(MemoryMedium(2048 * 10, read_only=True))
    assert run(cd, gesn, 8).data == bytes((0, 6, 4, 0x10, 2, 2, 0, 0))  # NEW MEDIA
    assert run(cd, [O.TEST_UNIT_READY] + [0] * 5).sense == fixed(6, 0x2800)
    assert run(cd, [O.READ_CAPACITY] + [0] * 9, 8).data == struct.pack(">II", 9, 2048)
    assert run(cd, [O.GET_EVENT_STATUS_NOTIFICATION, 0, 0, 0, 0x10, 0, 0, 0, 8, 0], 8).sense == \
        fixed(5, 0x2400, field=1, bit=0)
    assert run(cd, [O.GET_EVENT_STATUS_NOTIFICATION, 1, 0, 0, 0x02, 0, 0, 0, 8, 0], 8).data == \
        bytes((0, 2, 0x80, 0x10))


def test_gesn_and_get_configuration_do_not_clear_a_unit_attention():
    unit = CdromUnit(MemoryMedium(2048 * 4, read_only=True))
    assert run(unit, [O.GET_EVENT_STATUS_NOTIFICATION, 1, 0, 0, 0x10, 0, 0, 0, 8, 0], 8).status == GOOD
    assert run(unit, [O.GET_CONFIGURATION, 0, 0, 0, 0, 0, 0, 0, 8, 0], 8).status == GOOD
    assert run(unit, [O.TEST_UNIT_READY] + [0] * 5).sense == fixed(6, 0x2900)


def test_guest_eject_load_and_prevent(cd):
    assert run(cd, [O.PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1, 0]).status == GOOD
    assert run(cd, [O.START_STOP_UNIT, 0, 0, 0, 2, 0]).sense == fixed(5, 0x5302)
    with pytest.raises(MediumLocked):
        cd.eject()
    gesn = run(cd, [O.GET_EVENT_STATUS_NOTIFICATION, 1, 0, 0, 0x10, 0, 0, 0, 8, 0], 8).data
    assert gesn[4] == 1  # EJECT REQUEST
    caps = run(cd, [O.MODE_SENSE_10, 0, 0x2A, 0, 0, 0, 0, 0, 255, 0], 255).data
    assert caps[8:10] == b"\x2a\x14" and caps[8 + 6] == 0x2B  # tray, eject, lock, locked
    assert run(cd, [O.PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0, 0]).status == GOOD
    assert run(cd, [O.START_STOP_UNIT, 0, 0, 0, 2, 0]).status == GOOD
    assert cd.tray_open and cd.medium is not None
    assert run(cd, [O.TEST_UNIT_READY] + [0] * 5).sense == fixed(2, 0x3A02)
    assert run(cd, [O.START_STOP_UNIT, 0, 0, 0, 3, 0]).status == GOOD
    assert run(cd, [O.TEST_UNIT_READY] + [0] * 5).status == GOOD


def test_forced_eject_and_reset_clear_the_prevention(cd):
    run(cd, [O.PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1, 0])
    cd.reset()
    assert not cd.prevent
    run(cd, [O.TEST_UNIT_READY] + [0] * 5)
    run(cd, [O.PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1, 0])
    assert cd.eject(force=True) is not None and not cd.prevent and cd.medium is None


def test_read_disc_information(cd):
    d = run(cd, [O.READ_DISC_INFORMATION, 0, 0, 0, 0, 0, 0, 0, 34, 0], 34).data
    assert d[:9] == bytes((0, 32, 0x0E, 1, 1, 1, 1, 0x10, 0)) and len(d) == 34
    assert run(cd, [O.READ_DISC_INFORMATION, 1, 0, 0, 0, 0, 0, 0, 34, 0], 34).sense == \
        fixed(5, 0x2400, field=1, bit=2)


def test_empty_drive():
    unit = ready(CdromUnit(None))
    assert run(unit, [O.TEST_UNIT_READY] + [0] * 5).sense == fixed(2, 0x3A01)
    assert run(unit, [O.READ_CAPACITY] + [0] * 9, 8).sense == fixed(2, 0x3A01)
    d = run(unit, [O.GET_CONFIGURATION, 0, 0, 0, 0, 0, 0, 1, 0, 0], 256).data
    assert d[6:8] == b"\0\0"


def test_read_track_information_and_mechanism_status(cd):
    d = run(cd, [O.READ_TRACK_INFORMATION, 1, 0, 0, 0, 1, 0, 0, 48, 0], 48).data
    assert len(d) == 48 and d[:8] == bytes((0, 46, 1, 1, 0, 4, 1, 0))
    assert d[24:32] == struct.pack(">II", 300, 299)
    assert run(cd, [O.READ_TRACK_INFORMATION, 0, 0, 0, 0, 10, 0, 0, 48, 0], 48).status == GOOD
    assert run(cd, [O.READ_TRACK_INFORMATION, 1, 0, 0, 0, 2, 0, 0, 48, 0], 48).sense == fixed(5, 0x2400, field=2)
    assert run(cd, [O.READ_TRACK_INFORMATION, 0, 0, 0, 1, 0x2C, 0, 0, 48, 0], 48).sense == fixed(5, 0x2400, field=2)
    assert run(cd, [O.MECHANISM_STATUS, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], 8).data == bytes(8)
    cd.eject()
    run(cd, [O.TEST_UNIT_READY] + [0] * 5)
    assert run(cd, [O.MECHANISM_STATUS, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], 8).data[1] == 0x10
    assert run(cd, [O.READ_TRACK_INFORMATION, 1, 0, 0, 0, 1, 0, 0, 48, 0], 48).sense == fixed(2, 0x3A02)


def test_verify_with_bytchk_compares_the_data_out_buffer(disk):
    stored = bytes(disk.medium.data[3 * 512:5 * 512])
    assert run(disk, [O.VERIFY_10, 0x02, 0, 0, 0, 3, 0, 0, 2, 0], 0, stored).status == GOOD
    bad = bytearray(stored)
    bad[700] ^= 1
    assert run(disk, [O.VERIFY_10, 0x02, 0, 0, 0, 3, 0, 0, 2, 0], 0, bytes(bad)).sense == fixed(0x0E, 0x1D00, info=700)
    block = bytes(disk.medium.data[0:512])
    same = DiskUnit(MemoryMedium(data=block * 4))
    ready(same)
    assert run(same, [O.VERIFY_16, 0x06, *(0).to_bytes(8, "big"), 0, 0, 0, 4, 0, 0], 0, block).status == GOOD
    assert run(disk, [O.VERIFY_10, 0x04, 0, 0, 0, 0, 0, 0, 1, 0], 0, block).sense == fixed(5, 0x2400, field=1, bit=2)
    assert run(disk, [O.VERIFY_10, 0x02, 0, 0, 0, 0, 0, 0, 2, 0], 0, block).response == ScsiResponse.OVERRUN


def test_mode_select_10_with_long_lba_block_descriptors(disk):
    cache = bytes(run(disk, [O.MODE_SENSE_6, 0x08, 0x08, 0, 255, 0], 255).data[4:])
    header = bytes((0, 0, 0, 0, 1, 0, 0, 16))  # LONGLBA, one 16-byte descriptor
    ok = header + bytes(12) + (512).to_bytes(4, "big") + cache
    send = lambda plist: run(disk, [O.MODE_SELECT_10, 0x10, 0, 0, 0, 0, 0, *len(plist).to_bytes(2, "big"), 0], 0, plist)
    assert send(ok).status == GOOD
    bad = header + bytes(12) + (4096).to_bytes(4, "big") + cache
    assert send(bad).sense == fixed(5, 0x2600, field=20, in_cdb=False)
