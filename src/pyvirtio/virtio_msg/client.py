"""virtio-msg, driver side of the bus: one connection, requests matched to responses, events.

:class:`BusClient` owns the driver's guest memory (a memfd it shares with the device side by
pyvirtio's SET_MEMORY, the fd passed with the message) and one receiving thread.  A request gets a
token (the bus's to manage, "Common Message Format"), waits for the response with that token —
or pyvirtio's EVENT_ERROR naming it (:class:`~.protocol.RequestFailed`), or the bus's time limit
(:class:`~.protocol.BusTimeout`), or the peer's hang-up (PeerDisconnected).  Device events
(EVENT_USED, EVENT_CONFIG) are queued for the transport of their device number, which delivers
them in the driver's own thread (:meth:`VirtioMsgTransport.wait_for_interrupt
<pyvirtio.virtio_msg.transport.VirtioMsgTransport.wait_for_interrupt>`); hot-plug events
(EVENT_DEVICE) are kept in :attr:`BusClient.hotplug` and passed to :attr:`BusClient.on_hotplug`
listeners (called in the receiving thread: they must not make requests).

The device side is untrusted too: a response with no request waiting, a malformed message or an
event for a device nobody opened is counted and dropped; a device side that stops framing its
stream ends the connection.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Callable, Iterator

from ..alloc import Allocator, GuestAllocator
from ..errors import PeerDisconnected, VirtioError
from ..memory import GuestMemory
from ..spec import virtio_msg as S
from ..spec.virtio_msg import BusMsgId, ClaimResult, DeviceBusState, ErrorReason, MsgId
from .channel import Channel, SocketChannel
from .protocol import (BusTimeout, ClaimFailed, MalformedMessage, Message, RequestFailed, bus_request,
                       decode, encode, numbers_in, parse, transport_request)

log = logging.getLogger(__name__)

#: How long a request waits for its response before the bus gives up on it.
REQUEST_TIMEOUT = 10.0
#: Guest memory a client shares by default.
DEFAULT_MEMORY = 16 << 20
DEFAULT_GPA = 0x1000_0000
#: The smallest maximum message size a driver can work with: SET_VQUEUE's request and
#: GET_VQUEUE's response are 48 bytes (the draft allows buses down to 44; docs/virtio-msg.md).
MIN_USABLE_MESSAGE_SIZE = S.HEADER_SIZE + S.SET_VQUEUE.size
#: Hot-plug events kept for :meth:`BusClient.hotplug` readers (older ones drop off).
MAX_HOTPLUG_EVENTS = 256


class _Pending:
    __slots__ = ("request", "done", "response", "error")

    def __init__(self, request: Message) -> None:
        self.request = request
        self.done = threading.Event()
        self.response: Message | None = None
        self.error: VirtioError | None = None


class BusClient:
    """The driver side of one virtio-msg bus connection."""

    def __init__(self, channel: Channel, *, memory_size: int = DEFAULT_MEMORY, gpa: int = DEFAULT_GPA,
                 timeout: float = REQUEST_TIMEOUT, name: str = "virtio-msg"):
        self.channel = channel
        self.name = name
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._token = 0
        self._closed = False
        self._gone: VirtioError | None = None
        #: Event sinks by device number (a transport registers itself).
        self.listeners: dict[int, Callable[[Message], None]] = {}
        self.hotplug: deque[S.EventDevice] = deque(maxlen=MAX_HOTPLUG_EVENTS)
        self.on_hotplug: list[Callable[[S.EventDevice], None]] = []
        #: Messages from the device side that were dropped (unmatched, malformed), by kind.
        self.dropped: dict[str, int] = {}
        self.max_message_size = S.MAX_MAX_MESSAGE_SIZE  # until BUS_INFO says
        self.memory = GuestMemory.memfd(memory_size, gpa, name="pyvirtio-virtio-msg")
        self.allocator: Allocator = GuestAllocator(gpa, self.memory.regions[0].size)
        self._thread = threading.Thread(target=self._receive_loop, name=f"{name}-rx", daemon=True)
        self._thread.start()
        try:
            info = self.bus_info()
            if info.revision < 1:
                raise MalformedMessage(f"bus reports transport revision {info.revision}")
            if info.max_message_size < MIN_USABLE_MESSAGE_SIZE:
                raise MalformedMessage(f"bus's maximum message size {info.max_message_size} is below "
                                       f"the {MIN_USABLE_MESSAGE_SIZE} bytes SET_VQUEUE and GET_VQUEUE need")
            self.revision = info.revision
            self.max_message_size = min(info.max_message_size, S.MAX_MAX_MESSAGE_SIZE)
            for region in self.memory.regions:
                self._share(region.gpa, region.size, region.fd)
        except BaseException:
            self.close()
            raise

    @classmethod
    def connect(cls, path: str, **kw: Any) -> "BusClient":
        """Connect to a bus listening on the UNIX socket ``path``."""
        return cls(SocketChannel.connect(path), name=f"virtio-msg:{path}", **kw)

    # --- requests ---------------------------------------------------------------------------------

    def request(self, msg: Message, fds: tuple[int, ...] = (), timeout: float | None = None) -> Message:
        """Send a request and wait for its response (the token is set here)."""
        pending = _Pending(msg)
        with self._lock:
            if self._gone is not None:
                raise self._gone
            for _ in range(0x10000):
                self._token = (self._token + 1) & 0xFFFF
                if self._token not in self._pending:
                    break
            token = self._token
            self._pending[token] = pending
        try:
            self.channel.send(encode(msg._replace(token=token), self.max_message_size), fds)
            if not pending.done.wait(self.timeout if timeout is None else timeout):
                raise BusTimeout(f"{self.name}: no response to {msg.name()} within "
                                 f"{self.timeout if timeout is None else timeout:.1f} s")
        finally:
            with self._lock:
                self._pending.pop(token, None)
        if pending.error is not None:
            raise pending.error
        assert pending.response is not None
        return pending.response

    def call(self, msg: Message, fds: tuple[int, ...] = ()) -> Any:
        """A request whose response payload is parsed into its layout."""
        return parse(self.request(msg, fds))

    def send_event(self, msg: Message) -> None:
        """A one-way message (EVENT_AVAIL)."""
        if self._gone is not None:
            raise self._gone
        self.channel.send(encode(msg, self.max_message_size))

    # --- bus messages -----------------------------------------------------------------------------

    def bus_info(self) -> S.BusInfo:
        """pyvirtio's BUS_INFO: revision, maximum message size, transport features."""
        return self.call(bus_request(BusMsgId.BUS_INFO))

    def ping(self, data: int = 0x5A5A5A5A) -> int:
        """BUS_MSG_PING; returns the echoed value."""
        return self.call(bus_request(BusMsgId.PING, S.Ping(data))).data

    def device_numbers(self) -> list[int]:
        """Every device number the bus reports present (GET_DEVICES, window by window)."""
        room = (self.max_message_size - S.HEADER_SIZE - S.GET_DEVICES_RESPONSE.size) * 8
        count = max(8, min(256, room - room % 8))
        found: list[int] = []
        offset = 0
        for _ in range(0x10000 // 8):  # a device side that never says "done" cannot loop us
            resp = self.call(bus_request(BusMsgId.GET_DEVICES, S.GetDevicesRequest(offset, count)))
            found.extend(numbers_in(resp.bitmap, resp.offset))
            if not resp.next_offset or resp.next_offset <= offset:
                break
            offset = resp.next_offset
        return sorted(set(found))

    def device_info(self, dev_num: int) -> S.DeviceInfo:
        """GET_DEVICE_INFO of ``dev_num`` (needs no claim)."""
        return self.call(transport_request(MsgId.GET_DEVICE_INFO, dev_num))

    def devices(self) -> Iterator[tuple[int, S.DeviceInfo]]:
        """Iterate the bus: (device number, its GET_DEVICE_INFO) for each device present."""
        for n in self.device_numbers():
            try:
                yield n, self.device_info(n)
            except RequestFailed as exc:  # unplugged between the two messages
                log.info("%s: device %d: %s", self.name, n, exc)

    def claim(self, device_id: int = 0, dev_num: int = 0) -> int:
        """Claim device ``dev_num``, or any unclaimed device of ``device_id`` (0: any class);
        returns its number.  :class:`~.protocol.ClaimFailed` (``result`` NONE_FREE) if none is free."""
        resp = self.call(bus_request(BusMsgId.CLAIM, S.ClaimRequest(dev_num, 0, device_id)))
        if resp.result != ClaimResult.OK:
            what = f"device {dev_num}" if dev_num else f"a device of type {device_id}" if device_id else "a device"
            raise ClaimFailed(f"{self.name}: cannot claim {what}: {_result_name(resp.result)}", resp.result)
        return resp.dev_num

    def release(self, dev_num: int) -> None:
        """Give a claimed device back."""
        resp = self.call(bus_request(BusMsgId.RELEASE, S.ReleaseRequest(dev_num, 0)))
        if resp.result != ClaimResult.OK:
            raise ClaimFailed(f"{self.name}: cannot release device {dev_num}: {_result_name(resp.result)}",
                              resp.result)

    def _share(self, gpa: int, size: int, fd: int) -> None:
        resp = self.call(bus_request(BusMsgId.SET_MEMORY, S.MemoryRegionMsg(gpa, size, 0)), (fd,))
        if resp.result != ClaimResult.OK:
            raise ClaimFailed(f"{self.name}: the bus refused guest memory at {gpa:#x}", resp.result)

    # --- receiving --------------------------------------------------------------------------------

    def _drop(self, what: str) -> None:
        self.dropped[what] = self.dropped.get(what, 0) + 1

    def _receive_loop(self) -> None:
        why: VirtioError
        try:
            while True:
                data, fds = self.channel.recv()
                for fd in fds:  # the device side sends none
                    _close(fd)
                self._dispatch(data)
        except PeerDisconnected as exc:
            why = exc
        except (MalformedMessage, OSError) as exc:
            why = PeerDisconnected(f"{self.name}: connection dropped: {exc}")
        except Exception as exc:  # a bug of ours: the connection cannot go on
            log.exception("%s: receiving failed", self.name)
            why = PeerDisconnected(f"{self.name}: receiving failed: {exc}")
        with self._lock:
            self._gone = why if isinstance(why, PeerDisconnected) else PeerDisconnected(str(why))
            pending = list(self._pending.values())
        for p in pending:
            p.error = self._gone
            p.done.set()
        for listener in list(self.listeners.values()):
            listener(Message(0, 0, 0, 0))  # wake waiting transports: the bus is gone

    def _dispatch(self, data: bytes) -> None:
        try:
            msg = decode(data, self.max_message_size)
        except MalformedMessage as exc:
            self._drop("malformed")
            log.info("%s: dropped: %s", self.name, exc)
            return
        if msg.is_response:
            with self._lock:
                pending = self._pending.get(msg.token)
            if pending is None:
                self._drop("unmatched response")
                return
            req = pending.request
            if (msg.msg_id, msg.is_bus, msg.dev_num) != (req.msg_id, req.is_bus, req.dev_num):
                self._drop("mismatched response")  # the token of another request: not its answer
                return
            pending.response = msg
            pending.done.set()
        elif msg.is_bus and msg.msg_id == BusMsgId.EVENT_ERROR:
            self._error_event(msg)
        elif msg.is_bus and msg.msg_id == BusMsgId.EVENT_DEVICE:
            try:
                event = parse(msg)
            except MalformedMessage:
                self._drop("malformed")
                return
            self.hotplug.append(event)
            for fn in list(self.on_hotplug):
                fn(event)
            if event.device_bus_state == DeviceBusState.REMOVED and event.device_number in self.listeners:
                self.listeners[event.device_number](msg)
        elif not msg.is_bus and msg.msg_id in (MsgId.EVENT_USED, MsgId.EVENT_CONFIG):
            listener = self.listeners.get(msg.dev_num)
            if listener is None:
                self._drop("event for no transport")
                return
            listener(msg)
        else:
            self._drop("unexpected")

    def _error_event(self, msg: Message) -> None:
        try:
            err = parse(msg)
        except MalformedMessage:
            self._drop("malformed")
            return
        with self._lock:
            pending = self._pending.get(err.token)
        if pending is None:
            self._drop("unmatched error")
            return
        try:
            reason = ErrorReason(err.reason).name
        except ValueError:
            reason = str(err.reason)
        about = Message(err.type, err.msg_id, err.dev_num, err.token)
        pending.error = RequestFailed(f"{self.name}: {about.name()} to device {err.dev_num} "
                                      f"refused: {reason}", err.reason)
        pending.done.set()

    # --- the end ----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the device side is still there."""
        return self._gone is None and not self._closed

    def close(self) -> None:
        """Hang up (the device side releases our claims), stop the thread, unmap the memory."""
        if self._closed:
            return
        self._closed = True
        self.channel.close()
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)
        self.memory.close()


def _result_name(result: int) -> str:
    try:
        return ClaimResult(result).name
    except ValueError:
        return str(result)


def _close(fd: int) -> None:
    import os
    try:
        os.close(fd)
    except OSError:
        pass


__all__ = ["BusClient", "DEFAULT_MEMORY", "MIN_USABLE_MESSAGE_SIZE", "REQUEST_TIMEOUT"]
