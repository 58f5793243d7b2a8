"""Block driver (VIRTIO 1.3, 5.2): read, write, flush, discard, write-zeroes, get-id over any
transport, with many requests in flight across one or more queues."""

from __future__ import annotations

from typing import Sequence

from ..driver import DriverQueue, Pending, VirtioDriver
from ..errors import RequestError, UsageError
from ..spec import blk as spec
from ..spec.ids import DeviceType

SECTOR = spec.SECTOR_SIZE
_F = spec.BlkFeature
_T = spec.BlkReqType
_S = spec.BlkStatus
_HDR = spec.BLK_REQ_HEADER
_SEG = spec.BLK_DISCARD_WRITE_ZEROES


class BlkRequest:
    """A block request in flight."""

    __slots__ = ("pending", "queue", "rtype", "data_len")

    def __init__(self, pending: Pending, queue: DriverQueue, rtype: int, data_len: int):
        self.pending, self.queue, self.rtype, self.data_len = pending, queue, rtype, data_len


class BlkDriver(VirtioDriver):
    """The block driver (VIRTIO 1.3, 5.2): reads, writes, flushes, discard and write-zeroes on any
    transport, many requests in flight per queue."""

    id_table = (DeviceType.BLOCK,)
    features = sum(1 << f for f in (_F.SIZE_MAX, _F.SEG_MAX, _F.BLK_SIZE, _F.FLUSH, _F.TOPOLOGY,
                                    _F.CONFIG_WCE, _F.MQ, _F.DISCARD, _F.WRITE_ZEROES, _F.RO))
    queue_size = 128

    def __init__(self, transport, max_queues: int | None = None):
        super().__init__(transport)
        self.max_queues = max_queues
        self._rr = 0

    def setup(self) -> None:
        self.refresh_config()
        count = self.config["num_queues"] if self.has_feature(_F.MQ) else 1
        count = max(1, count)
        if self.max_queues:
            count = min(count, self.max_queues)
        self.queues = [self.create_queue(i) for i in range(count)]

    def refresh_config(self) -> dict:
        """Read the device's configuration again (capacity, block size, writeback ...) after a
        configuration change; returns it as a dict."""
        raw = self.read_config(0, spec.BLK_CONFIG.size)
        self.config = dict(zip(spec.BLK_CONFIG_FIELDS, spec.BLK_CONFIG.unpack(raw)))
        return self.config

    def on_config_change(self) -> None:
        self.refresh_config()

    # --- properties -----------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Size in 512-byte sectors."""
        return self.config["capacity"]

    @property
    def read_only(self) -> bool:
        """Whether the device refuses writes (VIRTIO_BLK_F_RO)."""
        return self.has_feature(_F.RO)

    @property
    def block_size(self) -> int:
        """The device's logical block size in bytes (VIRTIO_BLK_F_BLK_SIZE; 512 without it)."""
        return self.config["blk_size"] if self.has_feature(_F.BLK_SIZE) else SECTOR

    @property
    def writeback(self) -> bool:
        """Whether the device caches writes (a flush makes them durable); without CONFIG_WCE,
        whether FLUSH was negotiated."""
        if self.has_feature(_F.CONFIG_WCE):
            return bool(self.read_config(spec.BlkConfigOffset.WRITEBACK, 1)[0])
        return self.has_feature(_F.FLUSH)

    def set_writeback(self, enabled: bool) -> None:
        """Switch the device's write cache on or off (VIRTIO_BLK_F_CONFIG_WCE)."""
        if not self.has_feature(_F.CONFIG_WCE):
            raise UsageError("device does not offer VIRTIO_BLK_F_CONFIG_WCE")
        self.transport.write_config(spec.BlkConfigOffset.WRITEBACK, bytes((int(enabled),)))

    # --- submitting (many in flight) ------------------------------------------------------------

    def _queue(self, queue: int | None) -> DriverQueue:
        if queue is None:
            self._rr = (self._rr + 1) % len(self.queues)
            return self.queues[self._rr]
        return self.queues[queue]

    def _submit(self, rtype: int, sector: int, payload: Sequence[bytes], data_in: int,
                queue: int | None, kick: bool) -> BlkRequest:
        q = self._queue(queue)
        header = _HDR.pack(rtype, 0, sector)
        in_sizes = [data_in, 1] if data_in else [1]
        pending = q.submit([header, *payload], in_sizes, kick=kick)
        return BlkRequest(pending, q, rtype, data_in)

    def submit_read(self, sector: int, length: int, *, queue=None, kick=True) -> BlkRequest:
        """Queue a read of ``length`` bytes from ``sector`` (512-byte units) without waiting; the
        request's result holds the data."""
        self._check_io(length)
        return self._submit(_T.IN, sector, [], length, queue, kick)

    def submit_write(self, sector: int, data: bytes, *, queue=None, kick=True) -> BlkRequest:
        """Queue a write of ``data`` at ``sector`` without waiting."""
        self._check_io(len(data))
        return self._submit(_T.OUT, sector, [data], 0, queue, kick)

    def submit_flush(self, *, queue=None) -> BlkRequest:
        """Queue a flush without waiting."""
        return self._submit(_T.FLUSH, 0, [], 0, queue, True)

    def _check_io(self, length: int) -> None:
        if length <= 0 or length % SECTOR:
            raise UsageError(f"I/O length {length} is not a positive multiple of {SECTOR}")

    def wait(self, request: BlkRequest, timeout: float | None = 30.0) -> bytes:
        """Wait for a request; return the data read (IN, GET_ID) or b"".  Raises RequestError
        with the device's status for IOERR / UNSUPP."""
        q, pending = request.queue, request.pending
        try:
            q.wait(pending, timeout)
            status_addr, _ = pending.in_bufs[-1]
            status = q.mem.read(status_addr, 1)[0] if pending.written >= 1 else _S.IOERR
            if status != _S.OK:
                name = _S(status).name if status in _S._value2member_map_ else str(status)
                raise RequestError(f"block request type {request.rtype} failed: {name}", status)
            if request.data_len:
                addr, _ = pending.in_bufs[0]
                return q.mem.read(addr, request.data_len)
            return b""
        finally:
            if pending.done:
                q.release(pending)

    # --- synchronous conveniences ---------------------------------------------------------------

    def read(self, sector: int, length: int, *, queue=None) -> bytes:
        """Read ``length`` bytes from ``sector`` and wait for them; a failed request raises
        :class:`~pyvirtio.errors.RequestError`."""
        return self.wait(self.submit_read(sector, length, queue=queue))

    def write(self, sector: int, data: bytes, *, queue=None) -> None:
        """Write ``data`` at ``sector`` and wait until the device has done it."""
        self.wait(self.submit_write(sector, data, queue=queue))

    def flush(self) -> None:
        """Make every completed write durable (VIRTIO_BLK_T_FLUSH) and wait."""
        self.wait(self.submit_flush())

    def get_id(self) -> str:
        """The device's ID string (VIRTIO_BLK_T_GET_ID: the serial, at most 20 bytes)."""
        req = self._submit(_T.GET_ID, 0, [], spec.BLK_ID_BYTES, None, True)
        return self.wait(req).split(b"\0", 1)[0].decode(errors="replace")

    def discard(self, sector: int, num_sectors: int) -> None:
        """Tell the device ``num_sectors`` sectors from ``sector`` are unused
        (VIRTIO_BLK_F_DISCARD)."""
        seg = _SEG.pack(sector, num_sectors, 0)
        self.wait(self._submit(_T.DISCARD, 0, [seg], 0, None, True))

    def write_zeroes(self, sector: int, num_sectors: int, *, unmap: bool = False) -> None:
        """Zero ``num_sectors`` sectors from ``sector`` (VIRTIO_BLK_F_WRITE_ZEROES); ``unmap`` lets
        the device deallocate them."""
        seg = _SEG.pack(sector, num_sectors, spec.BLK_WRITE_ZEROES_FLAG_UNMAP if unmap else 0)
        self.wait(self._submit(_T.WRITE_ZEROES, 0, [seg], 0, None, True))
