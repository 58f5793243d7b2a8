"""The virtio-scsi driver's parsers of device-controlled bytes: sense data (fixed and descriptor
formats), LUN fields, and the response data of the convenience commands.  Property tests: any
bytes give a typed value or a typed error, never anything else."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from pyvirtio.drivers.scsi import ScsiResult, decode_lun, encode_lun
from pyvirtio.drivers.scsi_sense import Sense, SenseFormatError, parse_sense
from pyvirtio.drivers.scsi_sg import InquiryData, _rw_cdb
from pyvirtio.errors import DeviceFault, UsageError
from pyvirtio.spec import scsi_cmd as sc
from pyvirtio.spec.scsi import ScsiResponse
from pyvirtio.spec.scsi_cmd import AdditionalSense as A, SenseKey as K

def fixed(key, asc, ascq, info=None, length=10, flags=0, sks=b""):
    raw = bytearray(8 + length)
    raw[0] = 0x70 | (0x80 if info is not None else 0)
    raw[2], raw[7] = key | flags, length
    if info is not None:
        raw[3:7] = info.to_bytes(4, "big")
    if length >= 6:
        raw[12], raw[13] = asc, ascq
    if sks and length >= 10:
        raw[15:18] = sks
    return bytes(raw)

def descriptor(key, asc, ascq, descriptors=b"", code=0x72):
    return bytes((code, key, asc, ascq, 0, 0, 0, len(descriptors))) + descriptors

def test_fixed_format_fields():
    s = parse_sense(fixed(K.MEDIUM_ERROR, 0x11, 0, info=0x1234, flags=sc.SENSE_ILI, sks=b"\x80\x00\x02"))
    assert (s.key, s.condition, s.information, s.ili, s.eom, s.filemark) == (
        K.MEDIUM_ERROR, A.UNRECOVERED_READ_ERROR, 0x1234, True, False, False)
    assert s.sense_specific == b"\x80\x00\x02" and not s.deferred and not s.descriptor_format
    assert "MEDIUM_ERROR" in str(s) and "UNRECOVERED_READ_ERROR" in str(s)

def test_fixed_format_without_valid_bit_has_no_information():
    raw = bytearray(fixed(K.ILLEGAL_REQUEST, 0x24, 0))
    raw[3:7] = b"\xff\xff\xff\xff"
    assert parse_sense(bytes(raw)).information is None

def test_fixed_format_short_additional_length_reads_zero_asc():
    s = parse_sense(fixed(K.NOT_READY, 0x3A, 0, length=0) + b"\x00" * 10 + b"\x3a")
    assert (s.key, s.asc, s.ascq) == (K.NOT_READY, 0, 0)  # the length says there is no ASC

def test_deferred_and_descriptor_format():
    info = bytes((0, sc.SENSE_INFORMATION_DESCRIPTOR_LENGTH, 0x80, 0)) + (1 << 40).to_bytes(8, "big")
    other = bytes((0x02, 6, 0x80, 0, 5, 0, 0, 0))
    s = parse_sense(descriptor(K.ILLEGAL_REQUEST, 0x21, 0, info + other, code=0x73))
    assert s.deferred and s.descriptor_format and s.condition == A.LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE
    assert s.information == 1 << 40
    assert [t for t, _ in s.descriptors] == [0, 2]

def test_descriptor_cut_by_the_buffer_is_dropped():
    info = bytes((0, 10, 0x80, 0)) + bytes(8)
    raw = descriptor(K.ABORTED_COMMAND, 0, 0, info)[:-3]
    s = parse_sense(raw)
    assert s.descriptors == () and s.information is None and s.key == K.ABORTED_COMMAND

@pytest.mark.parametrize("raw", [b"", b"\x70\x00\x05", b"\x00" * 18, b"\x7f" + bytes(17), b"\x72\x05"])
def test_garbage_is_a_typed_device_fault(raw):
    with pytest.raises(SenseFormatError) as info:
        parse_sense(raw)
    assert isinstance(info.value, DeviceFault)

@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_sense_format_error(raw):
    try:
        s = parse_sense(raw)
    except SenseFormatError:
        return
    assert isinstance(s, Sense) and 0 <= s.key <= 15 and 0 <= s.asc <= 255 and 0 <= s.ascq <= 255
    assert s.response_code in (0x70, 0x71, 0x72, 0x73)
    assert isinstance(str(s), str)

@given(st.integers(0, 15), st.integers(0, 255), st.integers(0, 255), st.none() | st.integers(0, 2**32 - 1))
def test_fixed_round_trip(key, asc, ascq, info):
    s = parse_sense(fixed(key, asc, ascq, info))
    assert (s.key, s.asc, s.ascq, s.information) == (key, asc, ascq, info)

@given(st.integers(0, 255), st.integers(0, 0x3FFF))
def test_lun_field_round_trip(target, lun):
    field = encode_lun(target, lun)
    assert len(field) == 8 and field[0] == 1 and field[4:] == bytes(4)
    assert decode_lun(field) == (target, lun)

@pytest.mark.parametrize("target, lun", [(256, 0), (0, 0x4000), (-1, 0)])
def test_lun_out_of_range_is_the_callers_error(target, lun):
    with pytest.raises(UsageError):
        encode_lun(target, lun)

def test_inquiry_parse_short_and_full():
    full = bytes((0x05, 0x80, 0x06, 0x02, 31, 0, 0, 0x02)) + b"PYVIRTIO" + b"CD-ROM".ljust(16) + b"1.0 "
    inq = InquiryData.parse(full)
    assert (inq.device_type, inq.removable, inq.vendor, inq.product, inq.revision) == (5, True, "PYVIRTIO", "CD-ROM", "1.0")
    short = InquiryData.parse(b"\x00")
    assert (short.device_type, short.vendor) == (0, "")

@given(st.binary(max_size=100))
def test_inquiry_parse_any_bytes(raw):
    assert isinstance(InquiryData.parse(raw).vendor, str)

def test_result_ok_and_check():
    good = ScsiResult(ScsiResponse.OK, 0, 0, 0, b"", b"x")
    assert good.ok and good.check() is good and good.sense is None
    bad = ScsiResult(ScsiResponse.OK, 2, 0, 0, fixed(K.ILLEGAL_REQUEST, 0x20, 0), b"")
    with pytest.raises(Exception, match="INVALID_COMMAND_OPERATION_CODE") as info:
        bad.check()
    assert info.value.result is bad
    target = ScsiResult(ScsiResponse.BAD_TARGET, 0, 0, 0, b"", b"")
    with pytest.raises(Exception, match="BAD_TARGET"):
        target.check()


@pytest.mark.parametrize("lba, blocks, length", [(0, 1, 10), (2**32 - 1, 2**16 - 1, 10), (2**32, 1, 16),
                                                 (0, 2**16, 16)])
def test_read_write_cdb_is_the_10_byte_form_where_it_reaches(lba, blocks, length):
    cdb = _rw_cdb(0x28, 0x88, lba, blocks)
    assert len(cdb) == length and cdb[0] == (0x28 if length == 10 else 0x88)
    if length == 10:
        assert (int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big")) == (lba, blocks)
    else:
        assert (int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big")) == (lba, blocks)
