"""pyvirtio.spec.scsi_cmd agrees with glibc's <scsi/scsi.h> (package libc6-dev) where both name
a number, and its packed sense codes and struct layouts have the sizes the standards give."""

import os
import re

import pytest

from pyvirtio.spec import scsi_cmd as sc

HEADER = "/usr/include/scsi/scsi.h"

#: header name -> our member, for the names that differ
_OPCODE_NAMES = {
    "MODE_SELECT": sc.Opcode.MODE_SELECT_6, "MODE_SENSE": sc.Opcode.MODE_SENSE_6,
    "RESERVE": sc.Opcode.RESERVE_6, "RELEASE": sc.Opcode.RELEASE_6,
    "START_STOP": sc.Opcode.START_STOP_UNIT, "ALLOW_MEDIUM_REMOVAL": sc.Opcode.PREVENT_ALLOW_MEDIUM_REMOVAL,
    "READ_CAPACITY": sc.Opcode.READ_CAPACITY_10, "WRITE_VERIFY": sc.Opcode.WRITE_AND_VERIFY_10,
    "VERIFY": sc.Opcode.VERIFY_10, "PRE_FETCH": sc.Opcode.PRE_FETCH_10,
    "SYNCHRONIZE_CACHE": sc.Opcode.SYNCHRONIZE_CACHE_10, "READ_DEFECT_DATA": sc.Opcode.READ_DEFECT_DATA_10,
    "READ_LONG": sc.Opcode.READ_LONG_10, "WRITE_LONG": sc.Opcode.WRITE_LONG_10,
    "WRITE_SAME": sc.Opcode.WRITE_SAME_10, "READ_TOC": sc.Opcode.READ_TOC_PMA_ATIP,
    "WRITE_VERIFY_12": sc.Opcode.WRITE_AND_VERIFY_12, "RECEIVE_DIAGNOSTIC": sc.Opcode.RECEIVE_DIAGNOSTIC_RESULTS,
}


def _header() -> dict[str, int]:
    if not os.path.exists(HEADER):
        pytest.skip(f"{HEADER} is missing (libc6-dev not installed)")
    text = open(HEADER).read()
    return {m[0]: int(m[1], 16) for m in re.findall(r"^#define\s+([A-Z_0-9]+)\s+(0x[0-9a-fA-F]+)", text, re.M)}


def test_opcodes_match_the_header():
    header = _header()
    checked = 0
    for name, value in header.items():
        ours = _OPCODE_NAMES.get(name) or sc.Opcode.__members__.get(name)
        if ours is not None and name not in {"GOOD", "BUSY"}:
            assert ours == value, name
            checked += 1
    assert checked >= 30


def test_sense_keys_and_device_types_match_the_header():
    header = _header()
    for key in sc.SenseKey:
        if key.name in header and key.name not in {"NOT_READY"} | {"VENDOR_SPECIFIC"}:
            assert header[key.name] == key, key.name
    assert header["TYPE_DISK"] == sc.PeripheralDeviceType.DIRECT_ACCESS_BLOCK
    assert header["TYPE_ROM"] == sc.PeripheralDeviceType.CD_DVD


def test_status_codes_match_the_headers_shifted_values():
    # glibc's <scsi/scsi.h> keeps the SCSI-2 "status byte >> 1" values (CHECK_CONDITION 0x01)
    header = _header()
    assert header["CHECK_CONDITION"] << 1 == sc.Status.CHECK_CONDITION
    assert header["BUSY"] << 1 == sc.Status.BUSY
    assert header["RESERVATION_CONFLICT"] << 1 == sc.Status.RESERVATION_CONFLICT


def test_layout_sizes():
    assert sc.READ_CAPACITY_16_DATA.size == sc.READ_CAPACITY_16_SIZE == 32
    assert sc.READ_CAPACITY_10_DATA.size == 8
    assert sc.UNMAP_HEADER.size == sc.UNMAP_HEADER_SIZE
    assert sc.UNMAP_DESCRIPTOR.size == sc.UNMAP_DESCRIPTOR_SIZE
    assert sc.MODE_HEADER_6.size == sc.MODE_HEADER_6_SIZE
    assert sc.MODE_HEADER_10.size == sc.MODE_HEADER_10_SIZE
    assert sc.FEATURE_HEADER.size == sc.FEATURE_HEADER_SIZE
    assert sc.TOC_DESCRIPTOR.size == sc.TOC_DESCRIPTOR_SIZE
    assert sc.GESN_HEADER.size == sc.GESN_HEADER_SIZE
    assert sc.FIXED_SENSE_SIZE == 8 + sc.FIXED_SENSE_ADDITIONAL_LENGTH


def test_additional_sense_codes_are_16_bit_pairs():
    assert sc.AdditionalSense.INVALID_FIELD_IN_CDB >> 8 == 0x24
    assert sc.AdditionalSense.MEDIUM_REMOVAL_PREVENTED & 0xFF == 0x02
    assert all(0 <= code <= 0xFFFF for code in sc.AdditionalSense)
    assert len({c.value for c in sc.AdditionalSense}) == len(sc.AdditionalSense)
