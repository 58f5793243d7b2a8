"""The stream-socket back-end: QEMU ``-netdev stream`` framing, over a socketpair, a UNIX socket
and TCP on loopback; partial reads and writes; a broken peer; devices on both ends."""

import socket
import struct
import threading
import time

import pytest

from pyvirtio.devices.net import NetDevice
from pyvirtio.drivers.net import NetDriver
from pyvirtio.errors import UsageError
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.net.frame import frame_seq, mac_bytes, numbered_frame
from pyvirtio.net.stream import StreamBackend, parse_address

A, B = mac_bytes("52:54:00:00:02:01"), mac_bytes("52:54:00:00:02:02")


def read_one(backend, size=70000):
    buf = memoryview(bytearray(size))
    n = backend.recv_into([buf])
    return None if n is None else bytes(buf[:n])


def wait_frame(backend, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = read_one(backend)
        if frame is not None:
            return frame
        time.sleep(0.001)
    return None


def test_addresses():
    assert parse_address("127.0.0.1:5555") == (socket.AF_INET, ("127.0.0.1", 5555))
    assert parse_address(":5555") == (socket.AF_INET, ("127.0.0.1", 5555))
    assert parse_address("[::1]:5555") == (socket.AF_INET6, ("::1", 5555))
    assert parse_address("/run/x.sock") == (socket.AF_UNIX, "/run/x.sock")
    assert parse_address("x.sock") == (socket.AF_UNIX, "x.sock")
    with pytest.raises(UsageError):
        parse_address("host:port")


def test_frames_use_a_big_endian_length_prefix():
    ours, theirs = socket.socketpair()
    backend = StreamBackend(sock=ours)
    frame = numbered_frame(B, A, 7, 1000)
    assert backend.send([memoryview(frame)])
    raw = theirs.recv(2000)
    assert raw == struct.pack("!I", 1000) + frame
    theirs.sendall(struct.pack("!I", 64) + numbered_frame(A, B, 8))
    assert frame_seq(wait_frame(backend)) == (8, 0)
    backend.close()
    theirs.close()


def test_frames_arriving_one_byte_at_a_time():
    ours, theirs = socket.socketpair()
    backend = StreamBackend(sock=ours)
    frames = [numbered_frame(A, B, i, 60 + i) for i in range(5)]
    stream = b"".join(struct.pack("!I", len(f)) + f for f in frames)
    got = []
    for i in range(len(stream)):
        theirs.send(stream[i:i + 1])
        while (frame := read_one(backend)) is not None:
            got.append(frame)
    assert got == frames
    backend.close()
    theirs.close()


@pytest.mark.parametrize("length", [0, 1 << 24])
def test_a_bad_length_drops_the_peer(length):
    ours, theirs = socket.socketpair()
    backend = StreamBackend(sock=ours)
    theirs.sendall(struct.pack("!I", length) + b"x" * 8)
    assert wait_frame(backend, 0.3) is None
    assert not backend.link_up and backend.stats["errors"] == 1
    assert backend.send([memoryview(b"x" * 60)])  # no peer: the frame is lost, as on a real link
    backend.close()
    theirs.close()


def test_partial_writes_keep_only_the_rest():
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    backend = StreamBackend(sock=ours)
    frames = [numbered_frame(B, A, i, 1500) for i in range(200)]
    pending = list(frames)
    received = bytearray()
    while pending:
        if backend.send([memoryview(pending[0])]):
            pending.pop(0)
            continue
        received += theirs.recv(1 << 20)  # the peer reads; we are writable again
        backend.service()
    theirs.setblocking(False)
    while len(received) < sum(4 + len(f) for f in frames):
        backend.service()
        try:
            received += theirs.recv(1 << 20)
        except BlockingIOError:
            time.sleep(0.001)
    assert bytes(received) == b"".join(struct.pack("!I", len(f)) + f for f in frames)
    backend.close()
    theirs.close()


@pytest.fixture
def wire():
    transports = []

    def _attach(backend, mac, **driver_kw):
        dev = NetDevice(backend, mac=mac)
        t = LoopbackTransport(dev)
        transports.append(t)
        return dev, NetDriver.probe(t, **driver_kw)

    yield _attach
    for t in transports:
        t.close()
        t.device.close()


def exchange(a, b, count, size=600):
    got = []

    def reader():
        while len(got) < count:
            frame = b.recv(5.0)
            if frame is None:
                return
            got.append(frame_seq(frame)[0])

    thread = threading.Thread(target=reader)
    thread.start()
    a.send_batch([numbered_frame(b.mac, a.mac, i, size) for i in range(count)])
    thread.join(60)
    return got


def test_two_devices_over_a_socketpair_lose_nothing(wire):
    s1, s2 = socket.socketpair()
    _, a = wire(StreamBackend(sock=s1), A)
    _, b = wire(StreamBackend(sock=s2), B, rx_buffers=8)
    assert exchange(a, b, 2000) == list(range(2000))
    assert exchange(b, a, 500, size=1514) == list(range(500))


def test_unix_server_and_client_with_reconnect(wire, tmp_path):
    path = str(tmp_path / "net.sock")
    server_dev, server = wire(StreamBackend(path, listen=True), A)
    assert not server.link_up  # nobody connected yet
    client_dev, client = wire(StreamBackend(path), B)
    assert server.wait_link(True, 5)
    assert exchange(client, server, 100) == list(range(100))
    client_dev.close()  # the client goes away: the server's link goes down ...
    assert server.wait_link(False, 5)
    again_dev, again = wire(StreamBackend(path), mac_bytes("52:54:00:00:02:03"))
    assert server.wait_link(True, 5)  # ... and up again for the next client
    assert exchange(server, again, 50) == list(range(50))


def test_tcp_on_loopback(wire):
    server_backend = StreamBackend("127.0.0.1:0", listen=True)
    port = server_backend.bound_address[1]
    _, server = wire(server_backend, A)
    _, client = wire(StreamBackend(f"127.0.0.1:{port}"), B)
    assert server.wait_link(True, 5)
    assert exchange(server, client, 300, size=1514) == list(range(300))


# --- issue 12, class 5: a guest's bad frame never costs the stream peer ----------------------------


class _BigRingDriver(NetDriver):
    queue_size = 2048  # room for a direct chain longer than MAX_CHAIN_SEGMENTS


def _segmented(frame: bytes, segments: int) -> list[bytes]:
    """The header and ``frame`` as ``segments`` descriptors (the header shares the first)."""
    return [bytes(12) + frame[:1]] + [frame[i:i + 1] for i in range(1, segments - 1)] + [frame[segments - 1:]]


def test_a_transmit_of_max_segments_reaches_the_peer_and_keeps_it():
    """1024 buffers plus our length prefix are more iovecs than sendmsg takes (EMSGSIZE): the
    views are joined, and the peer is not dropped for a guest's frame."""
    from pyvirtio.limits import MAX_CHAIN_SEGMENTS
    ours, theirs = socket.socketpair()
    backend = StreamBackend(sock=ours)
    dev = NetDevice(backend, mac=A, queue_size=2048)
    t = LoopbackTransport(dev)
    drv = _BigRingDriver.probe(t)
    try:
        frame = numbered_frame(B, A, 1, 1500)
        txq = drv.queues[1]
        txq.wait(txq.submit(_segmented(frame, MAX_CHAIN_SEGMENTS), []), timeout=5)
        theirs.settimeout(5)
        assert theirs.recv(2000) == struct.pack("!I", len(frame)) + frame
        assert backend.stats["disconnects"] == 0 and drv.link_up
        drv.send(numbered_frame(B, A, 2, 100))
        assert frame_seq(theirs.recv(2000)[4:]) == (2, 0)
    finally:
        t.close()
        dev.close()
        theirs.close()


def test_a_transmit_over_max_segments_breaks_the_queue_not_the_peer():
    """More than MAX_CHAIN_SEGMENTS descriptors is the driver's fault (VIRTIO 2.7.5.3.1; QEMU and
    libvhost-user refuse the same): the device needs a reset, the peer stays, and after the reset
    frames flow again."""
    from pyvirtio.limits import MAX_CHAIN_SEGMENTS
    from pyvirtio.spec.status import DeviceStatus as S
    ours, theirs = socket.socketpair()
    backend = StreamBackend(sock=ours)
    dev = NetDevice(backend, mac=A, queue_size=2048)
    t = LoopbackTransport(dev)
    drv = _BigRingDriver.probe(t)
    try:
        txq = drv.queues[1]
        txq.submit(_segmented(numbered_frame(B, A, 1, 1500), MAX_CHAIN_SEGMENTS + 1), [])
        deadline = time.monotonic() + 5
        while not dev.status & S.DEVICE_NEEDS_RESET and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dev.status & S.DEVICE_NEEDS_RESET
        assert backend.peer is not None and backend.stats["disconnects"] == 0
        drv.remove()
        drv = _BigRingDriver.probe(t)
        drv.send(numbered_frame(B, A, 2, 100))
        theirs.settimeout(5)
        assert frame_seq(theirs.recv(2000)[4:]) == (2, 0)
    finally:
        t.close()
        dev.close()
        theirs.close()


def test_frames_a_peer_sends_as_it_connects_are_delivered(wire, tmp_path):
    """Issue 12, class 5: the link went up only after the first read, which found the link down
    and dropped what the new peer had sent with its connection."""
    path = str(tmp_path / "net.sock")
    _, server = wire(StreamBackend(path, listen=True), A)
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        peer.connect(path)
        peer.sendall(b"".join(struct.pack("!I", 64) + numbered_frame(A, B, i) for i in range(5)))
        got = [frame_seq(server.recv(5.0)) for _ in range(5)]
        assert got == [(i, 0) for i in range(5)]
    finally:
        peer.close()
