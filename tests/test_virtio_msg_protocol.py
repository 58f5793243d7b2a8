"""virtio-msg messages: the header, every payload layout both ways, and what a peer can break
(short messages, sizes that lie, unknown ids, bad counts, reserved fields) — typed errors only,
checked by hypothesis too."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from pyvirtio.errors import Scope
from pyvirtio.spec import virtio_msg as S
from pyvirtio.spec.virtio_msg import BusMsgId, MsgId, MsgType
from pyvirtio.virtio_msg.protocol import (PARSERS, MalformedMessage, Message, bitmap_of, bus_request, decode,
                                          encode, error_event, known, numbers_in, pack, parse,
                                          transport_request)

SAMPLES = [
    (MsgId.GET_DEVICE_INFO, True, S.DeviceInfo(2, 0x54565950, 128, 60, 1, 0, 0)),
    (MsgId.GET_DEVICE_FEATURES, False, S.FeatureBlocks(0, 2)),
    (MsgId.GET_DEVICE_FEATURES, True, S.FeatureBlocks(0, 2, (0x30000000, 0x1))),
    (MsgId.SET_DRIVER_FEATURES, False, S.FeatureBlocks(1, 1, (0x5,))),
    (MsgId.GET_CONFIG, False, S.ConfigRange(8, 4)),
    (MsgId.GET_CONFIG, True, S.ConfigData(3, 8, 4, b"\x01\x02\x03\x04")),
    (MsgId.SET_CONFIG, False, S.ConfigData(3, 0, 2, b"ab")),
    (MsgId.SET_DEVICE_STATUS, False, S.Status(0xF)),
    (MsgId.GET_VQUEUE, True, S.VqueueInfo(1, 256, 128, 0, 0x1000, 0x2000, 0x3000)),
    (MsgId.SET_VQUEUE, False, S.SetVqueue(0, 0, 64, 0, 0x1000, 0x2000, 0x3000)),
    (MsgId.GET_SHM, True, S.ShmInfo(0, 0, 0)),
    (MsgId.EVENT_CONFIG, False, S.EventConfig(0xF, 9, 0, 0)),
    (MsgId.EVENT_AVAIL, False, S.EventAvail(2, 0x8000_0003)),
    (MsgId.EVENT_USED, False, S.EventUsed(2)),
]


@pytest.mark.parametrize("msg_id,response,body", SAMPLES, ids=lambda v: getattr(v, "name", None))
def test_every_transport_layout_round_trips(msg_id, response, body):
    msg = transport_request(msg_id, 7, body, token=0x1234)
    if response:
        msg = msg._replace(type=MsgType.RESPONSE)
    wire = encode(msg)
    assert struct.unpack_from("<BBHHH", wire) == (int(msg.type), msg_id, 7, 0x1234, len(wire))
    back = decode(wire)
    assert back == msg and parse(back) == body


def test_bus_layouts_round_trip():
    for msg_id, body in [(BusMsgId.PING, S.Ping(0xDEADBEEF)), (BusMsgId.EVENT_DEVICE, S.EventDevice(3, 2)),
                         (BusMsgId.GET_DEVICES, S.GetDevicesRequest(0, 16)),
                         (BusMsgId.SET_MEMORY, S.MemoryRegionMsg(0x1000, 0x10000, 0)),
                         (BusMsgId.CLAIM, S.ClaimRequest(0, 0, 4))]:
        msg = bus_request(msg_id, body, token=5)
        assert msg.is_bus and msg.dev_num == 0 and parse(decode(encode(msg))) == body
    resp = bus_request(BusMsgId.GET_DEVICES, S.GetDevicesResponse(0, 16, 16, bytes([0b100101, 0])))
    resp = resp._replace(type=MsgType.BUS | MsgType.RESPONSE)
    assert numbers_in(parse(decode(encode(resp))).bitmap, 0) == [0, 2, 5]  # the draft's example


def test_the_header_says_what_the_message_is():
    req = transport_request(MsgId.GET_DEVICE_STATUS, 1)
    assert not req.is_response and not req.is_bus and not req.is_event
    assert req.reply().is_response and req.reply().token == req.token
    assert transport_request(MsgId.EVENT_AVAIL, 1, S.EventAvail(0, 0)).is_event
    assert req.name() == "VIRTIO_MSG_GET_DEVICE_STATUS"
    assert bus_request(BusMsgId.PING, S.Ping(1)).reply().name() == "BUS_MSG_PING response"


def test_reserved_type_bits_are_ignored_on_receive_and_zero_on_send():
    wire = bytearray(encode(transport_request(MsgId.GET_DEVICE_STATUS, 1)))
    wire[0] |= 0xFC
    assert decode(bytes(wire)).type == 0
    assert encode(Message(0xFF, MsgId.GET_DEVICE_STATUS, 1, 0))[0] == 0x03


@pytest.mark.parametrize("wire,why", [
    (b"", "shorter than the 8-byte header"),
    (b"\x00\x02\x01\x00", "shorter than the 8-byte header"),
    (S.HEADER.pack(0, 2, 1, 0, 9), "msg_size 9 but the message has 8"),
    (S.HEADER.pack(0, 2, 1, 0, 8) + b"x", "msg_size 8 but the message has 9"),
])
def test_headers_that_lie_are_malformed(wire, why):
    with pytest.raises(MalformedMessage, match=why):
        decode(wire)


def test_a_message_above_the_maximum_size_is_malformed_both_ways():
    big = transport_request(MsgId.SET_CONFIG, 1, S.ConfigData(0, 0, 300, bytes(300)))
    with pytest.raises(ValueError):
        encode(big, 264)  # our own: a bug, not a peer's fault
    with pytest.raises(MalformedMessage, match="exceeds the maximum"):
        decode(encode(big), 264)


@pytest.mark.parametrize("msg,why", [
    (Message(0, 0x3F, 1, 0), "unsupported message id"),
    (Message(MsgType.BUS, 0x9F, 0, 0), "unsupported message id"),
    (Message(0, MsgId.GET_DEVICE_STATUS, 1, 0, b"\x00"), "where none is defined"),
    (Message(0, MsgId.SET_DEVICE_STATUS, 1, 0, b"\x01\x00"), "its layout has 4"),
    (Message(0, MsgId.SET_DRIVER_FEATURES, 1, 0, S.FEATURE_BLOCKS.pack(0, 3) + bytes(8)), "num_blocks 3"),
    (Message(0, MsgId.SET_DRIVER_FEATURES, 1, 0, S.FEATURE_BLOCKS.pack(0, 0xFFFFFFFF)), "num_blocks"),
    (Message(0, MsgId.SET_CONFIG, 1, 0, S.CONFIG_DATA.pack(0, 0, 10) + b"abc"), "length 10 but 3"),
    (Message(0, MsgId.SET_VQUEUE, 1, 0, S.SET_VQUEUE.pack(0, 1, 8, 0, 0, 0, 0)), "reserved"),
    (Message(MsgType.BUS, BusMsgId.GET_DEVICES, 0, 0, S.GET_DEVICES_REQUEST.pack(4, 8)), "multiples of 8"),
    (Message(MsgType.BUS, BusMsgId.PING, 3, 0, S.PING.pack(1)), "bus messages use 0"),
    (Message(MsgType.BUS | MsgType.RESPONSE, BusMsgId.GET_DEVICES, 0, 0,
             S.GET_DEVICES_RESPONSE.pack(0, 16, 8) + bytes(2)), "next_offset 8"),
    (Message(MsgType.BUS | MsgType.RESPONSE, BusMsgId.GET_DEVICES, 0, 0,
             S.GET_DEVICES_RESPONSE.pack(0, 16, 0) + bytes(3)), "bitmap bytes"),
])
def test_payloads_that_break_their_layout_are_malformed(msg, why):
    with pytest.raises(MalformedMessage, match=why) as err:
        parse(msg)
    assert err.value.scope == Scope.REQUEST and err.value.header is not None


def test_error_event_names_the_request():
    req = transport_request(MsgId.SET_VQUEUE, 4, S.SetVqueue(0, 0, 8, 0, 0, 0, 0), token=77)
    ev = parse(error_event(req, S.ErrorReason.BAD_STATE))
    assert (ev.msg_id, ev.dev_num, ev.token, ev.reason) == (MsgId.SET_VQUEUE, 4, 77, S.ErrorReason.BAD_STATE)


def test_bitmap_packing_is_lsb_first():
    assert bitmap_of({1, 2, 9, 40}, 0, 16) == bytes([0b110, 0b10])
    assert numbers_in(bitmap_of({8, 23}, 8, 16), 8) == [8, 23]


def test_every_layout_the_spec_module_names_has_a_packer():
    for (is_bus, msg_id, response), _ in PARSERS.items():
        assert known(Message((MsgType.BUS if is_bus else 0) | (MsgType.RESPONSE if response else 0),
                             msg_id, 0, 0))
    assert S.HEADER_SIZE == 8 and S.DEVICE_INFO.size == 24 and S.VQUEUE_INFO.size == 40


# --- hypothesis: a peer's bytes ---------------------------------------------------------------------

KNOWN = sorted(PARSERS)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_to_a_message_or_a_typed_error(data):
    try:
        msg = decode(data, 264)
    except MalformedMessage:
        return
    try:
        parse(msg)
    except MalformedMessage:
        pass


@settings(max_examples=400, deadline=None)
@given(key=st.sampled_from(KNOWN), dev_num=st.integers(0, 0xFFFF), token=st.integers(0, 0xFFFF),
       payload=st.binary(max_size=80))
def test_any_payload_under_a_known_id_parses_or_is_malformed(key, dev_num, token, payload):
    is_bus, msg_id, response = key
    msg = Message((MsgType.BUS if is_bus else 0) | (MsgType.RESPONSE if response else 0), msg_id,
                  0 if is_bus else dev_num, token, payload)
    assert decode(encode(msg)) == msg
    try:
        body = parse(msg)
    except MalformedMessage:
        return
    if body is not None:
        assert pack(body) == payload  # what parses, packs back to the same bytes


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 255), max_size=40).map(set), st.sampled_from([0, 8, 64]),
       st.sampled_from([8, 16, 256]))
def test_bitmaps_round_trip(numbers, offset, count):
    inside = sorted(n for n in numbers if offset <= n < offset + count)
    assert numbers_in(bitmap_of(numbers, offset, count), offset) == inside
