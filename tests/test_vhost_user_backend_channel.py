"""The vhost-user back-end request channel (VHOST_USER_PROTOCOL_F_BACKEND_REQ), both sides:
the back-end core's SET_BACKEND_REQ_FD and CONFIG_CHANGE_MSG bytes, the daemon's writes that never
wait, the front-end core's checks of hostile back-end requests, and config changes (blk resize,
net link, console size) reaching pyvirtio's drivers over vhost-user."""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time

import pytest

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.drivers.blk import BlkDriver
from pyvirtio.errors import UsageError
from pyvirtio.interrupt import CONFIG_CHANGE
from pyvirtio.spec.ids import DeviceType
from pyvirtio.vhost_user.backend.connection import DEFAULT_PROTOCOL_FEATURES, BackendConnection, Rejected
from pyvirtio.vhost_user.frontend.channel import (ChannelReply, ConfigChanged, FrontendChannel,
                                                  RequestRefused)
from pyvirtio.vhost_user.frontend.errors import BackendChannelLost
from pyvirtio.vhost_user.protocol import VHOST_USER_F_PROTOCOL_FEATURES, BackendReq, HeaderFlag
from pyvirtio.vhost_user.protocol import FrontendReq as R
from pyvirtio.vhost_user.protocol import ProtocolFeature as PF
from pyvirtio.vhost_user.backend.server import VhostUserServer
from pyvirtio.vhost_user.testing import TestFrontend
from pyvirtio.vhost_user.frontend.transport import VhostUserTransport
from pyvirtio.vhost_user.wire import U64, encode, encode_reply

pytestmark = pytest.mark.timeout(120)

PROTO = 1 << VHOST_USER_F_PROTOCOL_FEATURES
CHANNEL = (1 << PF.BACKEND_REQ) | (1 << PF.CONFIG) | (1 << PF.REPLY_ACK)
#: CONFIG_CHANGE_MSG as it goes on the wire: request 2, version 1, no NEED_REPLY, no payload.
CONFIG_CHANGE_BYTES = struct.pack("=III", 2, 1, 0)


def pipe_end_closed(w: int) -> bool:
    os.set_blocking(w, False)
    try:
        os.write(w, b"x")
        return False
    except BrokenPipeError:
        return True


def peer_closed(sock: socket.socket) -> bool:
    """Whether every copy of the other end of ``sock`` is closed (EOF readable)."""
    sock.settimeout(2)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (socket.timeout, BlockingIOError):
        return False


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(4 << 20)
    return str(path)


@pytest.fixture
def paired():
    """``paired(device, protocol_features) -> (TestFrontend, BackendConnection)``, negotiated."""
    made = []

    def _make(device=None, protocol_features=CHANNEL):
        conn = BackendConnection(device or RngDevice(), name="test")
        fe = TestFrontend.pair(conn)
        fe.get_u64(R.GET_FEATURES)
        fe.request(R.SET_FEATURES, U64(PROTO | (1 << 32)).pack())
        fe.request(R.SET_PROTOCOL_FEATURES, U64(protocol_features).pack())
        fe.protocol_features = protocol_features
        made.append(fe)
        return fe, conn
    yield _make
    for fe in made:
        fe.close()


# --- the back-end core ---------------------------------------------------------------------------


def test_backend_offers_the_request_channel_but_not_fd_passing():
    assert DEFAULT_PROTOCOL_FEATURES & (1 << PF.BACKEND_REQ)
    assert not DEFAULT_PROTOCOL_FEATURES & (1 << PF.BACKEND_SEND_FD)


def test_set_backend_req_fd_takes_a_unix_stream_socket_and_replaces_the_old_one(paired):
    fe, conn = paired()
    assert conn.config_change_message() is None  # no channel yet
    ours1, theirs1 = socket.socketpair()
    assert fe.ack(R.SET_BACKEND_REQ_FD, fds=[theirs1.fileno()]) == 0
    theirs1.close()
    assert conn.backend_fd >= 0
    assert conn.config_change_message() == CONFIG_CHANGE_BYTES
    ours2, theirs2 = socket.socketpair()
    assert fe.ack(R.SET_BACKEND_REQ_FD, fds=[theirs2.fileno()]) == 0
    theirs2.close()
    assert peer_closed(ours1)  # the first channel was closed when the second came
    conn.close()
    assert conn.backend_fd == -1 and peer_closed(ours2)  # closed at hang-up
    assert conn.config_change_message() is None
    ours1.close()
    ours2.close()


@pytest.mark.parametrize("kind", ["none", "two", "pipe", "datagram", "inet"])
def test_set_backend_req_fd_refuses_anything_but_one_unix_stream_socket(paired, kind, tmp_path):
    fe, conn = paired()
    keep = []
    r = w = -1
    if kind == "two":
        a, b = socket.socketpair()
        c, d = socket.socketpair()
        keep += [a, b, c, d]
        fds = [b.fileno(), d.fileno()]
    elif kind == "pipe":
        r, w = os.pipe()
        fds = [r]
    elif kind == "datagram":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        keep += [a, b]
        fds = [b.fileno()]
    elif kind == "inet":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        keep.append(s)
        fds = [s.fileno()]
    else:
        fds = []
    assert fe.ack(R.SET_BACKEND_REQ_FD, fds=fds) == 1
    assert isinstance(fe.ch.outputs[-2], Rejected)
    assert conn.backend_fd == -1 and conn.config_change_message() is None
    if kind == "pipe":
        os.close(r)
        assert pipe_end_closed(w)  # the refused fd was closed at once
        os.close(w)
    for s in keep:
        s.close()


def test_set_backend_req_fd_needs_the_protocol_feature(paired):
    fe, conn = paired(protocol_features=(1 << PF.REPLY_ACK) | (1 << PF.CONFIG))
    a, b = socket.socketpair()
    assert fe.ack(R.SET_BACKEND_REQ_FD, fds=[b.fileno()]) == 1
    assert conn.backend_fd == -1
    a.close()
    b.close()


def test_config_change_needs_config_negotiated(paired):
    fe, conn = paired(protocol_features=(1 << PF.BACKEND_REQ) | (1 << PF.REPLY_ACK))
    a, b = socket.socketpair()
    assert fe.ack(R.SET_BACKEND_REQ_FD, fds=[b.fileno()]) == 0
    assert conn.backend_fd >= 0 and conn.config_change_message() is None
    a.close()
    b.close()


def test_backend_request_payload_sizes_are_checked(paired):
    fe, conn = paired()
    with pytest.raises(UsageError):
        conn.backend_request(BackendReq.CONFIG_CHANGE_MSG, b"x")


# --- the daemon: writes from any thread, never waiting --------------------------------------------


@pytest.fixture
def daemon(tmp_path):
    """``daemon(device) -> (path, endpoint)``: pyvirtio's server in a thread."""
    running = []

    def _serve(device):
        path = str(tmp_path / f"be{len(running)}.sock")
        server = VhostUserServer()
        ep = server.add(device, socket_path=path)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread))
        return path, ep
    yield _serve
    for server, thread in running:
        server.shutdown()
        thread.join(10)


def _connect_with_channel(path, *, sndbuf=None):
    fe = TestFrontend.connect(path)
    fe.get_u64(R.GET_FEATURES)
    fe.request(R.SET_FEATURES, U64(PROTO | (1 << 32)).pack())
    fe.request(R.SET_PROTOCOL_FEATURES, U64(CHANNEL).pack())
    fe.protocol_features = CHANNEL
    ours, theirs = socket.socketpair()
    if sndbuf:
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    assert fe.ack(R.SET_BACKEND_REQ_FD, fds=[theirs.fileno()]) == 0
    theirs.close()
    ours.settimeout(5)
    return fe, ours


def _wait_session(ep):
    deadline = time.monotonic() + 5
    while (ep.session is None or ep.session.conn.backend_fd < 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    return ep.session


def test_config_change_from_a_worker_and_from_another_thread(daemon):
    device = RngDevice()
    path, ep = daemon(device)
    fe, ours = _connect_with_channel(path)
    session = _wait_session(ep)
    device.config_changed()  # this thread (a control thread)
    assert ours.recv(64) == CONFIG_CHANGE_BYTES
    device.host_call(lambda: device.needs_reset(RuntimeError("test")), 0)  # a queue worker
    assert ours.recv(64) == CONFIG_CHANGE_BYTES
    assert session.conn.backend_fd >= 0
    fe.close()
    ours.close()


def test_a_front_end_that_does_not_read_its_channel_wedges_nobody(daemon, caplog):
    device = RngDevice()
    path, ep = daemon(device)
    fe, ours = _connect_with_channel(path, sndbuf=4096)
    session = _wait_session(ep)
    start = time.monotonic()
    sent = [session.send_config_change() for _ in range(2000)]
    assert time.monotonic() - start < 5
    assert sent[0] and not sent[-1]  # the channel filled up; later ones were dropped
    assert fe.get_u64(R.GET_FEATURES) & PROTO  # the main channel is served as before
    data = b""
    ours.setblocking(False)
    try:
        while True:
            chunk = ours.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    except BlockingIOError:
        pass
    assert data and len(data) % 12 == 0 and data == CONFIG_CHANGE_BYTES * (len(data) // 12)
    fe.close()
    ours.close()


def test_a_front_end_that_closed_its_channel_loses_only_the_channel(daemon, caplog):
    device = RngDevice()
    path, ep = daemon(device)
    fe, ours = _connect_with_channel(path)
    session = _wait_session(ep)
    ours.close()
    with caplog.at_level(logging.INFO, "pyvirtio.vhost_user"):
        assert not session.send_config_change()
    assert "channel closed by the front-end" in caplog.text
    assert session.conn.backend_fd == -1
    assert not session.send_config_change()
    assert fe.get_u64(R.GET_FEATURES) & PROTO
    fe.close()


# --- the front-end core ----------------------------------------------------------------------------

NEED = 1 | HeaderFlag.NEED_REPLY


def channel(features=CHANNEL):
    return FrontendChannel(features, name="test")


def test_config_change_is_acted_on_and_acked_when_asked():
    ch = channel()
    assert ch.receive(CONFIG_CHANGE_BYTES) == [ConfigChanged()]
    out = ch.receive(encode(BackendReq.CONFIG_CHANGE_MSG, flags=NEED))
    assert out == [ChannelReply(encode_reply(BackendReq.CONFIG_CHANGE_MSG, U64(0).pack())),
                   ConfigChanged()]


def test_config_change_byte_by_byte_and_with_trailing_data():
    ch = channel()
    data = CONFIG_CHANGE_BYTES * 2
    outs = [o for b in data[:-1] for o in ch.receive(bytes([b]))]
    assert outs == [ConfigChanged()]
    assert ch.receive(data[-1:]) == [ConfigChanged()]
    assert ch.config_changes == 2


def test_a_flood_of_config_changes_is_one_event():
    ch = channel()
    assert ch.receive(CONFIG_CHANGE_BYTES * 10000) == [ConfigChanged()]


@pytest.mark.parametrize("message", [
    encode(BackendReq.CONFIG_CHANGE_MSG, b"\0" * 8, flags=NEED),  # wrong size
    encode(99, flags=NEED),  # no such request
    encode(BackendReq.IOTLB_MSG, bytes(32), flags=NEED),  # not negotiated
    encode(BackendReq.VRING_ERR, bytes(8), flags=NEED),  # INBAND_NOTIFICATIONS only
    encode(BackendReq.CONFIG_CHANGE_MSG, flags=NEED | 0x80),  # reserved flag bits
    encode(BackendReq.CONFIG_CHANGE_MSG, flags=NEED | HeaderFlag.REPLY),  # a reply: nothing asked
], ids=["size", "unknown", "iotlb", "vring-err", "flags", "reply"])
def test_hostile_requests_are_refused_with_an_error_reply(message, caplog):
    ch = channel()
    with caplog.at_level(logging.WARNING, "pyvirtio.vhost_user.frontend.connection"):
        out = ch.receive(message)
    request = struct.unpack_from("=I", message)[0]
    assert out[0] == ChannelReply(encode_reply(request, U64(1).pack()))
    assert isinstance(out[1], RequestRefused) and len(out) == 2
    assert "refused" in caplog.text
    assert ch.receive(CONFIG_CHANGE_BYTES) == [ConfigChanged()]  # the channel goes on


def test_fds_where_none_belong_are_closed_and_refused():
    ch = channel()
    r, w = os.pipe()
    out = ch.receive(CONFIG_CHANGE_BYTES, [r])
    assert len(out) == 1 and isinstance(out[0], RequestRefused)
    assert pipe_end_closed(w)
    os.close(w)


def test_config_change_without_config_negotiated_is_refused():
    ch = channel((1 << PF.BACKEND_REQ) | (1 << PF.REPLY_ACK))
    out = ch.receive(encode(BackendReq.CONFIG_CHANGE_MSG, flags=NEED))
    assert out[0] == ChannelReply(encode_reply(BackendReq.CONFIG_CHANGE_MSG, U64(1).pack()))
    assert isinstance(out[1], RequestRefused)


def test_need_reply_without_reply_ack_gets_no_answer(caplog):
    ch = channel((1 << PF.BACKEND_REQ) | (1 << PF.CONFIG))
    assert ch.receive(encode(BackendReq.CONFIG_CHANGE_MSG, flags=NEED)) == [ConfigChanged()]


@pytest.mark.parametrize("header", [struct.pack("=III", 2, 2, 0), struct.pack("=III", 2, 1, 1 << 20)],
                         ids=["version", "size"])
def test_a_header_that_cannot_be_followed_loses_the_channel(header):
    ch = channel()
    r, w = os.pipe()
    with pytest.raises(BackendChannelLost):
        ch.receive(header, [r])
    assert ch.closed and pipe_end_closed(w)
    with pytest.raises(BackendChannelLost):
        ch.receive(CONFIG_CHANGE_BYTES)
    os.close(w)


# --- our front-end over our daemon ------------------------------------------------------------------


def _until(cond, transport, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        transport.wait_for_interrupt(0.05)
    return cond()


def test_blk_driver_sees_the_disk_grow_over_vhost_user(daemon, image):
    device = BlkDevice(image)
    path, ep = daemon(device)
    t = VhostUserTransport(path, device_type=DeviceType.BLOCK)
    try:
        assert t.conn.has_protocol_feature(PF.BACKEND_REQ) and t.client.channel_fileno() >= 0
        disk = BlkDriver.probe(t)
        assert disk.capacity == (4 << 20) // 512
        before, generation = disk.config_changes, t.config_generation()
        threading.Thread(target=device.resize, args=(8 << 20,)).start()  # another thread
        assert _until(lambda: disk.capacity == (8 << 20) // 512, t)
        assert disk.config_changes == before + 1 and t.config_generation() == generation + 1
        disk.write((6 << 20) // 512, b"\xab" * 4096)  # past the old end
        assert disk.read((6 << 20) // 512, 4096) == b"\xab" * 4096
        disk.remove()
    finally:
        t.close()
        device.close()
    assert os.path.getsize(image) == 8 << 20


def test_the_front_end_answers_hostile_channel_requests_and_goes_on(daemon, image, caplog):
    device = BlkDevice(image)
    path, ep = daemon(device)
    t = VhostUserTransport(path, device_type=DeviceType.BLOCK)
    try:
        disk = BlkDriver.probe(t)
        fd = _wait_session(ep).conn.backend_fd
        seen = []
        t.set_interrupt_handler(seen.append)
        with caplog.at_level(logging.WARNING, "pyvirtio.vhost_user.frontend.connection"):
            os.write(fd, encode(77, b"junk", flags=NEED))
            assert _until(lambda: "refused" in caplog.text, t)
        os.set_blocking(fd, True)
        assert os.read(fd, 20) == encode_reply(77, U64(1).pack())
        assert CONFIG_CHANGE not in seen
        os.write(fd, struct.pack("=III", 2, 3, 0))  # version 3: the channel is lost ...
        assert _until(lambda: t.client.channel_fileno() < 0, t)
        assert len(disk.read(0, 4096)) == 4096  # ... not the connection
    finally:
        t.close()
        device.close()


def test_reconnect_sets_the_channel_up_again(tmp_path, image):
    path = str(tmp_path / "blk.sock")
    device = BlkDevice(image)

    def start():
        server = VhostUserServer()
        ep = server.add(device, socket_path=path)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        return server, thread, ep

    server, thread, ep = start()
    t = VhostUserTransport(path, device_type=DeviceType.BLOCK, reconnect=True, reconnect_timeout=10)
    try:
        disk = BlkDriver.probe(t)
        server.shutdown()
        thread.join(10)
        server, thread, ep = start()
        assert len(disk.read(0, 4096)) == 4096  # the transport reconnects on the way
        assert t.reconnects == 1 and t.client.channel_fileno() >= 0
        _wait_session(ep)
        device.resize(6 << 20)
        assert _until(lambda: disk.capacity == (6 << 20) // 512, t)
        disk.remove()
    finally:
        t.close()
        server.shutdown()
        thread.join(10)
        device.close()


# --- qemu-storage-daemon (libvhost-user) as the back-end ---------------------------------------------


def test_qsd_takes_our_channel_and_still_serves(tmp_path, image):
    """qemu-storage-daemon (libvhost-user) offers BACKEND_REQ: our front-end hands it a channel
    (acked) and everything else goes on as before.  (QEMU 7.2's export does not announce a
    block_resize: its config keeps the old capacity, so there is no resize to see here.)"""
    from pyvirtio.bench.peers import start_qsd
    from pyvirtio.testing.env import require
    import shutil
    require(shutil.which("qemu-storage-daemon") is not None, "qemu-storage-daemon")
    peer = start_qsd(str(tmp_path / "qsd.sock"), image)
    try:
        t = VhostUserTransport(peer.socket_path, device_type=DeviceType.BLOCK)
        try:
            assert t.conn.has_protocol_feature(PF.BACKEND_REQ)
            assert t.conn.backend_channel and t.client.channel_fileno() >= 0
            disk = BlkDriver.probe(t)
            disk.write(8, b"\x42" * 4096)
            assert disk.read(8, 4096) == b"\x42" * 4096
            disk.remove()
        finally:
            t.close()
        assert peer.alive, peer.log()
    finally:
        peer.close()


class _AckWaitingBlk(BlkDevice):
    """Answers GET_CONFIG only after sending CONFIG_CHANGE_MSG with NEED_REPLY on the channel and
    reading the REPLY_ACK - what libvhost-user's vu_config_change_msg does, here in the middle
    of a request the front-end waits on."""

    channel_fd = -1
    acks: list

    def config_bytes(self) -> bytes:
        if self.channel_fd >= 0:
            fd, self.channel_fd = self.channel_fd, -1
            os.write(fd, encode(BackendReq.CONFIG_CHANGE_MSG, flags=NEED))
            import select
            ready, _, _ = select.select([fd], [], [], 3)
            self.acks.append(os.read(fd, 20) if ready else None)
        return super().config_bytes()


def test_a_back_end_waiting_for_its_ack_mid_request_is_answered(daemon, image):
    device = _AckWaitingBlk(image)
    device.acks = []
    path, ep = daemon(device)
    t = VhostUserTransport(path, device_type=DeviceType.BLOCK)
    try:
        disk = BlkDriver.probe(t)
        before = disk.config_changes
        device.channel_fd = _wait_session(ep).conn.backend_fd
        start = time.monotonic()
        disk.refresh_config()  # GET_CONFIG: the back-end asks for its ack before it answers
        assert time.monotonic() - start < 2
        assert device.acks == [encode_reply(BackendReq.CONFIG_CHANGE_MSG, U64(0).pack())]
        assert _until(lambda: disk.config_changes == before + 1, t)  # told after the request
        disk.remove()
    finally:
        t.close()
        device.close()
