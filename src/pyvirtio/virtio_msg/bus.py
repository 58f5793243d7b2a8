"""virtio-msg, device side of the bus: the device directory and one session per driver.

:class:`DeviceBus` is the directory: devices by number ("VMSG Basic Concepts / Device Numbers";
pyvirtio numbers from 1 and never assigns 0, the number bus messages use), which driver claimed
which device, and hot-plug (EVENT_DEVICE READY / REMOVED to every connected driver).
:class:`BusSession` is one driver's connection, sans-I/O: :meth:`BusSession.receive` takes one
message's bytes and the fds that came with it, answers bus messages (GET_DEVICES, PING, and
pyvirtio's BUS_INFO, SET_MEMORY, CLAIM, RELEASE) and relays transport messages to the addressed
device, which must be claimed by this session (the GET_* requests excepted: probing needs no
claim, :data:`READ_ONLY`).
What goes back leaves through the ``send`` callable the I/O shell gave the session.

Many drivers share one pool: CLAIM takes a given device or any unclaimed one of a class, a
second claim of a taken device gets ``NONE_FREE``; :meth:`BusSession.close` (the driver hung up,
or went away mid-setup) releases every claim — the device is quiesced and reset — and unmaps the
memory the driver shared.  Bounds: :data:`MAX_REGIONS` memory regions per driver.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterator

from ..device import VirtioDevice
from ..errors import VirtioError
from ..memory import GuestMemory, release_region
from ..spec import virtio_msg as S
from ..spec.virtio_msg import BusMsgId, ClaimResult, DeviceBusState, ErrorReason, MsgId
from ..vhost_user.backend.memmap import map_region
from ..vhost_user.wire import MemoryRegion
from .device import MsgDevice
from .protocol import MalformedMessage, Message, bitmap_of, bus_request, decode, error_event, pack, parse

log = logging.getLogger(__name__)

#: Memory regions one driver may share (SET_MEMORY); more are refused.
MAX_REGIONS = 16
#: Device numbers a bus hands out (1..MAX_DEVICES).
MAX_DEVICES = 4096

Send = Callable[[Message], None]
#: Transport requests any connected driver may send to any device: they read, never change
#: (probing, ``pyvirtio probe``); every other message needs the device claimed.
READ_ONLY = frozenset({MsgId.GET_DEVICE_INFO, MsgId.GET_DEVICE_FEATURES, MsgId.GET_CONFIG,
                       MsgId.GET_DEVICE_STATUS, MsgId.GET_VQUEUE, MsgId.GET_SHM})


class DeviceBus:
    """The devices on one bus, their claims and the connected drivers."""

    def __init__(self, *, max_message_size: int = S.RECOMMENDED_MAX_MESSAGE_SIZE,
                 notification_data: bool = True):
        if not S.MIN_MAX_MESSAGE_SIZE <= max_message_size <= S.MAX_MAX_MESSAGE_SIZE:
            raise ValueError(f"maximum message size {max_message_size} is outside 44..65536")
        self.max_message_size = max_message_size
        self.notification_data = notification_data
        self.lock = threading.RLock()
        self.devices: dict[int, MsgDevice] = {}
        self.owner: dict[int, BusSession] = {}
        self.sessions: list[BusSession] = []

    # --- the directory --------------------------------------------------------------------------

    def add(self, device: VirtioDevice, dev_num: int | None = None) -> int:
        """Plug ``device`` in (hot-plug if drivers are connected: EVENT_DEVICE READY); returns
        its device number."""
        with self.lock:
            if dev_num is None:
                dev_num = next((n for n in range(1, MAX_DEVICES + 1) if n not in self.devices), 0)
            if not 1 <= dev_num <= MAX_DEVICES or dev_num in self.devices:
                raise ValueError(f"device number {dev_num} is taken or outside 1..{MAX_DEVICES}")
            msg_dev = MsgDevice(device, max_message_size=self.max_message_size,
                                notification_data=self.notification_data)
            msg_dev.dev_num = dev_num
            self.devices[dev_num] = msg_dev
        self._broadcast(dev_num, DeviceBusState.READY)  # not under the lock: a slow reader
        return dev_num

    def remove(self, dev_num: int) -> VirtioDevice:
        """Unplug a device (EVENT_DEVICE REMOVED); a claim on it ends.  Returns the device (still
        the caller's to close)."""
        with self.lock:
            msg_dev = self.devices.pop(dev_num)
            owner = self.owner.pop(dev_num, None)
            if owner is not None:
                owner.claimed.discard(dev_num)
                msg_dev.detach()
            msg_dev.close()
        self._broadcast(dev_num, DeviceBusState.REMOVED)
        return msg_dev.device

    def __iter__(self) -> Iterator[tuple[int, MsgDevice]]:
        with self.lock:
            return iter(sorted(self.devices.items()))

    def _broadcast(self, dev_num: int, state: int) -> None:
        event = bus_request(BusMsgId.EVENT_DEVICE, S.EventDevice(dev_num, state))
        with self.lock:
            sessions = list(self.sessions)
        for session in sessions:
            session.send_safely(event)

    def claim(self, session: "BusSession", dev_num: int, device_id: int) -> tuple[int, int]:
        """(dev_num, ClaimResult) of a claim by ``session``."""
        with self.lock:
            if dev_num:
                if dev_num not in self.devices:
                    return dev_num, ClaimResult.NO_DEVICE
                owner = self.owner.get(dev_num)
                if owner is session:
                    return dev_num, ClaimResult.OK
                if owner is not None or (device_id and self.devices[dev_num].info().device_id != device_id):
                    return dev_num, ClaimResult.NONE_FREE
                candidates = [dev_num]
            else:
                candidates = [n for n, d in sorted(self.devices.items())
                              if n not in self.owner and (not device_id or d.info().device_id == device_id)]
            if not candidates:
                return 0, ClaimResult.NONE_FREE
            n = candidates[0]
            self.owner[n] = session
            session.claimed.add(n)
            self.devices[n].attach(session.memory, session.send_safely)
            return n, ClaimResult.OK

    def release(self, session: "BusSession", dev_num: int) -> int:
        """Give back ``dev_num``; a ClaimResult."""
        with self.lock:
            if dev_num not in self.devices:
                return ClaimResult.NO_DEVICE
            if self.owner.get(dev_num) is not session:
                return ClaimResult.NOT_YOURS
            del self.owner[dev_num]
            session.claimed.discard(dev_num)
            self.devices[dev_num].detach()
            return ClaimResult.OK

    # --- drivers ----------------------------------------------------------------------------------

    def connect(self, send: Send, name: str = "driver") -> "BusSession":
        """A driver connected: its session (``send`` carries messages back to it)."""
        session = BusSession(self, send, name)
        with self.lock:
            self.sessions.append(session)
        return session

    def close(self) -> None:
        """End every session and stop every device's engine (the devices stay the caller's)."""
        for session in list(self.sessions):
            session.close()
        with self.lock:
            for msg_dev in self.devices.values():
                msg_dev.close()


class BusSession:
    """One driver's connection to a :class:`DeviceBus` (sans-I/O)."""

    def __init__(self, bus: DeviceBus, send: Send, name: str = "driver"):
        self.bus = bus
        self._send = send
        self.name = name
        self.memory = GuestMemory()
        self.claimed: set[int] = set()
        self.closed = False
        #: Messages dropped or refused, by kind (malformed, unsupported, refused ...).
        self.dropped: dict[str, int] = {}
        self._bus_handlers: dict[int, Callable[[Message, Any, list[int]], Message | None]] = {
            BusMsgId.GET_DEVICES: self._get_devices,
            BusMsgId.PING: self._ping,
            BusMsgId.BUS_INFO: self._bus_info,
            BusMsgId.SET_MEMORY: self._set_memory,
            BusMsgId.CLAIM: self._claim,
            BusMsgId.RELEASE: self._release,
        }

    def send_safely(self, msg: Message) -> None:
        """Send to the driver; a connection that is gone is not our caller's problem."""
        if self.closed:
            return
        try:
            self._send(msg)
        except (OSError, VirtioError) as exc:
            log.info("%s: send failed: %s", self.name, exc)

    def _drop(self, what: str) -> None:
        self.dropped[what] = self.dropped.get(what, 0) + 1

    def receive(self, data: bytes, fds: list[int] | None = None) -> None:
        """One message from the driver, and the fds that came with it (each is kept or closed)."""
        fds = list(fds or [])
        try:
            self._receive(data, fds)
        finally:
            for fd in fds:
                if fd >= 0:
                    _close(fd)

    def _receive(self, data: bytes, fds: list[int]) -> None:
        try:
            msg = decode(data, self.bus.max_message_size)
        except MalformedMessage as exc:  # "Error Handling / Bus": discard, no traffic
            self._drop("malformed header")
            log.info("%s: dropped: %s", self.name, exc)
            return
        if msg.is_response:
            self._drop("unexpected response")
            return
        if msg.is_bus:
            handler = self._bus_handlers.get(msg.msg_id)
            if handler is None:
                self._drop("unsupported")
                log.info("%s: dropped unsupported bus message %#04x", self.name, msg.msg_id)
                return
            try:
                body = parse(msg)
            except MalformedMessage as exc:
                self._drop("malformed")
                log.info("%s: %s", self.name, exc)
                self.send_safely(error_event(msg, ErrorReason.MALFORMED))
                return
            reply = handler(msg, body, fds)
        else:
            reply = self._relay(msg)
        if reply is not None:
            self.send_safely(reply)

    def _relay(self, msg: Message) -> Message | None:
        """"Transport Message Forwarding": to the addressed device, if it is there and ours."""
        with self.bus.lock:
            msg_dev = self.bus.devices.get(msg.dev_num)
            owner = self.bus.owner.get(msg.dev_num)
        if msg_dev is None:
            self._drop("no device")
            return None if msg.is_event else error_event(msg, ErrorReason.NO_DEVICE)
        if owner is not self and msg.msg_id not in READ_ONLY:
            self._drop("not claimed")
            return None if msg.is_event else error_event(msg, ErrorReason.NOT_CLAIMED)
        return msg_dev.handle(msg)

    # --- bus messages -----------------------------------------------------------------------------

    def _get_devices(self, msg: Message, body: S.GetDevicesRequest, fds: list[int]) -> Message:
        room = (self.bus.max_message_size - S.HEADER_SIZE - S.GET_DEVICES_RESPONSE.size) * 8
        count = min(body.dev_count, room - room % 8)
        with self.bus.lock:
            present = set(self.bus.devices)
        end = body.offset + count
        later = [n for n in present if n >= end]
        next_offset = (end if later else 0) if end <= 0xFFFF else 0
        return msg.reply(pack(S.GetDevicesResponse(body.offset, count, next_offset,
                                                   bitmap_of(present, body.offset, count))))

    def _ping(self, msg: Message, body: S.Ping, fds: list[int]) -> Message:
        return msg.reply(pack(body))

    def _bus_info(self, msg: Message, body: None, fds: list[int]) -> Message:
        return msg.reply(pack(S.BusInfo(S.REVISION, self.bus.max_message_size, 0)))

    def _set_memory(self, msg: Message, body: S.MemoryRegionMsg, fds: list[int]) -> Message:
        def refuse(why: str) -> Message:
            self._drop("memory refused")
            log.warning("%s: SET_MEMORY refused: %s", self.name, why)
            return msg.reply(pack(S.ClaimResponse(0, ClaimResult.REFUSED)))
        if len(fds) != 1:
            return refuse(f"{len(fds)} fds came with it (one memfd expected)")
        if len(self.memory.regions) >= MAX_REGIONS:
            return refuse(f"more than {MAX_REGIONS} regions")
        try:
            region = map_region(fds[0], MemoryRegion(body.gpa, body.size, body.gpa, body.mmap_offset))
        except VirtioError as exc:
            return refuse(str(exc))
        fds[0] = -1  # the region owns it now
        try:
            with self.bus.lock:
                self.memory.add_region(region)
        except VirtioError as exc:  # overlaps another region
            release_region(region)
            return refuse(str(exc))
        return msg.reply(pack(S.ClaimResponse(0, ClaimResult.OK)))

    def _claim(self, msg: Message, body: S.ClaimRequest, fds: list[int]) -> Message:
        dev_num, result = self.bus.claim(self, body.dev_num, body.device_id)
        return msg.reply(pack(S.ClaimResponse(dev_num, result)))

    def _release(self, msg: Message, body: S.ReleaseRequest, fds: list[int]) -> Message:
        return msg.reply(pack(S.ClaimResponse(body.dev_num, self.bus.release(self, body.dev_num))))

    # --- the end ----------------------------------------------------------------------------------

    def close(self) -> None:
        """The driver is gone: release its claims (each device quiesced and reset), unmap its
        memory, leave the bus.  Idempotent."""
        with self.bus.lock:
            if self.closed:
                return
            self.closed = True
            for dev_num in sorted(self.claimed):
                self.bus.release(self, dev_num)
            if self in self.bus.sessions:
                self.bus.sessions.remove(self)
        self.memory.close()


def _close(fd: int) -> None:
    import os
    try:
        os.close(fd)
    except OSError:
        pass


__all__ = ["BusSession", "DeviceBus", "MAX_DEVICES", "MAX_REGIONS", "READ_ONLY"]
