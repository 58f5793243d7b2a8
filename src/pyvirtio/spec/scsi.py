"""SCSI host device (VIRTIO 1.3, 5.6).

Data only.  All fields are little-endian.  Queues: controlq (0), eventq (1), request queues from
2 (5.6.2).  ``lun`` is 8 bytes: 1, target, a single-level LUN structure in 2 bytes
(flat space addressing: 0x40 | lun >> 8, lun & 0xff), then four zero bytes (5.6.6.1).
"""

import struct
from enum import IntEnum, IntFlag
from typing import NamedTuple

CONTROLQ = 0
EVENTQ = 1
REQUESTQ_BASE = 2


class ScsiFeature(IntEnum):
    """Feature bit numbers (5.6.3)."""

    INOUT = 0
    HOTPLUG = 1
    CHANGE = 2
    T10_PI = 3


#: struct virtio_scsi_config { le32 num_queues; le32 seg_max; le32 max_sectors; le32 cmd_per_lun;
#: le32 event_info_size; le32 sense_size; le32 cdb_size; le16 max_channel; le16 max_target;
#: le32 max_lun; }  (5.6.4).  The driver may write only sense_size and cdb_size.
SCSI_CONFIG = struct.Struct("<IIIIIIIHHI")


class ScsiConfig(NamedTuple):
    """One ``SCSI_CONFIG`` unpacked, field by field."""

    num_queues: int
    seg_max: int
    max_sectors: int
    cmd_per_lun: int
    event_info_size: int
    sense_size: int
    cdb_size: int
    max_channel: int
    max_target: int
    max_lun: int


SCSI_CONFIG_FIELDS = ScsiConfig._fields
SCSI_CONFIG_SIZE = 36


class ScsiConfigOffset(IntEnum):
    """Field offsets in struct virtio_scsi_config (5.6.4)."""

    NUM_QUEUES = 0
    SEG_MAX = 4
    MAX_SECTORS = 8
    CMD_PER_LUN = 12
    EVENT_INFO_SIZE = 16
    SENSE_SIZE = 20
    CDB_SIZE = 24
    MAX_CHANNEL = 28
    MAX_TARGET = 30
    MAX_LUN = 32


#: Defaults of sense_size and cdb_size after reset (5.6.4).
SCSI_SENSE_DEFAULT_SIZE = 96
SCSI_CDB_DEFAULT_SIZE = 32
SCSI_LUN_SIZE = 8

#: struct virtio_scsi_req_cmd, device-readable head before cdb[cdb_size]:
#: { u8 lun[8]; le64 id; u8 task_attr; u8 prio; u8 crn; }  (5.6.6.1).
#: With T10_PI, le32 pi_bytesout and le32 pi_bytesin follow.  The spec's listing puts them
#: after cdb[]; Linux (virtio_scsi_cmd_req_pi) and QEMU put them before cdb[].  No struct is
#: defined here for that variant.
SCSI_REQ_CMD_HEAD = struct.Struct("<8sQBBB")


class ScsiReqCmdHead(NamedTuple):
    """One ``SCSI_REQ_CMD_HEAD`` unpacked, field by field."""

    lun: bytes
    id: int
    task_attr: int
    prio: int
    crn: int


SCSI_REQ_CMD_HEAD_FIELDS = ScsiReqCmdHead._fields
SCSI_REQ_CMD_HEAD_SIZE = 19

#: Device-writable head before sense[sense_size]: { le32 sense_len; le32 residual;
#: le16 status_qualifier; u8 status; u8 response; }  (5.6.6.1)
SCSI_RESP_CMD_HEAD = struct.Struct("<IIHBB")


class ScsiRespCmdHead(NamedTuple):
    """One ``SCSI_RESP_CMD_HEAD`` unpacked, field by field."""

    sense_len: int
    residual: int
    status_qualifier: int
    status: int
    response: int


SCSI_RESP_CMD_HEAD_FIELDS = ScsiRespCmdHead._fields
SCSI_RESP_CMD_HEAD_SIZE = 12


class ScsiResponse(IntEnum):
    """``response`` values of requests and control commands (5.6.6.1, 5.6.6.2)."""

    OK = 0
    OVERRUN = 1
    ABORTED = 2
    BAD_TARGET = 3
    RESET = 4
    BUSY = 5
    TRANSPORT_FAILURE = 6
    TARGET_FAILURE = 7
    NEXUS_FAILURE = 8
    FAILURE = 9
    FUNCTION_SUCCEEDED = 10
    FUNCTION_REJECTED = 11
    INCORRECT_LUN = 12

    FUNCTION_COMPLETE = 0  # TMF alias of OK


class ScsiTaskAttr(IntEnum):
    """``task_attr`` values (5.6.6.1)."""

    SIMPLE = 0
    ORDERED = 1
    HEAD = 2
    ACA = 3


class ScsiCtrlType(IntEnum):
    """controlq request ``type`` (5.6.6.2)."""

    TMF = 0
    AN_QUERY = 1
    AN_SUBSCRIBE = 2


class ScsiTmf(IntEnum):
    """Task management function ``subtype`` (5.6.6.2)."""

    ABORT_TASK = 0
    ABORT_TASK_SET = 1
    CLEAR_ACA = 2
    CLEAR_TASK_SET = 3
    I_T_NEXUS_RESET = 4
    LOGICAL_UNIT_RESET = 5
    QUERY_TASK = 6
    QUERY_TASK_SET = 7


#: struct virtio_scsi_ctrl_tmf readable part { le32 type; le32 subtype; u8 lun[8]; le64 id; },
#: then the writable u8 response  (5.6.6.2)
SCSI_CTRL_TMF = struct.Struct("<II8sQ")
SCSI_CTRL_TMF_FIELDS = ("type", "subtype", "lun", "id")
SCSI_CTRL_TMF_SIZE = 24

#: struct virtio_scsi_ctrl_an readable part { le32 type; u8 lun[8]; le32 event_requested; }
SCSI_CTRL_AN = struct.Struct("<I8sI")
SCSI_CTRL_AN_FIELDS = ("type", "lun", "event_requested")
SCSI_CTRL_AN_SIZE = 16
#: ... and writable part { le32 event_actual; u8 response; }  (5.6.6.2)
SCSI_CTRL_AN_RESP = struct.Struct("<IB")
SCSI_CTRL_AN_RESP_FIELDS = ("event_actual", "response")
SCSI_CTRL_AN_RESP_SIZE = 5


class ScsiAsyncEvent(IntFlag):
    """Asynchronous notification event bits (5.6.6.2)."""

    OPERATIONAL_CHANGE = 2
    POWER_MGMT = 4
    EXTERNAL_REQUEST = 8
    MEDIA_CHANGE = 16
    MULTI_HOST = 32
    DEVICE_BUSY = 64


#: struct virtio_scsi_event { le32 event; u8 lun[8]; le32 reason; }  (5.6.6.3)
SCSI_EVENT = struct.Struct("<I8sI")


class ScsiEvent(NamedTuple):
    """One ``SCSI_EVENT`` unpacked, field by field."""

    event: int
    lun: bytes
    reason: int


SCSI_EVENT_FIELDS = ScsiEvent._fields
SCSI_EVENT_SIZE = 16


class ScsiEventType(IntEnum):
    """eventq ``event`` values (5.6.6.3)."""

    NO_EVENT = 0
    TRANSPORT_RESET = 1
    ASYNC_NOTIFY = 2
    PARAM_CHANGE = 3


#: OR'ed into ``event`` when the device dropped events for lack of buffers (5.6.6.3).
SCSI_T_EVENTS_MISSED = 0x80000000


class ScsiResetReason(IntEnum):
    """``reason`` of TRANSPORT_RESET events (5.6.6.3)."""

    HARD = 0
    RESCAN = 1
    REMOVED = 2
