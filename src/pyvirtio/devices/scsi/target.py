"""Targets and logical units behind the HBA, and what a LUN without a unit answers.

A virtio-scsi LUN field is 8 bytes: 1, the target (0..255), then a single-level LUN in flat
space (``0x40 | lun >> 8, lun & 0xFF``) or peripheral (``0, lun``) addressing, then zeros
(VIRTIO 1.3, 5.6.6.1; SAM-5 4.7).  :func:`parse_lun` returns ``(target, lun)`` or None for a
field in any other form (the HBA answers VIRTIO_SCSI_S_BAD_TARGET, as QEMU does).

A target with at least one unit answers for every LUN (SPC-4 4.4.2; QEMU's scsi-bus.c
``reqops_target_command``): REPORT LUNS lists its units from any LUN; for a LUN with no unit,
INQUIRY returns peripheral qualifier 3 / type 1Fh (not capable), REQUEST SENSE reports LOGICAL
UNIT NOT SUPPORTED, and every other command ends in CHECK CONDITION, ILLEGAL REQUEST, LOGICAL UNIT
NOT SUPPORTED.  A target without units does not exist: BAD_TARGET.
"""

from __future__ import annotations

from typing import Protocol

from ...spec import scsi_cmd as sc
from .sense import CheckCondition, build_sense, invalid_field, invalid_opcode, lun_not_supported
from .spc import be, cdb_length
from .task import Task

_O = sc.Opcode

#: Targets and LUNs a virtio-scsi HBA can address (VIRTIO 1.3, 5.6.4: max_target <= 255,
#: max_lun <= 16383).
MAX_TARGET = 255
MAX_LUN = sc.LUN_FLAT_MAX


class LogicalUnit(Protocol):
    """What the HBA needs of a unit (emulated or passthrough)."""

    peripheral_type: int

    def execute(self, task: Task) -> None:
        """Run one command to its end."""

    def reset(self, code: int = ...) -> None:
        """A logical unit reset or an I_T nexus loss."""

    def add_unit_attention(self, code: int) -> None:
        """Queue a UNIT ATTENTION condition."""

    def describe(self) -> dict:
        """State for the control socket."""

    def close(self) -> None:
        """Release host resources."""


def parse_lun(field: bytes) -> tuple[int, int] | None:
    """``(target, lun)`` of a virtio LUN field, None when it is not in the virtio form."""
    if len(field) < 4 or field[0] != 1:
        return None
    method = field[2] & 0xC0
    if method not in (sc.LUN_ADDRESS_METHOD_PERIPHERAL, sc.LUN_ADDRESS_METHOD_FLAT):
        return None
    if method == sc.LUN_ADDRESS_METHOD_PERIPHERAL and field[2]:
        return None  # peripheral addressing with a bus number: not ours
    return field[1], ((field[2] & 0x3F) << 8) | field[3]


def encode_lun(target: int, lun: int) -> bytes:
    """The virtio LUN field of ``(target, lun)`` in an event: the encoding REPORT LUNS uses
    (peripheral below 256, flat above), as QEMU sends it — Linux's virtio_scsi takes
    ``lun[2] << 8 | lun[3]`` as the LUN of a hot-plug event, so a flat-space 0x40 would read as
    LUN 16384."""
    return bytes((1, target)) + scsi_lun(lun)[:2] + bytes(4)


def scsi_lun(lun: int) -> bytes:
    """The 8-byte SCSI LUN REPORT LUNS lists: peripheral addressing below 256, flat above."""
    if lun < 256:
        return bytes((0, lun)) + bytes(6)
    return bytes((sc.LUN_ADDRESS_METHOD_FLAT | (lun >> 8), lun & 0xFF)) + bytes(6)


class Target:
    """The units of one target, by LUN."""

    def __init__(self, number: int):
        self.number = number
        self.units: dict[int, LogicalUnit] = {}

    def execute(self, lun: int, task: Task) -> None:
        """Run ``task`` on ``lun``: its unit, or the target's answers for REPORT LUNS and for
        a LUN without a unit."""
        op = task.cdb[0] if task.cdb else None
        unit = self.units.get(lun)
        if op == _O.REPORT_LUNS:
            try:
                self.report_luns(task)
            except CheckCondition as cc:
                task.check_condition(cc.sense())
            return
        if unit is not None:
            unit.execute(task)
            return
        try:
            self.no_unit(task)
        except CheckCondition as cc:
            task.check_condition(cc.sense())

    def report_luns(self, task: Task) -> None:
        """REPORT LUNS (SPC-4 6.33): every unit's LUN, ascending."""
        cdb = task.cdb
        if len(cdb) < 12:
            raise invalid_field(len(cdb))
        alloc = be(cdb, 6, 4)
        if cdb[2] not in (sc.SelectReport.ALL_LOGICAL_UNITS, sc.SelectReport.ALL_INCLUDING_WELL_KNOWN,
                          sc.SelectReport.WELL_KNOWN_ONLY):
            raise invalid_field(2)
        if alloc < sc.REPORT_LUNS_MIN_ALLOCATION:
            raise invalid_field(6)
        luns = [] if cdb[2] == sc.SelectReport.WELL_KNOWN_ONLY else sorted(self.units)
        body = b"".join(scsi_lun(lun) for lun in luns)
        if alloc > task.in_len:
            from ...spec.scsi import ScsiResponse
            task.response = ScsiResponse.OVERRUN
            return
        task.reply(sc.REPORT_LUNS_HEADER.pack(len(body)) + body, alloc)

    def no_unit(self, task: Task) -> None:
        """A LUN with no unit on an existing target (SPC-4 4.4.2)."""
        cdb = task.cdb
        if not cdb or cdb_length(cdb[0]) is None:
            raise invalid_opcode()
        if cdb[0] == _O.INQUIRY and len(cdb) >= 6:
            if cdb[1] & sc.INQUIRY_EVPD:
                raise lun_not_supported()
            out = bytearray(36)
            out[0] = (sc.PeripheralQualifier.NOT_CAPABLE << 5) | sc.PeripheralDeviceType.UNKNOWN_OR_NO_DEVICE
            out[2] = sc.Version.SPC_4
            out[3] = sc.INQUIRY_RESPONSE_DATA_FORMAT
            out[4] = len(out) - 5
            task.reply(bytes(out), min(be(cdb, 3, 2), task.in_len))
            return
        if cdb[0] == _O.REQUEST_SENSE and len(cdb) >= 6:
            task.reply(build_sense(sc.SenseKey.ILLEGAL_REQUEST, sc.AdditionalSense.LOGICAL_UNIT_NOT_SUPPORTED,
                                   descriptor=bool(cdb[1] & sc.REQUEST_SENSE_DESC)), min(cdb[4], task.in_len))
            return
        raise lun_not_supported()
