"""The sans-I/O vhost-user back-end connection, driven in memory by the test front-end."""

from __future__ import annotations

import logging
import mmap
import os
import struct
import time

import pytest

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.spec.features import Feature
from pyvirtio.spec.status import DeviceStatus
from pyvirtio.vhost_user import errors as E
from pyvirtio.vhost_user.backend.connection import DEFAULT_PROTOCOL_FEATURES, BackendConnection, Rejected
from pyvirtio.vhost_user.protocol import VHOST_USER_F_PROTOCOL_FEATURES, VRING_NOFD_MASK
from pyvirtio.vhost_user.protocol import FrontendReq as R
from pyvirtio.vhost_user.protocol import ProtocolFeature as PF
from pyvirtio.vhost_user.testing import TestFrontend
from pyvirtio.vhost_user.wire import (U64, ConfigSpace, MemoryRegion, SingleMemoryRegion,
                                      VringAddr, VringState, encode)

PROTO = 1 << VHOST_USER_F_PROTOCOL_FEATURES


@pytest.fixture
def rng():
    conn = BackendConnection(RngDevice(), name="test-rng")
    fe = TestFrontend.pair(conn)
    yield fe, conn
    fe.close()


@pytest.fixture
def rng_any_fd():
    """Like ``rng``, but taking any fd as kick/call/err fd (pipes show when an fd is closed)."""
    conn = BackendConnection(RngDevice(), name="test-rng", check_notify_fd=lambda fd, what: None)
    fe = TestFrontend.pair(conn)
    yield fe, conn
    fe.close()


@pytest.fixture
def blk(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(b"")
    os.truncate(path, 1 << 20)
    dev = BlkDevice(str(path), serial="unit")
    conn = BackendConnection(dev, name="test-blk")
    fe = TestFrontend.pair(conn)
    yield fe, conn
    fe.close()
    dev.close()


def pipe_end_closed(w: int) -> bool:
    """True once no process holds the read end of the pipe whose write end is ``w``."""
    os.set_blocking(w, False)
    try:
        os.write(w, b"x")
        return False
    except BrokenPipeError:
        return True


def sent_pipe():
    """A pipe read end to send, and the write end to check it with."""
    r, w = os.pipe()
    return r, w


def rejections(fe):
    return [o for o in fe.ch.outputs if isinstance(o, Rejected)]


# --- negotiation -------------------------------------------------------------------------------


def test_features_offer_protocol_features_and_device_bits(rng):
    fe, conn = rng
    features = fe.get_u64(R.GET_FEATURES)
    assert features & PROTO
    assert features & (1 << Feature.VERSION_1) and features & (1 << Feature.EVENT_IDX)
    assert fe.get_u64(R.GET_PROTOCOL_FEATURES) == DEFAULT_PROTOCOL_FEATURES
    for bit in (PF.MQ, PF.REPLY_ACK, PF.CONFIG, PF.CONFIGURE_MEM_SLOTS, PF.STATUS, PF.RESET_DEVICE):
        assert DEFAULT_PROTOCOL_FEATURES & (1 << bit)


def test_unoffered_features_are_refused_with_a_log_line(rng, caplog):
    fe, conn = rng
    fe.request(R.SET_FEATURES, U64(1 << 60).pack())
    assert conn.acked_features is None
    fe.request(R.SET_PROTOCOL_FEATURES, U64(1 << PF.LOG_SHMFD).pack())
    assert conn.acked_protocol_features == 0
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("SET_FEATURES" in m and "not offered" in m for m in lines)
    assert any("SET_PROTOCOL_FEATURES" in m and "not offered" in m for m in lines)
    assert [type(r.error) for r in rejections(fe)] == [E.InvalidValue, E.InvalidValue]


def test_set_features_reaches_the_device_and_its_queues(rng):
    fe, conn = rng
    fe.negotiate()
    assert conn.device.has_feature(Feature.EVENT_IDX)
    assert conn.device.queues[0].event_idx and conn.device.queues[0].indirect
    assert not conn.device.driver_features & PROTO  # bit 30 is vhost-user's, not the device's


def test_gated_requests_need_their_protocol_feature(rng):
    fe, conn = rng
    fe.request(R.SET_STATUS, U64(1).pack())  # STATUS not negotiated yet: dropped, not fatal
    assert isinstance(rejections(fe)[-1].error, E.NotNegotiated)
    assert conn.status == 0
    # GET_CONFIG has an error reply of its own (empty payload): not fatal either.
    assert fe.request(R.GET_CONFIG, ConfigSpace(0, 4, 0, bytes(4)).pack()).payload == b""
    # A request that must be answered cannot be dropped: the connection ends.
    with pytest.raises(E.ReplyImpossible):
        fe.request(R.GET_QUEUE_NUM)
    with pytest.raises(E.ConnectionBroken):
        fe.request(R.GET_FEATURES)


def test_reply_ack(rng):
    fe, conn = rng
    fe.negotiate()
    assert fe.ack(R.SET_OWNER) == 0
    assert fe.ack(R.SET_VRING_NUM, VringState(0, 3).pack()) == 1  # not a power of two
    assert fe.ack(R.SET_VRING_NUM, VringState(5, 64).pack()) == 1  # no such ring
    assert fe.ack(999) == 1  # unknown request
    # Without REPLY_ACK negotiated NEED_REPLY gets no answer.
    fe2 = TestFrontend.pair(BackendConnection(RngDevice()))
    fe2.negotiate(protocol_features=0)
    fe2.ch.send(encode(R.SET_OWNER, flags=1 | 8))
    assert not fe2.ch.replies
    fe2.close()


def test_queue_num_and_max_mem_slots(blk):
    fe, conn = blk
    fe.negotiate()
    assert fe.get_u64(R.GET_QUEUE_NUM) == 1
    assert fe.get_u64(R.GET_MAX_MEM_SLOTS) == conn.max_mem_slots


# --- validation of every message -----------------------------------------------------------------


def test_reserved_flags_and_reply_bit_are_refused(rng):
    fe, conn = rng
    fe.ch.send(encode(R.SET_OWNER, flags=1 | 0x100))
    fe.ch.send(encode(R.SET_OWNER, flags=1 | 0x4))
    assert [type(r.error) for r in rejections(fe)] == [E.BadFlags, E.BadFlags]
    assert not conn.owner


def test_unknown_and_unimplemented_requests(rng):
    fe, conn = rng
    fe.ch.send(encode(200, b"abc"))
    fe.ch.send(encode(R.SET_LOG_BASE, bytes(16)))
    assert [type(r.error) for r in rejections(fe)] == [E.UnknownRequest, E.UnsupportedRequest]
    assert conn.error is None


def test_payload_size_is_checked(rng):
    fe, conn = rng
    fe.ch.send(encode(R.SET_FEATURES, bytes(4)))
    fe.ch.send(encode(R.SET_OWNER, bytes(8)))
    assert all(isinstance(r.error, E.BadPayloadSize) for r in rejections(fe))
    assert len(rejections(fe)) == 2


def test_fds_on_a_message_that_takes_none_are_closed(rng):
    fe, conn = rng
    r, w = sent_pipe()
    fe.ch.send(encode(R.SET_OWNER), [r])
    os.close(r)
    assert pipe_end_closed(w)
    assert isinstance(rejections(fe)[-1].error, E.BadFdCount)
    os.close(w)


def test_kick_call_err_fds_must_be_eventfds(rng):
    """Issue 12, class 2: a pipe, a socket or a file as kick/call/err fd is refused with a
    typed error (its blocking mode and end of file would be the front-end's), and closed."""
    import socket as _socket
    fe, conn = rng
    fe.negotiate()
    for i, req in enumerate((R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR)):
        r, w = sent_pipe()
        fe.request(req, U64(0).pack(), [r])
        os.close(r)
        assert isinstance(rejections(fe)[-1].error, E.BadNotifyFd) and pipe_end_closed(w)
        os.close(w)
        a, b = _socket.socketpair()
        fe.request(req, U64(0).pack(), [a.fileno()])
        a.close()
        assert isinstance(rejections(fe)[-1].error, E.BadNotifyFd)
        b.close()
        with open("/dev/null", "rb") as f:
            fe.request(req, U64(0).pack(), [f.fileno()])
        assert len(rejections(fe)) == 3 * (i + 1)
    assert [v.kick_fd for v in conn.vrings] == [-1] * len(conn.vrings)
    ev = os.eventfd(0)
    fe.request(R.SET_VRING_CALL, U64(0).pack(), [ev])  # an eventfd: taken
    os.close(ev)
    assert len(rejections(fe)) == 9 and conn.vrings[0].call_fd >= 0


def test_nofd_bit_must_agree_with_the_fds(rng):
    fe, conn = rng
    r, w = sent_pipe()
    fe.ch.send(encode(R.SET_VRING_CALL, U64(0 | VRING_NOFD_MASK).pack()), [r])
    os.close(r)
    assert pipe_end_closed(w)
    fe.ch.send(encode(R.SET_VRING_CALL, U64(0).pack()))
    fe.ch.send(encode(R.SET_VRING_CALL, U64(0x1000).pack()))  # unknown bits
    assert [type(x.error) for x in rejections(fe)] == [E.BadFdCount, E.BadFdCount, E.InvalidValue]
    fe.ch.send(encode(R.SET_VRING_CALL, U64(0 | VRING_NOFD_MASK).pack()))  # polling: fine
    assert len(rejections(fe)) == 3
    os.close(w)


def test_kept_fds_stay_open_until_replaced(rng_any_fd):
    fe, conn = rng_any_fd
    r1, w1 = sent_pipe()
    fe.request(R.SET_VRING_ERR, U64(0).pack(), [r1])
    os.close(r1)
    assert not pipe_end_closed(w1)
    r2, w2 = sent_pipe()
    fe.request(R.SET_VRING_ERR, U64(0).pack(), [r2])
    os.close(r2)
    assert pipe_end_closed(w1) and not pipe_end_closed(w2)
    conn.close()
    assert pipe_end_closed(w2)
    os.close(w1), os.close(w2)


def test_message_fed_whole_bytewise_and_with_trailing_data(rng):
    fe, conn = rng
    msg = encode(R.SET_PROTOCOL_FEATURES, U64(1 << PF.MQ).pack()) + encode(R.GET_QUEUE_NUM)
    for chunk in (msg[i:i + 1] for i in range(len(msg))):
        out = conn.receive(chunk)
    assert len(out) == 1 and U64.unpack(out[0].data[12:]).value == 1
    out = conn.receive(msg + encode(R.GET_FEATURES)[:7])
    assert len(out) == 1 and conn.want() == 5
    out = conn.receive(encode(R.GET_FEATURES)[7:])
    assert U64.unpack(out[0].data[12:]).value & PROTO


def test_bad_version_breaks_the_connection_and_later_fds_are_closed(rng):
    fe, conn = rng
    with pytest.raises(E.FramingError):
        conn.receive(struct.pack("=III", 1, 2, 0))
    r, w = sent_pipe()
    with pytest.raises(E.ConnectionBroken):
        conn.receive(encode(R.SET_OWNER), [r])
    assert pipe_end_closed(w)
    os.close(w)


# --- memory --------------------------------------------------------------------------------------


def test_set_mem_table_maps_and_replacement_unmaps(rng):
    fe, conn = rng
    fe.negotiate(protocol_features=0)
    fe.set_mem_table()
    (region,) = conn.memory.regions
    fe.memory.write(fe.memory.regions[0].gpa + 100, b"shared!")
    assert conn.memory.read(region.gpa + 100, 7) == b"shared!"
    fe.set_mem_table()
    assert conn.memory.regions[0] is not region
    assert region.fd == -1  # the old region's fd is closed ...
    with pytest.raises(ValueError):
        region.buf[0]  # ... and its mapping released
    assert conn.memory.read(region.gpa + 100, 7) == b"shared!"


def test_region_at_an_unaligned_mmap_offset_is_sliced_from_the_page(rng):
    fe, conn = rng
    fe.negotiate()
    fd = os.memfd_create("t", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 3 * mmap.PAGESIZE)
    m = mmap.mmap(fd, 3 * mmap.PAGESIZE)
    m[mmap.PAGESIZE + 0x800:mmap.PAGESIZE + 0x805] = b"hello"
    region = MemoryRegion(0x10000, mmap.PAGESIZE, 0x7000_0000, mmap.PAGESIZE + 0x800)
    assert fe.ack(R.ADD_MEM_REG, SingleMemoryRegion.of(region).pack(), [fd]) == 0
    assert conn.memory.read(0x10000, 5) == b"hello"
    assert conn.memory.uva_to_gpa(0x7000_0004) == 0x10004
    m.close()
    os.close(fd)


@pytest.mark.parametrize("why", ["past-eof", "pipe", "zero", "overlap"])
def test_bad_regions_are_refused_and_their_fds_closed(rng, why):
    fe, conn = rng
    fe.negotiate()
    assert fe.add_mem_reg() == 0
    base = fe.region()
    if why == "pipe":
        fd, w = os.pipe()
        region = MemoryRegion(0x1_0000_0000, 4096, 1 << 40, 0)
    else:
        fd = os.memfd_create("t", os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, 8192)
        w = None
        region = {"past-eof": MemoryRegion(0x1_0000_0000, 16384, 1 << 40, 0),
                  "zero": MemoryRegion(0x1_0000_0000, 0, 1 << 40, 0),
                  "overlap": MemoryRegion(base.guest_phys_addr + 4096, 4096, 1 << 40, 0)}[why]
    assert fe.ack(R.ADD_MEM_REG, SingleMemoryRegion.of(region).pack(), [fd]) == 1
    assert len(conn.memory.regions) == 1
    assert isinstance(rejections(fe)[-1].error, E.BadMemoryRegion)
    os.close(fd)
    if w is not None:
        assert pipe_end_closed(w)
        os.close(w)


def test_rem_mem_reg(rng):
    fe, conn = rng
    fe.negotiate()
    fe.add_mem_reg()
    r = fe.region()
    assert fe.ack(R.REM_MEM_REG, SingleMemoryRegion.of(MemoryRegion(r.guest_phys_addr, 4096, 0, 0)).pack()) == 1
    assert fe.ack(R.REM_MEM_REG, SingleMemoryRegion.of(r).pack()) == 0
    assert conn.memory.regions == ()


# --- rings -------------------------------------------------------------------------------------


def _rng_request(fe, n=32):
    addr, length = fe.buffer(n)
    fe.rings[0].queue.add(fe.memory, [], [(addr, length)], token=addr)
    return addr


def _restart_at(fe, conn, base: int) -> None:
    """Start ring 0 again from ``base`` (SET_VRING_BASE, then a kick fd)."""
    fe.request(R.SET_VRING_BASE, VringState(0, base).pack())
    k = os.eventfd(0)
    fe.request(R.SET_VRING_KICK, U64(0).pack(), [k])
    os.close(k)


def test_ring_runs_only_when_started_and_enabled(rng):
    fe, conn = rng
    fe.negotiate()
    fe.add_mem_reg()
    fe.setup_ring(0, 16, enable=False)
    ring = conn.vrings[0]
    assert ring.started and not ring.enabled
    addr = _rng_request(fe)
    assert conn.process_ring(0) == (False, None)
    assert not fe.rings[0].queue.has_used(fe.memory)
    fe.request(R.SET_VRING_ENABLE, VringState(0, 1).pack())
    assert conn.process_ring(0) == (True, None)
    [(token, written)] = fe.rings[0].queue.get_bufs(fe.memory)
    assert token == addr and written == 32 and fe.memory.read(addr, 32) != bytes(32)


def test_without_protocol_features_rings_start_enabled(rng):
    fe, conn = rng
    features = fe.get_u64(R.GET_FEATURES) & ~PROTO
    fe.request(R.SET_FEATURES, U64(features).pack())
    fe.set_mem_table()
    fe.setup_ring(0, 16)
    assert conn.vrings[0].enabled
    _rng_request(fe)
    assert conn.process_ring(0)[0]
    # and SET_VRING_ENABLE is not allowed then
    fe.request(R.SET_VRING_ENABLE, VringState(0, 0).pack())
    assert isinstance(rejections(fe)[-1].error, E.NotNegotiated)


def test_get_vring_base_stops_the_ring_and_returns_next_avail(rng):
    fe, conn = rng
    fe.start(size=16)
    for _ in range(3):
        _rng_request(fe)
    conn.process_ring(0)
    assert fe.get_vring_base(0) == 3
    assert not conn.vrings[0].started and conn.vrings[0].kick_fd == -1
    _rng_request(fe)
    assert conn.process_ring(0) == (False, None)  # stopped: untouched
    _restart_at(fe, conn, 3)  # where the front-end says
    assert conn.vrings[0].started and conn.process_ring(0)[0]
    assert len(fe.rings[0].queue.get_bufs(fe.memory)) == 4


def _served_then_stopped(fe, conn, count: int) -> None:
    """``count`` requests made available and answered in rounds of 4 (the driver taking each
    round's buffers back), then the ring stopped: its used idx at ``count``."""
    for _ in range(count // 4):
        for _ in range(4):
            _rng_request(fe)
        conn.process_ring(0)
        assert len(fe.rings[0].queue.get_bufs(fe.memory)) == 4
    assert fe.get_vring_base(0) == count


def test_a_lost_base_resumes_at_the_used_idx_on_a_device_that_completes_in_order(rng, caplog):
    """DPDK's virtio-user, reconnecting, sends base 0 for a split ring it kept driving: the avail
    idx is then more than the queue size ahead of the base, and rng (completes_in_order) has
    consumed exactly what is before the used idx: the ring resumes there instead of breaking."""
    fe, conn = rng
    fe.start(size=16)
    _served_then_stopped(fe, conn, 20)
    for _ in range(3):  # made available while no back-end served the ring
        _rng_request(fe)
    with caplog.at_level(logging.WARNING):
        _restart_at(fe, conn, 0)
    assert conn.vrings[0].started and conn.device.queues[0].next_avail == 20
    assert "resuming at the used idx 20" in caplog.text
    notify, fault = conn.process_ring(0)
    assert notify and fault is None
    assert len(fe.rings[0].queue.get_bufs(fe.memory)) == 3  # the three, each once
    assert fe.get_vring_base(0) == 23


@pytest.mark.parametrize("base, pending, why", [
    (16, 3, "a base the ring can be served from is kept, though the used idx says 20"),
    (0, 0, "nothing pending: the avail idx is still within reach of the base"),
])
def test_a_base_the_ring_can_be_served_from_is_kept(rng, base, pending, why):
    fe, conn = rng
    fe.start(size=16)
    _served_then_stopped(fe, conn, 20 if pending else 12)
    for _ in range(pending):
        _rng_request(fe)
    _restart_at(fe, conn, base)
    assert conn.device.queues[0].next_avail == base, why


def _ring_indexes(fe, avail: int, used: int) -> None:
    """Write ring 0's avail idx and used idx in guest memory (a driver's and a back-end's past)."""
    ring = fe.rings[0].queue
    ring._bind(fe.memory)
    ring._avail16[1], ring._used16[1] = avail, used


def test_a_lost_base_breaks_a_ring_whose_used_idx_is_no_position_either(rng):
    """Neither the base nor the used idx within the queue size of the avail idx: the ring breaks
    at its first look, as before, with the driver's fault."""
    fe, conn = rng
    fe.start(size=16)
    fe.get_vring_base(0)
    _ring_indexes(fe, avail=60, used=20)
    _restart_at(fe, conn, 0)
    assert conn.device.queues[0].next_avail == 0
    notify, fault = conn.process_ring(0)
    assert fault is not None and "ahead" in fault


def test_a_lost_base_is_kept_on_a_device_that_completes_out_of_order(blk):
    """blk returns chains as the kernel finishes them: its used idx does not say which chains it
    consumed, so a base it cannot be served from is kept (the ring then breaks as before)."""
    fe, conn = blk
    fe.start(size=16)
    assert not conn.device.completes_in_order
    fe.get_vring_base(0)
    _ring_indexes(fe, avail=30, used=20)
    _restart_at(fe, conn, 0)
    assert conn.device.queues[0].next_avail == 0


def test_ring_setup_checks(rng_any_fd):
    fe, conn = rng_any_fd
    fe.negotiate()
    fe.request(R.SET_VRING_NUM, VringState(0, 100).pack())
    fe.request(R.SET_VRING_NUM, VringState(0, 512).pack())  # above the device's maximum
    fe.request(R.SET_VRING_ADDR, VringAddr(0, 0, 0x1000, 0x3000, 0x2000, 0).pack())  # no memory yet
    fe.add_mem_reg()
    uva = fe.region().userspace_addr
    fe.request(R.SET_VRING_ADDR, VringAddr(0, 0, uva - 0x10000, uva, uva, 0).pack())  # outside
    fe.request(R.SET_VRING_ADDR, VringAddr(0, 0, uva + 8, uva + 0x1000, uva + 0x800, 0).pack())  # misaligned
    fe.request(R.SET_VRING_ADDR, VringAddr(0, 1, uva, uva + 0x1000, uva + 0x800, 0).pack())  # LOG flag
    fe.request(R.SET_VRING_BASE, VringState(0, 1 << 16).pack())
    kinds = [type(r.error) for r in rejections(fe)]
    assert kinds == [E.InvalidValue, E.InvalidValue, E.BadRingAddress, E.BadRingAddress,
                     E.BadRingAddress, E.InvalidValue, E.InvalidValue]
    assert conn.vrings[0].addr is None
    # A kick for a ring with no addresses does not start it; its fd is closed.
    r, w = sent_pipe()
    fe.request(R.SET_VRING_KICK, U64(0).pack(), [r])
    os.close(r)
    assert isinstance(rejections(fe)[-1].error, E.WrongState) and pipe_end_closed(w)
    os.close(w)


def test_started_ring_refuses_num_and_base(rng):
    fe, conn = rng
    fe.start(size=16)
    fe.request(R.SET_VRING_NUM, VringState(0, 32).pack())
    fe.request(R.SET_VRING_BASE, VringState(0, 5).pack())
    assert [type(r.error) for r in rejections(fe)] == [E.WrongState, E.WrongState]


def test_polling_mode_kick_without_fd(rng):
    fe, conn = rng
    fe.negotiate()
    fe.add_mem_reg()
    ring = fe.setup_ring(0, 16)
    fe.request(R.SET_VRING_KICK, U64(0 | VRING_NOFD_MASK).pack())
    assert conn.vrings[0].polling and conn.vrings[0].kick_fd == -1 and conn.vrings[0].started
    _rng_request(fe)
    assert conn.process_ring(0)[0]
    assert ring.queue.get_bufs(fe.memory)


def test_memory_change_rebinds_started_rings(rng):
    fe, conn = rng
    fe.start(size=16)
    r = fe.region()
    fe.ack(R.REM_MEM_REG, SingleMemoryRegion.of(r).pack())
    assert not conn.vrings[0].active and conn.vrings[0].started
    _rng_request(fe)
    assert conn.process_ring(0) == (False, None)
    fe.add_mem_reg()
    assert conn.vrings[0].active
    assert conn.process_ring(0)[0]


def test_a_broken_ring_reports_its_fault(rng):
    fe, conn = rng
    fe.start(size=16)
    q = fe.rings[0].queue
    q.add(fe.memory, [], [(0x10, 16)], token=1)  # a buffer outside guest memory
    notify, fault = conn.process_ring(0)
    assert fault and "guest memory" in fault and not conn.vrings[0].active


# --- config, status, reset ------------------------------------------------------------------------


def test_get_config_reads_the_blk_config(blk):
    fe, conn = blk
    fe.negotiate()
    capacity = struct.unpack("<Q", fe.get_config(0, 8))[0]
    assert capacity == (1 << 20) // 512
    data = fe.get_config(0, 60)
    assert len(data) == 60
    assert fe.get_config(250, 10) == b""  # past the 256-byte limit: the empty error reply


def test_set_config_writes_writeback(blk):
    fe, conn = blk
    fe.negotiate()
    from pyvirtio.spec.blk import BlkConfigOffset
    fe.request(R.SET_CONFIG, ConfigSpace(BlkConfigOffset.WRITEBACK, 1, 0, b"\0").pack())
    assert conn.device.writeback is False
    fe.request(R.SET_CONFIG, ConfigSpace(0, 1, 7, b"\0").pack())
    assert isinstance(rejections(fe)[-1].error, E.InvalidValue)


def test_status_is_kept_and_features_ok_refused_without_version_1(rng):
    fe, conn = rng
    fe.negotiate()
    fe.request(R.SET_STATUS, U64(DeviceStatus.FEATURES_OK).pack())
    assert fe.get_u64(R.GET_STATUS) == DeviceStatus.FEATURES_OK
    fe.request(R.SET_STATUS, U64(0).pack())
    features = fe.get_u64(R.GET_FEATURES) & ~(1 << Feature.VERSION_1)
    fe.request(R.SET_FEATURES, U64(features).pack())
    fe.request(R.SET_STATUS, U64(DeviceStatus.FEATURES_OK | 3).pack())
    assert fe.get_u64(R.GET_STATUS) == 3


def test_status_zero_does_not_lose_ring_indices(rng):
    fe, conn = rng
    fe.start(size=16)
    _rng_request(fe)
    conn.process_ring(0)
    fe.request(R.SET_STATUS, U64(0).pack())  # QEMU sends this before GET_VRING_BASE
    assert fe.get_vring_base(0) == 1


def test_reset_device_stops_rings_and_closes_their_fds(rng):
    fe, conn = rng
    fe.start(size=16)
    assert conn.vrings[0].kick_fd >= 0
    fe.request(R.RESET_DEVICE)
    ring = conn.vrings[0]
    assert not ring.started and not ring.enabled and ring.kick_fd == ring.call_fd == -1
    assert conn.acked_features is None and conn.memory.regions  # memory stays


def test_close_unmaps_and_resets(rng):
    fe, conn = rng
    fe.start(size=16)
    conn.close()
    assert conn.memory.regions == () and conn.vrings[0].kick_fd == -1
    with pytest.raises(E.ConnectionBroken):
        conn.receive(encode(R.GET_FEATURES))


def test_blk_requests_through_the_connection(blk):
    fe, conn = blk
    fe.start(size=32)
    q = fe.rings[0].queue
    hdr = fe.buffer(struct.pack("<IIQ", 1, 0, 8))  # OUT at sector 8
    data = fe.buffer(b"pyvirtio" * 64)
    status = fe.buffer(1)
    q.add(fe.memory, [hdr, data], [status], token="w")
    notify, fault = conn.process_ring(0)  # done at once, or in flight in the kernel
    assert fault is None
    deadline = time.monotonic() + 10
    while not notify and time.monotonic() < deadline:  # what the worker does when they fire
        assert conn.host_fds(0), "the ring's worker must watch the completions"
        notify = 0 in conn.host_ready(0, [])
    assert notify
    assert q.get_bufs(fe.memory) == [("w", 1)]
    assert fe.memory.read(status[0], 1) == b"\0"
    with open(conn.device.path, "rb") as f:
        f.seek(8 * 512)
        assert f.read(512) == b"pyvirtio" * 64


def test_a_broken_ring_set_up_again_after_a_stop_works(blk):
    """Firmware (SeaBIOS) can leave a device running over a ring in memory the guest kernel then
    reuses: the ring reads as garbage and breaks.  The kernel resets the device; the front-end
    stops the ring and sets it up again; from then on it must work."""
    fe, conn = blk
    fe.start(size=32)
    q = fe.rings[0].queue
    fe.memory.write(q.layout.avail_ring + 2, (0x6BBF).to_bytes(2, "little"))  # avail idx: garbage
    notify, fault = conn.process_ring(0)
    assert fault and "ahead" in fault and conn.vrings[0].queue.broken
    fe.get_vring_base(0)  # the front-end stops the ring (a device reset) ...
    fe.setup_ring(0, 32)  # ... and the new driver sets it up again
    q = fe.rings[0].queue
    status = fe.buffer(1)
    q.add(fe.memory, [fe.buffer(struct.pack("<IIQ", 8, 0, 0))], [fe.buffer(20), status], token="id")
    notify, fault = conn.process_ring(0)
    assert fault is None and notify
    assert q.get_bufs(fe.memory) == [("id", 21)]
