"""Sense data and the CHECK CONDITION a logical unit raises (SPC-4 4.5).

A command handler that finds an error raises :class:`CheckCondition` with a sense key, an
additional sense code (``ASC << 8 | ASCQ``, :class:`~pyvirtio.spec.scsi_cmd.AdditionalSense`)
and, where SPC-4 asks for one, a field pointer to the byte of the CDB (or of the parameter list)
in error.  The unit turns it into status CHECK CONDITION and fixed-format sense data, or
descriptor format when the control mode page's D_SENSE bit is set.
"""

from __future__ import annotations

from ...spec import scsi_cmd as sc

_SK = sc.SenseKey
_ASC = sc.AdditionalSense


class CheckCondition(Exception):
    """A command ends with CHECK CONDITION: ``key``, ``code`` (ASC << 8 | ASCQ), optionally a
    field pointer (``field`` byte, ``bit`` within it, ``in_cdb``: the CDB or the parameter
    data) and the INFORMATION field."""

    def __init__(self, key: int, code: int, *, field: int | None = None, bit: int | None = None,
                 in_cdb: bool = True, information: int | None = None):
        self.key = key
        self.code = code
        self.field = field
        self.bit = bit
        self.in_cdb = in_cdb
        self.information = information
        super().__init__(f"{_name(_SK, key)}, {_name(_ASC, code)}"
                         + (f" (byte {field})" if field is not None else ""))

    def sense(self, descriptor: bool = False) -> bytes:
        """The sense data for this condition (fixed format unless ``descriptor``)."""
        return build_sense(self.key, self.code, field=self.field, bit=self.bit, in_cdb=self.in_cdb,
                           information=self.information, descriptor=descriptor)


def _name(enum, value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return f"{value:#x}"


def build_sense(key: int, code: int, *, field: int | None = None, bit: int | None = None,
                in_cdb: bool = True, information: int | None = None,
                descriptor: bool = False) -> bytes:
    """Sense data, current error, fixed format (SPC-4 4.5.3: 18 bytes) or descriptor format
    (4.5.2: 8-byte header, then an information descriptor and a sense-key specific descriptor
    when there is something to put in them)."""
    sks = b""
    if field is not None:
        flags = sc.SKS_VALID | (sc.SKS_C_D if in_cdb else 0)
        if bit is not None:
            flags |= sc.SKS_BPV | (bit & sc.SKS_BIT_POINTER_MASK)
        sks = bytes((flags,)) + (field & 0xFFFF).to_bytes(2, "big")
    if descriptor:
        descs = b""
        if information is not None:  # information descriptor (SPC-4 4.5.2.2): type 0, VALID
            descs += bytes((0x00, 0x0A, 0x80, 0)) + (information & (2**64 - 1)).to_bytes(8, "big")
        if sks:  # sense key specific descriptor (4.5.2.4): type 2
            descs += bytes((0x02, 0x06, 0, 0)) + sks + b"\0"
        return bytes((sc.SenseResponseCode.DESCRIPTOR_CURRENT, key & 0x0F, code >> 8, code & 0xFF,
                      0, 0, 0, len(descs))) + descs
    out = bytearray(sc.FIXED_SENSE_SIZE)
    out[0] = sc.SenseResponseCode.FIXED_CURRENT
    if information is not None and information <= 0xFFFFFFFF:
        out[0] |= sc.SENSE_VALID
        out[sc.SENSE_OFFSET_INFORMATION:sc.SENSE_OFFSET_INFORMATION + 4] = information.to_bytes(4, "big")
    out[sc.SENSE_OFFSET_KEY] = key & 0x0F
    out[sc.SENSE_OFFSET_ADDITIONAL_LENGTH] = sc.FIXED_SENSE_ADDITIONAL_LENGTH
    out[sc.SENSE_OFFSET_ASC] = code >> 8
    out[sc.SENSE_OFFSET_ASCQ] = code & 0xFF
    if sks:
        out[sc.SENSE_OFFSET_SKS:sc.SENSE_OFFSET_SKS + 3] = sks
    return bytes(out)


# --- the conditions every unit raises, by name ---------------------------------------------------

def invalid_opcode() -> CheckCondition:
    """ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (the field pointer names byte 0)."""
    return CheckCondition(_SK.ILLEGAL_REQUEST, _ASC.INVALID_COMMAND_OPERATION_CODE, field=0)


def invalid_field(byte: int, bit: int | None = None) -> CheckCondition:
    """ILLEGAL REQUEST, INVALID FIELD IN CDB at ``byte`` (and ``bit``)."""
    return CheckCondition(_SK.ILLEGAL_REQUEST, _ASC.INVALID_FIELD_IN_CDB, field=byte, bit=bit)


def invalid_parameter(byte: int, bit: int | None = None) -> CheckCondition:
    """ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST at ``byte`` of the parameter data."""
    return CheckCondition(_SK.ILLEGAL_REQUEST, _ASC.INVALID_FIELD_IN_PARAMETER_LIST, field=byte,
                          bit=bit, in_cdb=False)


def parameter_list_length_error() -> CheckCondition:
    """ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR."""
    return CheckCondition(_SK.ILLEGAL_REQUEST, _ASC.PARAMETER_LIST_LENGTH_ERROR)


def lba_out_of_range(lba: int | None = None) -> CheckCondition:
    """ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE (INFORMATION: the first bad LBA)."""
    return CheckCondition(_SK.ILLEGAL_REQUEST, _ASC.LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE,
                          information=lba)


def write_protected() -> CheckCondition:
    """DATA PROTECT, WRITE PROTECTED."""
    return CheckCondition(_SK.DATA_PROTECT, _ASC.WRITE_PROTECTED)


def lun_not_supported() -> CheckCondition:
    """ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (a LUN with no unit behind it)."""
    return CheckCondition(_SK.ILLEGAL_REQUEST, _ASC.LOGICAL_UNIT_NOT_SUPPORTED)


def medium_error(write: bool) -> CheckCondition:
    """MEDIUM ERROR, WRITE ERROR or UNRECOVERED READ ERROR (the host's I/O failed)."""
    return CheckCondition(_SK.MEDIUM_ERROR, _ASC.WRITE_ERROR if write else _ASC.UNRECOVERED_READ_ERROR)


NO_SENSE = build_sense(_SK.NO_SENSE, _ASC.NO_ADDITIONAL_SENSE_INFORMATION)
