"""The Linux SCSI generic ``SG_IO`` ioctl (<scsi/sg.h>, sg3 interface), behind a swappable call.

:class:`SgIoHdr` is ``struct sg_io_hdr`` as ctypes lays it out on this machine (the test
compares it with the C compiler's offsets when one is there).  :func:`linux_sg_io` is the real
call: ``fcntl.ioctl(fd, SG_IO, hdr)``.  :class:`UnitResponder` is the stand-in: a callable with
the same signature that does what the kernel's sg driver does with the header — reads the CDB
and data-out through the header's pointers, runs the command on one of our emulated logical
units, writes data-in, sense, status, residual, host/driver status and ``info`` back through the
header — so the passthrough unit's whole SG_IO path (header building, pointers, direction,
sense, residual, timeout mapping) runs where no ``/dev/sg*`` exists.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import time
from typing import Protocol

from ...spec import scsi_cmd as sc
from .task import Task

#: ioctl request number (<scsi/sg.h>).
SG_IO = 0x2285
SG_GET_VERSION_NUM = 0x2282
SG_INTERFACE_ID = ord("S")
#: dxfer_direction values.
SG_DXFER_NONE = -1
SG_DXFER_TO_DEV = -2
SG_DXFER_FROM_DEV = -3
SG_DXFER_TO_FROM_DEV = -4
#: info bits.
SG_INFO_CHECK = 0x1
#: host_status values (include/scsi/scsi.h DID_*), the ones we map.
DID_OK = 0x00
DID_NO_CONNECT = 0x01
DID_BUS_BUSY = 0x02
DID_TIME_OUT = 0x03
DID_BAD_TARGET = 0x04
DID_ABORT = 0x05
DID_RESET = 0x08
DID_TRANSPORT_DISRUPTED = 0x0E
DID_TARGET_FAILURE = 0x10
DID_NEXUS_FAILURE = 0x11
#: driver_status values (DRIVER_*).
DRIVER_OK = 0x00
DRIVER_TIMEOUT = 0x06
DRIVER_SENSE = 0x08
#: The largest CDB the sg driver takes (SG_MAX_CDB_SIZE).
SG_MAX_CDB_SIZE = 252


class SgIoHdr(ctypes.Structure):
    """``struct sg_io_hdr`` (<scsi/sg.h>)."""

    _fields_ = [
        ("interface_id", ctypes.c_int),
        ("dxfer_direction", ctypes.c_int),
        ("cmd_len", ctypes.c_ubyte),
        ("mx_sb_len", ctypes.c_ubyte),
        ("iovec_count", ctypes.c_ushort),
        ("dxfer_len", ctypes.c_uint),
        ("dxferp", ctypes.c_void_p),
        ("cmdp", ctypes.c_void_p),
        ("sbp", ctypes.c_void_p),
        ("timeout", ctypes.c_uint),
        ("flags", ctypes.c_uint),
        ("pack_id", ctypes.c_int),
        ("usr_ptr", ctypes.c_void_p),
        ("status", ctypes.c_ubyte),
        ("masked_status", ctypes.c_ubyte),
        ("msg_status", ctypes.c_ubyte),
        ("sb_len_wr", ctypes.c_ubyte),
        ("host_status", ctypes.c_ushort),
        ("driver_status", ctypes.c_ushort),
        ("resid", ctypes.c_int),
        ("duration", ctypes.c_uint),
        ("info", ctypes.c_uint),
    ]


class SgIoCall(Protocol):
    """``call(fd, hdr)``: issue one SG_IO; raises OSError like the ioctl."""

    def __call__(self, fd: int, hdr: SgIoHdr) -> None:
        """Run the command ``hdr`` describes and fill in its outputs."""


def linux_sg_io(fd: int, hdr: SgIoHdr) -> None:
    """The real ioctl on a host ``/dev/sgN`` (or a block device that takes SG_IO)."""
    fcntl.ioctl(fd, SG_IO, hdr)


def open_sg(path: str) -> int:
    """Open a SCSI generic device read-write, non-blocking open, close-on-exec; check that it
    answers SG_GET_VERSION_NUM (OSError otherwise)."""
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        version = ctypes.c_int(0)
        fcntl.ioctl(fd, SG_GET_VERSION_NUM, version)
    except OSError:
        os.close(fd)
        raise
    return fd


class UnitResponder:
    """A stand-in for the kernel's sg driver: SG_IO answered by an emulated unit (``unit``:
    anything with ``execute(Task)``).  ``delay`` seconds per command (a command whose
    ``timeout`` is shorter ends as the kernel ends it: DID_TIME_OUT, DRIVER_TIMEOUT); ``fail``
    an errno to raise instead of running anything (a device that went away: ENODEV)."""

    def __init__(self, unit, *, delay: float = 0.0, fail: int | None = None):
        self.unit = unit
        self.delay = delay
        self.fail = fail
        self.cdbs: list[bytes] = []

    def __call__(self, fd: int, hdr: SgIoHdr) -> None:
        if self.fail is not None:
            raise OSError(self.fail, os.strerror(self.fail))
        if hdr.interface_id != SG_INTERFACE_ID:
            raise OSError(errno.ENOSYS, "not the sg3 interface")
        if not 6 <= hdr.cmd_len <= SG_MAX_CDB_SIZE or hdr.iovec_count:
            raise OSError(errno.EMSGSIZE if hdr.cmd_len else errno.EINVAL, "bad command length")
        cdb = ctypes.string_at(hdr.cmdp, hdr.cmd_len)
        self.cdbs.append(cdb)
        direction, length = hdr.dxfer_direction, hdr.dxfer_len
        data_in = bytearray(length if direction == SG_DXFER_FROM_DEV else 0)
        data_out = bytearray(ctypes.string_at(hdr.dxferp, length)) if direction == SG_DXFER_TO_DEV and length else bytearray()
        task = Task(cdb=cdb, data_out=[memoryview(data_out)] if data_out else [],
                    data_in=[memoryview(data_in)] if data_in else [])
        start = time.monotonic()
        if self.delay and hdr.timeout / 1000 < self.delay:
            time.sleep(hdr.timeout / 1000)
            self._finish(hdr, 0, b"", length, DID_TIME_OUT, DRIVER_TIMEOUT, start)
            return
        time.sleep(self.delay)
        self.unit.execute(task)
        if data_in and task.transferred:
            ctypes.memmove(hdr.dxferp, bytes(data_in[:task.transferred]), task.transferred)
        if task.response:  # the unit found no room for its data: as a host adapter overrun
            self._finish(hdr, 0, b"", length, DID_ABORT, DRIVER_OK, start)
            return
        self._finish(hdr, task.status, task.sense, length - task.transferred, DID_OK,
                     DRIVER_SENSE if task.sense else DRIVER_OK, start)

    @staticmethod
    def _finish(hdr: SgIoHdr, status: int, sense: bytes, resid: int, host: int, driver: int,
                start: float) -> None:
        hdr.status = status
        hdr.masked_status = (status >> 1) & 0x7F
        n = min(len(sense), hdr.mx_sb_len)
        if n and hdr.sbp:
            ctypes.memmove(hdr.sbp, sense, n)
        hdr.sb_len_wr = n
        hdr.host_status, hdr.driver_status = host, driver
        hdr.resid = max(0, resid)
        hdr.duration = int((time.monotonic() - start) * 1000)
        bad = status != sc.Status.GOOD or host != DID_OK or driver not in (DRIVER_OK, DRIVER_SENSE)
        hdr.info = SG_INFO_CHECK if bad else 0
