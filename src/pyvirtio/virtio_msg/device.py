"""virtio-msg, device side of one device: transport messages in, responses and events out.

:class:`MsgDevice` exposes one :class:`~pyvirtio.device.VirtioDevice` as the draft's transport
messages ("VMSG Transport Messages").  It keeps the same register state the PCI and MMIO models
keep (:class:`~pyvirtio.platform.registers.DeviceRegisters`: features, status, queue
configuration, the engine that serves kicks), so the device class needs nothing new.  Sans-I/O:
:meth:`MsgDevice.handle` takes a decoded request and returns its response (or pyvirtio's
EVENT_ERROR, or None for an event); the device's used-buffer and config-change notifications go
to :attr:`MsgDevice.send` as EVENT_USED / EVENT_CONFIG.  The bus decides who owns the device
(:mod:`.bus`) and which guest memory it sees (:meth:`MsgDevice.attach`).

The driver is untrusted: a payload that breaks its layout, a device state that forbids the
request (a queue set up before FEATURES_OK, features written after it), a bad queue index — each
gets EVENT_ERROR with the reason, is counted, and changes nothing; the device goes on serving.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from ..device import VirtioDevice
from ..errors import VirtioError
from ..interrupt import Interrupt
from ..memory import GuestMemory
from ..platform.registers import DeviceRegisters
from ..spec import virtio_msg as S
from ..spec.features import Feature
from ..spec.status import DeviceStatus
from ..spec.virtio_msg import ErrorReason, MsgId, MsgType
from .protocol import MalformedMessage, Message, error_event, pack, parse

log = logging.getLogger(__name__)

#: The vendor ID pyvirtio's devices report ("PYVT" little-endian, as the MMIO model's).
PYVIRTIO_VENDOR_ID = 0x54565950
#: Feature bits the device reports (GET_DEVICE_INFO num_feature_bits; a multiple of 32).
NUM_FEATURE_BITS = 128


def _drop(msg: Message) -> None:
    pass


class StateError(Exception):
    """A request the device state forbids now (answered with EVENT_ERROR BAD_STATE)."""

    reason = ErrorReason.BAD_STATE


class InvalidRequest(StateError):
    """A well-formed request the device refuses (a bad queue index, a size above the maximum)."""

    reason = ErrorReason.INVALID


class Unsupported(StateError):
    """A request needing a feature that was not negotiated (RESET_VQUEUE without RING_RESET)."""

    reason = ErrorReason.UNSUPPORTED


def next_offset_to_position(next_offset: int) -> int:
    """EVENT_AVAIL's next offset/wrap (offset in bits 30:0, wrap in bit 31) as the 16-bit
    position of VIRTIO 2.9: bits 14:0 from the offset, bit 15 from the wrap bit — for both ring
    layouts, as the Linux virtio-msg patches' notify_with_data splits it (docs/virtio-msg.md)."""
    return (next_offset & 0x7FFF) | ((next_offset >> 31) & 1) << 15


def position_to_next_offset(position: int) -> int:
    """The inverse of :func:`next_offset_to_position` (what a driver puts in EVENT_AVAIL)."""
    return (position & 0x7FFF) | ((position >> 15) & 1) << 31


class MsgDevice:
    """One VirtioDevice behind virtio-msg transport messages."""

    def __init__(self, device: VirtioDevice, *, vendor_id: int = PYVIRTIO_VENDOR_ID,
                 max_message_size: int = S.RECOMMENDED_MAX_MESSAGE_SIZE, notification_data: bool = True):
        self.device = device
        self.vendor_id = vendor_id
        self.max_message_size = max_message_size
        if notification_data:  # EVENT_AVAIL carries the position in-band ("VIRTIO_MSG_EVENT_AVAIL")
            device.device_features |= 1 << Feature.NOTIFICATION_DATA
        self.regs = DeviceRegisters(device, GuestMemory())
        #: Where device-originated events go (the owning driver's connection); set by the bus.
        self.send: Callable[[Message], None] = _drop
        self.dev_num = 0
        #: Requests refused (EVENT_ERROR sent) and events dropped, by reason: for tests and stats.
        self.refused: dict[str, int] = {}
        device.interrupt = self._device_interrupt
        self._handlers: dict[int, Callable[[Message, Any], Message | None]] = {
            MsgId.GET_DEVICE_INFO: self._get_device_info,
            MsgId.GET_DEVICE_FEATURES: self._get_device_features,
            MsgId.SET_DRIVER_FEATURES: self._set_driver_features,
            MsgId.GET_CONFIG: self._get_config,
            MsgId.SET_CONFIG: self._set_config,
            MsgId.GET_DEVICE_STATUS: self._get_device_status,
            MsgId.SET_DEVICE_STATUS: self._set_device_status,
            MsgId.GET_VQUEUE: self._get_vqueue,
            MsgId.SET_VQUEUE: self._set_vqueue,
            MsgId.RESET_VQUEUE: self._reset_vqueue,
            MsgId.GET_SHM: self._get_shm,
            MsgId.EVENT_AVAIL: self._event_avail,
        }

    # --- ownership (the bus) --------------------------------------------------------------------

    @property
    def memory(self) -> GuestMemory:
        """The guest memory of the driver that claimed the device (empty when unclaimed)."""
        return self.regs.memory

    def attach(self, memory: GuestMemory, send: Callable[[Message], None]) -> None:
        """A driver claimed the device: its memory and where its events go."""
        with self.regs.engine.hold():
            self.regs.memory = memory
            self.send = send

    def detach(self) -> None:
        """The driver let go (or vanished): finish what is in flight, reset the device, forget
        its memory, so nothing touches memory the driver's connection is about to unmap."""
        with self.regs.engine.hold():
            try:
                self.device.quiesce(self.regs.memory, None, timeout=5.0)
            except VirtioError as exc:
                log.warning("%s: quiesce on release: %s", self.name, exc)
            self.regs.reset()
            self.regs.memory = GuestMemory()
            self.send = _drop

    def close(self) -> None:
        """Stop the engine's workers (the device itself stays the caller's)."""
        self.regs.engine.stop()

    @property
    def name(self) -> str:
        """``Type#dev_num`` for log lines."""
        return f"{type(self.device).__name__}#{self.dev_num}"

    def info(self) -> S.DeviceInfo:
        """GET_DEVICE_INFO's answer."""
        return S.DeviceInfo(int(self.device.device_type), self.vendor_id, NUM_FEATURE_BITS,
                            len(self.device.config_bytes()), len(self.device.queues), 0, 0)

    # --- requests -------------------------------------------------------------------------------

    def handle(self, msg: Message) -> Message | None:
        """One transport message from the driver: its response, EVENT_ERROR, or None (events,
        and messages the draft says to drop silently: unsupported ids, responses)."""
        if msg.is_response or msg.is_bus:
            self._count("unexpected")
            return None
        handler = self._handlers.get(msg.msg_id)
        if handler is None:  # "Error Handling / Device": discard without further traffic
            self._count("unsupported")
            log.info("%s: dropped unsupported message id %#04x", self.name, msg.msg_id)
            return None
        try:
            body = parse(msg)
            with self.regs.engine.hold():
                return handler(msg, body)
        except MalformedMessage as exc:
            return self._refuse(msg, ErrorReason.MALFORMED, exc)
        except StateError as exc:
            return self._refuse(msg, exc.reason, exc)

    def _refuse(self, msg: Message, reason: int, why: Exception) -> Message | None:
        self._count(ErrorReason(reason).name.lower())
        self.device.guest_log.warning("%s: %s refused: %s", self.name, msg.name(), why)
        return None if msg.is_event else error_event(msg, reason)

    def _count(self, what: str) -> None:
        self.refused[what] = self.refused.get(what, 0) + 1

    def _get_device_info(self, msg: Message, body: None) -> Message:
        return msg.reply(pack(self.info()))

    def _get_device_features(self, msg: Message, body: S.FeatureBlocks) -> Message:
        room = (self.max_message_size - S.HEADER_SIZE - S.FEATURE_BLOCKS.size) // 4
        if body.num_blocks > room:
            raise InvalidRequest(f"{body.num_blocks} feature blocks do not fit a message")
        words = tuple((self.device.device_features >> (32 * (body.block_index + i))) & 0xFFFFFFFF
                      if body.block_index + i < NUM_FEATURE_BITS // 32 else 0
                      for i in range(body.num_blocks))
        return msg.reply(pack(S.FeatureBlocks(body.block_index, body.num_blocks, words)))

    def _set_driver_features(self, msg: Message, body: S.FeatureBlocks) -> Message:
        if self.device.status & DeviceStatus.FEATURES_OK:
            raise StateError("driver features after FEATURES_OK (2.2.1)")
        if not self.device.status & DeviceStatus.DRIVER:
            raise StateError("driver features before DRIVER status (3.1.1)")
        features = self.device.driver_features
        for i, word in enumerate(body.features):
            block = body.block_index + i
            if block >= NUM_FEATURE_BITS // 32:
                if word:
                    raise InvalidRequest(f"feature block {block} is beyond the device's features")
                continue
            features = (features & ~(0xFFFFFFFF << (32 * block))) | (word << (32 * block))
        self.device.set_driver_features(features)
        return msg.reply()

    def _config_bounds(self, offset: int, length: int, data_room: int) -> None:
        size = len(self.device.config_bytes())
        if offset + length > size:
            raise InvalidRequest(f"config range {offset}+{length} is outside the {size}-byte config space")
        if length > data_room:
            raise InvalidRequest(f"config access of {length} bytes does not fit a message")

    def _get_config(self, msg: Message, body: S.ConfigRange) -> Message:
        self._config_bounds(body.offset, body.length,
                            self.max_message_size - S.HEADER_SIZE - S.CONFIG_DATA.size)
        data = self.device.read_config(body.offset, body.length)
        return msg.reply(pack(S.ConfigData(self.device.config_generation, body.offset, body.length, data)))

    def _set_config(self, msg: Message, body: S.ConfigData) -> Message:
        self._config_bounds(body.offset, body.length, body.length)
        generation = self.device.config_generation
        if body.generation != generation:  # "Configuration Generation Count / Device": reject
            return msg.reply(pack(S.ConfigData(generation, body.offset, 0)))
        self.device.write_config(body.offset, body.data)
        return msg.reply(pack(S.ConfigData(self.device.config_generation, body.offset, body.length, body.data)))

    def _get_device_status(self, msg: Message, body: None) -> Message:
        return msg.reply(pack(S.Status(self.regs.status)))

    def _set_device_status(self, msg: Message, body: S.Status) -> Message:
        if body.status > 0xFF:
            raise InvalidRequest(f"status {body.status:#x} has bits above the 8 the spec defines (2.1)")
        # A status the device refuses (bits cleared without a reset, DRIVER_OK before
        # FEATURES_OK, features it cannot take) is answered with the status that resulted
        # ("VIRTIO_MSG_SET_DEVICE_STATUS / Device": it MUST report the resulting status).
        self.regs.write_status(body.status)
        return msg.reply(pack(S.Status(self.regs.status)))

    def _queue(self, index: int):
        if not 0 <= index < len(self.regs.queues):
            raise InvalidRequest(f"queue {index} does not exist ({len(self.regs.queues)} queues)")
        return self.regs.queues[index]

    def _get_vqueue(self, msg: Message, body: S.QueueIndex) -> Message:
        q = self._queue(body.vq_index)
        cur = q.size if q.enabled else 0
        info = S.VqueueInfo(body.vq_index, q.max_size, cur, 0, q.desc if q.enabled else 0,
                            q.driver if q.enabled else 0, q.device if q.enabled else 0)
        return msg.reply(pack(info))

    def _set_vqueue(self, msg: Message, body: S.SetVqueue) -> Message:
        q = self._queue(body.vq_index)
        status = self.device.status
        if not status & DeviceStatus.FEATURES_OK:
            raise StateError(f"queue {body.vq_index} set up before FEATURES_OK (3.1.1)")
        if status & DeviceStatus.DEVICE_NEEDS_RESET:
            raise StateError("the device needs a reset")
        if q.enabled:
            raise StateError(f"queue {body.vq_index} is already set up (RESET_VQUEUE it first)")
        if not 1 <= body.size <= q.max_size:
            raise InvalidRequest(f"queue {body.vq_index}: size {body.size} is not in 1..{q.max_size}")
        self.regs.queue_select = body.vq_index
        self.regs.write_queue_size(body.size)
        for which, addr in (("desc", body.desc_addr), ("driver", body.driver_addr), ("device", body.device_addr)):
            self.regs.write_queue_address64(which, addr)
        self.regs.enable_queue()  # a ring outside guest memory: DEVICE_NEEDS_RESET, queue stays off
        if not q.enabled:
            raise InvalidRequest(f"queue {body.vq_index}: size or rings refused (device needs reset)")
        return msg.reply()

    def _reset_vqueue(self, msg: Message, body: S.QueueIndex) -> Message:
        self._queue(body.vq_index)
        if not self.regs.ring_reset_negotiated:
            raise Unsupported("RESET_VQUEUE without VIRTIO_F_RING_RESET")
        self.regs.queue_select = body.vq_index
        self.regs.reset_queue()
        return msg.reply()

    def _get_shm(self, msg: Message, body: S.QueueIndex) -> Message:
        return msg.reply(pack(S.ShmInfo(body.vq_index, 0, 0)))  # no shared memory regions

    def _event_avail(self, msg: Message, body: S.EventAvail) -> None:
        if not 0 <= body.vq_index < len(self.regs.queues) or not self.regs.queues[body.vq_index].enabled:
            self._count("avail_dropped")
            self.device.guest_log.warning("%s: EVENT_AVAIL for queue %d that is not set up",
                                          self.name, body.vq_index)
            return None
        position = None
        if self.device.has_feature(Feature.NOTIFICATION_DATA):
            position = next_offset_to_position(body.next_offset)
        self.regs.notify(body.vq_index, position)
        return None

    # --- device -> driver -----------------------------------------------------------------------

    def _device_interrupt(self, info: Interrupt) -> None:
        if info.config_changed:
            event = S.EventConfig(self.regs.status, self.device.config_generation, 0, 0)
            self.send(Message(MsgType.REQUEST, MsgId.EVENT_CONFIG, self.dev_num, 0, pack(event)))
        else:
            self.send(Message(MsgType.REQUEST, MsgId.EVENT_USED, self.dev_num, 0,
                              pack(S.EventUsed(info.queue or 0))))


__all__ = ["MsgDevice", "PYVIRTIO_VENDOR_ID", "NUM_FEATURE_BITS", "next_offset_to_position",
           "position_to_next_offset"]
