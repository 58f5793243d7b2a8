"""The virtio-msg device side without any I/O: a BusSession fed bytes (and memfds) by a hostile
driver — malformed messages, messages out of order, wrong device and queue numbers, a stale
generation, memory it cannot map.  Every one gets the draft's answer or pyvirtio's EVENT_ERROR
with the reason, changes nothing, and the device keeps serving; and a correct sequence works."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pyvirtio.devices.rng import RngDevice
from pyvirtio.spec import virtio_msg as S
from pyvirtio.spec.features import Feature
from pyvirtio.spec.status import DeviceStatus as DS
from pyvirtio.spec.virtio_msg import BusMsgId, ClaimResult, ErrorReason, MsgId, MsgType
from pyvirtio.virtio_msg.bus import MAX_REGIONS, DeviceBus
from pyvirtio.virtio_msg.device import next_offset_to_position, position_to_next_offset
from pyvirtio.virtio_msg.protocol import Message, bus_request, decode, encode, parse, transport_request

GPA = 0x10000
MEM = 1 << 20


class Driver:
    """A raw driver on a session: sends bytes, reads what came back."""

    def __init__(self, bus: DeviceBus):
        self.out: list[Message] = []
        self.session = bus.connect(self.out.append)
        self.token = 0

    def send(self, msg: Message, fds=()) -> list[Message]:
        self.token += 1
        self.session.receive(encode(msg._replace(token=self.token)), list(fds))
        got, self.out[:] = list(self.out), []
        return got

    def ask(self, msg: Message, fds=()):
        (reply,) = self.send(msg, fds)
        is_error = reply.is_bus and reply.msg_id == BusMsgId.EVENT_ERROR
        assert (parse(reply).token if is_error else reply.token) == self.token
        return reply

    def body(self, msg: Message, fds=()):
        reply = self.ask(msg, fds)
        assert reply.is_response, parse(reply)
        return parse(reply)

    def error(self, msg: Message) -> int:
        reply = self.ask(msg)
        assert reply.is_bus and reply.msg_id == BusMsgId.EVENT_ERROR, reply
        return parse(reply).reason

    def share_memory(self) -> None:
        fd = os.memfd_create("test-vmsg", os.MFD_CLOEXEC)
        os.ftruncate(fd, MEM)
        assert self.body(bus_request(BusMsgId.SET_MEMORY, S.MemoryRegionMsg(GPA, MEM, 0)), [fd]).result == 0


def t(msg_id, dev, body=None):
    return transport_request(msg_id, dev, body)


@pytest.fixture
def bus():
    b = DeviceBus()
    yield b
    b.close()


@pytest.fixture
def claimed(bus):
    dev = RngDevice()
    n = bus.add(dev)
    drv = Driver(bus)
    drv.share_memory()
    assert drv.body(bus_request(BusMsgId.CLAIM, S.ClaimRequest(n, 0, 0))) == S.ClaimResponse(n, ClaimResult.OK)
    return drv, n, dev


def negotiate(drv, n, status=DS.ACKNOWLEDGE | DS.DRIVER):
    drv.body(t(MsgId.SET_DEVICE_STATUS, n, S.Status(status)))
    feats = drv.body(t(MsgId.GET_DEVICE_FEATURES, n, S.FeatureBlocks(0, 2)))
    features = feats.features[0] | feats.features[1] << 32
    want = features & ((1 << Feature.VERSION_1) | (1 << Feature.EVENT_IDX))
    drv.body(t(MsgId.SET_DRIVER_FEATURES, n, S.FeatureBlocks(0, 2, (want & 0xFFFFFFFF, want >> 32))))
    return drv.body(t(MsgId.SET_DEVICE_STATUS, n, S.Status(status | DS.FEATURES_OK))).status


def test_a_correct_setup_sequence(claimed):
    drv, n, dev = claimed
    info = drv.body(t(MsgId.GET_DEVICE_INFO, n))
    assert info.device_id == 4 and info.num_feature_bits % 32 == 0 and info.max_virtqueues == 1
    assert negotiate(drv, n) & DS.FEATURES_OK
    q = drv.body(t(MsgId.GET_VQUEUE, n, S.QueueIndex(0)))
    assert q.cur_size == 0 and q.max_size == dev.queue_max_size
    drv.body(t(MsgId.SET_VQUEUE, n, S.SetVqueue(0, 0, 16, 0, GPA, GPA + 0x1000, GPA + 0x2000)))
    q = drv.body(t(MsgId.GET_VQUEUE, n, S.QueueIndex(0)))
    assert (q.cur_size, q.desc_addr, q.device_addr) == (16, GPA, GPA + 0x2000)
    ok = DS.ACKNOWLEDGE | DS.DRIVER | DS.FEATURES_OK | DS.DRIVER_OK
    assert drv.body(t(MsgId.SET_DEVICE_STATUS, n, S.Status(ok))).status == ok
    assert drv.send(t(MsgId.EVENT_AVAIL, n, S.EventAvail(0, 0))) == []  # an event: no reply
    assert drv.body(t(MsgId.GET_SHM, n, S.QueueIndex(0))).length == 0
    assert drv.body(t(MsgId.SET_DEVICE_STATUS, n, S.Status(0))).status == 0  # reset
    assert drv.body(t(MsgId.GET_VQUEUE, n, S.QueueIndex(0))).cur_size == 0


def test_out_of_order_requests_are_refused_and_change_nothing(claimed):
    drv, n, dev = claimed
    ring = S.SetVqueue(0, 0, 16, 0, GPA, GPA + 0x1000, GPA + 0x2000)
    # features before DRIVER, queue set-up before FEATURES_OK
    assert drv.error(t(MsgId.SET_DRIVER_FEATURES, n, S.FeatureBlocks(0, 1, (1,)))) == ErrorReason.BAD_STATE
    assert drv.error(t(MsgId.SET_VQUEUE, n, ring)) == ErrorReason.BAD_STATE
    # DRIVER_OK before FEATURES_OK: the resulting status says it was not taken
    status = drv.body(t(MsgId.SET_DEVICE_STATUS, n, S.Status(DS.ACKNOWLEDGE | DS.DRIVER | DS.DRIVER_OK))).status
    assert not status & DS.DRIVER_OK
    assert negotiate(drv, n) & DS.FEATURES_OK
    before = dev.driver_features
    assert drv.error(t(MsgId.SET_DRIVER_FEATURES, n, S.FeatureBlocks(0, 1, (0,)))) == ErrorReason.BAD_STATE
    assert dev.driver_features == before  # features after FEATURES_OK
    # queue kicks before the queue exists: dropped, counted, no traffic
    assert drv.send(t(MsgId.EVENT_AVAIL, n, S.EventAvail(0, 0))) == []
    assert drv.send(t(MsgId.EVENT_AVAIL, n, S.EventAvail(9, 0))) == []
    assert drv.session.bus.devices[n].refused["avail_dropped"] == 2
    drv.body(t(MsgId.SET_VQUEUE, n, ring))
    assert drv.error(t(MsgId.SET_VQUEUE, n, ring)) == ErrorReason.BAD_STATE  # twice, no RESET_VQUEUE
    assert drv.error(t(MsgId.RESET_VQUEUE, n, S.QueueIndex(0))) == ErrorReason.UNSUPPORTED  # no RING_RESET
    # bits cleared without a reset: the status stays
    assert drv.body(t(MsgId.SET_DEVICE_STATUS, n, S.Status(DS.ACKNOWLEDGE))).status & DS.FEATURES_OK


def test_bad_numbers_and_sizes(claimed):
    drv, n, dev = claimed
    assert drv.error(t(MsgId.GET_VQUEUE, n, S.QueueIndex(1))) == ErrorReason.INVALID
    assert drv.error(t(MsgId.GET_VQUEUE, n + 1, S.QueueIndex(0))) == ErrorReason.NO_DEVICE
    assert drv.error(t(MsgId.GET_CONFIG, n, S.ConfigRange(0, 1))) == ErrorReason.INVALID  # rng: no config
    assert drv.error(t(MsgId.SET_DEVICE_STATUS, n, S.Status(0x100))) == ErrorReason.INVALID
    negotiate(drv, n)
    too_big = S.SetVqueue(0, 0, dev.queue_max_size + 1, 0, GPA, GPA + 0x1000, GPA + 0x2000)
    assert drv.error(t(MsgId.SET_VQUEUE, n, too_big)) == ErrorReason.INVALID
    outside = S.SetVqueue(0, 0, 16, 0, 0x9000_0000, GPA + 0x1000, GPA + 0x2000)
    assert drv.error(t(MsgId.SET_VQUEUE, n, outside)) == ErrorReason.INVALID
    assert drv.body(t(MsgId.GET_DEVICE_STATUS, n)).status & DS.DEVICE_NEEDS_RESET  # rings outside memory
    assert drv.error(t(MsgId.GET_DEVICE_FEATURES, n, S.FeatureBlocks(0, 1000))) == ErrorReason.INVALID
    blocks = drv.body(t(MsgId.GET_DEVICE_FEATURES, n, S.FeatureBlocks(6, 2)))
    assert blocks.features == (0, 0)  # beyond the device's feature bits: zeros


def test_malformed_and_unsupported_messages(claimed):
    drv, n, dev = claimed
    session = drv.session
    assert drv.send(Message(0, 0x3E, n, 0)) == []  # unsupported id: discarded silently
    assert drv.send(Message(0, 0xC5, n, 0)) == []
    assert drv.send(Message(MsgType.BUS, 0x9E, 0, 0)) == []
    assert drv.send(Message(MsgType.RESPONSE, MsgId.GET_DEVICE_STATUS, n, 0, bytes(4))) == []
    session.receive(b"\x00\x07")  # short: dropped, no traffic
    session.receive(S.HEADER.pack(0, 7, n, 1, 30))  # a lying size
    assert drv.out == []
    assert drv.error(Message(0, MsgId.SET_DEVICE_STATUS, n, 0, b"\x01")) == ErrorReason.MALFORMED
    assert drv.error(Message(MsgType.BUS, BusMsgId.PING, 0, 0, b"")) == ErrorReason.MALFORMED
    assert drv.send(Message(0, MsgId.EVENT_AVAIL, n, 0, b"\x00")) == []  # a malformed event: no reply
    assert session.dropped["malformed header"] == 2 and session.dropped["unsupported"] == 1
    assert drv.body(bus_request(BusMsgId.PING, S.Ping(0xFEEDF00D))).data == 0xFEEDF00D  # still serving


def test_config_writes_need_the_current_generation(bus):
    from pyvirtio.devices.console import ConsoleDevice
    from pyvirtio.devices.console_endpoints import MemoryEndpoint
    dev = ConsoleDevice(MemoryEndpoint(), size=(80, 25), multiport=False)
    n = bus.add(dev)
    drv = Driver(bus)
    drv.body(bus_request(BusMsgId.CLAIM, S.ClaimRequest(n, 0, 0)))
    got = drv.body(t(MsgId.GET_CONFIG, n, S.ConfigRange(0, 4)))
    assert got.data == (80).to_bytes(2, "little") + (25).to_bytes(2, "little")
    stale = got.generation + 1
    rejected = drv.body(t(MsgId.SET_CONFIG, n, S.ConfigData(stale, 8, 4, bytes(4))))
    assert rejected.length == 0 and rejected.generation == got.generation
    applied = drv.body(t(MsgId.SET_CONFIG, n, S.ConfigData(got.generation, 8, 4, bytes(4))))
    assert applied.length == 4
    dev.close()


def test_memory_the_device_side_cannot_use_is_refused(bus):
    drv = Driver(bus)
    region = S.MemoryRegionMsg(GPA, MEM, 0)
    refused = ClaimResult.REFUSED
    assert drv.body(bus_request(BusMsgId.SET_MEMORY, region)).result == refused  # no fd
    r, w = os.pipe()
    assert drv.body(bus_request(BusMsgId.SET_MEMORY, region), [r]).result == refused  # not a file
    os.close(w)
    fd = os.memfd_create("small", os.MFD_CLOEXEC)
    os.ftruncate(fd, 4096)
    assert drv.body(bus_request(BusMsgId.SET_MEMORY, region), [fd]).result == refused  # past its end
    for i in range(MAX_REGIONS):
        fd = os.memfd_create("r", os.MFD_CLOEXEC)
        os.ftruncate(fd, 4096)
        assert drv.body(bus_request(BusMsgId.SET_MEMORY, S.MemoryRegionMsg(i * 0x10000, 4096, 0)), [fd]).result == 0
    fd = os.memfd_create("one-too-many", os.MFD_CLOEXEC)
    os.ftruncate(fd, 4096)
    assert drv.body(bus_request(BusMsgId.SET_MEMORY, S.MemoryRegionMsg(0x800000, 4096, 0)), [fd]).result == refused
    assert len(drv.session.memory.regions) == MAX_REGIONS
    drv.session.close()
    assert drv.session.memory.regions == ()


def test_transport_messages_need_a_claim_except_reads(bus):
    n = bus.add(RngDevice())
    a, b = Driver(bus), Driver(bus)
    assert a.body(t(MsgId.GET_DEVICE_INFO, n)).device_id == 4  # probing needs no claim
    assert a.body(t(MsgId.GET_DEVICE_STATUS, n)).status == 0  # reading needs no claim either
    assert a.error(t(MsgId.SET_DEVICE_STATUS, n, S.Status(1))) == ErrorReason.NOT_CLAIMED
    assert b.body(bus_request(BusMsgId.CLAIM, S.ClaimRequest(0, 0, 4))) == S.ClaimResponse(n, ClaimResult.OK)
    assert a.body(bus_request(BusMsgId.CLAIM, S.ClaimRequest(0, 0, 4))).result == ClaimResult.NONE_FREE
    assert a.body(bus_request(BusMsgId.CLAIM, S.ClaimRequest(n, 0, 0))).result == ClaimResult.NONE_FREE
    assert a.body(bus_request(BusMsgId.RELEASE, S.ReleaseRequest(n, 0))).result == ClaimResult.NOT_YOURS
    assert a.send(t(MsgId.EVENT_AVAIL, n, S.EventAvail(0, 0))) == []  # an event: dropped silently
    b.session.close()  # the owner went away: its claim is gone
    assert a.body(bus_request(BusMsgId.CLAIM, S.ClaimRequest(n, 0, 0))).result == ClaimResult.OK


def test_get_devices_windows(bus):
    for n in (1, 2, 5, 40):
        bus.add(RngDevice(), dev_num=n)
    drv = Driver(bus)
    w = drv.body(bus_request(BusMsgId.GET_DEVICES, S.GetDevicesRequest(0, 16)))
    assert (w.offset, w.dev_count, w.next_offset, w.bitmap) == (0, 16, 16, bytes([0b100110, 0]))
    w = drv.body(bus_request(BusMsgId.GET_DEVICES, S.GetDevicesRequest(40, 8)))
    assert w.bitmap == b"\x01" and w.next_offset == 0


def test_notification_positions_map_both_ways():
    for pos in (0, 1, 0x7FFF, 0x8000, 0x8005, 0xFFFF):
        assert next_offset_to_position(position_to_next_offset(pos)) == pos
    assert position_to_next_offset(0x8005) == 0x8000_0005  # bit 15 (a packed ring's wrap) in bit 31
    assert next_offset_to_position(0x7FFF_8001) == 0x0001  # offset bits above 14 are not a position


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=st.lists(st.tuples(st.sampled_from([0, 1, 2, 3]), st.integers(0, 0xFF), st.integers(0, 3),
                               st.binary(max_size=48)), max_size=40))
def test_random_messages_never_break_the_session(msgs):
    bus = DeviceBus()
    try:
        n = bus.add(RngDevice())
        drv = Driver(bus)
        drv.body(bus_request(BusMsgId.CLAIM, S.ClaimRequest(n, 0, 0)))
        for kind, msg_id, dev, payload in msgs:
            drv.send(Message(kind, msg_id, dev if not kind & 2 else 0, 0, payload))
        assert drv.body(bus_request(BusMsgId.PING, S.Ping(7))).data == 7
        assert drv.body(t(MsgId.GET_DEVICE_INFO, n)).device_id == 4
    finally:
        bus.close()


def test_decode_of_what_the_session_sends_back(claimed):
    drv, n, dev = claimed
    wire = encode(drv.ask(t(MsgId.GET_DEVICE_STATUS, n)))
    assert decode(wire).is_response
