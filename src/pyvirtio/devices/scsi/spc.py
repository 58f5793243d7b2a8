"""What every emulated logical unit shares (SPC-4): the command dispatch, unit attention,
INQUIRY and its common VPD pages, REQUEST SENSE, TEST UNIT READY, MODE SENSE / MODE SELECT.

:meth:`EmulatedUnit.execute` runs one command, in this order (SAM-5 5.14, SPC-4 4.2, 5.14;
QEMU's scsi-bus.c does the same):

1. a pending unit attention ends any command but INQUIRY, REPORT LUNS and REQUEST SENSE (and a
   unit's own exemptions: MMC adds GET CONFIGURATION and GET EVENT STATUS NOTIFICATION) with
   CHECK CONDITION, UNIT ATTENTION and is cleared;
2. an operation code the unit does not implement: ILLEGAL REQUEST, INVALID COMMAND OPERATION
   CODE; a CDB shorter than its opcode group's length: ILLEGAL REQUEST, INVALID FIELD IN CDB;
3. the data the CDB asks for (allocation length, parameter list length, blocks) is compared
   with the buffers: more than they hold is the transport response OVERRUN, and the command does
   not run (VIRTIO 1.3, 5.6.6.1);
4. the command's handler; a :class:`~.sense.CheckCondition` it raises becomes status CHECK
   CONDITION with sense data, an ``OSError`` from the medium MEDIUM ERROR, and any other
   exception (a bug of ours) HARDWARE ERROR, INTERNAL TARGET FAILURE — logged, never raised.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from typing import Callable

from ...limits import PeerLog
from ...spec import scsi_cmd as sc
from ...spec.scsi import ScsiResponse
from .sense import (NO_SENSE, CheckCondition, build_sense, invalid_field, invalid_opcode,
                    invalid_parameter, medium_error, parameter_list_length_error)
from .task import Task

log = logging.getLogger(__name__)
guest_log = PeerLog(log)

_O = sc.Opcode
_SK = sc.SenseKey
_ASC = sc.AdditionalSense

#: At most this many unit attention conditions queue up per unit; older ones are dropped
#: (SPC-4 5.14: a device server may report only the most important).
MAX_UNIT_ATTENTIONS = 8
VENDOR = "PYVIRTIO"
REVISION = "2.0"

Handler = Callable[[Task], None]


def be(data: bytes, offset: int, size: int) -> int:
    """The big-endian unsigned field of ``size`` bytes at ``offset``."""
    return int.from_bytes(data[offset:offset + size], "big")


def cdb_length(opcode: int) -> int | None:
    """The CDB length of ``opcode``'s group (SPC-4 4.2.5.1), None for groups without one."""
    return sc.CDB_GROUP_LENGTH.get(opcode >> sc.CDB_GROUP_SHIFT)


def ascii_field(text: str, size: int) -> bytes:
    """``text`` as a left-aligned, space-padded ASCII field of ``size`` bytes (SPC-4 4.3.1)."""
    return text.encode("ascii", "replace")[:size].ljust(size, b" ")


class EmulatedUnit:
    """A logical unit emulated in Python.  Subclasses fill :attr:`commands`, and provide
    :meth:`transfer_length`, :meth:`vpd_pages`, :meth:`mode_pages` as they need."""

    peripheral_type: int = sc.PeripheralDeviceType.DIRECT_ACCESS_BLOCK
    removable: bool = False
    product: str = "QEMU-COMPATIBLE"
    #: Commands that neither report nor clear a pending unit attention.
    ua_exempt: frozenset[int] = frozenset((_O.INQUIRY, _O.REPORT_LUNS, _O.REQUEST_SENSE))
    block_size: int = sc.SBC_BLOCK_SIZE

    def __init__(self, *, serial: str, vendor: str = VENDOR, product: str | None = None,
                 revision: str = REVISION):
        self.serial = serial
        self.vendor = vendor
        if product is not None:
            self.product = product
        self.revision = revision
        self.unit_attentions: deque[int] = deque()
        self.descriptor_sense = False
        self.stats = {"commands": 0, "check_conditions": 0, "overruns": 0}
        self.commands: dict[int, Handler] = {
            _O.INQUIRY: self.inquiry,
            _O.REQUEST_SENSE: self.request_sense,
            _O.TEST_UNIT_READY: self.test_unit_ready,
            _O.MODE_SENSE_6: self.mode_sense,
            _O.MODE_SENSE_10: self.mode_sense,
            _O.MODE_SELECT_6: self.mode_select,
            _O.MODE_SELECT_10: self.mode_select,
        }
        self.power_on()

    # --- unit attention (SPC-4 5.14) ------------------------------------------------------------

    def add_unit_attention(self, code: int) -> None:
        """Queue a UNIT ATTENTION condition (``ASC << 8 | ASCQ``); the same one is queued once."""
        if code in self.unit_attentions:
            return
        if len(self.unit_attentions) >= MAX_UNIT_ATTENTIONS:
            self.unit_attentions.popleft()
        self.unit_attentions.append(code)

    def power_on(self) -> None:
        """Power on or hard reset: every other condition gives way to POWER ON, RESET, OR BUS
        DEVICE RESET OCCURRED (29h/00h, what QEMU reports too)."""
        self.unit_attentions.clear()
        self.add_unit_attention(_ASC.POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED)

    def reset(self, code: int = _ASC.BUS_DEVICE_RESET_FUNCTION_OCCURRED) -> None:
        """A logical unit reset or I_T nexus loss (``code`` says which, SAM-5 6.3): pending
        unit attentions give way to it; subclasses drop their own state (medium locks)."""
        self.unit_attentions.clear()
        self.add_unit_attention(code)

    # --- execute ----------------------------------------------------------------------------------

    def execute(self, task: Task) -> None:
        """Run ``task`` to its end (status, sense, data); never raises for anything in it."""
        self.stats["commands"] += 1
        try:
            self._execute(task)
        except CheckCondition as cc:
            self.stats["check_conditions"] += 1
            task.check_condition(cc.sense(self.descriptor_sense))
        except OSError as exc:
            write = task.out_len > 0
            guest_log.warning("scsi %s: host I/O error on opcode %#04x: %s", self.serial, task.opcode, exc)
            self.stats["check_conditions"] += 1
            task.check_condition(medium_error(write).sense(self.descriptor_sense))
        except Exception:  # a bug of ours must not take the queue down
            log.exception("scsi %s: opcode %#04x failed", self.serial, task.opcode)
            self.stats["check_conditions"] += 1
            task.check_condition(build_sense(_SK.HARDWARE_ERROR, _ASC.INTERNAL_TARGET_FAILURE,
                                             descriptor=self.descriptor_sense))

    def _execute(self, task: Task) -> None:
        cdb = task.cdb
        if not cdb:
            raise invalid_opcode()
        op = cdb[0]
        if self.unit_attentions and op not in self.ua_exempt:
            raise CheckCondition(_SK.UNIT_ATTENTION, self.unit_attentions.popleft())
        handler = self.commands.get(op)
        length = cdb_length(op)
        if handler is None or length is None:
            raise invalid_opcode()
        if len(cdb) < length:
            raise invalid_field(len(cdb))
        task.cdb = bytes(cdb[:length])
        direction, need = self.transfer_length(task.cdb)
        if need > (task.in_len if direction == "in" else task.out_len):
            self.stats["overruns"] += 1
            task.response = ScsiResponse.OVERRUN
            return
        handler(task)

    def transfer_length(self, cdb: bytes) -> tuple[str, int]:
        """``("in" | "out", bytes)`` the CDB asks to move (0 for none)."""
        op = cdb[0]
        field = sc.ALLOCATION_LENGTH_FIELD.get(op)
        if field is not None:
            return "in", be(cdb, *field)
        field = sc.PARAMETER_LIST_LENGTH_FIELD.get(op)
        if field is not None:
            return "out", be(cdb, *field)
        return "in", 0

    # --- INQUIRY (SPC-4 6.6) ----------------------------------------------------------------------

    def inquiry(self, task: Task) -> None:
        """Standard INQUIRY data, or a VPD page with EVPD."""
        cdb = task.cdb
        alloc = be(cdb, 3, 2)
        if cdb[1] & ~sc.INQUIRY_EVPD & 0xFF:
            raise invalid_field(1)  # CMDDT and reserved bits
        if not cdb[1] & sc.INQUIRY_EVPD:
            if cdb[2]:
                raise invalid_field(2)
            task.reply(self.standard_inquiry(), alloc)
            return
        pages = self.vpd_pages()
        make = pages.get(cdb[2])
        if make is None:
            raise invalid_field(2)
        body = make()
        task.reply(bytes((self.peripheral_type, cdb[2])) + len(body).to_bytes(2, "big") + body, alloc)

    def standard_inquiry(self) -> bytes:
        """96 bytes of standard INQUIRY data (SPC-4 6.6.2)."""
        out = bytearray(96)
        out[0] = self.peripheral_type
        out[1] = sc.INQUIRY_RMB if self.removable else 0
        out[2] = sc.Version.SPC_4
        out[3] = sc.INQUIRY_HISUP | sc.INQUIRY_RESPONSE_DATA_FORMAT
        out[4] = len(out) - 5
        out[7] = sc.INQUIRY_CMDQUE
        out[8:16] = ascii_field(self.vendor, sc.INQUIRY_VENDOR_SIZE)
        out[16:32] = ascii_field(self.product, sc.INQUIRY_PRODUCT_SIZE)
        out[32:36] = ascii_field(self.revision, sc.INQUIRY_REVISION_SIZE)
        for i, desc in enumerate(self.version_descriptors()):
            out[58 + 2 * i:60 + 2 * i] = int(desc).to_bytes(2, "big")
        return bytes(out)

    def version_descriptors(self) -> tuple[int, ...]:
        """The standards claimed in the version descriptors."""
        return (sc.VersionDescriptor.SAM_5, sc.VersionDescriptor.SPC_4)

    def vpd_pages(self) -> dict[int, Callable[[], bytes]]:
        """VPD page code -> the page's payload (after its 4-byte header)."""
        pages: dict[int, Callable[[], bytes]] = {
            sc.VpdPage.SUPPORTED_VPD_PAGES: lambda: bytes(sorted(self.vpd_pages())),
            sc.VpdPage.UNIT_SERIAL_NUMBER: lambda: self.serial.encode("ascii", "replace"),
            sc.VpdPage.DEVICE_IDENTIFICATION: self.device_identification,
        }
        return pages

    def naa(self) -> bytes:
        """A locally assigned NAA name (SPC-4 7.8.6.6.3), derived from vendor and serial."""
        digest = int.from_bytes(hashlib.sha256(f"{self.vendor}:{self.serial}".encode()).digest()[:8], "big")
        return ((sc.NAA_LOCALLY_ASSIGNED << 60) | (digest & ((1 << 60) - 1))).to_bytes(8, "big")

    def device_identification(self) -> bytes:
        """VPD 0x83: a T10 vendor ID designator and an NAA designator of the logical unit."""
        t10 = ascii_field(self.vendor, 8) + self.serial.encode("ascii", "replace")
        return (_designator(sc.CodeSet.ASCII, sc.DesignatorType.T10_VENDOR_ID, t10)
                + _designator(sc.CodeSet.BINARY, sc.DesignatorType.NAA, self.naa()))

    # --- REQUEST SENSE, TEST UNIT READY -----------------------------------------------------------

    def request_sense(self, task: Task) -> None:
        """The pending unit attention (cleared), else the unit's state (SPC-4 6.39)."""
        cdb = task.cdb
        if cdb[1] & ~sc.REQUEST_SENSE_DESC & 0xFF:
            raise invalid_field(1)
        desc = bool(cdb[1] & sc.REQUEST_SENSE_DESC)
        if self.unit_attentions:
            sense = build_sense(_SK.UNIT_ATTENTION, self.unit_attentions.popleft(), descriptor=desc)
        else:
            sense = self.state_sense(desc)
        task.reply(sense, cdb[4])

    def state_sense(self, descriptor: bool) -> bytes:
        """REQUEST SENSE without a pending condition: NO SENSE (a unit without a medium says so)."""
        return build_sense(_SK.NO_SENSE, _ASC.NO_ADDITIONAL_SENSE_INFORMATION, descriptor=descriptor) \
            if descriptor else NO_SENSE

    def test_unit_ready(self, task: Task) -> None:
        """GOOD when the unit can take media-access commands; :meth:`check_ready` says."""
        self.check_ready()

    def check_ready(self) -> None:
        """Raise NOT READY when the medium cannot be accessed (a disk always can)."""

    # --- MODE SENSE / MODE SELECT (SPC-4 6.9-6.12, 7.5) --------------------------------------------

    def mode_pages(self, pc: int) -> dict[int, bytes]:
        """page code -> the page (with its 2-byte header) for page control ``pc`` (CURRENT,
        CHANGEABLE: a mask of the bits MODE SELECT may change, DEFAULT)."""
        d_sense = sc.CONTROL_D_SENSE if (
            (pc == sc.ModePageControl.CURRENT and self.descriptor_sense) or pc == sc.ModePageControl.CHANGEABLE) else 0
        control = bytearray(2 + sc.CONTROL_PAGE_LENGTH)
        control[0], control[1], control[2] = sc.ModePage.CONTROL, sc.CONTROL_PAGE_LENGTH, d_sense
        return {sc.ModePage.CONTROL: bytes(control)}

    def apply_mode_page(self, code: int, page: bytes) -> None:
        """MODE SELECT changed ``code`` to ``page`` (only changeable bits differ)."""
        if code == sc.ModePage.CONTROL:
            self.descriptor_sense = bool(page[2] & sc.CONTROL_D_SENSE)

    def mode_device_specific(self) -> int:
        """The DEVICE-SPECIFIC PARAMETER of the mode parameter header."""
        return 0

    def block_descriptor(self) -> bytes:
        """The short block descriptor (SBC-3 6.4.2.2), or nothing."""
        return b""

    def mode_sense(self, task: Task) -> None:
        """MODE SENSE (6) and (10)."""
        cdb = task.cdb
        ten = cdb[0] == _O.MODE_SENSE_10
        alloc = be(cdb, 7, 2) if ten else cdb[4]
        pc, page, sub = cdb[2] >> sc.MODE_SENSE_PC_SHIFT, cdb[2] & sc.MODE_PAGE_CODE_MASK, cdb[3]
        if pc == sc.ModePageControl.SAVED:
            raise CheckCondition(_SK.ILLEGAL_REQUEST, _ASC.SAVING_PARAMETERS_NOT_SUPPORTED, field=2, bit=7)
        if sub not in (0, sc.MODE_SUBPAGE_ALL):
            raise invalid_field(3)
        pages = self.mode_pages(pc)
        if page == sc.ModePage.ALL_PAGES:
            body = b"".join(pages[k] for k in sorted(pages))
        elif page in pages and sub == 0:
            body = pages[page]
        else:
            raise invalid_field(2, 5)
        bd = b"" if cdb[1] & sc.MODE_SENSE_DBD else self.block_descriptor()
        dsp = self.mode_device_specific()
        if ten:
            total = sc.MODE_HEADER_10_SIZE + len(bd) + len(body)
            head = sc.MODE_HEADER_10.pack(total - 2, 0, dsp, 0, len(bd))
        else:
            total = sc.MODE_HEADER_6_SIZE + len(bd) + len(body)
            head = sc.MODE_HEADER_6.pack(min(total - 1, 0xFF), 0, dsp, len(bd))
        task.reply(head + bd + body, alloc)

    def mode_select(self, task: Task) -> None:
        """MODE SELECT (6) and (10): only changeable bits may differ from the current page."""
        cdb = task.cdb
        ten = cdb[0] == _O.MODE_SELECT_10
        if cdb[1] & sc.MODE_SELECT_SP:
            raise invalid_field(1, 0)
        length = be(cdb, 7, 2) if ten else cdb[4]
        if length == 0:
            return
        data = task.read_out(length)
        hsize = sc.MODE_HEADER_10_SIZE if ten else sc.MODE_HEADER_6_SIZE
        if len(data) < hsize:
            raise parameter_list_length_error()
        bdlen = be(data, 6, 2) if ten else data[3]
        # LONGLBA (MODE SELECT (10) byte 4 bit 0): 16-byte descriptors, block length at +12
        # (SBC-3 6.4.2.3); else 8-byte ones, block length in bytes 5-7
        long_lba = ten and data[4] & 0x01
        dsize, field, width = (16, 12, 4) if long_lba else (sc.MODE_BLOCK_DESCRIPTOR_SIZE, 5, 3)
        if bdlen % dsize:
            raise invalid_parameter(6 if ten else 3)
        pos = hsize + bdlen
        if pos > len(data):
            raise parameter_list_length_error()
        for off in range(hsize, pos, dsize):
            if be(data, off + field, width) not in (0, self.block_size):
                raise invalid_parameter(off + field)
        changes = self._parse_pages(data, pos)
        for code, page in changes:
            self.apply_mode_page(code, page)

    def _parse_pages(self, data: bytes, pos: int) -> list[tuple[int, bytes]]:
        current = self.mode_pages(sc.ModePageControl.CURRENT)
        mask = self.mode_pages(sc.ModePageControl.CHANGEABLE)
        out = []
        while pos < len(data):
            if pos + 2 > len(data):
                raise parameter_list_length_error()
            code = data[pos] & sc.MODE_PAGE_CODE_MASK
            if data[pos] & sc.MODE_PAGE_SPF or code not in current:
                raise invalid_parameter(pos)
            cur, changeable = current[code], mask[code]
            if data[pos + 1] != cur[1]:
                raise invalid_parameter(pos + 1)
            end = pos + 2 + cur[1]
            if end > len(data):
                raise parameter_list_length_error()
            sent = data[pos:end]
            for i in range(2, len(cur)):
                if (sent[i] ^ cur[i]) & ~changeable[i] & 0xFF:
                    raise invalid_parameter(pos + i)
            out.append((code, bytes(sent)))
            pos = end
        return out

    # --- lifecycle --------------------------------------------------------------------------------

    def describe(self) -> dict:
        """What the control socket shows about the unit."""
        return {"type": sc.PeripheralDeviceType(self.peripheral_type).name.lower(),
                "serial": self.serial, **self.stats}

    def close(self) -> None:
        """Release the medium."""


def _designator(code_set: int, kind: int, value: bytes) -> bytes:
    """One designation descriptor of the logical unit (SPC-4 7.8.6.1)."""
    return bytes((code_set, (sc.Association.LOGICAL_UNIT << 4) | kind, 0, len(value))) + value


def check_rw_range(lba: int, blocks: int, capacity: int) -> None:
    """LOGICAL BLOCK ADDRESS OUT OF RANGE unless ``[lba, lba + blocks)`` lies on the medium."""
    from .sense import lba_out_of_range
    if lba + blocks > capacity:  # QEMU's check_lba_range: LBA = capacity with 0 blocks is fine
        raise lba_out_of_range(lba)
