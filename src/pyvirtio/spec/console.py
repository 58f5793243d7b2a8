"""Console device (VIRTIO 1.3, 5.3).

Data only.  All fields are little-endian.

Queues (5.3.2): 0 receiveq(port0), 1 transmitq(port0), 2 control receiveq, 3 control transmitq,
then for port n >= 1: receiveq(port n) at 2n + 2 and transmitq(port n) at 2n + 3 (4, 5 for
port 1; 6, 7 for port 2 …).  Queues 2 and up exist only with MULTIPORT.
"""

import struct
from enum import IntEnum
from typing import NamedTuple

RECEIVEQ_PORT0 = 0
TRANSMITQ_PORT0 = 1
CONTROL_RECEIVEQ = 2
CONTROL_TRANSMITQ = 3
#: First queue of port 1; port n >= 1 uses PORT_QUEUE_BASE + 2(n-1) and that + 1.
PORT_QUEUE_BASE = 4


def receiveq_index(port: int) -> int:
    """Queue index of port ``port``'s receiveq (5.3.2)."""
    return RECEIVEQ_PORT0 if port == 0 else 2 * port + 2


def transmitq_index(port: int) -> int:
    """Queue index of port ``port``'s transmitq (5.3.2)."""
    return TRANSMITQ_PORT0 if port == 0 else 2 * port + 3


class ConsoleFeature(IntEnum):
    """Feature bit numbers (5.3.3)."""

    SIZE = 0  # cols and rows are valid
    MULTIPORT = 1  # max_nr_ports is valid, control queues exist
    EMERG_WRITE = 2  # emerg_wr is supported


#: struct virtio_console_config { le16 cols; le16 rows; le32 max_nr_ports; le32 emerg_wr; }
#: (5.3.4)
CONSOLE_CONFIG = struct.Struct("<HHII")


class ConsoleConfig(NamedTuple):
    """One ``CONSOLE_CONFIG`` unpacked, field by field."""

    cols: int
    rows: int
    max_nr_ports: int
    emerg_wr: int


CONSOLE_CONFIG_FIELDS = ConsoleConfig._fields
CONSOLE_CONFIG_SIZE = 12


class ConsoleConfigOffset(IntEnum):
    """Field offsets in struct virtio_console_config (5.3.4)."""

    COLS = 0
    ROWS = 2
    MAX_NR_PORTS = 4
    EMERG_WR = 8  # driver writes one character here (le32), with EMERG_WRITE


#: struct virtio_console_control { le32 id; le16 event; le16 value; }  (5.3.6.2)
CONSOLE_CONTROL = struct.Struct("<IHH")


class ConsoleControl(NamedTuple):
    """One ``CONSOLE_CONTROL`` unpacked, field by field."""

    id: int
    event: int
    value: int


CONSOLE_CONTROL_FIELDS = ConsoleControl._fields
CONSOLE_CONTROL_SIZE = 8


class ConsoleEvent(IntEnum):
    """Control message ``event`` values (5.3.6.2); Linux names as aliases."""

    DEVICE_READY = 0  # driver -> device; value 1 = ok
    DEVICE_ADD = 1  # device -> driver
    DEVICE_REMOVE = 2  # device -> driver
    PORT_READY = 3  # driver -> device; value 1 = ok
    CONSOLE_PORT = 4  # device -> driver
    RESIZE = 5  # device -> driver, followed by struct virtio_console_resize
    PORT_OPEN = 6  # both ways; value 0 closed, 1 open
    PORT_NAME = 7  # device -> driver, followed by the UTF-8 name (no NUL)

    PORT_ADD = 1  # Linux VIRTIO_CONSOLE_PORT_ADD
    PORT_REMOVE = 2  # Linux VIRTIO_CONSOLE_PORT_REMOVE


#: struct virtio_console_resize { le16 cols; le16 rows; }  (5.3.6.2).  Linux drivers before
#: commit 5326ab737a47 read it as { rows; cols }; newer ones follow the spec, as we do.
CONSOLE_RESIZE = struct.Struct("<HH")
CONSOLE_RESIZE_FIELDS = ("cols", "rows")
CONSOLE_RESIZE_SIZE = 4

#: Linux VIRTIO_CONSOLE_BAD_ID: "no port".
CONSOLE_BAD_ID = 0xFFFFFFFF
