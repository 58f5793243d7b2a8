"""The common SCSI commands on one logical unit, over :class:`~pyvirtio.drivers.scsi.ScsiDriver`
(what sg3-utils' ``sg_inq``, ``sg_readcap``, ``sg_vpd`` ... send): CDB builders and parsers of
what comes back.

    lun = driver.lun(0, 0)
    lun.inquiry().vendor; lun.vpd(0x80); lun.read_capacity16(); lun.read(0, 8)
    lun.write(0, data); lun.test_unit_ready(); lun.report_luns(); lun.eject()

Every call sends one CDB and raises :class:`~pyvirtio.drivers.scsi.ScsiCommandError` (with the
sense data) when the device does not answer GOOD; :meth:`ScsiLun.command` returns the raw result
instead.  Response data comes from the device and is parsed defensively: a field beyond what the
device returned reads as zero.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from ..errors import RequestError, UsageError
from ..spec import scsi_cmd as op
from ..spec.scsi_cmd import Opcode as _O

if TYPE_CHECKING:
    from .scsi import ScsiDriver, ScsiResult


@dataclass(frozen=True)
class InquiryData:
    """Standard INQUIRY data (SPC-4, 6.6.2): the fields a host identifies a unit by."""

    peripheral_qualifier: int
    device_type: int
    removable: bool
    version: int
    vendor: str
    product: str
    revision: str
    raw: bytes

    @classmethod
    def parse(cls, raw: bytes) -> "InquiryData":
        """Parse standard INQUIRY data (short data reads as zeros/blank)."""
        b = raw.ljust(36, b"\0")
        text = lambda s: s.decode("ascii", "replace").rstrip(" \0")  # noqa: E731
        return cls(b[0] >> 5, b[0] & 0x1F, bool(b[1] & 0x80), b[2], text(b[8:16]), text(b[16:32]),
                   text(b[32:36]), bytes(raw))


class Capacity(NamedTuple):
    """READ CAPACITY: the number of logical blocks (last LBA + 1) and the block length."""

    blocks: int
    block_size: int

    @property
    def bytes(self) -> int:
        """Capacity in bytes."""
        return self.blocks * self.block_size


class TocEntry(NamedTuple):
    """One track descriptor of READ TOC format 0 (MMC-6, 6.40.2.2): track 0xAA is the lead-out."""

    track: int
    adr_control: int
    lba: int


class MediaEvent(NamedTuple):
    """GET EVENT STATUS NOTIFICATION, media class (MMC-6, 6.7.2.6)."""

    event_code: int
    door_open: bool
    media_present: bool


def _rw_cdb(op10: int, op16: int, lba: int, blocks: int) -> bytes:
    """A READ/WRITE CDB: the 10-byte form when ``lba`` < 2**32 and ``blocks`` < 2**16, else the
    16-byte one (SBC-3 5.11, 5.14)."""
    if lba < 1 << 32 and blocks < 1 << 16:
        return bytes((op10, 0)) + struct.pack(">IBH", lba, 0, blocks) + b"\0"
    return bytes((op16, 0)) + struct.pack(">QI", lba, blocks) + bytes(2)


class ScsiLun:
    """One logical unit (``target``, ``lun``) behind a :class:`~pyvirtio.drivers.scsi.ScsiDriver`."""

    def __init__(self, driver: "ScsiDriver", target: int, lun: int = 0):
        self.driver, self.target, self.lun = driver, target, lun
        self._block_size: int | None = None

    @property
    def block_size(self) -> int:
        """The logical block length: from the last READ CAPACITY, which the first read or write
        sends when none was (READ CAPACITY(10) if the unit rejects (16), as MMC drives may)."""
        if self._block_size is None:
            try:
                self.read_capacity16()
            except RequestError:  # ScsiCommandError
                self.read_capacity10()
        return self._block_size or op.SBC_BLOCK_SIZE

    def command(self, cdb: bytes, *, data_out: bytes = b"", data_in_len: int = 0,
                timeout: float | None = 30.0) -> "ScsiResult":
        """Send one CDB; returns the result whatever its status."""
        return self.driver.execute(self.target, self.lun, cdb, data_out=data_out,
                                   data_in_len=data_in_len, timeout=timeout)

    def _ok(self, cdb: bytes, **kw) -> "ScsiResult":
        return self.command(cdb, **kw).check()

    # --- SPC ------------------------------------------------------------------------------------

    def test_unit_ready(self) -> "ScsiResult":
        """TEST UNIT READY; returns the result (not ready is CHECK CONDITION with sense)."""
        return self.command(bytes(6))

    def request_sense(self, length: int = 252):
        """REQUEST SENSE: the unit's pending sense data, parsed (None when it returned none)."""
        from .scsi_sense import parse_sense
        data = self._ok(bytes((_O.REQUEST_SENSE, 0, 0, 0, length, 0)), data_in_len=length).data
        return parse_sense(data) if data else None

    def inquiry(self, length: int = 96) -> InquiryData:
        """Standard INQUIRY."""
        cdb = bytes((_O.INQUIRY, 0, 0)) + length.to_bytes(2, "big") + b"\0"
        return InquiryData.parse(self._ok(cdb, data_in_len=length).data)

    def vpd(self, page: int, length: int = 255) -> bytes:
        """INQUIRY with EVPD: the page's payload (after the 4-byte header, cut to its length)."""
        cdb = bytes((_O.INQUIRY, op.INQUIRY_EVPD, page)) + length.to_bytes(2, "big") + b"\0"
        data = self._ok(cdb, data_in_len=length).data
        if len(data) < 4 or data[1] != page:
            raise UsageError(f"VPD page {page:#04x}: the device returned page "
                             f"{data[1] if len(data) > 1 else None} ({len(data)} bytes)")
        return data[4:4 + int.from_bytes(data[2:4], "big")]

    def serial(self) -> str:
        """The unit serial number (VPD page 0x80)."""
        return self.vpd(op.VpdPage.UNIT_SERIAL_NUMBER).decode("ascii", "replace").strip(" \0")

    def report_luns(self, length: int = 4096) -> list[int]:
        """REPORT LUNS: the LUN numbers (flat/peripheral single-level addressing decoded)."""
        cdb = bytes((_O.REPORT_LUNS, 0, 0, 0, 0, 0)) + length.to_bytes(4, "big") + bytes(2)
        data = self._ok(cdb, data_in_len=length).data
        count = int.from_bytes(data[:4].ljust(4, b"\0"), "big") // 8
        entries = [data[8 + 8 * i:16 + 8 * i] for i in range(count) if 16 + 8 * i <= len(data)]
        return [((e[0] << 8) | e[1]) & op.LUN_FLAT_MAX for e in entries]

    def mode_sense10(self, page: int, subpage: int = 0, length: int = 255) -> bytes:
        """MODE SENSE(10) of ``page``: the whole returned parameter data (header included)."""
        cdb = bytes((_O.MODE_SENSE_10, op.MODE_SENSE_DBD, page & op.MODE_PAGE_CODE_MASK, subpage, 0, 0, 0)) + length.to_bytes(2, "big") + b"\0"
        return self._ok(cdb, data_in_len=length).data

    # --- SBC ------------------------------------------------------------------------------------

    def read_capacity10(self) -> Capacity:
        """READ CAPACITY(10) (last LBA 0xFFFFFFFF means: ask READ CAPACITY(16))."""
        data = self._ok(bytes((_O.READ_CAPACITY_10,)) + bytes(9), data_in_len=8).data.ljust(8, b"\0")
        last, size = struct.unpack(">II", data[:8])
        self._block_size = size or self._block_size
        return Capacity(last + 1, size)

    def read_capacity16(self) -> Capacity:
        """READ CAPACITY(16) (SERVICE ACTION IN(16))."""
        cdb = bytes((_O.SERVICE_ACTION_IN_16, op.ServiceActionIn16.READ_CAPACITY_16)) + bytes(8) + (32).to_bytes(4, "big") + bytes(2)
        data = self._ok(cdb, data_in_len=32).data.ljust(12, b"\0")
        last, size = struct.unpack(">QI", data[:12])
        self._block_size = size or self._block_size
        return Capacity(last + 1, size)

    def read(self, lba: int, blocks: int) -> bytes:
        """Read ``blocks`` blocks of :attr:`block_size` from ``lba``: READ(10) when the LBA and the
        count fit it (as Linux's sd does; MMC drives have no READ(16)), else READ(16)."""
        return self._ok(_rw_cdb(_O.READ_10, _O.READ_16, lba, blocks), data_in_len=blocks * self.block_size).data

    def write(self, lba: int, data: bytes) -> None:
        """Write ``data`` (a whole number of blocks) at ``lba``: WRITE(10), or WRITE(16) past
        its reach."""
        size = self.block_size
        if not data or len(data) % size:
            raise UsageError(f"{len(data)} bytes is not a positive multiple of the block size {size}")
        self._ok(_rw_cdb(_O.WRITE_10, _O.WRITE_16, lba, len(data) // size), data_out=data)

    def read16(self, lba: int, blocks: int) -> bytes:
        """READ(16), whatever the LBA (SBC units)."""
        cdb = bytes((_O.READ_16, 0)) + struct.pack(">QI", lba, blocks) + bytes(2)
        return self._ok(cdb, data_in_len=blocks * self.block_size).data

    def read10(self, lba: int, blocks: int) -> bytes:
        """READ(10) (what a CD-ROM driver sends; 2048-byte blocks on a CD)."""
        return self._ok(_rw_cdb(_O.READ_10, _O.READ_10, lba, blocks), data_in_len=blocks * self.block_size).data

    def synchronize_cache(self) -> None:
        """SYNCHRONIZE CACHE(10) of the whole unit."""
        self._ok(bytes((_O.SYNCHRONIZE_CACHE_10,)) + bytes(9))

    # --- MMC ------------------------------------------------------------------------------------

    def read_toc(self, length: int = 804) -> list[TocEntry]:
        """READ TOC/PMA/ATIP format 0 with LBA addresses: the tracks and the lead-out."""
        cdb = bytes((_O.READ_TOC_PMA_ATIP, 0, op.TocFormat.TOC, 0, 0, 0, 0)) + length.to_bytes(2, "big") + b"\0"
        data = self._ok(cdb, data_in_len=length).data
        end = min(len(data), 2 + int.from_bytes(data[:2].ljust(2, b"\0"), "big"))
        return [TocEntry(data[p + 2], data[p + 1], int.from_bytes(data[p + 4:p + 8], "big"))
                for p in range(4, end - 7, 8)]

    def media_event(self) -> MediaEvent:
        """GET EVENT STATUS NOTIFICATION, polled, media class."""
        cdb = bytes((_O.GET_EVENT_STATUS_NOTIFICATION, op.GESN_POLLED, 0, 0, op.NotificationClassRequest.MEDIA, 0, 0, 0, 8, 0))
        data = self._ok(cdb, data_in_len=8).data.ljust(8, b"\0")
        return MediaEvent(data[4] & 0x0F, bool(data[5] & op.GESN_TRAY_OPEN), bool(data[5] & op.GESN_MEDIA_PRESENT))

    def start_stop(self, start: bool, load_eject: bool = False) -> None:
        """START STOP UNIT: ``start`` False with ``load_eject`` ejects, True with it loads."""
        self._ok(bytes((_O.START_STOP_UNIT, 0, 0, 0, (op.START_STOP_LOEJ if load_eject else 0) | (op.START_STOP_START if start else 0), 0)))

    def eject(self) -> None:
        """START STOP UNIT with LOEJ, stop: open the tray."""
        self.start_stop(False, True)

    def prevent_removal(self, prevent: bool) -> None:
        """PREVENT ALLOW MEDIUM REMOVAL."""
        self._ok(bytes((_O.PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, int(prevent), 0)))
