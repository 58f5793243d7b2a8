"""A CD/DVD-ROM logical unit (MMC-6) over an ISO image, with a tray the host and the guest move.

Commands: INQUIRY (peripheral type 5, removable; VPD 0x00, 0x80, 0x83), TEST UNIT READY, REQUEST
SENSE, READ CAPACITY, READ (10) (12), GET CONFIGURATION (profile list with CD-ROM and DVD-ROM,
core, morphing, removable medium, random readable, CD read or DVD read; RT 0, 1 and 2), READ
TOC/PMA/ATIP (formats 0 and 1, LBA and MSF), GET EVENT STATUS NOTIFICATION (polled, media class),
START STOP UNIT (eject, load), PREVENT ALLOW MEDIUM REMOVAL, MODE SENSE (6) (10) (pages 0x01,
0x0A, 0x2A), READ DISC INFORMATION (standard), MODE SELECT of the control page.

State: ``medium`` (None: no disc), ``tray_open``, ``prevent`` (the guest locked the tray).  What
the guest sees of a change, as Linux's sr driver expects it:

* host :meth:`eject` (refused while the guest prevents removal, unless forced; then an EJECT
  REQUEST media event tells the guest someone pressed the button): the tray opens, the disc is
  gone; UNIT ATTENTION, MEDIUM NOT PRESENT (3Ah); media event MEDIA REMOVAL; TEST UNIT READY
  NOT READY, MEDIUM NOT PRESENT - TRAY OPEN (3Ah/02h).
* host :meth:`insert`: the new disc is in and the tray closed; UNIT ATTENTION, NOT READY TO
  READY CHANGE, MEDIUM MAY HAVE CHANGED (28h/00h); media event NEW MEDIA.
* guest START STOP UNIT with LOEJ: eject opens the tray (ILLEGAL REQUEST, MEDIUM REMOVAL
  PREVENTED while prevented), load closes it (the disc still in it comes back: NEW MEDIA).
"""

from __future__ import annotations

from typing import Callable

from ...errors import UsageError
from ...spec import scsi_cmd as sc
from .media import Medium
from .sense import CheckCondition, invalid_field, write_protected
from .spc import EmulatedUnit, be, check_rw_range
from .task import Task

_O = sc.Opcode
_SK = sc.SenseKey
_ASC = sc.AdditionalSense
_F = sc.MmcFeature
_P = sc.MmcProfile

#: A disc larger than a CD's 80 minutes (360000 blocks of 2048) is reported as a DVD (QEMU's
#: media_is_dvd rule).
CD_MAX_BLOCKS = 80 * 60 * 75

_RW: dict[int, tuple[int, int, int, int]] = {_O.READ_10: (2, 4, 7, 2), _O.READ_12: (2, 4, 6, 4)}


class MediumLocked(UsageError):
    """A host eject refused: the guest prevents medium removal (PREVENT ALLOW MEDIUM REMOVAL)."""


class CdromUnit(EmulatedUnit):
    """An MMC-6 CD/DVD-ROM drive with a tray; ``medium`` may be None (an empty drive)."""

    peripheral_type = sc.PeripheralDeviceType.CD_DVD
    removable = True
    product = "PYVIRTIO CD-ROM"
    block_size = sc.MMC_BLOCK_SIZE
    ua_exempt = EmulatedUnit.ua_exempt | {_O.GET_CONFIGURATION, _O.GET_EVENT_STATUS_NOTIFICATION}

    def __init__(self, medium: Medium | None, *, serial: str = "pyvirtio-cd", **kw):
        self.medium = medium
        self.tray_open = False
        self.prevent = False
        #: The media event the next GET EVENT STATUS NOTIFICATION reports (then NO CHANGE).
        self.media_event = sc.MediaEventCode.NO_CHANGE
        #: Called after any medium change (the HBA sends asynchronous notifications).
        self.on_change: Callable[[], None] | None = None
        super().__init__(serial=serial, **kw)
        self.commands.update({
            _O.READ_CAPACITY: self.read_capacity,
            _O.READ_10: self.read,
            _O.READ_12: self.read,
            _O.WRITE_10: self.write,
            _O.WRITE_12: self.write,
            _O.GET_CONFIGURATION: self.get_configuration,
            _O.READ_TOC_PMA_ATIP: self.read_toc,
            _O.GET_EVENT_STATUS_NOTIFICATION: self.get_event_status,
            _O.START_STOP_UNIT: self.start_stop,
            _O.PREVENT_ALLOW_MEDIUM_REMOVAL: self.prevent_allow,
            _O.READ_DISC_INFORMATION: self.read_disc_information,
            _O.READ_TRACK_INFORMATION: self.read_track_information,
            _O.MECHANISM_STATUS: self.mechanism_status,
            _O.SYNCHRONIZE_CACHE: lambda task: None,
        })

    # --- state ------------------------------------------------------------------------------------

    @property
    def present(self) -> bool:
        """A disc is in the closed tray: media-access commands may run."""
        return self.medium is not None and not self.tray_open

    @property
    def capacity(self) -> int:
        """Blocks of 2048 bytes on the disc (0 without one)."""
        return self.medium.size // self.block_size if self.medium is not None else 0

    @property
    def profile(self) -> int:
        """The current MMC profile: CD-ROM, DVD-ROM by size, or none."""
        if not self.present:
            return _P.NONE
        return _P.DVD_ROM if self.capacity > CD_MAX_BLOCKS else _P.CD_ROM

    def check_ready(self) -> None:
        if not self.present:
            code = _ASC.MEDIUM_NOT_PRESENT_TRAY_OPEN if self.tray_open else _ASC.MEDIUM_NOT_PRESENT_TRAY_CLOSED
            raise CheckCondition(_SK.NOT_READY, code)

    def state_sense(self, descriptor: bool) -> bytes:
        try:
            self.check_ready()
        except CheckCondition as cc:
            return cc.sense(descriptor)
        return super().state_sense(descriptor)

    def reset(self, code: int = _ASC.BUS_DEVICE_RESET_FUNCTION_OCCURRED) -> None:
        super().reset(code)
        self.prevent = False  # SPC-4 6.13: a logical unit reset ends the prevention

    # --- host API (run by the HBA in its worker) ----------------------------------------------------

    def eject(self, force: bool = False) -> Medium | None:
        """Open the tray and take the disc out; returns it (the caller closes it).  Raises
        :class:`MediumLocked` while the guest prevents removal, unless ``force``."""
        if self.prevent and not force:
            self.media_event = sc.MediaEventCode.EJECT_REQUEST
            self._changed()
            raise MediumLocked("the guest prevents medium removal (PREVENT ALLOW MEDIUM REMOVAL); "
                               "asked it to eject (EJECT REQUEST event), or use force")
        medium, self.medium = self.medium, None
        self.tray_open = True
        self.prevent = False if force else self.prevent
        self.add_unit_attention(_ASC.MEDIUM_NOT_PRESENT)
        self.media_event = sc.MediaEventCode.MEDIA_REMOVAL
        self._changed()
        return medium

    def insert(self, medium: Medium) -> Medium | None:
        """Put ``medium`` in and close the tray; returns the disc it replaced (if any)."""
        old, self.medium = self.medium, medium
        self.tray_open = False
        self.add_unit_attention(_ASC.NOT_READY_TO_READY_CHANGE_MEDIUM_MAY_HAVE_CHANGED)
        self.media_event = sc.MediaEventCode.NEW_MEDIA
        self._changed()
        return old

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # --- transfer lengths ------------------------------------------------------------------------

    def transfer_length(self, cdb: bytes) -> tuple[str, int]:
        op = cdb[0]
        if op in _RW:
            return "in", be(cdb, *_RW[op][2:]) * self.block_size
        if op == _O.READ_CAPACITY:
            return "in", sc.READ_CAPACITY_10_SIZE
        return super().transfer_length(cdb)

    # --- commands ----------------------------------------------------------------------------------

    def version_descriptors(self) -> tuple[int, ...]:
        return super().version_descriptors() + (sc.VersionDescriptor.MMC_6,)

    def read_capacity(self, task: Task) -> None:
        """READ CAPACITY (MMC-6 6.23): last LBA and 2048."""
        self.check_ready()
        task.reply(sc.READ_CAPACITY_10_DATA.pack(self.capacity - 1, self.block_size))

    def read(self, task: Task) -> None:
        """READ (10) (12) (MMC-6 6.18, 6.19)."""
        self.check_ready()
        cdb = task.cdb
        lba = be(cdb, 2, 4)
        blocks = be(cdb, *_RW[cdb[0]][2:])
        check_rw_range(lba, blocks, self.capacity)
        assert self.medium is not None
        length = blocks * self.block_size
        self.medium.readv(lba * self.block_size, task.in_views(length))
        task.transferred = length

    def write(self, task: Task) -> None:
        """A read-only disc: DATA PROTECT, WRITE PROTECTED (NOT READY without one)."""
        self.check_ready()
        raise write_protected()

    def get_configuration(self, task: Task) -> None:
        """GET CONFIGURATION (MMC-6 6.6)."""
        cdb = task.cdb
        rt, start = cdb[1] & sc.GET_CONFIGURATION_RT_MASK, be(cdb, 2, 2)
        if rt == 3:
            raise invalid_field(1, 1)
        body = b""
        for code, current, data in self._features():
            if code < start or (rt == sc.GetConfigurationRt.CURRENT and not current):
                continue
            if rt == sc.GetConfigurationRt.ONE and code != start:
                continue
            body += data
        head = sc.FEATURE_HEADER.pack(4 + len(body), self.profile)
        task.reply(head + body, be(cdb, 7, 2))

    def _features(self) -> list[tuple[int, bool, bytes]]:
        """(feature code, current, descriptor) in feature code order (MMC-6 5.3)."""
        dvd, present = self.profile == _P.DVD_ROM, self.present
        profiles = b"".join(sc.PROFILE_DESCRIPTOR.pack(p, sc.PROFILE_CURRENTP if p == self.profile else 0)
                            for p in (_P.DVD_ROM, _P.CD_ROM))
        mechanism = (sc.LOADING_MECHANISM_TRAY << sc.LOADING_MECHANISM_SHIFT) | sc.REMOVABLE_LOAD \
            | sc.REMOVABLE_EJECT | sc.REMOVABLE_LOCK
        return [
            (_F.PROFILE_LIST, True, _feature(_F.PROFILE_LIST, 0, True, profiles)),
            (_F.CORE, True, _feature(_F.CORE, 1, True, sc.PHYSICAL_INTERFACE_SCSI.to_bytes(4, "big") + b"\x01\0\0\0")),
            (_F.MORPHING, True, _feature(_F.MORPHING, 1, True, b"\x02\0\0\0")),  # OCEvent
            (_F.REMOVABLE_MEDIUM, True, _feature(_F.REMOVABLE_MEDIUM, 0, True, bytes((mechanism, 0, 0, 0)))),
            (_F.RANDOM_READABLE, present, _feature(
                _F.RANDOM_READABLE, 0, present,
                self.block_size.to_bytes(4, "big") + (16 if dvd else 1).to_bytes(2, "big") + b"\x01\0")),
            (_F.CD_READ, present and not dvd, _feature(_F.CD_READ, 0, present and not dvd, bytes(4))),
            (_F.DVD_READ, present and dvd, _feature(_F.DVD_READ, 0, present and dvd, b"")),
        ]

    def read_toc(self, task: Task) -> None:
        """READ TOC/PMA/ATIP (MMC-6 6.33): formats 0 (TOC) and 1 (session information)."""
        self.check_ready()
        cdb = task.cdb
        msf, fmt, track = bool(cdb[1] & sc.TOC_MSF), cdb[2] & 0x0F, cdb[6]
        if fmt == 0 and not cdb[2] & 0x0F and cdb[9] >> 6:
            fmt = cdb[9] >> 6  # the old ATAPI place of the format (SFF-8020)
        if fmt == sc.TocFormat.TOC:
            if track > 1 and track != sc.TOC_LEAD_OUT_TRACK:
                raise invalid_field(6)
            descs = b"" if track == sc.TOC_LEAD_OUT_TRACK else self._toc_entry(1, 0, msf)
            descs += self._toc_entry(sc.TOC_LEAD_OUT_TRACK, self.capacity, msf)
        elif fmt == sc.TocFormat.SESSION_INFORMATION:
            descs = self._toc_entry(1, 0, msf)
        else:
            raise invalid_field(2)
        task.reply(sc.TOC_HEADER.pack(2 + len(descs), 1, 1) + descs, be(cdb, 7, 2))

    @staticmethod
    def _toc_entry(track: int, lba: int, msf: bool) -> bytes:
        return sc.TOC_DESCRIPTOR.pack(sc.TOC_ADR_CONTROL_DATA, track, lba_to_msf(lba) if msf else lba.to_bytes(4, "big"))

    def get_event_status(self, task: Task) -> None:
        """GET EVENT STATUS NOTIFICATION (MMC-6 6.7), polled only; the media class."""
        cdb = task.cdb
        if not cdb[1] & sc.GESN_POLLED:
            raise invalid_field(1, 0)
        supported = sc.NotificationClassRequest.MEDIA
        if cdb[4] & supported:
            code, self.media_event = self.media_event, sc.MediaEventCode.NO_CHANGE
            # an open tray reports only that (QEMU does the same; Linux's cdrom driver reads
            # DOOR OPEN first either way)
            status = sc.GESN_TRAY_OPEN if self.tray_open else \
                sc.GESN_MEDIA_PRESENT if self.medium is not None else 0
            body = bytes((code, status, 0, 0))
            head = sc.GESN_HEADER.pack(2 + len(body), sc.NotificationClass.MEDIA, supported)
        else:
            body = b""
            head = sc.GESN_HEADER.pack(2, sc.GESN_NEA, supported)
        task.reply(head + body, be(cdb, 7, 2))

    def start_stop(self, task: Task) -> None:
        """START STOP UNIT (MMC-6 6.40): LOEJ with START 0 ejects, with START 1 loads."""
        flags = task.cdb[4]
        if flags >> sc.START_STOP_POWER_CONDITION_SHIFT:
            return  # power conditions: nothing to do
        if not flags & sc.START_STOP_LOEJ:
            return
        if flags & sc.START_STOP_START:
            if self.tray_open:
                self.tray_open = False
                if self.medium is not None:
                    self.media_event = sc.MediaEventCode.NEW_MEDIA
                    self._changed()
            return
        if self.prevent:
            raise CheckCondition(_SK.ILLEGAL_REQUEST, _ASC.MEDIUM_REMOVAL_PREVENTED)
        if not self.tray_open:
            self.tray_open = True
            self.media_event = sc.MediaEventCode.MEDIA_REMOVAL
            self._changed()

    def prevent_allow(self, task: Task) -> None:
        """PREVENT ALLOW MEDIUM REMOVAL: the tray lock."""
        self.prevent = bool(task.cdb[4] & sc.PREVENT_MASK)

    def read_disc_information(self, task: Task) -> None:
        """READ DISC INFORMATION (MMC-6 6.22): the standard block of a finished disc."""
        self.check_ready()
        cdb = task.cdb
        if cdb[1] & 0x07 != sc.DiscInformationDataType.STANDARD:
            raise invalid_field(1, 2)
        out = bytearray(sc.DISC_INFORMATION_SIZE)
        out[0:2] = sc.DISC_INFORMATION_LENGTH.to_bytes(2, "big")
        out[2] = (sc.LAST_SESSION_COMPLETE << sc.DISC_STATE_SHIFT) | sc.DISC_STATUS_COMPLETE
        out[3] = out[4] = out[5] = out[6] = 1  # first track, sessions, first/last track of last
        out[7] = sc.DISC_INFO_URU
        out[8] = sc.DISC_TYPE_CD_DA_OR_CD_ROM
        out[16:20] = b"\xff\xff\xff\xff"  # last session lead-in start: none
        out[20:24] = b"\xff\xff\xff\xff"  # last possible lead-out start: none
        task.reply(bytes(out), be(cdb, 7, 2))

    def read_track_information(self, task: Task) -> None:
        """READ TRACK INFORMATION (MMC-6 6.27): the one data track, by LBA, track or session."""
        self.check_ready()
        cdb = task.cdb
        kind, number = cdb[1] & 0x03, be(cdb, 2, 4)
        if kind == 0 and number >= self.capacity:
            raise invalid_field(2)
        if kind in (1, 2) and number != 1 and not (kind == 1 and number == 0xFF):
            raise invalid_field(2)
        if kind == 3:
            raise invalid_field(1, 1)
        out = bytearray(sc.TRACK_INFORMATION_SIZE)
        out[0:2] = (sc.TRACK_INFORMATION_SIZE - 2).to_bytes(2, "big")
        out[2] = out[3] = 1  # track 1 of session 1
        out[5] = sc.TRACK_MODE_DATA
        out[6] = sc.DATA_MODE_1
        out[24:28] = self.capacity.to_bytes(4, "big")  # track size
        out[28:32] = (self.capacity - 1).to_bytes(4, "big")  # last recorded address
        task.reply(bytes(out), be(cdb, 7, 2))

    def mechanism_status(self, task: Task) -> None:
        """MECHANISM STATUS (MMC-6 6.11): no changer; the door (tray) state."""
        header = bytes((0, sc.MECHANISM_DOOR_OPEN if self.tray_open else 0, 0, 0, 0, 0, 0, 0))
        task.reply(header, be(task.cdb, 8, 2))

    # --- mode pages --------------------------------------------------------------------------------

    def mode_pages(self, pc: int) -> dict[int, bytes]:
        pages = super().mode_pages(pc)
        changeable = pc == sc.ModePageControl.CHANGEABLE
        recovery = bytearray(2 + sc.READ_WRITE_ERROR_RECOVERY_PAGE_LENGTH)
        recovery[0], recovery[1] = sc.ModePage.READ_WRITE_ERROR_RECOVERY, sc.READ_WRITE_ERROR_RECOVERY_PAGE_LENGTH
        caps = bytearray(2 + sc.CAPABILITIES_PAGE_LENGTH)
        caps[0], caps[1] = sc.ModePage.CD_DVD_CAPABILITIES_AND_MECHANICAL_STATUS, sc.CAPABILITIES_PAGE_LENGTH
        if not changeable:
            caps[2] = sc.CAP_DVD_ROM_READ  # reads CD-ROM and DVD-ROM; writes nothing
            caps[4] = sc.CAP_MODE2_FORM1 | sc.CAP_MULTI_SESSION
            caps[6] = (sc.LOADING_MECHANISM_TRAY << sc.LOADING_MECHANISM_SHIFT) | sc.CAP_EJECT \
                | sc.CAP_LOCK | (sc.CAP_LOCK_STATE if self.prevent else 0)
            caps[8:10] = (16 * 176).to_bytes(2, "big")  # maximum read speed (obsolete): 16x
            caps[10:12] = (256).to_bytes(2, "big")  # volume levels
            caps[12:14] = (2048).to_bytes(2, "big")  # buffer size KiB
            caps[14:16] = (16 * 176).to_bytes(2, "big")  # current read speed
        pages[sc.ModePage.READ_WRITE_ERROR_RECOVERY] = bytes(recovery)
        pages[sc.ModePage.CD_DVD_CAPABILITIES_AND_MECHANICAL_STATUS] = bytes(caps)
        return pages

    def describe(self) -> dict:
        return {**super().describe(), "medium": self.medium.path if self.medium is not None else None,
                "tray_open": self.tray_open, "prevent": self.prevent, "blocks": self.capacity}

    def close(self) -> None:
        if self.medium is not None:
            self.medium.close()
            self.medium = None


def _feature(code: int, version: int, current: bool, data: bytes) -> bytes:
    """One feature descriptor (MMC-6 5.2.2): code, version, persistent/current, data."""
    flags = (version << sc.FEATURE_VERSION_SHIFT) | (sc.FEATURE_CURRENT if current else 0)
    if code in (_F.PROFILE_LIST, _F.CORE, _F.MORPHING, _F.REMOVABLE_MEDIUM):
        flags |= sc.FEATURE_PERSISTENT
    return sc.FEATURE_DESCRIPTOR_HEADER.pack(code, flags, len(data)) + data


def lba_to_msf(lba: int) -> bytes:
    """An LBA as the 4-byte MSF address of MMC-6 4.2.3.7 (0, minute, second, frame)."""
    frames = lba + sc.MSF_LBA_OFFSET
    minute, rest = divmod(frames, sc.MSF_FRAMES_PER_SECOND * sc.MSF_SECONDS_PER_MINUTE)
    second, frame = divmod(rest, sc.MSF_FRAMES_PER_SECOND)
    return bytes((0, minute & 0xFF, second, frame))
