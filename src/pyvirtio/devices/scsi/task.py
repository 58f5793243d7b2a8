"""One SCSI command as a logical unit sees it (SAM-5 5.1: the execute command procedure call).

Inputs: the CDB (the bytes the transport carries; a unit reads only its command's length), the
data-out buffer and the data-in buffer as zero-copy views into guest memory.  Outputs: status,
sense data, how many bytes went into the data-in buffer (or were taken from the data-out
buffer), and a transport response for the HBA (VIRTIO 1.3, 5.6.6.1: OK, or OVERRUN when the CDB
asks for more data than the buffers hold).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...spec import scsi_cmd as sc
from ...spec.scsi import ScsiResponse


def slice_views(views: list[memoryview], offset: int, length: int) -> list[memoryview]:
    """The views covering bytes ``[offset, offset + length)`` of ``views`` (zero-copy)."""
    out = []
    for view in views:
        size = len(view)
        if offset >= size:
            offset -= size
            continue
        take = min(size - offset, length)
        if take <= 0:
            break
        out.append(view[offset:offset + take])
        length -= take
        offset = 0
    return out


def views_len(views: list[memoryview]) -> int:
    """Total bytes of ``views``."""
    return sum(len(v) for v in views)


@dataclass
class Task:
    """A command: ``cdb``, ``data_out`` / ``data_in`` views and their lengths; the results
    (``status``, ``sense``, ``transferred``, ``response``) are filled in by the unit."""

    cdb: bytes
    data_out: list[memoryview] = field(default_factory=list)
    data_in: list[memoryview] = field(default_factory=list)
    #: Set by the HBA: the task's tag (virtio ``id``), for ABORT TASK and QUERY TASK.
    tag: int = 0
    status: int = sc.Status.GOOD
    sense: bytes = b""
    transferred: int = 0
    response: int = ScsiResponse.OK
    #: Set by a unit that leaves the data transfer to the HBA's I/O engine (:mod:`.disk_io`):
    #: ``(kind, offset, length, dsync)`` with kind ``blk_io.READ`` or ``WRITE``.
    deferred: tuple[int, int, int, bool] | None = None

    @property
    def out_len(self) -> int:
        """Bytes in the data-out buffer."""
        return views_len(self.data_out)

    @property
    def in_len(self) -> int:
        """Bytes in the data-in buffer."""
        return views_len(self.data_in)

    @property
    def opcode(self) -> int:
        """The CDB's operation code (byte 0)."""
        return self.cdb[0]

    def reply(self, data: bytes | bytearray, allocation_length: int | None = None) -> None:
        """Return ``data`` in the data-in buffer, cut to ``allocation_length`` (SPC-4 4.2.5.6:
        a short allocation length truncates, it is no error) and to the buffer."""
        n = len(data)
        if allocation_length is not None:
            n = min(n, allocation_length)
        pos = 0
        src = memoryview(bytes(data)).cast("B")
        for view in self.data_in:
            if pos >= n:
                break
            take = min(len(view), n - pos)
            view[:take] = src[pos:pos + take]
            pos += take
        self.transferred = pos

    def read_out(self, length: int) -> bytes:
        """The first ``length`` bytes of the data-out buffer (fewer if it is shorter)."""
        return b"".join(bytes(v) for v in slice_views(self.data_out, 0, length))

    def in_views(self, length: int) -> list[memoryview]:
        """Views of the first ``length`` bytes of the data-in buffer."""
        return slice_views(self.data_in, 0, length)

    def out_views(self, length: int) -> list[memoryview]:
        """Views of the first ``length`` bytes of the data-out buffer."""
        return slice_views(self.data_out, 0, length)

    def check_condition(self, sense: bytes) -> None:
        """End with CHECK CONDITION and ``sense`` (nothing transferred)."""
        self.status = sc.Status.CHECK_CONDITION
        self.sense = sense
        self.transferred = 0
