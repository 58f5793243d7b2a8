"""Virtqueue layouts: split ring (VIRTIO 1.3, 2.7) and packed ring (2.8).

All fields are little-endian.  Struct layouts are ``struct.Struct`` objects; sizes are the spec's.
"""

import struct

# --- split ring (2.7) ---------------------------------------------------------------------------

#: Largest split queue size; sizes are powers of two (2.7).
SPLIT_QUEUE_MAX_SIZE = 32768

#: struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }  (2.7.5)
VIRTQ_DESC = struct.Struct("<QIHH")
VIRTQ_DESC_SIZE = 16
VIRTQ_DESC_ALIGN = 16

VIRTQ_DESC_F_NEXT = 1  # the buffer continues via the next field
VIRTQ_DESC_F_WRITE = 2  # device write-only (otherwise device read-only)
VIRTQ_DESC_F_INDIRECT = 4  # the buffer contains a table of descriptors (2.7.5.3)

#: struct virtq_avail { le16 flags; le16 idx; le16 ring[N]; le16 used_event; }  (2.7.6)
VIRTQ_AVAIL_ALIGN = 2
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_AVAIL_FLAGS_OFFSET = 0
VIRTQ_AVAIL_IDX_OFFSET = 2
VIRTQ_AVAIL_RING_OFFSET = 4

#: struct virtq_used { le16 flags; le16 idx; struct virtq_used_elem ring[N]; le16 avail_event; }
#: (2.7.8); struct virtq_used_elem { le32 id; le32 len; }
VIRTQ_USED_ALIGN = 4
VIRTQ_USED_F_NO_NOTIFY = 1
VIRTQ_USED_FLAGS_OFFSET = 0
VIRTQ_USED_IDX_OFFSET = 2
VIRTQ_USED_RING_OFFSET = 4
VIRTQ_USED_ELEM = struct.Struct("<II")
VIRTQ_USED_ELEM_SIZE = 8

# --- packed ring (2.8) --------------------------------------------------------------------------

PACKED_QUEUE_MAX_SIZE = 32768

#: struct pvirtq_desc { le64 addr; le32 len; le16 id; le16 flags; }  (2.8.13)
PVIRTQ_DESC = struct.Struct("<QIHH")
PVIRTQ_DESC_SIZE = 16
PVIRTQ_DESC_ALIGN = 16

VIRTQ_DESC_F_AVAIL = 1 << 7  # 2.8.1
VIRTQ_DESC_F_USED = 1 << 15

#: struct pvirtq_event_suppress { le16 desc (off:15, wrap:1); le16 flags; }  (2.8.14)
PVIRTQ_EVENT_SUPPRESS = struct.Struct("<HH")
PVIRTQ_EVENT_SUPPRESS_ALIGN = 4
RING_EVENT_FLAGS_ENABLE = 0
RING_EVENT_FLAGS_DISABLE = 1
RING_EVENT_FLAGS_DESC = 2  # needs EVENT_IDX
