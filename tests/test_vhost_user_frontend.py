"""The sans-I/O vhost-user front-end: pair tests against pyvirtio's back-end core (no sockets),
and every way a back-end's reply can be wrong."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirtio.devices.rng import RngDevice
from pyvirtio.errors import PeerProtocolError, Scope
from pyvirtio.virtq import SplitDriverQueue, SplitRingLayout
from pyvirtio.vhost_user.backend.connection import BackendConnection, Reply
from pyvirtio.vhost_user.errors import VhostUserError
from pyvirtio.vhost_user.frontend.connection import (DEFAULT_FRONTEND_PROTOCOL_FEATURES, PROTOCOL_FEATURES_BIT,
                                          Expect, FrontendConnection)
from pyvirtio.vhost_user.frontend.errors import (BackendError, BadReplyHeader, BadReplySize,
                                                 BadReplyValue, ConfigReadFailed, FrontendBroken,
                                                 FrontendUsageError, RequestNacked, UnexpectedFds,
                                                 UnsolicitedReply, WrongReplyType)
from pyvirtio.vhost_user.protocol import FrontendReq as R
from pyvirtio.vhost_user.protocol import HeaderFlag, ProtocolFeature as PF
from pyvirtio.vhost_user.frontend.transport import memfd_memory, memory_region
from pyvirtio.vhost_user.wire import U64, VringState, encode, encode_reply

EXAMPLES = int(os.environ.get("PYVIRTIO_HYPOTHESIS_EXAMPLES", "200"))


# --- the pair harness ----------------------------------------------------------------------------


class Pair:
    """A front-end core wired to a back-end core in memory; fds are duplicated as SCM_RIGHTS would."""

    def __init__(self, device=None, **fe_kw):
        self.device = device or RngDevice()
        self.be = BackendConnection(self.device, name="pair")
        self.fe = FrontendConnection(name="pair", **fe_kw)

    def __call__(self, out):
        outputs = self.be.receive(out.data, [os.dup(fd) for fd in out.fds])
        for o in outputs:
            if isinstance(o, Reply):
                self.fe.receive(o.data, list(o.fds))
        if out.expect is Expect.NONE:
            return None
        done = self.fe.next_result()
        assert done is not None and done.out is out
        return done.value

    def handshake(self):
        self(self.fe.get_features())
        self(self.fe.get_protocol_features())
        self(self.fe.set_protocol_features())
        self(self.fe.set_owner())

    def close(self):
        self.be.close()


@pytest.fixture
def pair():
    p = Pair()
    yield p
    p.close()


def test_handshake_negotiates_what_both_want(pair):
    pair.handshake()
    fe = pair.fe
    assert fe.backend_features & PROTOCOL_FEATURES_BIT
    assert fe.protocol_features == fe.backend_protocol_features & DEFAULT_FRONTEND_PROTOCOL_FEATURES
    assert fe.has_protocol_feature(PF.REPLY_ACK)
    assert pair.be.owner and pair.be.acked_protocol_features == fe.protocol_features
    assert pair(fe.get_queue_num()) == 1
    assert fe.queue_num == 1


def test_requests_ask_for_an_ack_only_once_reply_ack_is_negotiated(pair):
    fe = pair.fe
    pair(fe.get_features())
    assert fe.set_owner().expect is Expect.NONE  # REPLY_ACK not negotiated yet
    pair(fe.get_protocol_features())
    out = fe.set_protocol_features()
    assert out.expect is Expect.NONE  # never acked: it negotiates REPLY_ACK itself
    pair(out)
    owner = fe.set_owner()
    assert owner.expect is Expect.ACK and owner.data[4] & HeaderFlag.NEED_REPLY
    assert pair(owner) == 0


def test_full_ring_lifecycle_with_traffic_and_vring_base(pair):
    pair.handshake()
    fe, mem = pair.fe, memfd_memory([1 << 20, 1 << 20])
    try:
        pair(fe.set_features(fe.backend_features))
        regions = mem.regions
        pair(fe.set_mem_table([memory_region(r) for r in regions], [r.fd for r in regions]))
        assert len(pair.be.memory.regions) == 2
        layout = SplitRingLayout.contiguous(regions[1].gpa, 16)
        vq = SplitDriverQueue(layout)
        vq.setup(mem)
        uva = mem.gpa_to_uva
        kick, call = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
        pair(fe.set_vring_num(0, 16))
        pair(fe.set_vring_base(0, 0))
        pair(fe.set_vring_addr(0, uva(layout.desc_table), uva(layout.used_ring), uva(layout.avail_ring)))
        pair(fe.set_vring_call(0, call))
        pair(fe.set_vring_kick(0, kick))
        pair(fe.set_vring_enable(0, True))
        ring = fe.rings[0]
        assert ring.started and ring.enabled and ring.num == 16
        buf = regions[0].gpa + 4096
        for token in range(1, 4):
            vq.add(mem, [], [(buf, 32)], token)
        pair.be.process_ring(0)
        assert [t for t, _ in vq.get_bufs(mem)] == [1, 2, 3]
        assert pair(fe.get_vring_base(0)) == 3
        assert not fe.rings[0].started and fe.rings[0].base == 3
        os.close(kick)
        os.close(call)
    finally:
        mem.close()


def test_add_mem_reg_with_configure_mem_slots(pair):
    pair.handshake()
    fe, mem = pair.fe, memfd_memory([1 << 20] * 3)
    try:
        assert pair(fe.get_max_mem_slots()) >= 3
        for r in mem.regions:
            pair(fe.add_mem_reg(memory_region(r), r.fd))
        assert len(pair.be.memory.regions) == 3
        pair(fe.rem_mem_reg(memory_region(mem.regions[2])))
        assert len(pair.be.memory.regions) == 2 and len(fe.regions) == 2
    finally:
        mem.close()


def test_nack_fails_the_request_but_not_the_connection(pair):
    pair.handshake()
    with pytest.raises(RequestNacked) as info:
        pair(pair.fe.set_vring_num(0, 65536))
    assert info.value.scope is Scope.REQUEST and info.value.value == 1
    assert pair(pair.fe.get_features())  # still in step


def test_status_and_config(tmp_path):
    from pyvirtio.devices.blk import BlkDevice
    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 20))
    p = Pair(BlkDevice(str(img)))
    try:
        p.handshake()
        fe = p.fe
        p(fe.set_status(3))
        assert p(fe.get_status()) == 3
        cap = p(fe.get_config(0, 8))
        assert int.from_bytes(cap, "little") == 2048
        with pytest.raises(ConfigReadFailed):
            p(fe.get_config(250, 16))  # past the back-end's limit: an empty reply
        assert p(fe.get_config(8, 4)) == p(fe.get_config(0, 12))[8:]
    finally:
        p.close()


def test_reset_device_forgets_rings_and_features(pair):
    pair.handshake()
    fe = pair.fe
    pair(fe.set_features(fe.backend_features))
    pair(fe.set_vring_num(0, 8))
    pair(fe.reset_device())
    assert fe.acked_features is None and fe.rings[0].num is None


# --- gating: the front-end keeps the rules it can keep -------------------------------------------


def test_gated_requests_need_their_protocol_feature():
    fe = FrontendConnection()
    with pytest.raises(FrontendUsageError):
        fe.get_protocol_features()  # GET_FEATURES first: PROTOCOL_FEATURES not known offered
    for build in (fe.get_queue_num, fe.get_status, fe.reset_device, fe.get_max_mem_slots,
                  lambda: fe.get_config(0, 4), lambda: fe.set_status(1)):
        with pytest.raises(FrontendUsageError):
            build()
    with pytest.raises(FrontendUsageError):
        fe.set_mem_table([], [])
    with pytest.raises(FrontendUsageError):
        fe.ring(256)


def test_set_vring_enable_needs_protocol_features_offered(pair):
    pair.fe.backend_features = 1 << 32
    with pytest.raises(FrontendUsageError):
        pair.fe.set_vring_enable(0, True)


# --- every way a reply can be wrong --------------------------------------------------------------


def _waiting(request=R.GET_FEATURES) -> FrontendConnection:
    fe = FrontendConnection()
    out = {R.GET_FEATURES: fe.get_features, R.GET_VRING_BASE: lambda: fe.get_vring_base(1)}[request]()
    assert fe.awaiting == 1 and out.expect is Expect.BODY
    return fe


def _broken_after(fe: FrontendConnection) -> None:
    with pytest.raises(FrontendBroken):
        fe.get_features()
    with pytest.raises(FrontendBroken):
        fe.receive(encode_reply(R.GET_FEATURES, U64(1).pack()))


@pytest.mark.parametrize("data, error", [
    (encode_reply(R.GET_PROTOCOL_FEATURES, U64(1).pack()), WrongReplyType),
    (encode_reply(R.GET_FEATURES, b"\0" * 4), BadReplySize),
    (encode_reply(R.GET_FEATURES, b"\0" * 16), BadReplySize),
    (encode(R.GET_FEATURES, U64(1).pack()), BadReplyHeader),  # REPLY flag missing
    (encode(R.GET_FEATURES, U64(1).pack(), flags=0x2 | HeaderFlag.REPLY), BadReplyHeader),  # version 2
    (encode(R.GET_FEATURES, U64(1).pack(), flags=0x1 | HeaderFlag.REPLY | 0x100), BadReplyHeader),
    (encode_reply(R.GET_FEATURES, b"x" * 5000), BadReplyHeader),  # past any payload limit
])
def test_bad_replies_raise_typed_errors_and_break_the_connection(data, error):
    fe = _waiting()
    with pytest.raises(error) as info:
        fe.receive(data)
    assert info.value.scope is Scope.CONNECTION
    assert isinstance(info.value, PeerProtocolError) and isinstance(info.value, VhostUserError)
    _broken_after(fe)


def test_reply_with_fds_is_refused_and_the_fds_closed():
    fe = _waiting()
    fd = os.eventfd(0)
    with pytest.raises(UnexpectedFds):
        fe.receive(encode_reply(R.GET_FEATURES, U64(1).pack()), [fd])
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the core


def test_unsolicited_message():
    fe = FrontendConnection()
    with pytest.raises(UnsolicitedReply):
        fe.receive(encode_reply(R.GET_FEATURES, U64(1).pack()))


def test_vring_base_for_another_ring():
    fe = _waiting(R.GET_VRING_BASE)
    with pytest.raises(BadReplyValue):
        fe.receive(encode_reply(R.GET_VRING_BASE, VringState(2, 7).pack()))


def test_config_reply_for_another_range_and_empty_reply():
    fe = FrontendConnection()
    fe.protocol_features = 1 << PF.CONFIG
    fe.get_config(0, 4)
    fe.receive(encode_reply(R.GET_CONFIG))
    with pytest.raises(ConfigReadFailed):
        fe.next_result()
    fe.get_config(0, 4)  # the connection goes on after an orderly refusal
    from pyvirtio.vhost_user.wire import ConfigSpace
    with pytest.raises(BadReplyValue):
        fe.receive(encode_reply(R.GET_CONFIG, ConfigSpace(4, 4, 0, b"abcd").pack()))


def test_reply_parsed_whole_byte_by_byte_and_with_the_next_one_behind():
    fe = FrontendConnection()
    fe.get_features()
    fe.get_features()
    data = encode_reply(R.GET_FEATURES, U64(5).pack()) + encode_reply(R.GET_FEATURES, U64(6).pack())
    for i in range(len(data)):
        fe.receive(data[i:i + 1])
    assert [fe.next_result().value, fe.next_result().value] == [5, 6]
    assert fe.next_result() is None


def test_raw_requests_reach_anything():
    fe = FrontendConnection()
    out = fe.raw(200, b"xy", flags=0x1 | HeaderFlag.NEED_REPLY, expect=Expect.ACK)
    assert out.data[:4] == (200).to_bytes(4, "little")
    fe.receive(encode_reply(200, U64(3).pack()))
    with pytest.raises(RequestNacked):
        fe.next_result()


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6),
       st.sampled_from([R.GET_FEATURES, R.GET_VRING_BASE]))
def test_arbitrary_reply_bytes_only_raise_typed_errors(chunks, request):
    """Invariant: whatever a back-end sends, the front-end raises a BackendError or nothing."""
    fe = _waiting(request)
    for chunk in chunks:
        try:
            fe.receive(chunk)
            while fe.next_result() is not None:
                pass
        except BackendError:
            break
