"""The virtio-scsi host bus adapter (VIRTIO 1.3, 5.6).

Queues: controlq (0), eventq (1), request queues from 2.  One queue group (one worker) serves
them all, so the units need no lock.  A command runs to its end inside the worker, except a
disk's READ/WRITE on an image, whose data moves in the kernel (:mod:`.disk_io`) — and everything
in flight is finished before a task management function is answered, so a TMF never races a
running command.

Request queue (5.6.6.1): a chain is ``virtio_scsi_req_cmd`` (19 bytes + ``cdb_size``) then the
data-out buffer, device-writable ``virtio_scsi_resp_cmd`` (12 bytes + ``sense_size``) then the
data-in buffer.  A LUN field not in the virtio form, or naming a target without units, gets
response BAD_TARGET; a chain too short for its header or its response (the driver's fault) gets
response FAILURE where the 12-byte response head fits, and nothing otherwise.  The CDB goes to
the target (:mod:`.target`); status, sense (cut to ``sense_size``) and the residual go back.

controlq (5.6.6.2): TMF ABORT TASK, ABORT TASK SET, CLEAR TASK SET, QUERY TASK (SET) — nothing
is ever in flight between chains, so they complete at once; LOGICAL UNIT RESET and I_T NEXUS
RESET reset the units (a unit attention follows); CLEAR ACA is rejected (no NACA); an unknown
subtype FUNCTION REJECTED; a target without units BAD_TARGET, a LUN without a unit INCORRECT_LUN.
AN query/subscribe: CD-ROM units support MEDIA_CHANGE; a subscribed unit's medium change sends
an ASYNC_NOTIFY event.

eventq (5.6.6.3): with VIRTIO_SCSI_F_HOTPLUG, :meth:`ScsiDevice.attach` and :meth:`detach`
send TRANSPORT_RESET with reason RESCAN / REMOVED (Linux adds or removes the SCSI device); with
VIRTIO_SCSI_F_CHANGE, :meth:`ScsiDevice.param_change` sends PARAM_CHANGE, and so does a host
eject or insert (28h/00h; Linux acts only on 2Ah, the CD-ROM's own unit attention and media
event are what its sr driver sees).  Events wait in a
bounded queue for the driver's buffers; past :data:`MAX_PENDING_EVENTS` the oldest is dropped
and the next one delivered carries VIRTIO_SCSI_T_EVENTS_MISSED.  T10 PI is not offered.
"""

from __future__ import annotations

import select
import threading
from collections import deque
from typing import Callable, TypeVar

from ...device import VirtioDevice
from ...errors import UsageError
from ...memory import GuestMemory
from ...spec import scsi as spec
from ...spec import scsi_cmd as sc
from ...spec.ids import DeviceType
from ...virtq import DescriptorChain, DeviceQueue
from ...interrupt import Interrupt
from .cdrom import CdromUnit
from .disk import DiskUnit
from .disk_io import DeferredIO, publish
from .media import ImageMedium
from .target import MAX_LUN, MAX_TARGET, LogicalUnit, Target, encode_lun, parse_lun
from .task import Task

_R = spec.ScsiResponse
_TMF = spec.ScsiTmf
_E = spec.ScsiEventType

#: Events waiting for eventq buffers; more drop the oldest (VIRTIO_SCSI_T_EVENTS_MISSED).
MAX_PENDING_EVENTS = 64
#: Bounds on the driver-writable config fields (5.6.4): larger values are clamped.
MAX_SENSE_SIZE = 252
MAX_CDB_SIZE = 256
#: How long a host call waits for the worker to run it.
HOST_CALL_TIMEOUT = 10.0

_T = TypeVar("_T")


class ScsiDevice(VirtioDevice):
    """A virtio-scsi HBA with units on targets; ``request_queues`` request queues."""

    device_type = DeviceType.SCSI

    def __init__(self, *, request_queues: int = 1, queue_max_size: int = 256):
        if not 1 <= request_queues <= 64:
            raise UsageError(f"request_queues {request_queues} is not in 1..64")
        self.request_queues = request_queues
        self.num_queues = spec.REQUESTQ_BASE + request_queues
        self.queue_max_size = queue_max_size
        self.device_specific_features = (1 << spec.ScsiFeature.HOTPLUG) | (1 << spec.ScsiFeature.CHANGE)
        super().__init__()
        self.targets: dict[int, Target] = {}
        self.sense_size = spec.SCSI_SENSE_DEFAULT_SIZE
        self.cdb_size = spec.SCSI_CDB_DEFAULT_SIZE
        self._events: deque[bytes] = deque()
        self._events_missed = False
        self._subscriptions: dict[tuple[int, int], int] = {}
        self.stats = {"commands": 0, "bad_target": 0, "bad_requests": 0, "tmfs": 0,
                      "events_sent": 0, "events_dropped": 0}
        #: READ/WRITE of disk units on image files, in the kernel (:mod:`.disk_io`).
        self.deferred = DeferredIO(self._respond, queue_max_size)
        self._mem: GuestMemory | None = None  # the memory of the last turn (for host calls)

    # --- units (host API: any thread before the device runs; after that through host_call) ------

    def add_unit(self, target: int, lun: int, unit: LogicalUnit) -> None:
        """Put ``unit`` at ``target``:``lun`` (no event: for units present from the start)."""
        if not 0 <= target <= MAX_TARGET or not 0 <= lun <= MAX_LUN:
            raise UsageError(f"target {target} lun {lun}: targets are 0..{MAX_TARGET}, LUNs 0..{MAX_LUN}")
        tgt = self.targets.setdefault(target, Target(target))
        if lun in tgt.units:
            raise UsageError(f"target {target} lun {lun} is taken")
        tgt.units[lun] = unit
        if isinstance(unit, DiskUnit) and isinstance(unit.medium, ImageMedium) and unit.aio != "off":
            unit.defer = True
        if isinstance(unit, CdromUnit):
            unit.on_change = lambda t=target, n=lun: self._media_changed(t, n)

    def unit(self, target: int, lun: int) -> LogicalUnit | None:
        """The unit at ``target``:``lun``, if any."""
        tgt = self.targets.get(target)
        return tgt.units.get(lun) if tgt is not None else None

    def attach(self, target: int, lun: int, unit: LogicalUnit) -> None:
        """Hot-plug ``unit`` (in the worker): the other units of the target get REPORTED LUNS
        DATA HAS CHANGED; with HOTPLUG negotiated the driver gets TRANSPORT_RESET / RESCAN."""
        def run() -> None:
            self.add_unit(target, lun, unit)
            self._luns_changed(target, lun)
            if self.has_feature(spec.ScsiFeature.HOTPLUG):
                self.queue_event(_E.TRANSPORT_RESET, target, lun, spec.ScsiResetReason.RESCAN)
        self.run_on_worker(run)

    def detach(self, target: int, lun: int) -> LogicalUnit:
        """Hot-unplug the unit at ``target``:``lun`` (in the worker) and return it (the caller
        closes it); TRANSPORT_RESET / REMOVED with HOTPLUG."""
        def run() -> LogicalUnit:
            tgt = self.targets.get(target)
            if tgt is None or lun not in tgt.units:
                raise UsageError(f"no unit at target {target} lun {lun}")
            unit = tgt.units[lun]
            self._settle(unit=unit)  # nothing of it may complete after it is gone
            self.deferred.close(unit)
            del tgt.units[lun]
            if not tgt.units:
                del self.targets[target]
            self._subscriptions.pop((target, lun), None)
            self._luns_changed(target, lun)
            if self.has_feature(spec.ScsiFeature.HOTPLUG):
                self.queue_event(_E.TRANSPORT_RESET, target, lun, spec.ScsiResetReason.REMOVED)
            return unit
        return self.run_on_worker(run)

    def param_change(self, target: int, lun: int, code: int) -> None:
        """Tell the driver a unit's parameters changed (``code``: ASC << 8 | ASCQ, e.g.
        CAPACITY DATA HAS CHANGED), with VIRTIO_SCSI_F_CHANGE (5.6.6.3.3).  Runs in the worker,
        which delivers the event (from any thread; not from the worker itself)."""
        self.run_on_worker(lambda: self._param_change(target, lun, code))

    def _param_change(self, target: int, lun: int, code: int) -> None:
        unit = self.unit(target, lun)
        if unit is not None:
            unit.add_unit_attention(code)
        if self.has_feature(spec.ScsiFeature.CHANGE):
            self.queue_event(_E.PARAM_CHANGE, target, lun, (code >> 8) | ((code & 0xFF) << 8))

    def cdrom(self, where: tuple[int, int] | None = None) -> tuple[tuple[int, int], CdromUnit]:
        """The CD-ROM unit at ``where`` (target, lun), or the first one; UsageError if none."""
        for address, unit in self.units():
            if isinstance(unit, CdromUnit) and (where is None or address == where):
                return address, unit
        raise UsageError(f"no CD-ROM unit at {where[0]}:{where[1]}" if where else "no CD-ROM unit")

    def units(self) -> list[tuple[tuple[int, int], LogicalUnit]]:
        """Every unit with its (target, lun), in order."""
        # copies first (one C call each, under the GIL): the control thread may ask while the
        # worker plugs a unit
        return [((t, n), unit) for t, tgt in sorted(list(self.targets.items()))
                for n, unit in sorted(list(tgt.units.items()))]

    def eject(self, where: tuple[int, int] | None = None, *, force: bool = False) -> tuple[int, int]:
        """Host eject of a CD-ROM's disc (refused while the guest prevents removal, unless
        ``force``: :class:`~.cdrom.MediumLocked`); returns the unit's address."""
        def run() -> tuple[int, int]:
            address, unit = self.cdrom(where)
            old = unit.eject(force=force)
            if old is not None:
                old.close()
            self._medium_param_change(address)
            return address
        return self.run_on_worker(run)

    def insert(self, medium, where: tuple[int, int] | None = None) -> tuple[int, int]:
        """Put ``medium`` (a :class:`~.media.Medium`) in a CD-ROM drive; returns its address.
        The disc it replaces is closed."""
        def run() -> tuple[int, int]:
            address, unit = self.cdrom(where)
            old = unit.insert(medium)
            if old is not None:
                old.close()
            self._medium_param_change(address)
            return address
        return self.run_on_worker(run)

    def resize(self, where: tuple[int, int], size: int, *, shrink: bool = False) -> int:
        """Change a disk unit's capacity to ``size`` bytes (whole blocks; smaller only with
        ``shrink``); the unit reports CAPACITY DATA HAS CHANGED and, with VIRTIO_SCSI_F_CHANGE,
        the driver gets PARAM_CHANGE 2Ah/09h (Linux then reads the capacity again).  Returns
        the new number of blocks."""
        def run() -> int:
            unit = self.unit(*where)
            if not isinstance(unit, DiskUnit) or not hasattr(unit.medium, "resize"):
                raise UsageError(f"no disk unit on an image at {where[0]}:{where[1]}")
            if size <= 0 or size % unit.block_size:
                raise UsageError(f"size {size} is not a positive multiple of the block size {unit.block_size}")
            if size < unit.medium.size and not shrink:
                raise UsageError(f"{size} bytes is smaller than the disk ({unit.medium.size}): "
                                 "pass shrink (data past the new end is lost)")
            self._settle(unit=unit)
            unit.medium.resize(size)
            self._param_change(where[0], where[1], sc.AdditionalSense.CAPACITY_DATA_HAS_CHANGED)
            return unit.capacity
        return self.run_on_worker(run)

    def free_target(self) -> int:
        """The lowest target without units."""
        for t in range(MAX_TARGET + 1):
            if t not in self.targets:
                return t
        raise UsageError("every target is in use")

    def run_on_worker(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` in the device's worker (under its lock) and return what it returns or
        raise what it raised; inline when no engine serves the device."""
        done = threading.Event()
        lock = threading.Lock()
        box: dict[str, object] = {}

        def call() -> None:
            with lock:
                if "cancelled" in box:
                    return
                box["started"] = True
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc
            finally:
                done.set()
        self.host_call(call, 0)
        if not done.wait(HOST_CALL_TIMEOUT):
            with lock:  # a worker stuck in a long command: the change never happens ...
                if "started" not in box:
                    box["cancelled"] = True
                    raise UsageError("the device's worker is busy (a long command?); nothing "
                                     "was changed, try again")
            done.wait()  # ... or, once it began, it is finished and reported
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    def _luns_changed(self, target: int, lun: int) -> None:
        tgt = self.targets.get(target)
        for n, other in (tgt.units.items() if tgt is not None else ()):
            if n != lun:
                other.add_unit_attention(sc.AdditionalSense.REPORTED_LUNS_DATA_HAS_CHANGED)

    def _medium_param_change(self, address: tuple[int, int]) -> None:
        """A host medium change, with VIRTIO_SCSI_F_CHANGE: PARAM_CHANGE with NOT READY TO READY
        CHANGE, MEDIUM MAY HAVE CHANGED (28h/00h) — the unit attention is the unit's own."""
        if self.has_feature(spec.ScsiFeature.CHANGE):
            code = sc.AdditionalSense.NOT_READY_TO_READY_CHANGE_MEDIUM_MAY_HAVE_CHANGED
            self.queue_event(_E.PARAM_CHANGE, address[0], address[1], (code >> 8) | ((code & 0xFF) << 8))

    def _media_changed(self, target: int, lun: int) -> None:
        if self._subscriptions.get((target, lun), 0) & spec.ScsiAsyncEvent.MEDIA_CHANGE:
            self.queue_event(_E.ASYNC_NOTIFY, target, lun, spec.ScsiAsyncEvent.MEDIA_CHANGE)

    # --- config space (5.6.4) -----------------------------------------------------------------

    def config_bytes(self) -> bytes:
        return spec.SCSI_CONFIG.pack(self.request_queues, max(1, self.queue_max_size - 2), 0xFFFF, 128,
                                     spec.SCSI_EVENT_SIZE, self.sense_size, self.cdb_size, 0,
                                     MAX_TARGET, MAX_LUN)

    def write_config(self, offset: int, data: bytes) -> None:
        # Only sense_size and cdb_size are driver-writable (5.6.4); a value we cannot honour is
        # clamped to our bound (the driver re-reads the field).
        if len(data) != 4:
            return
        value = int.from_bytes(data, "little")
        if offset == spec.ScsiConfigOffset.SENSE_SIZE:
            self.sense_size = min(value, MAX_SENSE_SIZE)
        elif offset == spec.ScsiConfigOffset.CDB_SIZE:
            self.cdb_size = max(1, min(value, MAX_CDB_SIZE))

    def on_reset(self) -> None:
        # 5.6.4: sense_size and cdb_size go back to their defaults; the units see a reset.
        self.deferred.wait()  # nothing of the old driver's may still be writing into its memory
        self.deferred.close()
        self.sense_size = spec.SCSI_SENSE_DEFAULT_SIZE
        self.cdb_size = spec.SCSI_CDB_DEFAULT_SIZE
        self._events.clear()
        self._events_missed = False
        self._subscriptions.clear()
        for tgt in self.targets.values():
            for unit in tgt.units.values():
                unit.reset(sc.AdditionalSense.POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED)

    # --- queues -------------------------------------------------------------------------------

    def process_queue(self, mem: GuestMemory, queue: DeviceQueue) -> bool:
        self._mem = mem
        if queue.index == spec.EVENTQ:
            return self._flush_events(mem)
        if queue.index == spec.CONTROLQ:
            self._settle()  # a TMF answers only once nothing is in flight (SAM-5 7.1)
            return super().process_queue(mem, queue)
        notify = super().process_queue(mem, queue)
        if self.deferred.ios:
            self.deferred.submit(queue.index)
            notify = queue.index in publish(self.queues, mem, self.deferred.reap(queue.index)) or notify
        return notify

    def host_fds(self, group: int) -> list[tuple[int, int]]:
        return [(fd, select.POLLIN) for fd in self.deferred.fds()]

    def host_ready(self, mem: GuestMemory, group: int, events: list[tuple[int, int]]) -> set[int]:
        self._mem = mem
        notify = publish(self.queues, mem, self.deferred.reap()) if self.deferred.ios else set()
        if self._flush_events(mem):
            notify.add(spec.EVENTQ)
        return notify

    def quiesce(self, mem: GuestMemory | None, index: int | None = None, timeout: float = 30.0) -> bool:
        if index is not None and index < spec.REQUESTQ_BASE:
            return True
        ok, done = self.deferred.wait(index, timeout=timeout)
        try:
            publish(self.queues, mem, done)
        except Exception as exc:  # the ring is going away; what matters is nothing is left
            self.guest_log.warning("scsi: completions not published: %s", exc)
        return ok

    def _settle(self, unit=None) -> None:
        """Wait for the requests in flight (of ``unit``), publish them and interrupt (in the
        worker, before a TMF or an unplug)."""
        if not self.deferred.inflight:
            return
        _, done = self.deferred.wait(unit=unit)
        for index in publish(self.queues, self._mem, done):
            self.queues[index].stats.interrupts += 1
            self.interrupt(Interrupt(index))

    def handle_chain(self, queue_index: int, chain: DescriptorChain) -> int | None:
        if queue_index == spec.CONTROLQ:
            return self._control(chain)
        return self._request(queue_index, chain)

    # --- request queues (5.6.6.1) ---------------------------------------------------------------

    def _request(self, queue_index: int, chain: DescriptorChain) -> int | None:
        self.stats["commands"] += 1
        head_size = spec.SCSI_REQ_CMD_HEAD_SIZE + self.cdb_size
        resp_size = spec.SCSI_RESP_CMD_HEAD_SIZE + self.sense_size
        if chain.writable_len < spec.SCSI_RESP_CMD_HEAD_SIZE:
            self.stats["bad_requests"] += 1
            self.guest_log.warning("scsi: request %d has no room for a response (%d writable bytes)",
                                   chain.head_index, chain.writable_len)
            return 0
        if chain.readable_len < head_size or chain.writable_len < resp_size:
            self.stats["bad_requests"] += 1
            self.guest_log.warning("scsi: request %d: %d readable / %d writable bytes, below the "
                                   "header %d / response %d (5.6.6.1)", chain.head_index,
                                   chain.readable_len, chain.writable_len, head_size, resp_size)
            return chain.write(spec.SCSI_RESP_CMD_HEAD.pack(0, 0, 0, 0, _R.FAILURE), 0)
        raw = chain.read(0, head_size)
        lun_field, tag, _attr, _prio, _crn = spec.SCSI_REQ_CMD_HEAD.unpack_from(raw)
        address = parse_lun(lun_field)
        tgt = self.targets.get(address[0]) if address is not None else None
        if address is None or tgt is None:
            self.stats["bad_target"] += 1
            return chain.write(spec.SCSI_RESP_CMD_HEAD.pack(0, 0, 0, 0, _R.BAD_TARGET), 0)
        task = Task(cdb=raw[spec.SCSI_REQ_CMD_HEAD_SIZE:], tag=tag,
                    data_out=chain.readable_views(head_size),
                    data_in=chain.writable_views(resp_size))
        tgt.execute(address[1], task)
        if task.deferred is not None and task.status == sc.Status.GOOD and task.response == _R.OK:
            return self.deferred.start(queue_index, tgt.units[address[1]], chain, task, resp_size)
        return self._respond(chain, task, resp_size)

    def _respond(self, chain: DescriptorChain, task: Task, resp_size: int) -> int:
        sense = task.sense[:self.sense_size]
        writing = task.out_len > 0
        size = task.out_len if writing else task.in_len
        moved = 0 if task.response != _R.OK else min(task.transferred, size)
        head = spec.SCSI_RESP_CMD_HEAD.pack(len(sense), size - moved, 0, task.status, task.response)
        chain.write(head + sense, 0)
        return resp_size + (0 if writing else moved)

    # --- controlq (5.6.6.2) ---------------------------------------------------------------------

    def _control(self, chain: DescriptorChain) -> int:
        if chain.readable_len < 4:
            self.guest_log.warning("scsi: control request %d without a type", chain.head_index)
            return 0
        kind = int.from_bytes(chain.read(0, 4), "little")
        if kind == spec.ScsiCtrlType.TMF:
            return self._tmf(chain)
        if kind in (spec.ScsiCtrlType.AN_QUERY, spec.ScsiCtrlType.AN_SUBSCRIBE):
            return self._an(chain, kind == spec.ScsiCtrlType.AN_SUBSCRIBE)
        self.guest_log.warning("scsi: control request %d of unknown type %d", chain.head_index, kind)
        return 0

    def _tmf(self, chain: DescriptorChain) -> int:
        self.stats["tmfs"] += 1
        if chain.writable_len < 1:
            self.guest_log.warning("scsi: TMF %d has no response byte", chain.head_index)
            return 0
        if chain.readable_len < spec.SCSI_CTRL_TMF_SIZE:
            return chain.write(bytes((_R.FAILURE,)), 0)
        _kind, subtype, lun_field, _tag = spec.SCSI_CTRL_TMF.unpack(chain.read(0, spec.SCSI_CTRL_TMF_SIZE))
        return chain.write(bytes((self.task_management(subtype, lun_field),)), 0)

    def task_management(self, subtype: int, lun_field: bytes) -> int:
        """The response to TMF ``subtype`` on ``lun_field`` (and what it does)."""
        address = parse_lun(lun_field)
        tgt = self.targets.get(address[0]) if address is not None else None
        if address is None or tgt is None:
            return _R.BAD_TARGET
        if subtype == _TMF.I_T_NEXUS_RESET:
            for each in tgt.units.values():
                each.reset(sc.AdditionalSense.I_T_NEXUS_LOSS_OCCURRED)
            return _R.FUNCTION_COMPLETE
        unit = tgt.units.get(address[1])
        if unit is None:
            return _R.INCORRECT_LUN
        if subtype == _TMF.LOGICAL_UNIT_RESET:
            unit.reset(sc.AdditionalSense.BUS_DEVICE_RESET_FUNCTION_OCCURRED)
            return _R.FUNCTION_COMPLETE
        if subtype in (_TMF.ABORT_TASK, _TMF.ABORT_TASK_SET, _TMF.CLEAR_TASK_SET,
                       _TMF.QUERY_TASK, _TMF.QUERY_TASK_SET):
            return _R.FUNCTION_COMPLETE  # nothing is in flight between chains
        return _R.FUNCTION_REJECTED  # CLEAR ACA (no NACA support) and unknown subtypes

    def _an(self, chain: DescriptorChain, subscribe: bool) -> int:
        if chain.writable_len < spec.SCSI_CTRL_AN_RESP_SIZE:
            self.guest_log.warning("scsi: AN request %d has no room for its response", chain.head_index)
            return 0
        if chain.readable_len < spec.SCSI_CTRL_AN_SIZE:
            return chain.write(spec.SCSI_CTRL_AN_RESP.pack(0, _R.FAILURE), 0)
        _kind, lun_field, requested = spec.SCSI_CTRL_AN.unpack(chain.read(0, spec.SCSI_CTRL_AN_SIZE))
        address = parse_lun(lun_field)
        if address is None or address[0] not in self.targets:
            return chain.write(spec.SCSI_CTRL_AN_RESP.pack(0, _R.BAD_TARGET), 0)
        found = self.unit(*address)
        supported = spec.ScsiAsyncEvent.MEDIA_CHANGE if isinstance(found, CdromUnit) else 0
        actual = requested & supported
        if subscribe:
            self._subscriptions[address] = actual
        return chain.write(spec.SCSI_CTRL_AN_RESP.pack(actual, _R.OK), 0)

    # --- eventq (5.6.6.3) -----------------------------------------------------------------------

    def queue_event(self, event: int, target: int, lun: int, reason: int) -> None:
        """Queue one event for the driver (in the worker); delivered as buffers come."""
        if len(self._events) >= MAX_PENDING_EVENTS:
            self._events.popleft()
            self._events_missed = True
            self.stats["events_dropped"] += 1
        self._events.append(spec.SCSI_EVENT.pack(event, encode_lun(target, lun), reason))

    def _flush_events(self, mem: GuestMemory) -> bool:
        queue = self.queues[spec.EVENTQ]
        if not self._events or not queue.ready or queue.broken:
            return False
        used = []
        while self._events:
            chain = queue.pop_descriptor_chain(mem)
            if chain is None and queue.enable_notification(mem):
                chain = queue.pop_descriptor_chain(mem)
            if chain is None:
                break
            if chain.writable_len < spec.SCSI_EVENT_SIZE:
                self.guest_log.warning("scsi: eventq buffer %d is shorter than an event", chain.head_index)
                used.append((chain.head_index, 0))
                continue
            event = bytearray(self._events.popleft())
            if self._events_missed:
                event[0:4] = (int.from_bytes(event[0:4], "little") | spec.SCSI_T_EVENTS_MISSED).to_bytes(4, "little")
                self._events_missed = False
            used.append((chain.head_index, chain.write(bytes(event), 0)))
            self.stats["events_sent"] += 1
        if not used:
            return False
        queue.add_used_batch(mem, used)
        return queue.needs_notification(mem)

    # --- statistics, lifecycle ------------------------------------------------------------------

    def statistics(self) -> dict:
        out = super().statistics()
        out["scsi"] = {**self.stats, "pending_events": len(self._events),
                       "units": {f"{t}:{n}": unit.describe() for (t, n), unit in self.units()}}
        return out

    def close(self) -> None:
        for tgt in self.targets.values():
            for unit in tgt.units.values():
                unit.close()
