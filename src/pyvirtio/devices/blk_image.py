"""Opening a disk image for ``pyvirtio serve blk`` the way QEMU would: locked, checked, aligned.

Rules (each refusal is an :class:`ImageError`, one line that starts with the image's path):

* **Open**: ``O_RDONLY`` or ``O_RDWR``, always ``O_CLOEXEC`` (a child must not inherit the
  image, nor the locks on it), plus ``O_DIRECT`` when ``direct``.  Only regular files and block
  devices are images.
* **Locks**, compatible with QEMU's block/file-posix.c (``locking=on``).  QEMU takes OFD locks
  (``F_OFD_SETLK``: owned by the open file description, so two opens in one process conflict,
  and only closing the last fd of our description releases them) on single bytes:
  ``RAW_LOCK_PERM_BASE + bit`` (100 + bit) for each permission it *holds* and
  ``RAW_LOCK_SHARED_BASE + bit`` (200 + bit) for each permission it does *not share*, bits from
  ``BLK_PERM_*``.  Every lock is a shared (read) lock; nobody ever holds an exclusive one.  To
  find a conflict QEMU asks ``F_OFD_GETLK`` whether an *exclusive* lock could be taken on a byte:
  it could not if any other description holds a read lock there.  The order is
  ``raw_apply_lock_bytes`` (take our bytes), then ``raw_check_lock_bytes``: for each permission
  we want, byte 200 + bit must be free ("Failed to get \"write\" lock"); for each permission we
  do not share, byte 100 + bit must be free ("Failed to get shared \"write\" lock").
  pyvirtio is a guest's disk, so it takes what QEMU's own virtio-blk takes (hw/block/block.c,
  ``blkconf_apply_backend_options(resizable=true)``): ``perm = CONSISTENT_READ [| WRITE]``,
  ``shared = CONSISTENT_READ | WRITE_UNCHANGED | RESIZE``: bytes 100, 101, 201 when writable,
  100, 201 when read-only (a guest caches what it reads: nobody may write under it).
  A qemu-storage-daemon export (block/export/export.c) takes ``CONSISTENT_READ [| WRITE]`` and
  shares everything: bytes 100 [, 101].  So a writable pyvirtio and any QEMU writer exclude each
  other, and readers (ours, a read-only ``-drive``, a ``writable=off`` export) coexist.
* **Checks**: an empty image, a size that is not a whole number of 512-byte sectors, and an image
  that starts with the magic of a format that is not raw (the guest could have written that
  header: serving it as qcow2 would let the guest name host files as its backing file) are
  refused.  ``image_format="raw"`` says the caller knows it is raw and skips the magic check.
* **Alignment** (``direct`` only): O_DIRECT needs the buffer address, the file offset and the
  length aligned.  A block device tells its logical block size (``BLKSSZGET``); for a file we do
  what QEMU's ``raw_probe_alignment`` does: try reads of growing alignment into an aligned
  buffer until one is not refused with EINVAL, and fall back to 4096.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import struct
from dataclasses import dataclass

from ..errors import UsageError

SECTOR = 512

# include/block/block-common.h (QEMU 7.2): BLK_PERM_* bits and bdrv_perm_names()'s words.
BLK_PERM_CONSISTENT_READ = 1 << 0
BLK_PERM_WRITE = 1 << 1
BLK_PERM_WRITE_UNCHANGED = 1 << 2
BLK_PERM_RESIZE = 1 << 3
BLK_PERM_ALL = 0x0F
PERM_NAMES = {BLK_PERM_CONSISTENT_READ: "consistent read", BLK_PERM_WRITE: "write",
              BLK_PERM_WRITE_UNCHANGED: "write unchanged", BLK_PERM_RESIZE: "resize"}

# block/file-posix.c
RAW_LOCK_PERM_BASE = 100
RAW_LOCK_SHARED_BASE = 200

# What QEMU's virtio-blk (a guest disk) shares with other users of its image; see the docstring.
GUEST_DISK_SHARED = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED | BLK_PERM_RESIZE

F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)  # Linux values, if this Python lacks the names
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
# struct flock: short l_type, l_whence; off_t l_start, l_len; pid_t l_pid (0 for OFD locks).
# Native alignment gives the C layout; fcntl() passes the kernel a large enough buffer.
_FLOCK = struct.Struct("@hhqqi")

BLKSSZGET = 0x1268  # linux/fs.h: logical block size of a block device
_ALIGNMENTS = (512, 1024, 2048, 4096)
_FALLBACK_ALIGN = 4096

# (offset, magic, name): first sectors of image formats that are not raw (QEMU's *_probe()).
FORMAT_MAGICS = (
    (0, b"QFI\xfb", "qcow2"),
    (0, b"KDMV", "vmdk"),
    (0, b"COWD", "vmdk"),
    (0, b"# Disk DescriptorFile", "vmdk"),
    (64, struct.pack("<I", 0xBEDA107F), "vdi"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"conectix", "vpc (VHD)"),
    (0, b"QED\0", "qed"),
    (0, b"LUKS\xba\xbe", "LUKS"),
    (0, b"WithoutFreeSpace", "parallels"),
    (0, b"WithouFreSpacExt", "parallels"),
)
_HEADER_BYTES = SECTOR


class ImageError(UsageError):
    """An image that cannot be served as asked: ``path`` names it, ``why`` says why."""

    def __init__(self, path: str, why: str):
        self.path = path
        self.why = why
        super().__init__(f"{path}: {why}")


@dataclass
class Image:
    """An open, checked (and, unless asked not to, locked) raw image.  ``fd`` is -1 once closed."""

    fd: int
    path: str
    size: int
    read_only: bool
    direct: bool
    align: int
    locked: bool

    def close(self) -> None:
        """Close the fd, which drops our locks (they belong to its open file description)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> "Image":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_image(path: str, *, read_only: bool, direct: bool = False,
               image_format: str | None = None, lock: bool = True) -> Image:
    """Open ``path`` as a guest's raw disk image; raise :class:`ImageError` if it must not be."""
    if image_format not in (None, "raw"):
        raise ImageError(path, f"format {image_format!r} is not supported; pyvirtio serves "
                               "raw images only")
    fd = _open(path, read_only, direct)
    try:
        _check_kind(path, fd)
        if lock:
            perm = BLK_PERM_CONSISTENT_READ | (0 if read_only else BLK_PERM_WRITE)
            take_qemu_locks(path, fd, perm, GUEST_DISK_SHARED)
        align = probe_alignment(fd) if direct else 1
        if image_format is None:  # first: a qcow2 file's odd size is not the thing to report
            _check_not_a_format(path, fd, align)
        size = _check_size(path, fd)
    except BaseException:
        os.close(fd)
        raise
    return Image(fd, path, size, read_only, direct, align, lock)


def _open(path: str, read_only: bool, direct: bool) -> int:
    flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
    flags |= os.O_DIRECT if direct else 0
    try:
        return os.open(path, flags)
    except OSError as exc:
        if direct and exc.errno == errno.EINVAL:
            why = ("its file system refuses O_DIRECT (--direct); put the image on a disk-backed "
                   "file system (not tmpfs) or drop --direct")
            raise ImageError(path, why) from None
        mode = "read-only" if read_only else "read-write"
        raise ImageError(path, f"cannot open {mode}: {exc.strerror}") from None


def _check_kind(path: str, fd: int) -> None:
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise ImageError(path, "is neither a regular file nor a block device")


def _check_size(path: str, fd: int) -> int:
    size = os.lseek(fd, 0, os.SEEK_END)  # a block device's st_size is 0; lseek knows
    if size == 0:
        raise ImageError(path, "is empty (0 bytes)")
    if size % SECTOR:
        raise ImageError(path, f"size {size} bytes is not a multiple of {SECTOR}")
    return size


def _check_not_a_format(path: str, fd: int, align: int) -> None:
    header = read_aligned(fd, 0, max(_HEADER_BYTES, align))
    for offset, magic, name in FORMAT_MAGICS:
        if header[offset:offset + len(magic)] == magic:
            raise ImageError(path, f"looks like a {name} image; pyvirtio serves raw images only "
                                   "(pass --format=raw to serve it as raw anyway)")


# --- QEMU-compatible OFD locks (block/file-posix.c) ---------------------------------------------


def take_qemu_locks(path: str, fd: int, perm: int, shared: int) -> None:
    """``raw_apply_lock_bytes(perm, ~shared)`` then ``raw_check_lock_bytes(perm, shared)``.

    On a conflict the caller closes ``fd``, which drops the bytes already taken."""
    unshared = BLK_PERM_ALL & ~shared
    for i in _bits(perm):
        _lock_byte(path, fd, RAW_LOCK_PERM_BASE + i)
    for i in _bits(unshared):
        _lock_byte(path, fd, RAW_LOCK_SHARED_BASE + i)
    for i in _bits(perm):  # someone refuses to share what we want
        if byte_is_locked(path, fd, RAW_LOCK_SHARED_BASE + i):
            raise _conflict(path, f'Failed to get "{PERM_NAMES[1 << i]}" lock')
    for i in _bits(unshared):  # someone holds what we refuse to share
        if byte_is_locked(path, fd, RAW_LOCK_PERM_BASE + i):
            raise _conflict(path, f'Failed to get shared "{PERM_NAMES[1 << i]}" lock')


def held_lock_bytes(fd: int) -> list[int]:
    """Bytes 100..103 and 200..203 that some other open file description holds (for tests)."""
    bases = (RAW_LOCK_PERM_BASE, RAW_LOCK_SHARED_BASE)
    return [b + i for b in bases for i in range(4) if byte_is_locked("", fd, b + i)]


def _bits(mask: int) -> list[int]:
    """The BLK_PERM_* bit numbers set in ``mask`` (QEMU's PERM_FOREACH)."""
    return [i for i in range(BLK_PERM_ALL.bit_length()) if mask >> i & 1]


def _conflict(path: str, what: str) -> ImageError:
    return ImageError(path, f"{what}: another process (QEMU, qemu-storage-daemon or pyvirtio) is "
                            "using it")


def _lock_byte(path: str, fd: int, offset: int) -> None:
    """qemu_lock_fd(fd, offset, 1, exclusive=false): a shared lock on one byte."""
    try:
        fcntl.fcntl(fd, F_OFD_SETLK, _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, offset, 1, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise _conflict(path, f"Failed to lock byte {offset}") from None
        raise _unlockable(path, exc) from None


def byte_is_locked(path: str, fd: int, offset: int) -> bool:
    """qemu_lock_fd_test(fd, offset, 1, exclusive=true): does another description lock it?"""
    try:
        out = fcntl.fcntl(fd, F_OFD_GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0))
    except OSError as exc:
        raise _unlockable(path, exc) from None
    return _FLOCK.unpack(out)[0] != fcntl.F_UNLCK


def _unlockable(path: str, exc: OSError) -> ImageError:
    return ImageError(path, f"cannot lock the image ({exc.strerror}); pass --locking=off to serve "
                            "it unlocked")


# --- O_DIRECT alignment -------------------------------------------------------------------------


def probe_alignment(fd: int) -> int:
    """The alignment O_DIRECT needs for buffer address, offset and length (QEMU's
    raw_probe_alignment): the block device's logical block size, else the smallest alignment
    whose reads are not refused with EINVAL, else 4096."""
    if stat.S_ISBLK(os.fstat(fd).st_mode):
        try:
            out = fcntl.ioctl(fd, BLKSSZGET, struct.pack("i", 0))
            size = struct.unpack("i", out)[0]
            if size > 0:
                return size
        except OSError:
            pass
    with mmap.mmap(-1, 2 * _FALLBACK_ALIGN) as buf:  # page-aligned memory
        view = memoryview(buf)
        try:
            req = next((a for a in _ALIGNMENTS if _read_ok(fd, view[:a])), _FALLBACK_ALIGN)
            mem = next((a for a in _ALIGNMENTS if _read_ok(fd, view[a:a + req])),
                       _FALLBACK_ALIGN)
        finally:
            view.release()
    return max(req, mem)


def _read_ok(fd: int, buf: memoryview) -> bool:
    try:
        os.preadv(fd, [buf], 0)
    except OSError as exc:
        return exc.errno != errno.EINVAL  # EINVAL: misaligned; anything else is not our question
    return True


def read_aligned(fd: int, offset: int, length: int) -> bytes:
    """Read ``length`` bytes at an aligned ``offset`` into page-aligned memory (O_DIRECT-safe)."""
    size = -(-length // mmap.PAGESIZE) * mmap.PAGESIZE
    with mmap.mmap(-1, size) as buf:
        view = memoryview(buf)
        try:
            n = os.preadv(fd, [view[:length]], offset)
            return bytes(view[:n])
        finally:
            view.release()
