"""A logical unit that passes CDBs to a host SCSI generic device (``--passthrough=/dev/sgN``).

Every CDB is checked against an allow-list first; one not on it ends in CHECK CONDITION,
ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE without reaching the host device.  The default
list is read-only (identification, capacity, reads, cache flush; on an MMC drive also its
queries, the tray and its lock); ``writable=True`` adds the writes of the device's type (SBC
writes, UNMAP, WRITE SAME, START STOP UNIT and the medium lock on a disk; WRITE and the
disc-recording commands on an MMC drive).  Never allowed: MODE SELECT,
FORMAT UNIT, WRITE BUFFER (firmware), SANITIZE, SECURITY PROTOCOL, PERSISTENT RESERVE, ATA
PASS-THROUGH, LOG SELECT, SEND DIAGNOSTIC and vendor-specific codes.  Service-action commands
are allowed per service action (READ CAPACITY (16), REPORT SUPPORTED OPERATION CODES).

An allowed CDB goes out through SG_IO (:mod:`.sg_io`): the direction and length come from the
request's buffers (data-out: TO_DEV, data-in: FROM_DEV; both: refused, no INOUT), through a
bounce buffer of at most :data:`MAX_TRANSFER` bytes; ``timeout`` per command.  The device's
status and sense go back as they came; the residual is the kernel's; host adapter errors map to
virtio responses (DID_TIME_OUT and DID_ABORT: ABORTED, DID_BUS_BUSY: BUSY, DID_NO_CONNECT and
DID_BAD_TARGET: BAD_TARGET, DID_RESET: RESET ...); an ioctl that fails (the device went away):
TRANSPORT_FAILURE.  The call is swappable (``sg_io=``): tests use
:class:`~.sg_io.UnitResponder`, which speaks the same ABI with an emulated unit behind it.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections import deque

from ...spec import scsi_cmd as sc
from ...spec.scsi import ScsiResponse
from .sense import CheckCondition, invalid_field, invalid_opcode
from .sg_io import (DID_ABORT, DID_BAD_TARGET, DID_BUS_BUSY, DID_NEXUS_FAILURE, DID_NO_CONNECT,
                    DID_OK, DID_RESET, DID_TARGET_FAILURE, DID_TIME_OUT, DID_TRANSPORT_DISRUPTED,
                    DRIVER_TIMEOUT, SG_DXFER_FROM_DEV, SG_DXFER_NONE, SG_DXFER_TO_DEV,
                    SG_INTERFACE_ID, SgIoCall, SgIoHdr, linux_sg_io, open_sg)
from .spc import MAX_UNIT_ATTENTIONS, cdb_length
from .task import Task

log = logging.getLogger(__name__)

_O = sc.Opcode
_R = ScsiResponse

#: Largest data transfer of one passed-through command (bounce buffer bound).
MAX_TRANSFER = 16 << 20
DEFAULT_TIMEOUT_MS = 30_000
SENSE_BUFFER = 252

READ_ONLY_COMMANDS = frozenset((
    _O.TEST_UNIT_READY, _O.REQUEST_SENSE, _O.INQUIRY, _O.MODE_SENSE_6, _O.MODE_SENSE_10,
    _O.READ_CAPACITY_10, _O.READ_6, _O.READ_10, _O.READ_12, _O.READ_16, _O.REPORT_LUNS,
    _O.VERIFY_10, _O.VERIFY_16, _O.SYNCHRONIZE_CACHE_10, _O.SYNCHRONIZE_CACHE_16,
    _O.LOG_SENSE, _O.RECEIVE_DIAGNOSTIC_RESULTS,
))
#: The tray and its lock: an MMC drive's everyday commands; on a disk they stop the spindle or
#: lock the host's removable medium, so only a ``writable`` disk gets them.
MEDIUM_COMMANDS = frozenset((_O.START_STOP_UNIT, _O.PREVENT_ALLOW_MEDIUM_REMOVAL))
MMC_READ_COMMANDS = frozenset((
    _O.GET_CONFIGURATION, _O.GET_EVENT_STATUS_NOTIFICATION, _O.READ_TOC_PMA_ATIP,
    _O.READ_DISC_INFORMATION, _O.READ_TRACK_INFORMATION, _O.READ_DISC_STRUCTURE,
    _O.MECHANISM_STATUS, _O.READ_CD, _O.READ_CD_MSF, _O.READ_SUB_CHANNEL, _O.READ_HEADER,
    _O.READ_FORMAT_CAPACITIES, _O.GET_PERFORMANCE, _O.READ_BUFFER_CAPACITY, _O.SET_CD_SPEED,
    _O.SET_STREAMING, _O.REPORT_KEY, _O.SEEK_10, _O.LOAD_UNLOAD_MEDIUM,
))
SBC_WRITE_COMMANDS = frozenset((
    _O.WRITE_6, _O.WRITE_10, _O.WRITE_12, _O.WRITE_16, _O.WRITE_AND_VERIFY_10,
    _O.WRITE_AND_VERIFY_16, _O.WRITE_SAME_10, _O.WRITE_SAME_16, _O.UNMAP,
))
MMC_WRITE_COMMANDS = frozenset((
    _O.WRITE_10, _O.WRITE_12, _O.WRITE_AND_VERIFY_10, _O.RESERVE_TRACK, _O.SEND_OPC_INFORMATION,
    _O.CLOSE_TRACK_SESSION, _O.SEND_CUE_SHEET, _O.REPAIR_TRACK, _O.BLANK, _O.SEND_DISC_STRUCTURE,
))
#: Service-action commands: opcode -> the service actions allowed.
SERVICE_ACTIONS: dict[int, frozenset[int]] = {
    _O.SERVICE_ACTION_IN_16: frozenset((sc.ServiceActionIn16.READ_CAPACITY_16, sc.ServiceActionIn16.GET_LBA_STATUS)),
    _O.MAINTENANCE_IN: frozenset((sc.MaintenanceIn.REPORT_SUPPORTED_OPERATION_CODES,
                                  sc.MaintenanceIn.REPORT_SUPPORTED_TASK_MANAGEMENT_FUNCTIONS)),
}

_HOST_TO_RESPONSE = {
    DID_NO_CONNECT: _R.BAD_TARGET, DID_BAD_TARGET: _R.BAD_TARGET, DID_BUS_BUSY: _R.BUSY,
    DID_TIME_OUT: _R.ABORTED, DID_ABORT: _R.ABORTED, DID_RESET: _R.RESET,
    DID_TRANSPORT_DISRUPTED: _R.TRANSPORT_FAILURE, DID_TARGET_FAILURE: _R.TARGET_FAILURE,
    DID_NEXUS_FAILURE: _R.NEXUS_FAILURE,
}


def allow_list(peripheral_type: int, writable: bool) -> frozenset[int]:
    """The opcodes passed through to a device of ``peripheral_type``."""
    mmc = peripheral_type == sc.PeripheralDeviceType.CD_DVD
    allowed = set(READ_ONLY_COMMANDS) | set(SERVICE_ACTIONS)
    if mmc or writable:
        allowed |= MEDIUM_COMMANDS
    if mmc:
        allowed |= MMC_READ_COMMANDS
    if writable:
        allowed |= MMC_WRITE_COMMANDS if mmc else SBC_WRITE_COMMANDS
    # The MMC lists (0x42 READ SUB-CHANNEL, 0xA1 BLANK) never reach a disk, where those codes
    # are UNMAP and ATA PASS-THROUGH (12).
    return frozenset(allowed)


class PassthroughUnit:
    """A host SCSI device behind SG_IO.  ``path``: its ``/dev/sgN`` (opened here unless ``fd``
    is given); ``sg_io``: the call (default the ioctl); ``peripheral_type``: asked with INQUIRY
    unless given."""

    def __init__(self, path: str, *, writable: bool = False, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 sg_io: SgIoCall | None = None, fd: int | None = None,
                 peripheral_type: int | None = None):
        self.path = path
        self.writable = writable
        self.timeout_ms = timeout_ms
        self.sg_io: SgIoCall = sg_io or linux_sg_io
        self.fd = fd if fd is not None else (open_sg(path) if sg_io is None else -1)
        self.unit_attentions: deque[int] = deque()
        self.stats = {"commands": 0, "refused": 0, "host_errors": 0}
        self.peripheral_type = peripheral_type if peripheral_type is not None else self._probe_type()
        self.allowed = allow_list(self.peripheral_type, writable)

    def _probe_type(self) -> int:
        data = bytearray(36)
        task = Task(cdb=bytes((_O.INQUIRY, 0, 0, 0, 36, 0)), data_in=[memoryview(data)])
        self._issue(task)
        if task.status != sc.Status.GOOD or task.response != _R.OK or task.transferred < 1:
            return sc.PeripheralDeviceType.UNKNOWN_OR_NO_DEVICE
        return data[0] & 0x1F

    # --- the LogicalUnit interface ---------------------------------------------------------------

    def add_unit_attention(self, code: int) -> None:
        """Our own conditions (LUN inventory changes) go before the device's answers."""
        if code not in self.unit_attentions and len(self.unit_attentions) < MAX_UNIT_ATTENTIONS:
            self.unit_attentions.append(code)

    def reset(self, code: int = sc.AdditionalSense.BUS_DEVICE_RESET_FUNCTION_OCCURRED) -> None:
        """A reset of our unit: the host device is not reset (it may serve others)."""
        self.unit_attentions.clear()

    def execute(self, task: Task) -> None:
        """Check the CDB, pass it to the device, map the result."""
        self.stats["commands"] += 1
        try:
            self._check(task)
        except CheckCondition as cc:
            self.stats["refused"] += 1
            task.check_condition(cc.sense())
            return
        self._issue(task)

    def _check(self, task: Task) -> None:
        cdb = task.cdb
        if not cdb:
            raise invalid_opcode()
        op = cdb[0]
        if self.unit_attentions and op not in (_O.INQUIRY, _O.REPORT_LUNS, _O.REQUEST_SENSE):
            raise CheckCondition(sc.SenseKey.UNIT_ATTENTION, self.unit_attentions.popleft())
        length = cdb_length(op)
        if op not in self.allowed or length is None:
            raise invalid_opcode()
        actions = SERVICE_ACTIONS.get(op)
        if actions is not None and len(cdb) > 1 and cdb[1] & 0x1F not in actions:
            raise invalid_field(1, 4)
        if len(cdb) < length:
            raise invalid_field(len(cdb))
        task.cdb = bytes(cdb[:length])
        if task.out_len and task.in_len:
            raise invalid_field(0)  # bidirectional: VIRTIO_SCSI_F_INOUT is not offered
        if max(task.out_len, task.in_len) > MAX_TRANSFER:
            raise invalid_field(0)

    def _issue(self, task: Task) -> None:
        out_len, in_len = task.out_len, task.in_len
        length = out_len or in_len
        direction = SG_DXFER_TO_DEV if out_len else SG_DXFER_FROM_DEV if in_len else SG_DXFER_NONE
        buf = ctypes.create_string_buffer(task.read_out(out_len) if out_len else length)
        cdb = ctypes.create_string_buffer(task.cdb, len(task.cdb))
        sense = ctypes.create_string_buffer(SENSE_BUFFER)
        hdr = SgIoHdr(interface_id=SG_INTERFACE_ID, dxfer_direction=direction, cmd_len=len(task.cdb),
                      mx_sb_len=SENSE_BUFFER, dxfer_len=length,
                      dxferp=ctypes.cast(buf, ctypes.c_void_p) if length else None,
                      cmdp=ctypes.cast(cdb, ctypes.c_void_p), sbp=ctypes.cast(sense, ctypes.c_void_p),
                      timeout=self.timeout_ms)
        try:
            self.sg_io(self.fd, hdr)
        except OSError as exc:
            self.stats["host_errors"] += 1
            log.warning("scsi passthrough %s: SG_IO failed: %s", self.path, exc)
            task.response = _R.TRANSPORT_FAILURE
            return
        if hdr.host_status != DID_OK or hdr.driver_status == DRIVER_TIMEOUT:
            self.stats["host_errors"] += 1
            task.response = _HOST_TO_RESPONSE.get(hdr.host_status, _R.ABORTED if hdr.driver_status == DRIVER_TIMEOUT else _R.FAILURE)
            return
        done = max(0, min(length, length - hdr.resid))
        if in_len and done:
            task.reply(buf.raw[:done])
        task.transferred = done
        task.status = hdr.status
        task.sense = sense.raw[:hdr.sb_len_wr]

    def describe(self) -> dict:
        """What the control socket shows."""
        return {"type": "passthrough", "path": self.path, "writable": self.writable,
                "peripheral_type": self.peripheral_type, **self.stats}

    def close(self) -> None:
        """Close the host device."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
