"""Sense data as the driver receives it (SPC-4, 4.5): fixed (response codes 0x70/0x71) and
descriptor (0x72/0x73) formats parsed into one typed :class:`Sense`.

The bytes come from the device, so nothing is trusted: a buffer too short for its format or with
a response code that is neither raises :class:`SenseFormatError` (the device's fault); an
additional-length field that runs past the buffer is cut to the buffer (devices truncate sense to
``sense_size``; that is allowed), and a descriptor that runs past the end is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DeviceFault, Scope
from ..spec import scsi_cmd as sc
from ..spec.scsi_cmd import SenseKey, SenseResponseCode as Code
from ..spec.scsi_cmd import SENSE_HEADER_SIZE as HEADER_SIZE, SenseDescriptorType


class SenseFormatError(DeviceFault):
    """Sense data the device returned does not follow SPC-4's formats."""

    scope = Scope.REQUEST


@dataclass(frozen=True)
class Sense:
    """Parsed sense data.  ``key``/``asc``/``ascq`` are what callers test; ``information`` is the
    INFORMATION field when the device marked it valid (fixed: VALID bit; descriptor: an
    INFORMATION descriptor with VALID set), else None; ``descriptors`` are the descriptor format's
    (type, body) pairs (empty for fixed)."""

    response_code: int
    key: int
    asc: int
    ascq: int
    information: int | None = None
    filemark: bool = False
    eom: bool = False
    ili: bool = False
    sense_specific: bytes = b""
    descriptors: tuple[tuple[int, bytes], ...] = ()

    @property
    def deferred(self) -> bool:
        """A deferred error (0x71/0x73): it belongs to an earlier command."""
        return self.response_code in (Code.FIXED_DEFERRED, Code.DESCRIPTOR_DEFERRED)

    @property
    def descriptor_format(self) -> bool:
        """Whether the device used the descriptor format."""
        return self.response_code in (Code.DESCRIPTOR_CURRENT, Code.DESCRIPTOR_DEFERRED)

    @property
    def key_name(self) -> str:
        """The sense key's name (SPC-4 4.5.6)."""
        try:
            return SenseKey(self.key).name
        except ValueError:
            return f"sense key {self.key:#x}"

    @property
    def condition(self) -> int:
        """``ASC << 8 | ASCQ``, comparable with :class:`~pyvirtio.spec.scsi_cmd.AdditionalSense`."""
        return self.asc << 8 | self.ascq

    def __str__(self) -> str:
        text = f"{self.key_name}, ASC/ASCQ {self.asc:#04x}/{self.ascq:#04x}"
        if self.condition in sc.AdditionalSense._value2member_map_:
            text += f" ({sc.AdditionalSense(self.condition).name})"
        return text + (f", information {self.information:#x}" if self.information is not None else "")


def parse_sense(raw: bytes) -> Sense:
    """Parse sense data of either format; raises :class:`SenseFormatError` for garbage."""
    if not raw:
        raise SenseFormatError("empty sense data")
    code = raw[0] & 0x7F
    if code in (Code.FIXED_CURRENT, Code.FIXED_DEFERRED):
        return _fixed(raw, code)
    if code in (Code.DESCRIPTOR_CURRENT, Code.DESCRIPTOR_DEFERRED):
        return _descriptor(raw, code)
    raise SenseFormatError(f"sense response code {code:#04x} is neither fixed (0x70/0x71) nor descriptor (0x72/0x73)")


def _fixed(raw: bytes, code: int) -> Sense:
    if len(raw) < HEADER_SIZE:
        raise SenseFormatError(f"fixed-format sense of {len(raw)} bytes (< {HEADER_SIZE})")
    end = min(len(raw), HEADER_SIZE + raw[sc.SENSE_OFFSET_ADDITIONAL_LENGTH])
    body = raw[:end] + bytes(max(0, sc.FIXED_SENSE_SIZE - end))  # past the length: zero
    info_at = sc.SENSE_OFFSET_INFORMATION
    info = int.from_bytes(body[info_at:info_at + 4], "big") if raw[0] & sc.SENSE_VALID else None
    flags, sks = body[sc.SENSE_OFFSET_KEY], sc.SENSE_OFFSET_SKS
    return Sense(code, flags & 0xF, body[sc.SENSE_OFFSET_ASC], body[sc.SENSE_OFFSET_ASCQ], info,
                 bool(flags & sc.SENSE_FILEMARK), bool(flags & sc.SENSE_EOM), bool(flags & sc.SENSE_ILI),
                 bytes(body[sks:sks + 3]) if body[sks] & sc.SKS_VALID else b"")


def _descriptor(raw: bytes, code: int) -> Sense:
    if len(raw) < HEADER_SIZE:
        raise SenseFormatError(f"descriptor-format sense of {len(raw)} bytes (< {HEADER_SIZE})")
    end = min(len(raw), HEADER_SIZE + raw[sc.SENSE_OFFSET_ADDITIONAL_LENGTH])
    descriptors, info, pos = [], None, HEADER_SIZE
    head = sc.SENSE_DESCRIPTOR_HEADER_SIZE
    while pos + head <= end:
        dtype, dlen = raw[pos], raw[pos + 1]
        if pos + head + dlen > end:
            break  # cut by the buffer: dropped
        body = bytes(raw[pos + head:pos + head + dlen])
        descriptors.append((dtype, body))
        if (dtype == SenseDescriptorType.INFORMATION and dlen >= sc.SENSE_INFORMATION_DESCRIPTOR_LENGTH
                and body[0] & sc.SENSE_VALID):
            info = int.from_bytes(body[2:10], "big")
        pos += head + dlen
    return Sense(code, raw[sc.DESCRIPTOR_SENSE_OFFSET_KEY] & 0xF, raw[sc.DESCRIPTOR_SENSE_OFFSET_ASC],
                 raw[sc.DESCRIPTOR_SENSE_OFFSET_ASCQ], info, descriptors=tuple(descriptors))

