"""The sans-I/O vsock core (pyvirtio.vsock.core): the header codec, two cores wired together
in memory, and a hostile peer — one that never grants credit, sends to ports nobody listens on,
floods RST and REQUEST, sends bad headers and lengths.  Only typed errors come out, and what the
core keeps stays within pyvirtio.limits' bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirtio.errors import UsageError
from pyvirtio.limits import VSOCK_BUF_ALLOC
from pyvirtio.spec.vsock import VSOCK_HDR, VSOCK_HDR_SIZE, VsockOp, VsockShutdown, VsockType
from pyvirtio.vsock.core import (BOTH, CLOSE_TIMEOUT, Closed, Connected, CreditUpdate, Data,
                                 PeerShutdown, Requested, Reset, State, VsockCore)
from pyvirtio.vsock.packet import MAX_PKT_PAYLOAD, VsockPacketError, build_header, parse_header

HOST, GUEST = 2, 3


def hdr(op, *, src_port=1000, dst_port=5000, length=0, type=VsockType.STREAM, flags=0,
        buf_alloc=65536, fwd_cnt=0, src_cid=GUEST, dst_cid=HOST) -> bytes:
    return build_header(src_cid=src_cid, dst_cid=dst_cid, src_port=src_port, dst_port=dst_port,
                        op=op, length=length, type=type, flags=flags, buf_alloc=buf_alloc,
                        fwd_cnt=fwd_cnt)


def fields(raw: bytes):
    return parse_header(raw, VSOCK_HDR.unpack(raw)[4])


def drain(core):
    out = []
    while (h := core.pop_control()) is not None:
        out.append(fields(h))
    return out


def host_core(**kw):
    core = VsockCore(HOST, GUEST, **kw)
    core.listen(5000)
    return core


# --- the header codec -----------------------------------------------------------------------------


def test_header_round_trip_and_checks():
    raw = hdr(VsockOp.RW, length=10, buf_alloc=7, fwd_cnt=9)
    h = parse_header(raw, 10)
    assert (h.op, h.len, h.buf_alloc, h.fwd_cnt, h.src_cid, h.dst_port) == (VsockOp.RW, 10, 7, 9, GUEST, 5000)
    assert parse_header(raw + b"trailing", 10) == h  # only the header is read
    bad = [
        (raw[:43], 10, "shorter"),
        (raw, 11, "len 10"),
        (hdr(VsockOp.REQUEST, length=4), 4, "carries"),
        (hdr(0), 0, "unknown op"),
        (hdr(8), 0, "unknown op"),
        (hdr(VsockOp.RW, type=3), 0, "socket type"),
        (hdr(VsockOp.RW, length=MAX_PKT_PAYLOAD + 1), MAX_PKT_PAYLOAD + 1, "larger"),
        (hdr(VsockOp.RW, src_cid=1 << 32), 0, "32 bits"),
    ]
    for raw_bad, n, words in bad:
        with pytest.raises(VsockPacketError, match=words):
            parse_header(raw_bad, n)


@given(st.binary(max_size=64), st.integers(0, 1 << 20))
def test_header_parse_raises_only_typed_errors(raw, n):
    try:
        parse_header(raw, n)
    except VsockPacketError:
        pass


# --- two cores in memory --------------------------------------------------------------------------


def wire(src, dst):
    """Deliver every control packet of ``src`` to ``dst``; the events."""
    events = []
    while (h := src.pop_control()) is not None:
        ev = dst.receive(h, 0)
        if ev is not None:
            events.append(ev)
    return events


def test_pair_connect_send_credit_close():
    host, guest = host_core(buf_alloc=8192), VsockCore(GUEST, buf_alloc=8192)
    conn = guest.connect(HOST, 5000)
    (req,) = wire(guest, host)
    assert isinstance(req, Requested) and req.conn.peer_port == conn.local_port
    host.accept(req.conn)
    (ok,) = wire(host, guest)
    assert isinstance(ok, Connected) and conn.state is State.CONNECTED
    hc = req.conn
    # The guest may send what the host advertised, no more.
    assert guest.send_window(conn) == 8192
    sent = 0
    while (w := guest.send_window(conn)):
        n = min(w, 3000)
        ev = host.receive(guest.data_header(conn, n), n)
        assert isinstance(ev, Data) and ev.length == n
        sent += n
    assert sent == 8192 and hc.rx_pending == 8192
    with pytest.raises(UsageError):
        guest.data_header(conn, 1)
    # The host passes bytes on: a CREDIT_UPDATE goes back once the guest's view ran low.
    host.consumed(hc, 8192)
    (credit,) = wire(host, guest)
    assert isinstance(credit, CreditUpdate) and guest.send_window(conn) == 8192
    # Orderly close: SHUTDOWN both from the guest, RST back from the host, Closed on both sides.
    guest.close(conn, now=100.0)
    assert conn.state is State.CLOSING
    (closed_host,) = wire(guest, host)
    assert isinstance(closed_host, Closed) and not host.conns
    (closed_guest,) = wire(host, guest)
    assert isinstance(closed_guest, Closed) and not guest.conns


def test_half_close_then_close_after_the_bytes_are_passed_on():
    host, guest = host_core(), VsockCore(GUEST)
    conn = guest.connect(HOST, 5000)
    (req,) = wire(guest, host)
    host.accept(req.conn)
    wire(host, guest)
    host.receive(guest.data_header(conn, 100), 100)
    guest.shutdown(conn, VsockShutdown.SEND)
    (ev,) = wire(guest, host)
    assert isinstance(ev, PeerShutdown) and ev.flags == VsockShutdown.SEND
    guest.shutdown(conn, VsockShutdown.RECEIVE)
    (ev,) = wire(guest, host)
    assert isinstance(ev, PeerShutdown) and ev.flags == BOTH  # 100 bytes not passed on yet
    assert isinstance(host.consumed(req.conn, 100), Closed)  # now: RST and gone
    assert isinstance(wire(host, guest)[0], Closed)


def test_refused_and_close_timeout():
    host, guest = host_core(), VsockCore(GUEST)
    conn = guest.connect(HOST, 4242)  # nobody listens
    assert wire(guest, host) == [] and host.stats.refused == 1
    (ev,) = wire(host, guest)
    assert isinstance(ev, Reset) and ev.refused and conn.state is State.CLOSED
    conn = guest.connect(HOST, 5000)
    (req,) = wire(guest, host)
    host.accept(req.conn)
    wire(host, guest)
    guest.close(conn, now=10.0)
    drain(guest)  # the SHUTDOWN is lost: no RST ever comes
    assert guest.expire(10.0 + CLOSE_TIMEOUT - 0.1) == []
    (closed,) = guest.expire(10.0 + CLOSE_TIMEOUT)
    assert isinstance(closed, Closed) and not guest.conns
    assert [h.op for h in drain(guest)] == [VsockOp.RST]


# --- a hostile peer ------------------------------------------------------------------------------


def connected(host, port=1000, buf_alloc=65536):
    ev = host.receive(hdr(VsockOp.REQUEST, src_port=port, buf_alloc=buf_alloc), 0)
    host.accept(ev.conn)
    drain(host)
    return ev.conn


def test_a_peer_that_never_grants_credit_gets_nothing_and_one_credit_request():
    host = host_core()
    conn = connected(host, buf_alloc=0)
    assert host.send_window(conn) == 0
    host.want_credit(conn)
    host.want_credit(conn)
    assert [h.op for h in drain(host)] == [VsockOp.CREDIT_REQUEST]  # asked once
    # A fwd_cnt ahead of what we sent is no credit either (u32 arithmetic, no negative window).
    host.receive(hdr(VsockOp.CREDIT_UPDATE, buf_alloc=100, fwd_cnt=50), 0)
    assert host.send_window(conn) == 0
    host.receive(hdr(VsockOp.CREDIT_UPDATE, buf_alloc=100, fwd_cnt=0), 0)
    assert host.send_window(conn) == 100
    host.data_header(conn, 100)
    assert host.send_window(conn) == 0


def test_a_peer_that_sends_past_our_credit_is_reset():
    host = host_core(buf_alloc=4096)
    conn = connected(host)
    assert isinstance(host.receive(hdr(VsockOp.RW, length=4096), 4096), Data)
    ev = host.receive(hdr(VsockOp.RW, length=1), 1)
    assert isinstance(ev, Reset) and "credit" in ev.why and conn.state is State.CLOSED
    assert host.stats.credit_violations == 1
    assert [h.op for h in drain(host)] == [VsockOp.RST]


def test_unknown_ports_rst_floods_and_request_floods_stay_bounded():
    host = host_core(max_connections=8, max_pending_rst=16)
    for i in range(1000):  # RST to nothing: never answered
        assert host.receive(hdr(VsockOp.RST, src_port=i), 0) is None
    assert not host.control_pending
    for i in range(1000):  # RW and REQUEST to ports nobody listens on: RST, bounded
        host.receive(hdr(VsockOp.RW, src_port=i, dst_port=7), 0)
        host.receive(hdr(VsockOp.REQUEST, src_port=i, dst_port=7), 0)
    assert len(drain(host)) == 16 and host.stats.rst_dropped == 2000 - 16
    for i in range(100):  # more REQUESTs than connections allowed
        host.receive(hdr(VsockOp.REQUEST, src_port=i), 0)
    assert len(host.conns) == 8 and host.stats.refused > 0
    # Another CID, another type, a packet for another host CID: dropped or RST, never raised.
    with pytest.raises(VsockPacketError):
        host.receive(hdr(VsockOp.REQUEST, src_cid=99), 0)
    assert host.receive(hdr(VsockOp.REQUEST, type=VsockType.SEQPACKET, src_port=5555), 0) is None
    assert host.receive(hdr(VsockOp.REQUEST, dst_cid=77, src_port=5556), 0) is None


def test_protocol_breaks_on_a_connection_reset_it():
    host = host_core()
    for op in (VsockOp.REQUEST, VsockOp.RESPONSE):
        conn = connected(host)
        ev = host.receive(hdr(op), 0)
        assert isinstance(ev, Reset) and conn.state is State.CLOSED
        drain(host)
    conn = connected(host)
    host.receive(hdr(VsockOp.SHUTDOWN, flags=VsockShutdown.SEND), 0)
    assert isinstance(host.receive(hdr(VsockOp.RW, length=5), 5), Reset)  # data after SEND shutdown


OPS = st.sampled_from([int(op) for op in VsockOp])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(OPS, st.integers(0, 5), st.integers(0, 3), st.integers(0, 70000),
                          st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 3),
                          st.booleans()), max_size=60))
def test_any_packet_sequence_gives_typed_errors_and_bounded_state(packets):
    host = host_core(buf_alloc=8192, max_connections=4, max_pending_rst=8)
    for op, src_port, dst, length, buf_alloc, fwd_cnt, flags, consume in packets:
        raw = hdr(op, src_port=src_port, dst_port=5000 + dst, length=length, buf_alloc=buf_alloc,
                  fwd_cnt=fwd_cnt, flags=flags)
        try:
            ev = host.receive(raw, length if consume else length // 2)
        except VsockPacketError:
            continue
        if isinstance(ev, Requested):
            host.accept(ev.conn) if consume else host.reset(ev.conn)
        elif isinstance(ev, Data) and consume:
            host.consumed(ev.conn, ev.conn.rx_pending)
        for conn in list(host.conns.values()):
            w = host.send_window(conn)
            assert 0 <= w <= MAX_PKT_PAYLOAD
            if w:
                host.data_header(conn, w)
        assert len(host.conns) <= 4 and len(host._rst) <= 8
        assert all(c.rx_pending <= c.buf_alloc for c in host.conns.values())
        if consume:
            drain(host)
    assert len(drain(host)) <= 8 + 4 * 5


def test_api_misuse_is_a_usage_error():
    host = host_core()
    with pytest.raises(UsageError):
        host.connect(GUEST, 1 << 32)
    conn = host.connect(GUEST, 80)
    with pytest.raises(UsageError):
        host.accept(conn)
    with pytest.raises(UsageError):
        host.consumed(conn, 1)
    assert VSOCK_HDR_SIZE == 44


def test_seqpacket_only_when_negotiated_and_messages_keep_their_ends():
    from pyvirtio.spec.vsock import VsockSeqFlag
    host = host_core()
    assert host.receive(hdr(VsockOp.REQUEST, type=VsockType.SEQPACKET), 0) is None  # not negotiated
    assert [h.op for h in drain(host)] == [VsockOp.RST]
    with pytest.raises(UsageError):
        host.connect(GUEST, 80, type=VsockType.SEQPACKET)
    host.types = frozenset({VsockType.STREAM, VsockType.SEQPACKET})
    guest = VsockCore(GUEST, buf_alloc=8192)
    guest.types = host.types
    conn = guest.connect(HOST, 5000, type=VsockType.SEQPACKET)
    (req,) = wire(guest, host)
    assert req.conn.type == VsockType.SEQPACKET
    host.accept(req.conn)
    wire(host, guest)
    raw = guest.data_header(conn, 10, VsockSeqFlag.EOM)
    assert fields(raw).type == VsockType.SEQPACKET and fields(raw).flags == VsockSeqFlag.EOM
    ev = host.receive(raw, 10)
    assert isinstance(ev, Data) and ev.flags == VsockSeqFlag.EOM
    assert guest.credit(conn) == VSOCK_BUF_ALLOC - 10  # not capped at one packet, unlike the window
    # A STREAM packet on a SEQPACKET connection resets it.
    ev = host.receive(hdr(VsockOp.RW, src_port=conn.local_port, length=1), 1)
    assert isinstance(ev, Reset) and "type" in ev.why
