"""A direct-access block logical unit (SBC-3) over a :class:`~.media.Medium`.

Commands: INQUIRY (VPD 0x00, 0x80, 0x83, 0xB0 block limits, 0xB1 block device characteristics,
0xB2 logical block provisioning), READ CAPACITY (10) and (16), READ / WRITE (6) (10) (12) (16),
WRITE AND VERIFY, VERIFY (10) (16) (BYTCHK 0, or 1 and 3: compared with the data-out
buffer, MISCOMPARE with the offset of the first differing byte), SYNCHRONIZE CACHE (10) (16), UNMAP, WRITE SAME
(10) (16) with the UNMAP and NDOB bits, MODE SENSE / MODE SELECT (6) (10) with the read-write
error recovery, caching (WCE changeable) and control (D_SENSE changeable) pages, TEST UNIT READY,
REQUEST SENSE, START STOP UNIT and PREVENT ALLOW MEDIUM REMOVAL (accepted; the medium is fixed).
REPORT LUNS is the target's (:mod:`.target`).

Errors, each with the sense SBC-3 names: a range past the capacity gets LOGICAL BLOCK ADDRESS
OUT OF RANGE (INFORMATION: the LBA), a write to a read-only unit DATA PROTECT / WRITE PROTECTED,
a bad field INVALID FIELD IN CDB or INVALID FIELD IN PARAMETER LIST with its field pointer, a
short parameter list PARAMETER LIST LENGTH ERROR, a failing host I/O MEDIUM ERROR.  With the
write cache off (WCE 0) or FUA set, a write is followed by a flush before GOOD.
"""

from __future__ import annotations

from typing import Callable

from ...spec import scsi_cmd as sc
from ..blk_io import READ, WRITE
from .media import Medium, write_pattern, write_zeroes
from .sense import CheckCondition, invalid_field, invalid_opcode, invalid_parameter, parameter_list_length_error, write_protected
from .spc import EmulatedUnit, be, check_rw_range
from .task import Task

_O = sc.Opcode
_SK = sc.SenseKey
_ASC = sc.AdditionalSense

#: Largest single READ/WRITE: 8 MiB (block limits MAXIMUM TRANSFER LENGTH, in blocks).
MAX_TRANSFER_BYTES = 8 << 20
#: UNMAP limits advertised on VPD 0xB0 and enforced.
MAX_UNMAP_BLOCKS = 0x3FFFFF
MAX_UNMAP_DESCRIPTORS = 64
#: WRITE SAME limit (blocks) advertised and enforced.
MAX_WRITE_SAME_BLOCKS = 0x3FFFFF
AIO_MODES = ("auto", "io_uring", "threads", "off")
#: Block limits byte 4: WSNZ, a WRITE SAME of 0 blocks is refused (SBC-3 6.6.4).
WSNZ = 0x01

# opcode -> (LBA offset, LBA size, length offset, length size) of the READ/WRITE family
_RW: dict[int, tuple[int, int, int, int]] = {
    _O.READ_6: (1, 3, 4, 1), _O.WRITE_6: (1, 3, 4, 1),
    _O.READ_10: (2, 4, 7, 2), _O.WRITE_10: (2, 4, 7, 2), _O.WRITE_AND_VERIFY_10: (2, 4, 7, 2),
    _O.VERIFY_10: (2, 4, 7, 2),
    _O.READ_12: (2, 4, 6, 4), _O.WRITE_12: (2, 4, 6, 4),
    _O.READ_16: (2, 8, 10, 4), _O.WRITE_16: (2, 8, 10, 4), _O.WRITE_AND_VERIFY_16: (2, 8, 10, 4),
    _O.VERIFY_16: (2, 8, 10, 4),
}
_READS = frozenset((_O.READ_6, _O.READ_10, _O.READ_12, _O.READ_16))
_WRITES = frozenset((_O.WRITE_6, _O.WRITE_10, _O.WRITE_12, _O.WRITE_16,
                     _O.WRITE_AND_VERIFY_10, _O.WRITE_AND_VERIFY_16))


def rw_fields(cdb: bytes) -> tuple[int, int]:
    """(LBA, blocks) of a READ/WRITE/VERIFY CDB; READ/WRITE (6): 21-bit LBA, 0 blocks = 256."""
    lba_off, lba_size, len_off, len_size = _RW[cdb[0]]
    lba, blocks = be(cdb, lba_off, lba_size), be(cdb, len_off, len_size)
    if cdb[0] in (_O.READ_6, _O.WRITE_6):
        lba &= 0x1FFFFF
        blocks = blocks or sc.RW6_ZERO_MEANS
    return lba, blocks


class DiskUnit(EmulatedUnit):
    """An SBC-3 disk over ``medium`` (``block_size`` bytes per logical block)."""

    peripheral_type = sc.PeripheralDeviceType.DIRECT_ACCESS_BLOCK
    product = "PYVIRTIO DISK"

    def __init__(self, medium: Medium, *, serial: str = "pyvirtio-disk", block_size: int = 512,
                 read_only: bool | None = None, writeback: bool = True, discard: bool = True,
                 aio: str = "auto", **kw):
        if block_size not in (512, 1024, 2048, 4096):
            raise ValueError(f"block size {block_size} is not one of 512, 1024, 2048, 4096")
        self.medium = medium
        self.block_size = block_size
        self.read_only = medium.read_only if read_only is None else read_only or medium.read_only
        self.writeback = writeback
        self.discard = discard and not self.read_only
        if aio not in AIO_MODES:
            raise ValueError(f"aio {aio!r} is not one of {', '.join(AIO_MODES)}")
        #: How READ/WRITE data moves: "off" here, synchronously; else the HBA's I/O engine
        #: (:mod:`.disk_io`: io_uring, threads, or auto) when :attr:`defer` is set.
        self.aio = aio
        #: Set by the HBA when it can run this unit's data transfers asynchronously.
        self.defer = False
        super().__init__(serial=serial, **kw)
        table: dict[int, Callable[[Task], None]] = {op: self.read_write for op in _RW}
        table.update({
            _O.READ_CAPACITY_10: self.read_capacity_10,
            _O.SERVICE_ACTION_IN_16: self.service_action_in,
            _O.SYNCHRONIZE_CACHE_10: self.synchronize_cache,
            _O.SYNCHRONIZE_CACHE_16: self.synchronize_cache,
            _O.UNMAP: self.unmap,
            _O.WRITE_SAME_10: self.write_same,
            _O.WRITE_SAME_16: self.write_same,
            _O.START_STOP_UNIT: lambda task: None,
            _O.PREVENT_ALLOW_MEDIUM_REMOVAL: lambda task: None,
        })
        self.commands.update(table)

    @property
    def capacity(self) -> int:
        """Logical blocks on the medium."""
        return self.medium.size // self.block_size

    # --- data transfer length for the OVERRUN check ----------------------------------------------

    def transfer_length(self, cdb: bytes) -> tuple[str, int]:
        op = cdb[0]
        if op in _READS:
            return "in", rw_fields(cdb)[1] * self.block_size
        if op in _WRITES:
            return "out", rw_fields(cdb)[1] * self.block_size
        if op in (_O.VERIFY_10, _O.VERIFY_16) and cdb[1] & 0x06:  # BYTCHK: data out to compare
            bytchk = (cdb[1] >> 1) & 0x03
            return "out", self.block_size if bytchk == 3 else rw_fields(cdb)[1] * self.block_size
        if op == _O.READ_CAPACITY_10:
            return "in", sc.READ_CAPACITY_10_SIZE
        if op in (_O.WRITE_SAME_10, _O.WRITE_SAME_16):
            ndob = op == _O.WRITE_SAME_16 and cdb[1] & sc.WRITE_SAME_NDOB
            return "out", 0 if ndob else self.block_size
        return super().transfer_length(cdb)

    # --- INQUIRY VPD pages (SBC-3 6.6) --------------------------------------------------------------

    def version_descriptors(self) -> tuple[int, ...]:
        return super().version_descriptors() + (sc.VersionDescriptor.SBC_3,)

    def vpd_pages(self) -> dict[int, Callable[[], bytes]]:
        pages = super().vpd_pages()
        pages[sc.VpdPage.BLOCK_LIMITS] = self.block_limits
        pages[sc.VpdPage.BLOCK_DEVICE_CHARACTERISTICS] = self.block_device_characteristics
        pages[sc.VpdPage.LOGICAL_BLOCK_PROVISIONING] = self.logical_block_provisioning
        return pages

    def block_limits(self) -> bytes:
        """VPD 0xB0 (SBC-3 6.6.4): transfer, UNMAP and WRITE SAME limits."""
        out = bytearray(sc.BLOCK_LIMITS_PAGE_LENGTH)
        body = memoryview(out)
        out[0] = WSNZ  # byte 4 of the page
        body[4:8] = (MAX_TRANSFER_BYTES // self.block_size).to_bytes(4, "big")  # page bytes 8-11
        body[8:12] = (MAX_TRANSFER_BYTES // self.block_size).to_bytes(4, "big")  # optimal
        if self.discard:
            body[16:20] = MAX_UNMAP_BLOCKS.to_bytes(4, "big")
            body[20:24] = MAX_UNMAP_DESCRIPTORS.to_bytes(4, "big")
            body[24:28] = (1).to_bytes(4, "big")  # OPTIMAL UNMAP GRANULARITY
        body[32:40] = MAX_WRITE_SAME_BLOCKS.to_bytes(8, "big")
        return bytes(out)

    def block_device_characteristics(self) -> bytes:
        """VPD 0xB1 (SBC-3 6.6.2): a non-rotating medium."""
        out = bytearray(sc.BLOCK_DEVICE_CHARACTERISTICS_PAGE_LENGTH)
        out[0:2] = sc.MEDIUM_ROTATION_RATE_NON_ROTATING.to_bytes(2, "big")
        return bytes(out)

    def logical_block_provisioning(self) -> bytes:
        """VPD 0xB2 (SBC-3 6.6.5): UNMAP and WRITE SAME with UNMAP when discard is on; unmapped
        blocks read as zeros (LBPRZ)."""
        flags = (sc.LBP_LBPU | sc.LBP_LBPWS | sc.LBP_LBPWS10 | sc.LBP_LBPRZ) if self.discard else 0
        kind = sc.ProvisioningType.THIN if self.discard else sc.ProvisioningType.FULL
        return bytes((0, flags, kind, 0))

    # --- capacity (SBC-3 5.15, 5.16) -------------------------------------------------------------

    def read_capacity_10(self, task: Task) -> None:
        """Last LBA (0xFFFFFFFF if it does not fit: use READ CAPACITY (16)) and block size."""
        last = self.capacity - 1
        task.reply(sc.READ_CAPACITY_10_DATA.pack(min(last, sc.READ_CAPACITY_10_LBA_MAX), self.block_size))

    def service_action_in(self, task: Task) -> None:
        """SERVICE ACTION IN (16): READ CAPACITY (16) only."""
        cdb = task.cdb
        if cdb[1] & 0x1F != sc.ServiceActionIn16.READ_CAPACITY_16:
            raise invalid_field(1, 4)
        lbp = (sc.READ_CAPACITY_16_LBPME | sc.READ_CAPACITY_16_LBPRZ) if self.discard else 0
        data = sc.READ_CAPACITY_16_DATA.pack(self.capacity - 1, self.block_size, 0, 0, lbp)
        task.reply(data, be(cdb, 10, 4))

    # --- media access -----------------------------------------------------------------------------

    def read_write(self, task: Task) -> None:
        """READ/WRITE/VERIFY (6) (10) (12) (16)."""
        cdb = task.cdb
        lba, blocks = rw_fields(cdb)
        op = cdb[0]
        if cdb[0] not in (_O.READ_6, _O.WRITE_6):
            if cdb[1] & 0xE0 and op not in (_O.VERIFY_10, _O.VERIFY_16, _O.WRITE_AND_VERIFY_10,
                                            _O.WRITE_AND_VERIFY_16):
                raise invalid_field(1, 7)  # RDPROTECT/WRPROTECT: no protection information
        if op in _WRITES and self.read_only:
            raise write_protected()
        check_rw_range(lba, blocks, self.capacity)
        length = blocks * self.block_size
        if length > MAX_TRANSFER_BYTES:
            raise invalid_field(_RW[op][2])
        if op in _READS:
            task.transferred = length
            if self.defer and length:
                task.deferred = (READ, lba * self.block_size, length, False)
                return
            self.medium.readv(lba * self.block_size, task.in_views(length))
        elif op in _WRITES:
            task.transferred = length
            sync = not self.writeback or (op != _O.WRITE_6 and bool(cdb[1] & sc.CDB_FUA))
            if self.defer and length:
                task.deferred = (WRITE, lba * self.block_size, length, sync)
                return
            self.medium.writev(lba * self.block_size, task.out_views(length))
            if sync:
                self.medium.flush()
        elif cdb[1] & 0x06:
            self._verify(task, (cdb[1] >> 1) & 0x03, lba * self.block_size, length)

    def _verify(self, task: Task, bytchk: int, offset: int, length: int) -> None:
        """VERIFY with BYTCHK (SBC-3 5.33, table 114): 1 compares the data-out buffer with the
        blocks, 3 compares one data-out block with each; 2 is reserved."""
        if bytchk == 2:
            raise invalid_field(1, 2)
        sent = task.read_out(self.block_size if bytchk == 3 else length)
        if bytchk == 3:
            sent = sent * (length // self.block_size)
        stored = bytearray(length)
        if length:
            self.medium.readv(offset, [memoryview(stored)])
        if stored != sent:
            first = next(i for i in range(length) if stored[i] != sent[i])
            raise CheckCondition(_SK.MISCOMPARE, _ASC.MISCOMPARE_DURING_VERIFY_OPERATION, information=first)

    def synchronize_cache(self, task: Task) -> None:
        """SYNCHRONIZE CACHE (10) (16): the range is checked, the whole medium flushed."""
        cdb = task.cdb
        if cdb[0] == _O.SYNCHRONIZE_CACHE_10:
            lba, blocks = be(cdb, 2, 4), be(cdb, 7, 2)
        else:
            lba, blocks = be(cdb, 2, 8), be(cdb, 10, 4)
        check_rw_range(lba, blocks, self.capacity)
        if not self.read_only:
            self.medium.flush()

    def unmap(self, task: Task) -> None:
        """UNMAP (SBC-3 5.28): every descriptor checked before any block is unmapped."""
        cdb = task.cdb
        if not self.discard:
            if self.read_only:
                raise write_protected()
            raise invalid_opcode()
        if cdb[1] & sc.UNMAP_ANCHOR:
            raise invalid_field(1, 0)
        length = be(cdb, 7, 2)
        if length == 0:
            return
        if length < sc.UNMAP_HEADER_SIZE:
            raise parameter_list_length_error()
        data = task.read_out(length)
        data_len, desc_len = sc.UNMAP_HEADER.unpack_from(data)
        if data_len + 2 > length or data_len < 6:
            raise invalid_parameter(0)
        if desc_len + sc.UNMAP_HEADER_SIZE > length or desc_len % sc.UNMAP_DESCRIPTOR_SIZE:
            raise invalid_parameter(2)
        count = desc_len // sc.UNMAP_DESCRIPTOR_SIZE
        if count > MAX_UNMAP_DESCRIPTORS:
            raise invalid_parameter(2)
        ranges = []
        for i in range(count):
            off = sc.UNMAP_HEADER_SIZE + i * sc.UNMAP_DESCRIPTOR_SIZE
            lba, blocks = sc.UNMAP_DESCRIPTOR.unpack_from(data, off)
            if blocks > MAX_UNMAP_BLOCKS:
                raise invalid_parameter(off + 8)
            check_rw_range(lba, blocks, self.capacity)
            ranges.append((lba, blocks))
        for lba, blocks in ranges:
            if blocks:
                self.medium.discard(lba * self.block_size, blocks * self.block_size)

    def write_same(self, task: Task) -> None:
        """WRITE SAME (10) (16): one block repeated; UNMAP with a zero block (or NDOB)
        deallocates, which reads back as zeros (LBPRZ)."""
        cdb = task.cdb
        sixteen = cdb[0] == _O.WRITE_SAME_16
        lba, blocks = (be(cdb, 2, 8), be(cdb, 10, 4)) if sixteen else (be(cdb, 2, 4), be(cdb, 7, 2))
        flags = cdb[1]
        if flags & 0xE0:
            raise invalid_field(1, 7)  # WRPROTECT
        if flags & sc.WRITE_SAME_ANCHOR:
            raise invalid_field(1, 4)
        if flags & 0x06:  # PBDATA / LBDATA (obsolete in SBC-3)
            raise invalid_field(1, 1)
        if blocks == 0 or blocks > MAX_WRITE_SAME_BLOCKS:
            raise invalid_field(10 if sixteen else 7)  # WSNZ: 0 blocks is refused
        if self.read_only:
            raise write_protected()
        check_rw_range(lba, blocks, self.capacity)
        ndob = sixteen and flags & sc.WRITE_SAME_NDOB
        block = bytes(self.block_size) if ndob else task.read_out(self.block_size)
        offset, length = lba * self.block_size, blocks * self.block_size
        if not any(block) and (self.discard or flags & sc.WRITE_SAME_UNMAP == 0):
            # zeros: a hole reads back as zeros (LBPRZ), and costs nothing; Linux zeroes whole
            # devices this way (REQ_OP_WRITE_ZEROES).  We report no mapping state (no GET LBA
            # STATUS), so a guest cannot tell a hole from written zeros.
            self.medium.discard(offset, length)
        elif not any(block):
            write_zeroes(self.medium, offset, length)
        else:
            write_pattern(self.medium, offset, block, blocks)
        if not self.writeback:
            self.medium.flush()

    # --- mode pages (SBC-3 6.4) ----------------------------------------------------------------

    def mode_pages(self, pc: int) -> dict[int, bytes]:
        pages = super().mode_pages(pc)
        changeable = pc == sc.ModePageControl.CHANGEABLE
        wce = self.writeback if pc == sc.ModePageControl.CURRENT else True
        caching = bytearray(2 + sc.CACHING_PAGE_LENGTH)
        caching[0], caching[1] = sc.ModePage.CACHING, sc.CACHING_PAGE_LENGTH
        caching[2] = sc.CACHING_WCE if (changeable or wce) else 0
        recovery = bytearray(2 + sc.READ_WRITE_ERROR_RECOVERY_PAGE_LENGTH)
        recovery[0], recovery[1] = sc.ModePage.READ_WRITE_ERROR_RECOVERY, sc.READ_WRITE_ERROR_RECOVERY_PAGE_LENGTH
        pages[sc.ModePage.CACHING] = bytes(caching)
        pages[sc.ModePage.READ_WRITE_ERROR_RECOVERY] = bytes(recovery)
        return pages

    def apply_mode_page(self, code: int, page: bytes) -> None:
        if code == sc.ModePage.CACHING:
            self.writeback = bool(page[2] & sc.CACHING_WCE)
        super().apply_mode_page(code, page)

    def mode_device_specific(self) -> int:
        return (sc.MODE_DSP_WP if self.read_only else 0) | sc.MODE_DSP_DPOFUA

    def block_descriptor(self) -> bytes:
        blocks = min(self.capacity, 0xFFFFFFFF)
        return blocks.to_bytes(4, "big") + b"\0" + self.block_size.to_bytes(3, "big")

    def describe(self) -> dict:
        return {**super().describe(), "path": self.medium.path, "blocks": self.capacity,
                "block_size": self.block_size, "read_only": self.read_only, "writeback": self.writeback}

    def close(self) -> None:
        self.medium.close()

