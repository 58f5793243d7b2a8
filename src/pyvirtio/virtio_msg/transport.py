"""virtio-msg, driver side of one device: a :class:`~pyvirtio.transport.DriverTransport`.

Every transport operation is a message to the device's number on a :class:`~.client.BusClient`
("VMSG Device Initialization"): GET_DEVICE_INFO once (identity, feature count, config size,
queue count), GET_DEVICE_FEATURES / SET_DRIVER_FEATURES in 32-bit blocks, GET_CONFIG /
SET_CONFIG with the generation count (in pieces that fit the bus's maximum message size),
GET/SET_DEVICE_STATUS, GET_VQUEUE then SET_VQUEUE (which also enables the queue: the draft has
no separate enable), RESET_VQUEUE, EVENT_AVAIL for a kick (with the position when
VIRTIO_F_NOTIFICATION_DATA was negotiated).  EVENT_USED and EVENT_CONFIG arrive on the client's
thread and are handed to the driver's interrupt handler in the driver's thread, by
:meth:`VirtioMsgTransport.wait_for_interrupt` — so every driver runs on it unchanged.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from ..errors import DeviceFault, PeerDisconnected, UsageError, VirtioError
from ..interrupt import CONFIG_CHANGE, Interrupt, InterruptHandler
from ..spec import virtio_msg as S
from ..spec.features import Feature
from ..spec.status import DeviceStatus
from ..spec.virtio_msg import BusMsgId, ErrorReason, MsgId
from ..transport import DriverTransport
from ..virtq.kinds import RingLayout
from .client import BusClient
from .device import position_to_next_offset
from .protocol import MalformedMessage, Message, RequestFailed, parse, transport_request

log = logging.getLogger(__name__)


class VirtioMsgTransport(DriverTransport):
    """The driver's side of one claimed device on a virtio-msg bus."""

    transport_features = 1 << Feature.NOTIFICATION_DATA
    reset_error = DeviceFault

    def __init__(self, client: BusClient, dev_num: int, *, owns_client: bool = False,
                 split_only: bool = False, sync_kicks: bool = False):
        self.client = client
        self.dev_num = dev_num
        self.owns_client = owns_client
        #: Hide VIRTIO_F_RING_PACKED from the drivers (as the other transports' ``split_only``).
        self.split_only = split_only
        #: After each EVENT_AVAIL, a PING round trip: the device side handles a connection's
        #: messages in order, so the kick has been served when the answer comes (what
        #: LoopbackTransport's inline kicks give tests written for it; off by default).
        self.sync_kicks = sync_kicks
        self.memory = client.memory
        self.allocator = client.allocator
        self._handler: InterruptHandler | None = None
        self._cond = threading.Condition()
        self._events: deque[Interrupt] = deque()
        self._removed = False
        self._negotiated = 0
        self._generation = 0
        self._closed = False
        #: Queues set up since the last reset: EVENT_USED for any other is the device side's
        #: fault, dropped and counted in :attr:`dropped_events` (a driver never hears of it).
        self._active: set[int] = set()
        self.dropped_events = 0
        self.info: S.DeviceInfo = client.device_info(dev_num)
        client.listeners[dev_num] = self._event

    # --- messages -------------------------------------------------------------------------------

    def _call(self, msg_id: int, payload=None):
        if self._removed:
            raise RequestFailed(f"{self.describe()}: the device was removed from the bus",
                                ErrorReason.NO_DEVICE)
        return parse(self.client.request(transport_request(msg_id, self.dev_num, payload)))

    @property
    def device_type(self) -> int:
        return self.info.device_id

    @property
    def vendor_id(self) -> int:
        return self.info.vendor_id

    def describe(self) -> str:
        return f"{self.client.name}#{self.dev_num}"

    # --- status and features --------------------------------------------------------------------

    def get_status(self) -> int:
        if self._removed or not self.client.connected:
            return DeviceStatus.DEVICE_NEEDS_RESET  # gone: the driver must not go on (2.1.2)
        return self._call(MsgId.GET_DEVICE_STATUS).status & 0xFF

    def set_status(self, status: int) -> None:
        if not status & 0xFF:
            self._active.clear()
        self._call(MsgId.SET_DEVICE_STATUS, S.Status(status & 0xFF))

    def _blocks(self) -> int:
        room = (self.client.max_message_size - S.HEADER_SIZE - S.FEATURE_BLOCKS.size) // 4
        return max(1, min(self.info.num_feature_bits // 32, room, 4))

    def get_device_features(self) -> int:
        blocks = self._blocks()
        resp = self._call(MsgId.GET_DEVICE_FEATURES, S.FeatureBlocks(0, blocks))
        if resp.block_index != 0 or resp.num_blocks != blocks:
            raise DeviceFault(f"{self.describe()}: GET_DEVICE_FEATURES answered blocks "
                              f"{resp.block_index}+{resp.num_blocks}, asked 0+{blocks}")
        features = sum(word << (32 * i) for i, word in enumerate(resp.features))
        return features & ~(1 << Feature.RING_PACKED) if self.split_only else features

    def set_driver_features(self, features: int) -> None:
        blocks = self._blocks()
        if features >> (32 * blocks):
            raise UsageError(f"features {features:#x} beyond the {32 * blocks} bits the device has")
        words = tuple((features >> (32 * i)) & 0xFFFFFFFF for i in range(blocks))
        self._call(MsgId.SET_DRIVER_FEATURES, S.FeatureBlocks(0, blocks, words))
        self._negotiated = features

    # --- configuration space --------------------------------------------------------------------

    def _chunk(self) -> int:
        return max(1, self.client.max_message_size - S.HEADER_SIZE - S.CONFIG_DATA.size)

    def read_config(self, offset: int, size: int) -> bytes:
        """Bytes outside the config size GET_DEVICE_INFO reported read as zero (the draft bounds
        every access by it)."""
        out = bytearray(size)
        end = min(offset + size, self.info.config_size)
        pos = max(offset, 0)
        while pos < end:
            n = min(self._chunk(), end - pos)
            resp = self._call(MsgId.GET_CONFIG, S.ConfigRange(pos, n))
            if resp.offset != pos or resp.length != n:
                raise DeviceFault(f"{self.describe()}: GET_CONFIG answered {resp.offset}+{resp.length}, "
                                  f"asked {pos}+{n}")
            self._generation = resp.generation
            out[pos - offset:pos - offset + n] = resp.data
            pos += n
        return bytes(out)

    def write_config(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > self.info.config_size:
            raise UsageError(f"config write [{offset}, +{len(data)}) is outside the "
                             f"{self.info.config_size}-byte config space")
        for pos in range(0, len(data), self._chunk()):
            piece = bytes(data[pos:pos + self._chunk()])
            for attempt in range(2):  # a stale generation: re-read it once and retry
                resp = self._call(MsgId.SET_CONFIG, S.ConfigData(self._generation, offset + pos, len(piece), piece))
                self._generation = resp.generation
                if resp.length == len(piece):
                    break
                self.config_generation()
            else:
                raise DeviceFault(f"{self.describe()}: SET_CONFIG at {offset + pos} rejected twice")

    def config_generation(self) -> int:
        """GET_CONFIG of nothing: the draft carries the generation only with config data."""
        self._generation = self._call(MsgId.GET_CONFIG, S.ConfigRange(0, 0)).generation
        return self._generation

    # --- queues ---------------------------------------------------------------------------------

    def num_queues(self) -> int:
        return self.info.max_virtqueues

    def _vqueue(self, index: int) -> S.VqueueInfo | None:
        if not 0 <= index < self.info.max_virtqueues:
            return None
        resp = self._call(MsgId.GET_VQUEUE, S.QueueIndex(index))
        if resp.vq_index != index:
            raise DeviceFault(f"{self.describe()}: GET_VQUEUE answered queue {resp.vq_index}, asked {index}")
        return resp

    def queue_max_size(self, index: int) -> int:
        info = self._vqueue(index)
        return 0 if info is None else info.max_size

    def setup_queue(self, index: int, layout: RingLayout) -> None:
        info = self._vqueue(index)
        if info is None or info.max_size == 0:
            raise DeviceFault(f"{self.describe()}: queue {index} does not exist")
        if info.cur_size:
            raise DeviceFault(f"{self.describe()}: queue {index} is active before it was set up")
        if layout.size > info.max_size:
            raise UsageError(f"queue {index}: size {layout.size} is above the maximum {info.max_size}")
        self._call(MsgId.SET_VQUEUE, S.SetVqueue(index, 0, layout.size, 0, layout.desc_table,
                                                 layout.avail_ring, layout.used_ring))
        self._active.add(index)

    def reset_queue(self, index: int) -> None:
        if not self._negotiated & (1 << Feature.RING_RESET):
            raise UsageError("VIRTIO_F_RING_RESET was not negotiated")
        self._call(MsgId.RESET_VQUEUE, S.QueueIndex(index))
        self._active.discard(index)

    def notify(self, index: int, position: int | None = None) -> None:
        next_offset = 0
        if position is not None and self._negotiated & (1 << Feature.NOTIFICATION_DATA):
            next_offset = position_to_next_offset(position)
        self.client.send_event(transport_request(MsgId.EVENT_AVAIL, self.dev_num, S.EventAvail(index, next_offset)))
        if self.sync_kicks:
            self.client.ping()

    # --- events (device -> driver) --------------------------------------------------------------

    def _event(self, msg: Message) -> None:
        """The client's thread: queue the event for the driver's thread."""
        if msg.is_bus and msg.msg_id == BusMsgId.EVENT_DEVICE:
            self._removed = True  # REMOVED (the only EVENT_DEVICE the client passes on)
            info = CONFIG_CHANGE
        elif msg.msg_id == 0:  # the bus is gone
            info = CONFIG_CHANGE
        elif msg.msg_id == MsgId.EVENT_USED:
            try:
                index = parse(msg).vq_index
            except MalformedMessage:
                self.dropped_events += 1
                return
            if index not in self._active:
                self.dropped_events += 1
                log.info("%s: EVENT_USED for queue %d, which is not set up: dropped", self.describe(), index)
                return
            info = Interrupt(index)
        else:
            try:
                event = parse(msg)
            except MalformedMessage:
                self.dropped_events += 1
                return
            self._generation = event.generation
            info = CONFIG_CHANGE
        with self._cond:
            self._events.append(info)
            self._cond.notify_all()

    def set_interrupt_handler(self, handler: InterruptHandler) -> None:
        self._handler = handler

    def wait_for_interrupt(self, timeout: float | None) -> bool:
        with self._cond:
            if not self._events:
                self._cond.wait(timeout)
            events = list(self._events)
            self._events.clear()
        seen: set[Interrupt] = set()
        for info in events:  # one call per queue (and one for config) however many came
            if info in seen:
                continue
            seen.add(info)
            if self._handler is not None:
                self._handler(info)
        if not events and not self.client.connected:
            raise PeerDisconnected(f"{self.describe()}: the bus is gone")
        return bool(events)

    @property
    def removed(self) -> bool:
        """Whether the bus reported the device REMOVED (hot-unplug)."""
        return self._removed

    def close(self) -> None:
        """Reset the device, give it back to the bus (and close the client if it is ours)."""
        if self._closed:
            return
        self._closed = True
        if self.client.listeners.get(self.dev_num) == self._event:
            del self.client.listeners[self.dev_num]
        if self.client.connected and not self._removed:
            try:
                self._call(MsgId.SET_DEVICE_STATUS, S.Status(0))
                self.client.release(self.dev_num)
            except VirtioError as exc:  # closing must not fail on a dead peer
                log.debug("%s: release on close failed: %s", self.describe(), exc)
        if self.owns_client:
            self.client.close()


def open_device(client: BusClient, device_type: int = 0, dev_num: int = 0, **kw) -> VirtioMsgTransport:
    """Claim a device on ``client`` (``dev_num``, or any unclaimed device of ``device_type``; 0:
    any) and return its transport; :class:`~.protocol.ClaimFailed` if none is free."""
    n = client.claim(device_type, dev_num)
    try:
        return VirtioMsgTransport(client, n, **kw)
    except BaseException:
        client.release(n)
        raise


def open_transport(path: str, device_type: int = 0, dev_num: int = 0, **kw) -> VirtioMsgTransport:
    """Connect to the bus on ``path``, claim a device (``dev_num``, or any unclaimed device of
    ``device_type``) and return its transport; closing it hangs up."""
    client = BusClient.connect(path)
    try:
        return open_device(client, device_type, dev_num, owns_client=True, **kw)
    except BaseException:
        client.close()
        raise


__all__ = ["VirtioMsgTransport", "open_device", "open_transport"]
