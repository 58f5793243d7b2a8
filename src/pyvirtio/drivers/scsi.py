"""SCSI host driver (VIRTIO 1.3, 5.6): CDBs to any target and LUN, over any transport.

The driver is the guest's HBA: it reads the config space (queue count, sense and CDB sizes, the
target and LUN ranges), sets up the control queue, the event queue (a few buffers posted at all
times) and every request queue, and hands out an ``sg``-like call::

    drv = ScsiDriver.probe(transport, on_event=print)
    r = drv.execute(0, 0, bytes([0x12, 0, 0, 0, 96, 0]), data_in_len=96)   # INQUIRY
    r.status, r.sense, r.residual, r.data
    lun = drv.lun(0, 0); lun.read_capacity16(); lun.read(0, 8)            # scsi_sg.ScsiLun

Many commands go in flight at once (:meth:`ScsiDriver.submit` / :meth:`ScsiDriver.wait`), spread
over the request queues round-robin.  Task management (ABORT TASK, LOGICAL UNIT RESET ...) and
asynchronous notification queries/subscriptions go on the control queue (5.6.6.2).  Events
(hot-plug and hot-unplug with VIRTIO_SCSI_F_HOTPLUG, parameter changes with
VIRTIO_SCSI_F_CHANGE, asynchronous notifications, transport resets) are collected by
:meth:`ScsiDriver.poll_events` (every wait polls them too) and handed to the ``on_event``
callback as :class:`ScsiEventInfo`; the buffer goes back on the queue at once.

Requests are laid out as Linux lays them out: device-readable ``virtio_scsi_req_cmd`` head and
the CDB padded to ``cdb_size``, then data-out; device-writable ``virtio_scsi_resp_cmd`` head and
``sense_size`` sense bytes, then data-in (5.6.6.1).  Bidirectional commands need
VIRTIO_SCSI_F_INOUT.  T10 PI is never negotiated.  A command past its timeout is aborted (ABORT
TASK) and raises :class:`ScsiTimeout`.  QEMU 7.2's device counts data-out bytes in the used
length, so the request queues take an over-long used length as "all writable bytes"
(``clamp_used_len``); the data length comes from the residual.

The driver keeps no lock: one thread at a time calls it.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..driver import DriverQueue, Pending, VirtioDriver
from ..errors import DeviceFault, RequestError, Scope, UsageError
from ..spec import scsi as spec
from ..spec.ids import DeviceType
from ..spec.scsi import (SCSI_CTRL_AN, SCSI_CTRL_AN_RESP, SCSI_CTRL_TMF, SCSI_EVENT,
                         SCSI_REQ_CMD_HEAD, SCSI_RESP_CMD_HEAD, ScsiCtrlType, ScsiEventType,
                         ScsiFeature, ScsiResetReason, ScsiResponse, ScsiTmf)
from ..spec.scsi_cmd import LUN_ADDRESS_METHOD_FLAT, LUN_FLAT_MAX, Opcode, PeripheralDeviceType, Status
from .scsi_sense import Sense, SenseFormatError, parse_sense

if TYPE_CHECKING:
    from .scsi_sg import InquiryData

_F = ScsiFeature
EVENT_BUFFERS = 8
#: Seconds an ABORT TASK sent after a timeout, and the aborted command, may take.
ABORT_TIMEOUT = 5.0


def encode_lun(target: int, lun: int) -> bytes:
    """The 8-byte virtio-scsi LUN field for ``target``/``lun`` (5.6.6.1: 1, target, flat-space
    single-level LUN, four zero bytes)."""
    if not 0 <= target <= 0xFF or not 0 <= lun <= LUN_FLAT_MAX:
        raise UsageError(f"target {target} / lun {lun} out of range (0..255 / 0..{LUN_FLAT_MAX})")
    return bytes((1, target, LUN_ADDRESS_METHOD_FLAT | (lun >> 8), lun & 0xFF, 0, 0, 0, 0))


def decode_lun(field: bytes) -> tuple[int, int]:
    """(target, lun) of an 8-byte LUN field (events name their LUN this way)."""
    return field[1], ((field[2] << 8) | field[3]) & LUN_FLAT_MAX


@dataclass(frozen=True)
class ScsiResult:
    """What came back for one command: the virtio ``response``, the SCSI ``status``, the sense
    data (parsed, when the device returned any), the ``residual`` and the data-in bytes."""

    response: int
    status: int
    status_qualifier: int
    residual: int
    sense_raw: bytes
    data: bytes

    @property
    def sense(self) -> Sense | None:
        """The sense data parsed (fixed or descriptor format), or None when there is none."""
        return parse_sense(self.sense_raw) if self.sense_raw else None

    @property
    def ok(self) -> bool:
        """The command was delivered (response OK) and completed with GOOD status."""
        return self.response == ScsiResponse.OK and self.status == Status.GOOD

    def check(self) -> "ScsiResult":
        """Return self if :attr:`ok`, else raise :class:`ScsiCommandError`."""
        if not self.ok:
            raise ScsiCommandError(self)
        return self


class ScsiCommandError(RequestError):
    """A command failed: a virtio response other than OK, or a SCSI status other than GOOD (the
    result, with its sense data, is ``.result``)."""

    def __init__(self, result: ScsiResult):
        self.result = result
        if result.response != ScsiResponse.OK:
            what = f"virtio-scsi response {_name(ScsiResponse, result.response)}"
        else:
            what = f"SCSI status {_name(Status, result.status)}"
            if result.sense_raw:
                try:
                    what += f", {result.sense}"
                except SenseFormatError as exc:
                    what += f", unparseable sense {result.sense_raw[:18].hex()} ({exc})"
        super().__init__(f"SCSI command failed: {what}", result.status)


def _name(enum, value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)


@dataclass(frozen=True)
class ScsiEventInfo:
    """One event-queue entry (5.6.6.3), decoded: ``event`` (NO_EVENT, TRANSPORT_RESET,
    ASYNC_NOTIFY, PARAM_CHANGE), whether events were ``missed`` before it, the target/LUN it names
    and its ``reason`` (TRANSPORT_RESET: HARD/RESCAN/REMOVED; PARAM_CHANGE: ASC in bits 0-7, ASCQ
    in bits 8-15; ASYNC_NOTIFY: the event bits)."""

    event: int
    missed: bool
    target: int
    lun: int
    reason: int

    @property
    def hotplugged(self) -> bool:
        """A LUN appeared (TRANSPORT_RESET / RESCAN, 5.6.6.3.1)."""
        return self.event == ScsiEventType.TRANSPORT_RESET and self.reason == ScsiResetReason.RESCAN

    @property
    def unplugged(self) -> bool:
        """A LUN went away (TRANSPORT_RESET / REMOVED, 5.6.6.3.1)."""
        return self.event == ScsiEventType.TRANSPORT_RESET and self.reason == ScsiResetReason.REMOVED

    @property
    def asc_ascq(self) -> tuple[int, int]:
        """PARAM_CHANGE: the additional sense code and qualifier it reports (5.6.6.3.3)."""
        return self.reason & 0xFF, (self.reason >> 8) & 0xFF


class ScsiTimeout(DeviceFault):
    """A command did not complete within its timeout; the driver sent ABORT TASK for it
    (``tmf_response``: the device's answer, None if the TMF got none) and, if the command still
    did not come back, keeps its buffers until it does."""

    scope = Scope.REQUEST

    def __init__(self, message: str, tmf_response: int | None):
        self.tmf_response = tmf_response
        super().__init__(message)


class ScsiRequest:
    """A command in flight (from :meth:`ScsiDriver.submit`)."""

    __slots__ = ("pending", "queue", "data_in_len", "tag", "target", "lun")

    def __init__(self, pending: Pending, queue: DriverQueue, data_in_len: int, tag: int, target: int, lun: int):
        self.pending, self.queue, self.data_in_len, self.tag = pending, queue, data_in_len, tag
        self.target, self.lun = target, lun


class ScsiDriver(VirtioDriver):
    """The SCSI host driver (VIRTIO 1.3, 5.6): commands to any target/LUN, task management,
    asynchronous notification and hot-plug events, many commands in flight."""

    id_table = (DeviceType.SCSI,)
    features = (1 << _F.INOUT) | (1 << _F.HOTPLUG) | (1 << _F.CHANGE)
    queue_size = 128

    def __init__(self, transport, *, max_queues: int | None = None,
                 on_event: Callable[[ScsiEventInfo], None] | None = None):
        super().__init__(transport)
        self.max_queues = max_queues
        self.on_event = on_event
        self.events: list[ScsiEventInfo] = []  # events seen and not yet taken by wait_event
        self.events_missed = 0
        self._rr = 0
        self._tags = itertools.count(1)
        self.request_queues: list[DriverQueue] = []
        self._abandoned: list[ScsiRequest] = []

    # --- setup (3.1.1 step 7) -------------------------------------------------------------------

    def setup(self) -> None:
        self.refresh_config()
        count = max(1, self.config["num_queues"])
        if self.max_queues:
            count = min(count, self.max_queues)
        self.controlq = self.create_queue(spec.CONTROLQ)
        self.eventq = self.create_queue(spec.EVENTQ)
        self.request_queues = [self.create_queue(spec.REQUESTQ_BASE + i) for i in range(count)]
        for q in self.request_queues:
            # QEMU 7.2 counts a command's data-out bytes in the used length (the driver takes the
            # length of its response and data-in from the residual, not from the used length)
            q.vq.clamp_used_len = True
        self.queues = [self.controlq, self.eventq, *self.request_queues]
        self._event_size = max(spec.SCSI_EVENT_SIZE, self.config["event_info_size"])
        for _ in range(min(EVENT_BUFFERS, self.eventq.vq.size)):
            self.eventq.submit([], [self._event_size], kick=False)

    def _initialise(self) -> None:
        super()._initialise()
        self.eventq.kick()  # after DRIVER_OK: the buffers are the device's from now on

    def remove(self) -> None:
        self._abandoned.clear()  # the reset returns every buffer; closing the queues frees them
        super().remove()

    def refresh_config(self) -> dict:
        """Read the configuration space again (5.6.4); returns it as a dict."""
        raw = self.read_config(0, spec.SCSI_CONFIG_SIZE)
        self.config = spec.ScsiConfig(*spec.SCSI_CONFIG.unpack(raw))._asdict()
        if not self.config["sense_size"] or not self.config["cdb_size"]:
            raise DeviceFault(f"device reports sense_size {self.config['sense_size']}, "
                              f"cdb_size {self.config['cdb_size']}")
        return self.config

    def on_config_change(self) -> None:
        self.refresh_config()

    @property
    def cdb_size(self) -> int:
        """The CDB bytes every request carries (config ``cdb_size``)."""
        return self.config["cdb_size"]

    @property
    def sense_size(self) -> int:
        """The sense bytes every response carries (config ``sense_size``)."""
        return self.config["sense_size"]

    # --- commands (request queues) --------------------------------------------------------------

    def submit(self, target: int, lun: int, cdb: bytes, *, data_out: bytes = b"", data_in_len: int = 0,
               task_attr: int = spec.ScsiTaskAttr.SIMPLE, queue: int | None = None,
               kick: bool = True) -> ScsiRequest:
        """Queue one command without waiting; :meth:`wait` collects it."""
        if len(cdb) > self.cdb_size:
            raise UsageError(f"CDB of {len(cdb)} bytes; the device takes at most {self.cdb_size}")
        if data_out and data_in_len and not self.has_feature(_F.INOUT):
            raise UsageError("bidirectional command: VIRTIO_SCSI_F_INOUT was not negotiated")
        if data_in_len < 0:
            raise UsageError(f"data_in_len {data_in_len} < 0")
        tag = next(self._tags)
        head = SCSI_REQ_CMD_HEAD.pack(encode_lun(target, lun), tag, task_attr, 0, 0)
        out = [head + cdb.ljust(self.cdb_size, b"\0")] + ([data_out] if data_out else [])
        resp = spec.SCSI_RESP_CMD_HEAD_SIZE + self.sense_size
        q = self._queue(queue)
        pending = q.submit(out, [resp, data_in_len] if data_in_len else [resp], kick=kick)
        return ScsiRequest(pending, q, data_in_len, tag, target, lun)

    def wait(self, request: ScsiRequest, timeout: float | None = 30.0) -> ScsiResult:
        """Wait for a command; returns its result (a failed command is a result, not an error;
        :meth:`ScsiResult.check` raises).  A device that writes less than the response head is
        a :class:`~pyvirtio.errors.DeviceFault`.  Past ``timeout`` the command is aborted (ABORT
        TASK, as Linux's error handler starts) and :class:`ScsiTimeout` raised."""
        q, pending = request.queue, request.pending
        try:
            try:
                q.wait(pending, timeout)
            except DeviceFault:
                if pending.done or q.vq.broken:
                    raise
                self._timed_out(request, timeout)
            return self._result(request)
        finally:
            if pending.done:
                q.release(pending)
            self._release_abandoned()
            self.poll_events()

    def _timed_out(self, request: ScsiRequest, timeout: float | None) -> None:
        try:
            response: int | None = self.abort(request, request.target, request.lun, ABORT_TIMEOUT)
        except DeviceFault:
            response = None
        try:
            request.queue.wait(request.pending, ABORT_TIMEOUT)
        except DeviceFault:
            self._abandoned.append(request)  # its buffers stay the device's until it returns them
        raise ScsiTimeout(f"SCSI command {request.tag} to {request.target}:{request.lun} not completed "
                          f"within {timeout}s; ABORT TASK answered "
                          f"{'nothing' if response is None else _name(ScsiResponse, response)}", response)

    def _release_abandoned(self) -> None:
        for request in list(self._abandoned):
            request.queue.poll()
            if request.pending.done:
                request.queue.release(request.pending)
                self._abandoned.remove(request)

    @property
    def abandoned(self) -> int:
        """Commands given up after a timeout whose buffers the device still holds."""
        return len(self._abandoned)

    def _result(self, request: ScsiRequest) -> ScsiResult:
        q, pending = request.queue, request.pending
        if pending.written < spec.SCSI_RESP_CMD_HEAD_SIZE:
            raise DeviceFault(f"virtio-scsi: device wrote {pending.written} bytes, less than the "
                              f"{spec.SCSI_RESP_CMD_HEAD_SIZE}-byte response head")
        resp_addr, resp_len = pending.in_bufs[0]
        raw = q.mem.read(resp_addr, resp_len)
        sense_len, residual, qualifier, status, response = SCSI_RESP_CMD_HEAD.unpack_from(raw)
        sense = raw[spec.SCSI_RESP_CMD_HEAD_SIZE:spec.SCSI_RESP_CMD_HEAD_SIZE + min(sense_len, self.sense_size)]
        data = b""
        if request.data_in_len:
            got = min(request.data_in_len - min(residual, request.data_in_len), pending.written - resp_len)
            data = q.mem.read(pending.in_bufs[1][0], max(0, got))
        return ScsiResult(response, status, qualifier, residual, bytes(sense), data)

    def execute(self, target: int, lun: int, cdb: bytes, *, data_out: bytes = b"", data_in_len: int = 0,
                timeout: float | None = 30.0, task_attr: int = spec.ScsiTaskAttr.SIMPLE) -> ScsiResult:
        """Send one CDB to ``target``/``lun`` and wait (the ``sg`` call): ``data_out`` goes to the
        device, up to ``data_in_len`` bytes come back in ``result.data`` (less by the residual)."""
        return self.wait(self.submit(target, lun, cdb, data_out=data_out, data_in_len=data_in_len,
                                     task_attr=task_attr), timeout)

    def lun(self, target: int, lun: int = 0):
        """A :class:`~pyvirtio.drivers.scsi_sg.ScsiLun` handle with the common commands."""
        from .scsi_sg import ScsiLun
        return ScsiLun(self, target, lun)

    def scan(self, targets=range(8)) -> list[tuple[int, int, "InquiryData"]]:
        """Find the logical units on ``targets`` as a host's scan does: INQUIRY LUN 0 of each
        target (BAD_TARGET: none there), REPORT LUNS for the others, INQUIRY each; units whose
        peripheral qualifier says "not connected/capable" are left out.  Returns (target, lun,
        standard INQUIRY data) in order."""
        from .scsi_sg import InquiryData
        found = []
        for target in targets:
            probe = self.execute(target, 0, bytes((Opcode.INQUIRY, 0, 0, 0, 96, 0)), data_in_len=96)
            if probe.response != ScsiResponse.OK:
                continue
            try:
                luns = self.lun(target, 0).report_luns()
            except ScsiCommandError:
                luns = [0]
            for lun in sorted(set(luns) | {0}):
                inquiry = InquiryData.parse(probe.data) if lun == 0 else self.lun(target, lun).inquiry()
                if inquiry.peripheral_qualifier == 0 and inquiry.device_type != PeripheralDeviceType.UNKNOWN_OR_NO_DEVICE:
                    found.append((target, lun, inquiry))
        return found

    def _queue(self, queue: int | None) -> DriverQueue:
        if queue is None:
            self._rr = (self._rr + 1) % len(self.request_queues)
            return self.request_queues[self._rr]
        return self.request_queues[queue]

    # --- control queue (5.6.6.2) ----------------------------------------------------------------

    def task_management(self, function: int, target: int, lun: int, tag: int = 0,
                        timeout: float | None = 30.0) -> int:
        """Send a task management function (:class:`~pyvirtio.spec.scsi.ScsiTmf`) and return the
        device's ``response`` (FUNCTION_COMPLETE / FUNCTION_SUCCEEDED / FUNCTION_REJECTED ...)."""
        req = SCSI_CTRL_TMF.pack(ScsiCtrlType.TMF, function, encode_lun(target, lun), tag)
        reply = self.controlq.call([req], [1], timeout)
        if len(reply) < 1:
            raise DeviceFault("virtio-scsi: TMF completed without a response byte")
        return reply[0]

    def abort(self, request: ScsiRequest, target: int, lun: int, timeout: float | None = 30.0) -> int:
        """ABORT TASK for a command in flight (by its tag); returns the TMF response.  The command
        itself still completes on its queue (typically with response ABORTED)."""
        return self.task_management(ScsiTmf.ABORT_TASK, target, lun, request.tag, timeout)

    def reset_lun(self, target: int, lun: int, timeout: float | None = 30.0) -> int:
        """LOGICAL UNIT RESET; returns the TMF response."""
        return self.task_management(ScsiTmf.LOGICAL_UNIT_RESET, target, lun, 0, timeout)

    def async_notification(self, target: int, lun: int, events: int, *, subscribe: bool = False,
                           timeout: float | None = 30.0) -> tuple[int, int]:
        """AN QUERY (or SUBSCRIBE) for ``events`` (:class:`~pyvirtio.spec.scsi.ScsiAsyncEvent`
        bits); returns (event_actual, response)."""
        kind = ScsiCtrlType.AN_SUBSCRIBE if subscribe else ScsiCtrlType.AN_QUERY
        req = SCSI_CTRL_AN.pack(kind, encode_lun(target, lun), events)
        reply = self.controlq.call([req], [spec.SCSI_CTRL_AN_RESP_SIZE], timeout)
        if len(reply) < spec.SCSI_CTRL_AN_RESP_SIZE:
            raise DeviceFault(f"virtio-scsi: AN reply of {len(reply)} bytes")
        actual, response = SCSI_CTRL_AN_RESP.unpack_from(reply)
        return actual, response

    # --- event queue (5.6.6.3) ------------------------------------------------------------------

    def poll_events(self) -> list[ScsiEventInfo]:
        """Collect the events the device returned, call ``on_event`` for each, post the buffers
        again; returns the new events."""
        eq = getattr(self, "eventq", None)
        if eq is None:
            return []
        new = []
        done = eq.poll()
        for pending in done:
            raw = eq.read_in(pending)
            if len(raw) >= spec.SCSI_EVENT_SIZE:
                new.append(self._event(raw))
            eq.submit_buffers([], pending.in_bufs, owned=pending.owned, kick=False)
        if done:
            eq.kick()
        for info in new:
            self.events.append(info)
            if self.on_event is not None:
                self.on_event(info)
        return new

    def _event(self, raw: bytes) -> ScsiEventInfo:
        event, lun, reason = SCSI_EVENT.unpack_from(raw)
        missed = bool(event & spec.SCSI_T_EVENTS_MISSED)
        if missed:
            self.events_missed += 1
        target, lun_id = decode_lun(lun)
        return ScsiEventInfo(event & ~spec.SCSI_T_EVENTS_MISSED, missed, target, lun_id, reason)

    def wait_event(self, predicate: Callable[[ScsiEventInfo], bool] = lambda e: True,
                   timeout: float = 10.0) -> ScsiEventInfo:
        """Block until an event matching ``predicate`` arrives (already-seen events count);
        raises TimeoutError."""
        seen = 0
        deadline = time.monotonic() + timeout
        while True:
            for info in self.events[seen:]:
                if predicate(info):
                    self.events.remove(info)
                    return info
            seen = len(self.events)
            if not self.poll_events():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching virtio-scsi event within {timeout}s")
                if not self.eventq.vq.enable_cb(self.eventq.mem):
                    self.transport.wait_for_interrupt(min(left, 0.5))
