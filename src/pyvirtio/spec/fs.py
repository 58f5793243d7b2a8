"""File system device, virtio-fs (VIRTIO 1.3, 5.11).

Data only.  The request protocol is FUSE (linux/fuse.h), in the endianness chosen by the
driver's FUSE_INIT (5.11.6.1).

Queues (5.11.2): hiprio (0); notification queue (1) only with NOTIFICATION; then the
request queues.  The spec lists request queues from 2; without NOTIFICATION there is no
queue 1 and Linux and QEMU put the first request queue at index 1.
"""

import struct
from enum import IntEnum
from typing import NamedTuple

HIPRIOQ = 0
NOTIFICATIONQ = 1
#: First request queue with NOTIFICATION negotiated (5.11.2) ...
REQUESTQ_BASE_NOTIFICATION = 2
#: ... and without it (Linux virtio_fs.c VQ_REQUEST, QEMU vhost-user-fs).
REQUESTQ_BASE = 1


class FsFeature(IntEnum):
    """Feature bit numbers (5.11.3)."""

    NOTIFICATION = 0


#: struct virtio_fs_config { char tag[36]; le32 num_request_queues; le32 notify_buf_size; }
#: (5.11.4).  tag is UTF-8, NUL-padded, not NUL-terminated when full.  notify_buf_size exists
#: only with NOTIFICATION.
FS_CONFIG = struct.Struct("<36sII")


class FsConfig(NamedTuple):
    """One ``FS_CONFIG`` unpacked, field by field."""

    tag: bytes
    num_request_queues: int
    notify_buf_size: int


FS_CONFIG_FIELDS = FsConfig._fields
FS_CONFIG_SIZE = 44
FS_TAG_SIZE = 36


class FsConfigOffset(IntEnum):
    """Field offsets in struct virtio_fs_config (5.11.4)."""

    TAG = 0
    NUM_REQUEST_QUEUES = 36
    NOTIFY_BUF_SIZE = 40


#: Shared memory region id of the DAX window (5.11.6.4; Linux VIRTIO_FS_SHMCAP_ID_CACHE).
FS_SHM_ID_CACHE = 0

#: FUSE headers that start each request / reply (linux/fuse.h, not the VIRTIO spec):
#: struct fuse_in_header { u32 len; u32 opcode; u64 unique; u64 nodeid; u32 uid; u32 gid;
#: u32 pid; u16 total_extlen; u16 padding; }
FUSE_IN_HEADER = struct.Struct("<IIQQIIIHH")
FUSE_IN_HEADER_FIELDS = ("len", "opcode", "unique", "nodeid", "uid", "gid", "pid", "total_extlen", "padding")
FUSE_IN_HEADER_SIZE = 40
#: struct fuse_out_header { u32 len; s32 error; u64 unique; }
FUSE_OUT_HEADER = struct.Struct("<IiQ")
FUSE_OUT_HEADER_FIELDS = ("len", "error", "unique")
FUSE_OUT_HEADER_SIZE = 16
