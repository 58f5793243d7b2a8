"""virtio-msg messages as bytes and back: the header, every payload, validation, typed errors.

Sans-I/O: :func:`decode` takes one whole message (bytes) and returns a :class:`Message` or
raises :class:`MalformedMessage`; :func:`parse` turns a message's payload into the layout its id
names (:mod:`pyvirtio.spec.virtio_msg`), checking every length, count and reserved field a peer
controls; :func:`encode` builds the bytes.  Nothing here keeps state.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, NamedTuple

from ..errors import PeerProtocolError, RequestError, Scope, TransportError
from ..spec import virtio_msg as S
from ..spec.virtio_msg import BusMsgId, MsgId, MsgType


class MalformedMessage(PeerProtocolError):
    """A message whose header or payload breaks its layout: the peer's fault.  ``scope`` is
    REQUEST when the message can be dropped alone, CONNECTION when a stream lost its framing."""

    scope = Scope.REQUEST

    def __init__(self, why: str, header: S.Header | None = None, scope: Scope = Scope.REQUEST):
        self.header = header
        self.scope = scope
        super().__init__(why)


class RequestFailed(RequestError):
    """The bus or device answered a request with EVENT_ERROR (``reason``, also ``status``: an
    ErrorReason); only this request failed."""

    def __init__(self, why: str, reason: int):
        self.reason = reason
        super().__init__(why, reason)


class ClaimFailed(RequestError):
    """CLAIM / RELEASE / SET_MEMORY refused (``result``, also ``status``: a ClaimResult) — e.g.
    NONE_FREE: every device of the class is claimed by another driver."""

    def __init__(self, why: str, result: int):
        self.result = result
        super().__init__(why, result)


class BusTimeout(TransportError):
    """No response within the bus's policy (the peer is alive but silent)."""


class Message(NamedTuple):
    """One virtio-msg message: the header's fields (``msg_size`` implied) and the payload bytes."""

    type: int
    msg_id: int
    dev_num: int
    token: int
    payload: bytes = b""

    @property
    def is_response(self) -> bool:
        """Bit 0 of ``type``."""
        return bool(self.type & MsgType.RESPONSE)

    @property
    def is_bus(self) -> bool:
        """Bit 1 of ``type``."""
        return bool(self.type & MsgType.BUS)

    @property
    def is_event(self) -> bool:
        """Bit 6 of the id: a one-way message that gets no response."""
        return bool(self.msg_id & S.EVENT_BIT)

    def name(self) -> str:
        """The message's spec name, for log lines and errors."""
        ids: Any = BusMsgId if self.is_bus else MsgId
        try:
            base = ids(self.msg_id).name
        except ValueError:
            base = f"{self.msg_id:#04x}"
        return ("BUS_MSG_" if self.is_bus else "VIRTIO_MSG_") + base + (" response" if self.is_response else "")

    def reply(self, payload: bytes = b"") -> "Message":
        """The response to this request (same id, device number and token)."""
        return Message(self.type | MsgType.RESPONSE, self.msg_id, self.dev_num, self.token, payload)


def encode(msg: Message, max_size: int = S.MAX_MAX_MESSAGE_SIZE) -> bytes:
    """The wire bytes of ``msg``; our own message above ``max_size`` is a bug of ours (ValueError)."""
    size = S.HEADER_SIZE + len(msg.payload)
    if size > max_size:
        raise ValueError(f"{msg.name()}: {size} bytes exceed the maximum message size {max_size}")
    return S.HEADER.pack(msg.type & S.TYPE_DEFINED_BITS, msg.msg_id, msg.dev_num, msg.token, size) + msg.payload


def decode_header(data: bytes) -> S.Header:
    """The common header at the start of ``data`` (at least 8 bytes)."""
    if len(data) < S.HEADER_SIZE:
        raise MalformedMessage(f"message of {len(data)} bytes is shorter than the 8-byte header")
    return S.Header(*S.HEADER.unpack_from(data))


def decode(data: bytes, max_size: int = S.MAX_MAX_MESSAGE_SIZE) -> Message:
    """One whole message.  Reserved type bits are ignored ("Common Header"); ``msg_size`` must
    be the length of ``data``, and at most ``max_size``."""
    h = decode_header(data)
    if h.msg_size != len(data):
        raise MalformedMessage(f"msg_size {h.msg_size} but the message has {len(data)} bytes", h)
    if h.msg_size > max_size:
        raise MalformedMessage(f"msg_size {h.msg_size} exceeds the maximum message size {max_size}", h)
    return Message(h.type & S.TYPE_DEFINED_BITS, h.msg_id, h.dev_num, h.token, bytes(data[S.HEADER_SIZE:]))


# --- payloads --------------------------------------------------------------------------------------

def _fixed(layout: struct.Struct, cls: Callable[..., Any]) -> Callable[[bytes], Any]:
    def parse_fixed(payload: bytes) -> Any:
        if len(payload) != layout.size:
            raise MalformedMessage(f"payload of {len(payload)} bytes, its layout has {layout.size}")
        return cls(*layout.unpack(payload))
    return parse_fixed


def _empty(payload: bytes) -> None:
    if payload:
        raise MalformedMessage(f"payload of {len(payload)} bytes where none is defined")


def _feature_blocks(payload: bytes) -> S.FeatureBlocks:
    if len(payload) < S.FEATURE_BLOCKS.size:
        raise MalformedMessage(f"feature blocks payload of {len(payload)} bytes (at least 8)")
    index, count = S.FEATURE_BLOCKS.unpack_from(payload)
    tail = payload[S.FEATURE_BLOCKS.size:]
    if len(tail) != 4 * count:
        raise MalformedMessage(f"num_blocks {count} but {len(tail)} bytes of feature data")
    words = struct.unpack(f"<{count}I", tail)
    return S.FeatureBlocks(index, count, words)


def _with_data(layout: struct.Struct, cls: Callable[..., Any]) -> Callable[[bytes], Any]:
    """A fixed part whose last field is the length of the data that follows."""
    def parse_with_data(payload: bytes) -> Any:
        if len(payload) < layout.size:
            raise MalformedMessage(f"payload of {len(payload)} bytes, its fixed part has {layout.size}")
        fields = layout.unpack_from(payload)
        data = payload[layout.size:]
        if len(data) != fields[-1]:
            raise MalformedMessage(f"length {fields[-1]} but {len(data)} bytes of data follow")
        return cls(*fields, bytes(data))
    return parse_with_data


def _set_vqueue(payload: bytes) -> S.SetVqueue:
    req = _fixed(S.SET_VQUEUE, S.SetVqueue)(payload)
    if req.reserved0 or req.reserved1:
        raise MalformedMessage("SET_VQUEUE reserved fields are not zero")
    return req


def _get_devices_request(payload: bytes) -> S.GetDevicesRequest:
    req = _fixed(S.GET_DEVICES_REQUEST, S.GetDevicesRequest)(payload)
    if req.offset % 8 or req.dev_count % 8:
        raise MalformedMessage(f"GET_DEVICES window {req.offset}+{req.dev_count} is not in multiples of 8")
    return req


def _get_devices_response(payload: bytes) -> S.GetDevicesResponse:
    if len(payload) < S.GET_DEVICES_RESPONSE.size:
        raise MalformedMessage(f"GET_DEVICES response of {len(payload)} bytes (at least 6)")
    offset, count, next_offset = S.GET_DEVICES_RESPONSE.unpack_from(payload)
    bitmap = payload[S.GET_DEVICES_RESPONSE.size:]
    if count % 8 or offset % 8 or len(bitmap) != count // 8:
        raise MalformedMessage(f"GET_DEVICES response window {offset}+{count} with {len(bitmap)} bitmap bytes")
    if next_offset and (next_offset % 8 or next_offset < offset + count):
        raise MalformedMessage(f"GET_DEVICES next_offset {next_offset} is not past the window")
    return S.GetDevicesResponse(offset, count, next_offset, bytes(bitmap))


Parser = Callable[[bytes], Any]
_T, _B = False, True
#: (is_bus, msg_id, is_response) -> payload parser.
PARSERS: dict[tuple[bool, int, bool], Parser] = {
    (_T, MsgId.GET_DEVICE_INFO, False): _empty,
    (_T, MsgId.GET_DEVICE_INFO, True): _fixed(S.DEVICE_INFO, S.DeviceInfo),
    (_T, MsgId.GET_DEVICE_FEATURES, False): _fixed(S.FEATURE_BLOCKS, S.FeatureBlocks),
    (_T, MsgId.GET_DEVICE_FEATURES, True): _feature_blocks,
    (_T, MsgId.SET_DRIVER_FEATURES, False): _feature_blocks,
    (_T, MsgId.SET_DRIVER_FEATURES, True): _empty,
    (_T, MsgId.GET_CONFIG, False): _fixed(S.CONFIG_RANGE, S.ConfigRange),
    (_T, MsgId.GET_CONFIG, True): _with_data(S.CONFIG_DATA, S.ConfigData),
    (_T, MsgId.SET_CONFIG, False): _with_data(S.CONFIG_DATA, S.ConfigData),
    (_T, MsgId.SET_CONFIG, True): _with_data(S.CONFIG_DATA, S.ConfigData),
    (_T, MsgId.GET_DEVICE_STATUS, False): _empty,
    (_T, MsgId.GET_DEVICE_STATUS, True): _fixed(S.STATUS, S.Status),
    (_T, MsgId.SET_DEVICE_STATUS, False): _fixed(S.STATUS, S.Status),
    (_T, MsgId.SET_DEVICE_STATUS, True): _fixed(S.STATUS, S.Status),
    (_T, MsgId.GET_VQUEUE, False): _fixed(S.QUEUE_INDEX, S.QueueIndex),
    (_T, MsgId.GET_VQUEUE, True): _fixed(S.VQUEUE_INFO, S.VqueueInfo),
    (_T, MsgId.SET_VQUEUE, False): _set_vqueue,
    (_T, MsgId.SET_VQUEUE, True): _empty,
    (_T, MsgId.RESET_VQUEUE, False): _fixed(S.QUEUE_INDEX, S.QueueIndex),
    (_T, MsgId.RESET_VQUEUE, True): _empty,
    (_T, MsgId.GET_SHM, False): _fixed(S.QUEUE_INDEX, S.QueueIndex),
    (_T, MsgId.GET_SHM, True): _fixed(S.SHM_INFO, S.ShmInfo),
    (_T, MsgId.EVENT_CONFIG, False): _with_data(S.EVENT_CONFIG, S.EventConfig),
    (_T, MsgId.EVENT_AVAIL, False): _fixed(S.EVENT_AVAIL, S.EventAvail),
    (_T, MsgId.EVENT_USED, False): _fixed(S.EVENT_USED, S.EventUsed),
    (_B, BusMsgId.GET_DEVICES, False): _get_devices_request,
    (_B, BusMsgId.GET_DEVICES, True): _get_devices_response,
    (_B, BusMsgId.PING, False): _fixed(S.PING, S.Ping),
    (_B, BusMsgId.PING, True): _fixed(S.PING, S.Ping),
    (_B, BusMsgId.EVENT_DEVICE, False): _fixed(S.EVENT_DEVICE, S.EventDevice),
    (_B, BusMsgId.BUS_INFO, False): _empty,
    (_B, BusMsgId.BUS_INFO, True): _fixed(S.BUS_INFO, S.BusInfo),
    (_B, BusMsgId.SET_MEMORY, False): _fixed(S.SET_MEMORY, S.MemoryRegionMsg),
    (_B, BusMsgId.SET_MEMORY, True): _fixed(S.CLAIM_RESPONSE, S.ClaimResponse),
    (_B, BusMsgId.CLAIM, False): _fixed(S.CLAIM_REQUEST, S.ClaimRequest),
    (_B, BusMsgId.CLAIM, True): _fixed(S.CLAIM_RESPONSE, S.ClaimResponse),
    (_B, BusMsgId.RELEASE, False): _fixed(S.RELEASE_REQUEST, S.ReleaseRequest),
    (_B, BusMsgId.RELEASE, True): _fixed(S.CLAIM_RESPONSE, S.ClaimResponse),
    (_B, BusMsgId.EVENT_ERROR, False): _fixed(S.EVENT_ERROR, S.EventError),
}


def known(msg: Message) -> bool:
    """Whether ``msg``'s id (in its class and direction) is one pyvirtio implements."""
    return (msg.is_bus, msg.msg_id, msg.is_response) in PARSERS


def parse(msg: Message) -> Any:
    """The payload of ``msg`` as its layout (a NamedTuple; None for an empty payload).  Raises
    :class:`MalformedMessage` for an unknown id or a payload that breaks the layout."""
    parser = PARSERS.get((msg.is_bus, msg.msg_id, msg.is_response))
    header = S.Header(msg.type, msg.msg_id, msg.dev_num, msg.token, S.HEADER_SIZE + len(msg.payload))
    if parser is None:
        raise MalformedMessage(f"unsupported message id {msg.msg_id:#04x} "
                               f"({'bus' if msg.is_bus else 'transport'})", header)
    if msg.is_bus and msg.dev_num != S.BUS_DEV_NUM:
        raise MalformedMessage(f"{msg.name()} with dev_num {msg.dev_num} (bus messages use 0)", header)
    try:
        return parser(msg.payload)
    except MalformedMessage as exc:
        raise MalformedMessage(f"{msg.name()}: {exc}", header) from None


# --- building payloads -----------------------------------------------------------------------------

def pack(obj: NamedTuple) -> bytes:
    """The payload bytes of a layout from :mod:`pyvirtio.spec.virtio_msg` (with its tail)."""
    layout, tail = _PACKERS[type(obj)]
    if tail is None:
        return layout.pack(*obj)
    fixed = tuple(obj)[:-1]
    rest = getattr(obj, tail)
    if tail == "features":
        return layout.pack(*fixed) + struct.pack(f"<{len(rest)}I", *rest)
    return layout.pack(*fixed) + bytes(rest)


_PACKERS: dict[type, tuple[struct.Struct, str | None]] = {
    S.DeviceInfo: (S.DEVICE_INFO, None),
    S.FeatureBlocks: (S.FEATURE_BLOCKS, "features"),
    S.ConfigRange: (S.CONFIG_RANGE, None),
    S.ConfigData: (S.CONFIG_DATA, "data"),
    S.Status: (S.STATUS, None),
    S.QueueIndex: (S.QUEUE_INDEX, None),
    S.VqueueInfo: (S.VQUEUE_INFO, None),
    S.SetVqueue: (S.SET_VQUEUE, None),
    S.ShmInfo: (S.SHM_INFO, None),
    S.EventConfig: (S.EVENT_CONFIG, "data"),
    S.EventAvail: (S.EVENT_AVAIL, None),
    S.EventUsed: (S.EVENT_USED, None),
    S.GetDevicesRequest: (S.GET_DEVICES_REQUEST, None),
    S.GetDevicesResponse: (S.GET_DEVICES_RESPONSE, "bitmap"),
    S.Ping: (S.PING, None),
    S.EventDevice: (S.EVENT_DEVICE, None),
    S.BusInfo: (S.BUS_INFO, None),
    S.MemoryRegionMsg: (S.SET_MEMORY, None),
    S.ClaimRequest: (S.CLAIM_REQUEST, None),
    S.ClaimResponse: (S.CLAIM_RESPONSE, None),
    S.ReleaseRequest: (S.RELEASE_REQUEST, None),
    S.EventError: (S.EVENT_ERROR, None),
}


def transport_request(msg_id: int, dev_num: int, payload: NamedTuple | None = None, token: int = 0) -> Message:
    """A transport request (or a driver event) to device ``dev_num``."""
    return Message(MsgType.REQUEST, msg_id, dev_num, token, pack(payload) if payload is not None else b"")


def bus_request(msg_id: int, payload: NamedTuple | None = None, token: int = 0) -> Message:
    """A bus request (or bus event), device number 0."""
    return Message(MsgType.BUS, msg_id, S.BUS_DEV_NUM, token, pack(payload) if payload is not None else b"")


def error_event(about: Message, reason: int) -> Message:
    """pyvirtio's EVENT_ERROR for a request ``about`` that gets no response."""
    return bus_request(BusMsgId.EVENT_ERROR, S.EventError(about.type, about.msg_id, about.dev_num,
                                                          about.token, reason))


def bitmap_of(numbers: set[int], offset: int, count: int) -> bytes:
    """GET_DEVICES's bitmap of the window ``offset``..``offset+count`` (LSB first)."""
    out = bytearray(count // 8)
    for n in numbers:
        if offset <= n < offset + count:
            bit = n - offset
            out[bit // 8] |= 1 << (bit % 8)
    return bytes(out)


def numbers_in(bitmap: bytes, offset: int) -> list[int]:
    """The device numbers a GET_DEVICES bitmap marks present."""
    return [offset + i * 8 + b for i, byte in enumerate(bitmap) for b in range(8) if byte >> b & 1]


__all__ = ["BusTimeout", "ClaimFailed", "MalformedMessage", "Message", "RequestFailed", "bitmap_of",
           "bus_request", "decode", "decode_header", "encode", "error_event", "known", "numbers_in",
           "pack", "parse", "transport_request"]
