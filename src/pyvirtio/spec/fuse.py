"""FUSE protocol, the request language of virtio-fs (Linux include/uapi/linux/fuse.h).

Data only.  Protocol 7.38 as the Debian 6.1 kernel speaks it (linux-libc-dev 6.1 fuse.h);
virtio-fs carries it little-endian (VIRTIO 1.3, 5.11.6.1).  Every request starts with a
``fuse_in_header`` followed by the opcode's ``*_in`` struct and its trailing data (names are
NUL-terminated); every reply starts with a ``fuse_out_header`` whose ``error`` is 0 or a
negated Linux errno, followed (on success) by the opcode's ``*_out`` struct or data.
Structs are padded to 64 bits ("so 32bit userspace works under 64bit kernels", fuse.h).

Each struct is a ``struct.Struct`` named after the C struct, a NamedTuple with the C field
names, and a ``*_SIZE``; nested structs (``fuse_attr`` inside ``fuse_entry_out``) are
flattened into the outer NamedTuple with the inner fields in C order.
"""

import struct
from enum import IntEnum, IntFlag
from typing import NamedTuple

#: Version negotiation (fuse.h head comment): majors must match, both use the smaller minor.
FUSE_KERNEL_VERSION = 7
FUSE_KERNEL_MINOR_VERSION = 38
#: The node ID of the root inode.
FUSE_ROOT_ID = 1
#: "The read buffer is required to be at least 8k".
FUSE_MIN_READ_BUFFER = 8192


class FuseOpcode(IntEnum):
    """enum fuse_opcode (fuse.h).  FORGET and BATCH_FORGET get no reply."""

    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51


#: Reserved opcode "helpful to detect structure endian-ness" (FUSE_INIT << 24).
FUSE_INIT_BSWAP_RESERVED = 436207616


class FuseInitFlag(IntFlag):
    """INIT request/reply flags (fuse.h); bits 32..63 travel in ``flags2`` shifted down by 32."""

    ASYNC_READ = 1 << 0
    POSIX_LOCKS = 1 << 1
    FILE_OPS = 1 << 2
    ATOMIC_O_TRUNC = 1 << 3
    EXPORT_SUPPORT = 1 << 4
    BIG_WRITES = 1 << 5
    DONT_MASK = 1 << 6
    SPLICE_WRITE = 1 << 7
    SPLICE_MOVE = 1 << 8
    SPLICE_READ = 1 << 9
    FLOCK_LOCKS = 1 << 10
    HAS_IOCTL_DIR = 1 << 11
    AUTO_INVAL_DATA = 1 << 12
    DO_READDIRPLUS = 1 << 13
    READDIRPLUS_AUTO = 1 << 14
    ASYNC_DIO = 1 << 15
    WRITEBACK_CACHE = 1 << 16
    NO_OPEN_SUPPORT = 1 << 17
    PARALLEL_DIROPS = 1 << 18
    HANDLE_KILLPRIV = 1 << 19
    POSIX_ACL = 1 << 20
    ABORT_ERROR = 1 << 21
    MAX_PAGES = 1 << 22
    CACHE_SYMLINKS = 1 << 23
    NO_OPENDIR_SUPPORT = 1 << 24
    EXPLICIT_INVAL_DATA = 1 << 25
    MAP_ALIGNMENT = 1 << 26
    SUBMOUNTS = 1 << 27
    HANDLE_KILLPRIV_V2 = 1 << 28
    SETXATTR_EXT = 1 << 29
    INIT_EXT = 1 << 30
    INIT_RESERVED = 1 << 31
    SECURITY_CTX = 1 << 32
    HAS_INODE_DAX = 1 << 33
    HAS_EXPIRE_ONLY = 1 << 35


class FopenFlag(IntFlag):
    """Flags returned by OPEN/OPENDIR/CREATE in ``fuse_open_out.open_flags`` (fuse.h)."""

    DIRECT_IO = 1 << 0
    KEEP_CACHE = 1 << 1
    NONSEEKABLE = 1 << 2
    CACHE_DIR = 1 << 3
    STREAM = 1 << 4
    NOFLUSH = 1 << 5
    PARALLEL_DIRECT_WRITES = 1 << 6


class FattrFlag(IntFlag):
    """Bitmasks for ``fuse_setattr_in.valid`` (fuse.h FATTR_*)."""

    MODE = 1 << 0
    UID = 1 << 1
    GID = 1 << 2
    SIZE = 1 << 3
    ATIME = 1 << 4
    MTIME = 1 << 5
    FH = 1 << 6
    ATIME_NOW = 1 << 7
    MTIME_NOW = 1 << 8
    LOCKOWNER = 1 << 9
    CTIME = 1 << 10
    KILL_SUIDGID = 1 << 11


#: Release flags (fuse_release_in.release_flags).
FUSE_RELEASE_FLUSH = 1 << 0
FUSE_RELEASE_FLOCK_UNLOCK = 1 << 1
#: Getattr flags: ``fh`` is valid.
FUSE_GETATTR_FH = 1 << 0
#: Lock flags: BSD flock() rather than POSIX locks.
FUSE_LK_FLOCK = 1 << 0
#: WRITE flags (fuse_write_in.write_flags).
FUSE_WRITE_CACHE = 1 << 0
FUSE_WRITE_LOCKOWNER = 1 << 1
FUSE_WRITE_KILL_SUIDGID = 1 << 2
#: Read flags (fuse_read_in.read_flags).
FUSE_READ_LOCKOWNER = 1 << 1
#: Fsync flags: sync data only, not metadata.
FUSE_FSYNC_FDATASYNC = 1 << 0
#: fuse_attr.flags.
FUSE_ATTR_SUBMOUNT = 1 << 0
FUSE_ATTR_DAX = 1 << 1
#: Open flags (fuse_open_in.open_flags): kill suid and sgid if executable.
FUSE_OPEN_KILL_SUIDGID = 1 << 0
#: setxattr flags (fuse_setxattr_in.setxattr_flags, with SETXATTR_EXT).
FUSE_SETXATTR_ACL_KILL_SGID = 1 << 0
#: RENAME2 flags (linux/fs.h RENAME_*; fuse_rename2_in.flags carries them).
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
RENAME_WHITEOUT = 1 << 2

#: struct fuse_in_header { u32 len; u32 opcode; u64 unique; u64 nodeid; u32 uid; u32 gid;
#: u32 pid; u16 total_extlen; u16 padding; }  (total_extlen is 7.38; before it, u32 padding)
FUSE_IN_HEADER = struct.Struct("<IIQQIIIHH")


class FuseInHeader(NamedTuple):
    """One ``FUSE_IN_HEADER`` unpacked; ``len`` counts the header and everything after it."""

    len: int
    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    total_extlen: int
    padding: int


FUSE_IN_HEADER_SIZE = 40

#: struct fuse_out_header { u32 len; s32 error; u64 unique; }
FUSE_OUT_HEADER = struct.Struct("<IiQ")


class FuseOutHeader(NamedTuple):
    """One ``FUSE_OUT_HEADER``; ``error`` is 0 or -errno, ``unique`` echoes the request's."""

    len: int
    error: int
    unique: int


FUSE_OUT_HEADER_SIZE = 16

#: struct fuse_attr { u64 ino, size, blocks, atime, mtime, ctime; u32 atimensec, mtimensec,
#: ctimensec, mode, nlink, uid, gid, rdev, blksize, flags; }
FUSE_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")


class FuseAttr(NamedTuple):
    """One ``FUSE_ATTR``: the stat of an inode as the kernel caches it."""

    ino: int
    size: int
    blocks: int
    atime: int
    mtime: int
    ctime: int
    atimensec: int
    mtimensec: int
    ctimensec: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    blksize: int
    flags: int


FUSE_ATTR_SIZE = 88

#: struct fuse_entry_out { u64 nodeid, generation, entry_valid, attr_valid;
#: u32 entry_valid_nsec, attr_valid_nsec; struct fuse_attr attr; }
FUSE_ENTRY_OUT_HEAD = struct.Struct("<QQQQII")
FUSE_ENTRY_OUT = struct.Struct("<QQQQII" + FUSE_ATTR.format[1:])


class FuseEntryOutHead(NamedTuple):
    """The part of ``fuse_entry_out`` before its ``attr`` (``FUSE_ENTRY_OUT_HEAD``)."""

    nodeid: int
    generation: int
    entry_valid: int
    attr_valid: int
    entry_valid_nsec: int
    attr_valid_nsec: int


FUSE_ENTRY_OUT_SIZE = 128
#: Offset of ``attr`` in fuse_entry_out.
FUSE_ENTRY_OUT_ATTR_OFFSET = 40

#: struct fuse_attr_out { u64 attr_valid; u32 attr_valid_nsec; u32 dummy; struct fuse_attr attr; }
FUSE_ATTR_OUT_HEAD = struct.Struct("<QII")
FUSE_ATTR_OUT = struct.Struct("<QII" + FUSE_ATTR.format[1:])


class FuseAttrOutHead(NamedTuple):
    """The part of ``fuse_attr_out`` before its ``attr`` (``FUSE_ATTR_OUT_HEAD``)."""

    attr_valid: int
    attr_valid_nsec: int
    dummy: int


FUSE_ATTR_OUT_SIZE = 104

#: struct fuse_kstatfs { u64 blocks, bfree, bavail, files, ffree; u32 bsize, namelen, frsize,
#: padding; u32 spare[6]; }  == struct fuse_statfs_out.
FUSE_KSTATFS = struct.Struct("<QQQQQIIII24x")


class FuseKstatfs(NamedTuple):
    """One ``FUSE_KSTATFS`` (the reply of STATFS); ``spare`` is zero padding."""

    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    bsize: int
    namelen: int
    frsize: int
    padding: int


FUSE_KSTATFS_SIZE = 80

#: struct fuse_file_lock { u64 start; u64 end; u32 type; u32 pid; }  == struct fuse_lk_out.
FUSE_FILE_LOCK = struct.Struct("<QQII")


class FuseFileLock(NamedTuple):
    """One ``FUSE_FILE_LOCK`` (``type`` is F_RDLCK/F_WRLCK/F_UNLCK, ``pid`` the tgid)."""

    start: int
    end: int
    type: int
    pid: int


FUSE_FILE_LOCK_SIZE = 24

#: struct fuse_forget_in { u64 nlookup; }
FUSE_FORGET_IN = struct.Struct("<Q")
#: struct fuse_forget_one { u64 nodeid; u64 nlookup; }
FUSE_FORGET_ONE = struct.Struct("<QQ")


class FuseForgetOne(NamedTuple):
    """One ``FUSE_FORGET_ONE`` entry of BATCH_FORGET."""

    nodeid: int
    nlookup: int


#: struct fuse_batch_forget_in { u32 count; u32 dummy; }  then ``count`` fuse_forget_one.
#: (No NamedTuple: a field named ``count`` would hide ``tuple.count``.)
FUSE_BATCH_FORGET_IN = struct.Struct("<II")


#: struct fuse_getattr_in { u32 getattr_flags; u32 dummy; u64 fh; }
FUSE_GETATTR_IN = struct.Struct("<IIQ")


class FuseGetattrIn(NamedTuple):
    """One ``FUSE_GETATTR_IN``; ``fh`` counts only with FUSE_GETATTR_FH."""

    getattr_flags: int
    dummy: int
    fh: int


#: struct fuse_mknod_in { u32 mode; u32 rdev; u32 umask; u32 padding; }  then the name.
FUSE_MKNOD_IN = struct.Struct("<IIII")


class FuseMknodIn(NamedTuple):
    """One ``FUSE_MKNOD_IN``."""

    mode: int
    rdev: int
    umask: int
    padding: int


#: struct fuse_mkdir_in { u32 mode; u32 umask; }  then the name.
FUSE_MKDIR_IN = struct.Struct("<II")


class FuseMkdirIn(NamedTuple):
    """One ``FUSE_MKDIR_IN``."""

    mode: int
    umask: int


#: struct fuse_rename_in { u64 newdir; }  then oldname NUL newname NUL.
FUSE_RENAME_IN = struct.Struct("<Q")
#: struct fuse_rename2_in { u64 newdir; u32 flags; u32 padding; }  then the two names.
FUSE_RENAME2_IN = struct.Struct("<QII")


class FuseRename2In(NamedTuple):
    """One ``FUSE_RENAME2_IN`` (``flags``: RENAME_NOREPLACE/EXCHANGE/WHITEOUT)."""

    newdir: int
    flags: int
    padding: int


#: struct fuse_link_in { u64 oldnodeid; }  then the new name.
FUSE_LINK_IN = struct.Struct("<Q")

#: struct fuse_setattr_in { u32 valid; u32 padding; u64 fh, size, lock_owner, atime, mtime,
#: ctime; u32 atimensec, mtimensec, ctimensec, mode, unused4, uid, gid, unused5; }
FUSE_SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")


class FuseSetattrIn(NamedTuple):
    """One ``FUSE_SETATTR_IN``; ``valid`` (FattrFlag) says which fields count."""

    valid: int
    padding: int
    fh: int
    size: int
    lock_owner: int
    atime: int
    mtime: int
    ctime: int
    atimensec: int
    mtimensec: int
    ctimensec: int
    mode: int
    unused4: int
    uid: int
    gid: int
    unused5: int


FUSE_SETATTR_IN_SIZE = 88

#: struct fuse_open_in { u32 flags; u32 open_flags; }  (also OPENDIR)
FUSE_OPEN_IN = struct.Struct("<II")


class FuseOpenIn(NamedTuple):
    """One ``FUSE_OPEN_IN``: ``flags`` are the open(2) flags."""

    flags: int
    open_flags: int


#: struct fuse_create_in { u32 flags; u32 mode; u32 umask; u32 open_flags; }  then the name.
FUSE_CREATE_IN = struct.Struct("<IIII")


class FuseCreateIn(NamedTuple):
    """One ``FUSE_CREATE_IN``; the reply is fuse_entry_out then fuse_open_out."""

    flags: int
    mode: int
    umask: int
    open_flags: int


#: struct fuse_open_out { u64 fh; u32 open_flags; u32 padding; }
FUSE_OPEN_OUT = struct.Struct("<QII")


class FuseOpenOut(NamedTuple):
    """One ``FUSE_OPEN_OUT``; ``open_flags`` are FopenFlag."""

    fh: int
    open_flags: int
    padding: int


#: struct fuse_release_in { u64 fh; u32 flags; u32 release_flags; u64 lock_owner; }
FUSE_RELEASE_IN = struct.Struct("<QIIQ")


class FuseReleaseIn(NamedTuple):
    """One ``FUSE_RELEASE_IN`` (RELEASE and RELEASEDIR)."""

    fh: int
    flags: int
    release_flags: int
    lock_owner: int


#: struct fuse_flush_in { u64 fh; u32 unused; u32 padding; u64 lock_owner; }
FUSE_FLUSH_IN = struct.Struct("<QIIQ")


class FuseFlushIn(NamedTuple):
    """One ``FUSE_FLUSH_IN``."""

    fh: int
    unused: int
    padding: int
    lock_owner: int


#: struct fuse_read_in { u64 fh; u64 offset; u32 size; u32 read_flags; u64 lock_owner;
#: u32 flags; u32 padding; }  (READ, READDIR, READDIRPLUS)
FUSE_READ_IN = struct.Struct("<QQIIQII")


class FuseReadIn(NamedTuple):
    """One ``FUSE_READ_IN``; ``size`` is the most the reply may carry after its header."""

    fh: int
    offset: int
    size: int
    read_flags: int
    lock_owner: int
    flags: int
    padding: int


#: struct fuse_write_in { u64 fh; u64 offset; u32 size; u32 write_flags; u64 lock_owner;
#: u32 flags; u32 padding; }  then ``size`` bytes of data.
FUSE_WRITE_IN = struct.Struct("<QQIIQII")


class FuseWriteIn(NamedTuple):
    """One ``FUSE_WRITE_IN``."""

    fh: int
    offset: int
    size: int
    write_flags: int
    lock_owner: int
    flags: int
    padding: int


FUSE_READ_IN_SIZE = FUSE_WRITE_IN_SIZE = 40

#: struct fuse_write_out { u32 size; u32 padding; }  (also COPY_FILE_RANGE's reply)
FUSE_WRITE_OUT = struct.Struct("<II")


class FuseWriteOut(NamedTuple):
    """One ``FUSE_WRITE_OUT``: bytes written."""

    size: int
    padding: int


#: struct fuse_fsync_in { u64 fh; u32 fsync_flags; u32 padding; }  (FSYNC, FSYNCDIR)
FUSE_FSYNC_IN = struct.Struct("<QII")


class FuseFsyncIn(NamedTuple):
    """One ``FUSE_FSYNC_IN``."""

    fh: int
    fsync_flags: int
    padding: int


#: struct fuse_setxattr_in { u32 size; u32 flags; u32 setxattr_flags; u32 padding; }  with
#: FUSE_SETXATTR_EXT; without it only the first 8 bytes (FUSE_COMPAT_SETXATTR_IN_SIZE).
#: Then name NUL and ``size`` bytes of value.
FUSE_SETXATTR_IN = struct.Struct("<IIII")
FUSE_COMPAT_SETXATTR_IN = struct.Struct("<II")


class FuseSetxattrIn(NamedTuple):
    """One ``FUSE_SETXATTR_IN`` (``flags``: XATTR_CREATE/XATTR_REPLACE)."""

    size: int
    flags: int
    setxattr_flags: int
    padding: int


#: struct fuse_getxattr_in { u32 size; u32 padding; }  (GETXATTR then the name, LISTXATTR)
FUSE_GETXATTR_IN = struct.Struct("<II")


class FuseGetxattrIn(NamedTuple):
    """One ``FUSE_GETXATTR_IN``: ``size`` 0 asks for the length (fuse_getxattr_out)."""

    size: int
    padding: int


#: struct fuse_getxattr_out { u32 size; u32 padding; }
FUSE_GETXATTR_OUT = struct.Struct("<II")

#: struct fuse_lk_in { u64 fh; u64 owner; struct fuse_file_lock lk; u32 lk_flags; u32 padding; }
FUSE_LK_IN = struct.Struct("<QQQQIIII")


class FuseLkIn(NamedTuple):
    """One ``FUSE_LK_IN`` with its ``lk`` flattened (``lk_start`` ... ``lk_pid``)."""

    fh: int
    owner: int
    lk_start: int
    lk_end: int
    lk_type: int
    lk_pid: int
    lk_flags: int
    padding: int


#: struct fuse_access_in { u32 mask; u32 padding; }
FUSE_ACCESS_IN = struct.Struct("<II")


class FuseAccessIn(NamedTuple):
    """One ``FUSE_ACCESS_IN`` (``mask``: R_OK/W_OK/X_OK/F_OK)."""

    mask: int
    padding: int


#: struct fuse_init_in { u32 major, minor, max_readahead, flags; u32 flags2; u32 unused[11]; }
#: The kernel sends the whole 64 bytes; a peer older than 7.36 only the first 16.
FUSE_INIT_IN = struct.Struct("<IIIII44x")
FUSE_INIT_IN_COMPAT = struct.Struct("<IIII")


class FuseInitIn(NamedTuple):
    """One ``FUSE_INIT_IN``; ``flags2`` counts only with FUSE_INIT_EXT in ``flags``."""

    major: int
    minor: int
    max_readahead: int
    flags: int
    flags2: int


FUSE_INIT_IN_SIZE = 64

#: struct fuse_init_out { u32 major, minor, max_readahead, flags; u16 max_background,
#: congestion_threshold; u32 max_write, time_gran; u16 max_pages, map_alignment;
#: u32 flags2; u32 unused[7]; }
FUSE_INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")


class FuseInitOut(NamedTuple):
    """One ``FUSE_INIT_OUT``; ``max_pages`` counts only with FUSE_MAX_PAGES."""

    major: int
    minor: int
    max_readahead: int
    flags: int
    max_background: int
    congestion_threshold: int
    max_write: int
    time_gran: int
    max_pages: int
    map_alignment: int
    flags2: int


FUSE_INIT_OUT_SIZE = 64
#: Reply sizes older peers expect (fuse.h FUSE_COMPAT_INIT_OUT_SIZE, _22_INIT_OUT_SIZE).
FUSE_COMPAT_INIT_OUT_SIZE = 8
FUSE_COMPAT_22_INIT_OUT_SIZE = 24

#: struct fuse_interrupt_in { u64 unique; }
FUSE_INTERRUPT_IN = struct.Struct("<Q")

#: struct fuse_fallocate_in { u64 fh; u64 offset; u64 length; u32 mode; u32 padding; }
FUSE_FALLOCATE_IN = struct.Struct("<QQQII")


class FuseFallocateIn(NamedTuple):
    """One ``FUSE_FALLOCATE_IN`` (``mode``: FALLOC_FL_*)."""

    fh: int
    offset: int
    length: int
    mode: int
    padding: int


#: struct fuse_lseek_in { u64 fh; u64 offset; u32 whence; u32 padding; }
FUSE_LSEEK_IN = struct.Struct("<QQII")


class FuseLseekIn(NamedTuple):
    """One ``FUSE_LSEEK_IN`` (the kernel sends only SEEK_DATA and SEEK_HOLE)."""

    fh: int
    offset: int
    whence: int
    padding: int


#: struct fuse_lseek_out { u64 offset; }
FUSE_LSEEK_OUT = struct.Struct("<Q")

#: struct fuse_copy_file_range_in { u64 fh_in, off_in, nodeid_out, fh_out, off_out, len, flags; }
FUSE_COPY_FILE_RANGE_IN = struct.Struct("<QQQQQQQ")


class FuseCopyFileRangeIn(NamedTuple):
    """One ``FUSE_COPY_FILE_RANGE_IN``; the request's nodeid is the source inode."""

    fh_in: int
    off_in: int
    nodeid_out: int
    fh_out: int
    off_out: int
    len: int
    flags: int


#: struct fuse_syncfs_in { u64 padding; }
FUSE_SYNCFS_IN = struct.Struct("<Q")

#: struct fuse_dirent { u64 ino; u64 off; u32 namelen; u32 type; char name[]; }
#: ``type`` is the DT_* value (mode >> 12); ``off`` is the cookie of the *next* entry.
FUSE_DIRENT = struct.Struct("<QQII")


class FuseDirent(NamedTuple):
    """The fixed part of one ``FUSE_DIRENT``."""

    ino: int
    off: int
    namelen: int
    type: int


#: FUSE_NAME_OFFSET: offsetof(struct fuse_dirent, name).
FUSE_NAME_OFFSET = 24
#: struct fuse_direntplus { struct fuse_entry_out entry_out; struct fuse_dirent dirent; }
FUSE_NAME_OFFSET_DIRENTPLUS = FUSE_ENTRY_OUT_SIZE + FUSE_NAME_OFFSET
#: FUSE_REC_ALIGN / FUSE_DIRENT_ALIGN: variable records are aligned to 64 bits.
FUSE_DIRENT_ALIGNMENT = 8

#: FUSE_COMPAT_ENTRY_OUT_SIZE / FUSE_COMPAT_ATTR_OUT_SIZE / FUSE_COMPAT_STATFS_SIZE /
#: FUSE_COMPAT_WRITE_IN_SIZE / FUSE_COMPAT_MKNOD_IN_SIZE: sizes before minor 9 (unsupported).
FUSE_COMPAT_ENTRY_OUT_SIZE = 120
FUSE_COMPAT_ATTR_OUT_SIZE = 96
FUSE_COMPAT_STATFS_SIZE = 48
FUSE_COMPAT_WRITE_IN_SIZE = 24
FUSE_COMPAT_MKNOD_IN_SIZE = 8
