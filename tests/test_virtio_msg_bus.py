"""The virtio-msg bus over both bindings: the device directory (enumerate, hot-plug, claim and
release by many drivers sharing one pool, claims released on disconnect), and hostile peers on
each side — a driver that claims everything, peers that vanish mid-setup or stop framing, a
device side that answers garbage.  Typed errors, and no fd, thread or claim left behind."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.drivers.rng import RngDriver
from pyvirtio.errors import PeerDisconnected
from pyvirtio.interrupt import CONFIG_CHANGE
from pyvirtio.spec import virtio_msg as S
from pyvirtio.spec.ids import DeviceType
from pyvirtio.spec.status import DeviceStatus as DS
from pyvirtio.spec.virtio_msg import BusMsgId, ClaimResult, DeviceBusState, ErrorReason, MsgId, MsgType
from pyvirtio.vhost_user.fdio import send_all
from pyvirtio.virtio_msg import BusClient, BusServer, BusTimeout, ClaimFailed, RequestFailed, open_device
from pyvirtio.virtio_msg.channel import SocketChannel
from pyvirtio.virtio_msg.protocol import MalformedMessage, Message, bus_request, decode, encode, pack, transport_request

pytestmark = pytest.mark.timeout(60)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def until(cond, timeout=5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


@pytest.fixture
def server(tmp_path):
    s = BusServer()
    s.path = str(tmp_path / "bus.sock")
    s.listen(s.path)
    yield s
    s.close()


def connect(server, binding):
    if binding == "socket":
        return BusClient.connect(server.path, memory_size=1 << 20)
    return BusClient(server.connect_in_process(), memory_size=1 << 20)


@pytest.mark.parametrize("binding", ["socket", "queue"])
def test_directory_enumerate_claim_release(server, binding, tmp_path):
    image = tmp_path / "d.img"
    image.write_bytes(bytes(1 << 16))
    blk = BlkDevice(str(image))
    numbers = [server.bus.add(RngDevice()), server.bus.add(blk), server.bus.add(RngDevice())]
    a, b = connect(server, binding), connect(server, binding)
    try:
        assert a.ping(0x12345678) == 0x12345678
        assert [(n, info.device_id) for n, info in a.devices()] == list(zip(numbers, [4, 2, 4]))
        first, second = a.claim(DeviceType.ENTROPY), a.claim(DeviceType.ENTROPY)
        assert {first, second} == {numbers[0], numbers[2]}
        with pytest.raises(ClaimFailed, match="NONE_FREE") as err:
            b.claim(DeviceType.ENTROPY)  # the pool is empty for everyone
        assert err.value.result == ClaimResult.NONE_FREE
        with pytest.raises(ClaimFailed, match="NOT_YOURS"):
            b.release(first)
        with pytest.raises(ClaimFailed, match="NO_DEVICE"):
            b.claim(dev_num=999)
        a.release(first)
        assert b.claim(DeviceType.ENTROPY) == first
        assert b.claim(DeviceType.BLOCK) == numbers[1]
        a.close()  # a hangs up: its claim on ``second`` ends with it
        assert until(lambda: second not in server.bus.owner)
        assert b.claim(DeviceType.ENTROPY) == second
    finally:
        a.close()
        b.close()
        blk.close()


@pytest.mark.parametrize("binding", ["socket", "queue"])
def test_hotplug_events_and_a_removed_device(server, binding):
    client = connect(server, binding)
    seen: list[S.EventDevice] = []
    client.on_hotplug.append(seen.append)
    try:
        dev = RngDevice()
        n = server.bus.add(dev)
        assert until(lambda: S.EventDevice(n, DeviceBusState.READY) in seen)
        t = open_device(client, DeviceType.ENTROPY)
        drv = RngDriver.probe(t)
        assert len(drv.read(100)) == 100
        server.bus.remove(n)
        assert until(lambda: S.EventDevice(n, DeviceBusState.REMOVED) in seen)
        assert until(lambda: t.removed)
        assert t.get_status() & DS.DEVICE_NEEDS_RESET
        with pytest.raises(RequestFailed, match="removed"):
            t.set_status(0)
        assert client.device_numbers() == []
        t.close()
        dev.close()
    finally:
        client.close()


def test_a_driver_that_claims_every_device(server):
    for _ in range(5):
        server.bus.add(RngDevice())
    greedy, other = connect(server, "socket"), connect(server, "queue")
    try:
        taken = []
        while True:
            try:
                taken.append(greedy.claim())
            except ClaimFailed as exc:
                assert exc.result == ClaimResult.NONE_FREE
                break
        assert sorted(taken) == [1, 2, 3, 4, 5]
        with pytest.raises(ClaimFailed, match="cannot claim a device of type 4: NONE_FREE"):
            open_device(other, DeviceType.ENTROPY)
        with pytest.raises(RequestFailed) as err:  # and it cannot drive them either
            other.request(transport_request(MsgId.SET_DEVICE_STATUS, 3, S.Status(0)))
        assert err.value.reason == ErrorReason.NOT_CLAIMED
        assert other.ping() == 0x5A5A5A5A  # the bus still serves the other driver
    finally:
        greedy.close()
        other.close()


def _raw_setup(sock, memfd):
    """A driver that gets half way: memory shared, a device claimed, status ACK|DRIVER."""
    def ask(msg, fds=()):
        send_all(sock, encode(msg), fds)
        head = sock.recv(8, socket.MSG_WAITALL)
        size = S.HEADER.unpack(head)[4]
        return decode(head + (sock.recv(size - 8, socket.MSG_WAITALL) if size > 8 else b""))
    assert ask(bus_request(BusMsgId.BUS_INFO, token=1)).is_response
    ask(bus_request(BusMsgId.SET_MEMORY, S.MemoryRegionMsg(0x10000, 1 << 20, 0), token=2), [memfd])
    ask(bus_request(BusMsgId.CLAIM, S.ClaimRequest(0, 0, 4), token=3))
    ask(transport_request(MsgId.SET_DEVICE_STATUS, 1, S.Status(DS.ACKNOWLEDGE | DS.DRIVER), token=4))


@pytest.mark.parametrize("how", ["hang-up", "unframed", "queue-end"])
def test_a_driver_that_vanishes_mid_setup_leaves_nothing_behind(server, how):
    dev = RngDevice()
    server.bus.add(dev)
    fds_before, threads_before = open_fds(), server.threads
    memfd = os.memfd_create("vanishing", os.MFD_CLOEXEC)
    os.ftruncate(memfd, 1 << 20)
    if how == "queue-end":
        channel = server.connect_in_process()
        channel.send(encode(bus_request(BusMsgId.SET_MEMORY, S.MemoryRegionMsg(0x10000, 1 << 20, 0))), [memfd])
        channel.send(encode(bus_request(BusMsgId.CLAIM, S.ClaimRequest(0, 0, 4))))
        assert until(lambda: 1 in server.bus.owner)
        channel.close()
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(server.path)
        _raw_setup(sock, memfd)
        assert 1 in server.bus.owner and dev.status == DS.ACKNOWLEDGE | DS.DRIVER
        if how == "unframed":  # a header whose msg_size the stream cannot have: framing is lost
            sock.sendall(S.HEADER.pack(0, MsgId.GET_DEVICE_STATUS, 1, 5, 0xFFFF))
            assert until(lambda: not server.bus.owner)
        sock.close()
    os.close(memfd)
    assert until(lambda: not server.bus.owner and not server.bus.sessions)
    assert until(lambda: server.threads == threads_before)
    assert until(lambda: open_fds() <= fds_before), "the driver's memfd or socket was left open"
    assert dev.status == 0  # its device was reset


def test_the_device_pool_serves_the_next_driver_after_one_vanished(server):
    server.bus.add(RngDevice())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(server.path)
    memfd = os.memfd_create("m", os.MFD_CLOEXEC)
    os.ftruncate(memfd, 1 << 20)
    _raw_setup(sock, memfd)
    os.close(memfd)
    sock.close()
    assert until(lambda: not server.bus.owner)
    client = connect(server, "socket")
    try:
        drv = RngDriver.probe(open_device(client, DeviceType.ENTROPY))
        assert len(drv.read(4096)) == 4096
        drv.remove()
    finally:
        client.close()


@pytest.mark.parametrize("binding", ["socket", "queue"])
def test_the_bus_vanishing_mid_request_is_a_typed_error(tmp_path, binding):
    server = BusServer()
    path = str(tmp_path / "gone.sock")
    server.listen(path)
    server.bus.add(RngDevice())
    client = BusClient.connect(path) if binding == "socket" else BusClient(server.connect_in_process())
    t = open_device(client, DeviceType.ENTROPY)
    threads = threading.active_count()
    server.close()
    assert until(lambda: not client.connected)
    with pytest.raises(PeerDisconnected):
        t.set_status(DS.ACKNOWLEDGE)
    assert t.get_status() & DS.DEVICE_NEEDS_RESET
    seen = []
    t.set_interrupt_handler(seen.append)
    assert t.wait_for_interrupt(0.01) and seen == [CONFIG_CHANGE]  # the driver hears it once
    with pytest.raises(PeerDisconnected):
        t.wait_for_interrupt(0.01)  # and then cannot wait on a bus that is gone
    t.close()
    client.close()
    assert until(lambda: threading.active_count() < threads)  # the client's receiver ended


class FakeDeviceSide:
    """A hostile device side: answers BUS_INFO and SET_MEMORY, then what the test scripts."""

    def __init__(self, path, max_message_size=264):
        self.max_message_size = max_message_size
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.conn: socket.socket | None = None
        self.script: list = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        conn, _ = self.listener.accept()
        self.conn = conn
        chan = SocketChannel(conn)
        try:
            while True:
                data, fds = chan.recv()
                for fd in fds:
                    os.close(fd)
                msg = decode(data)
                if msg.msg_id == BusMsgId.BUS_INFO:
                    chan.send(encode(msg.reply(pack(S.BusInfo(1, self.max_message_size, 0)))))
                elif msg.msg_id == BusMsgId.SET_MEMORY:
                    chan.send(encode(msg.reply(pack(S.ClaimResponse(0, 0)))))
                elif self.script:
                    for raw in self.script.pop(0)(msg):
                        conn.sendall(raw)
        except (PeerDisconnected, OSError):
            pass

    def close(self):
        self.listener.close()
        if self.conn is not None:
            self.conn.close()
        self.thread.join(5)


def test_a_device_side_that_answers_garbage(tmp_path):
    fake = FakeDeviceSide(str(tmp_path / "fake.sock"))
    client = BusClient.connect(str(tmp_path / "fake.sock"), memory_size=1 << 20, timeout=0.3)
    try:
        fake.script.append(lambda m: [encode(m.reply(pack(S.Ping(1)))._replace(token=m.token ^ 0x55))])
        with pytest.raises(BusTimeout):  # a response with another token is no answer
            client.ping()
        assert client.dropped["unmatched response"] == 1
        fake.script.append(lambda m: [encode(Message(0, MsgId.EVENT_USED, 9, 0, b"\x01")),  # malformed
                                      encode(Message(MsgType.RESPONSE, 0x77, 0, m.token)),  # unexpected id
                                      encode(m.reply(pack(S.Ping(m.payload and S.PING.unpack(m.payload)[0]))))])
        assert client.ping(42) == 42
        fake.script.append(lambda m: [encode(bus_request(BusMsgId.EVENT_ERROR,
                                                         S.EventError(m.type, m.msg_id, 0, m.token, 99)))])
        with pytest.raises(RequestFailed, match="99"):
            client.ping()
        fake.script.append(lambda m: [S.HEADER.pack(1, 3, 0, m.token, 3)])  # no framing left
        with pytest.raises(PeerDisconnected):
            client.ping()
        assert not client.connected
        with pytest.raises(PeerDisconnected):
            client.ping()
    finally:
        client.close()
        fake.close()


def test_a_driver_that_stops_reading_is_hung_up_on_and_the_others_are_served(server, monkeypatch):
    from pyvirtio.virtio_msg import channel
    monkeypatch.setattr(channel, "SEND_TIMEOUT", 0.3)
    server.bus.add(RngDevice())
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(server.path)
    assert until(lambda: len(server.bus.sessions) == 1)
    ping = encode(bus_request(BusMsgId.PING, S.Ping(1)))
    stuck.setblocking(False)
    sent = 0
    try:
        while sent < 200_000 and server.bus.sessions:  # requests, never a read of the answers
            try:
                sent += stuck.send(ping * 64)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break  # hung up on
        assert until(lambda: not server.bus.sessions, 10), "the reader-less driver is still connected"
        assert sent > 4096  # it did fill its socket before the bus gave up on it
        client = connect(server, "socket")
        try:
            drv = RngDriver.probe(open_device(client, DeviceType.ENTROPY))
            assert len(drv.read(512)) == 512
            drv.remove()
        finally:
            client.close()
    finally:
        stuck.close()


@pytest.mark.parametrize("after", [0, 1])
def test_a_device_side_that_vanishes_mid_setup_leaves_the_driver_nothing(tmp_path, after):
    """The device side hangs up before BUS_INFO is answered (0) or right after it (1, while the
    driver shares its memory): connect fails with PeerDisconnected, nothing is left open."""
    path = str(tmp_path / "vanish.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def device_side():
        conn, _ = listener.accept()
        chan = SocketChannel(conn)
        for _ in range(after):
            data, fds = chan.recv()
            chan.send(encode(decode(data).reply(pack(S.BusInfo(1, 264, 0)))))
        try:
            _, fds = chan.recv()  # the next request arrives ... and the bus is gone
            for fd in fds:
                os.close(fd)
        except PeerDisconnected:
            pass
        chan.close()

    fds, threads = open_fds(), threading.active_count()
    peer = threading.Thread(target=device_side)
    peer.start()
    with pytest.raises(PeerDisconnected):
        BusClient.connect(path, memory_size=1 << 20)
    peer.join(5)
    listener.close()
    assert until(lambda: threading.active_count() <= threads)
    assert open_fds() <= fds, "the driver side left an fd open (socket or memfd)"


def test_events_the_driver_did_not_ask_for_are_dropped(server):
    """EVENT_USED for a queue never set up, or malformed device events, never reach the driver."""
    n = server.bus.add(RngDevice())
    client = connect(server, "socket")
    try:
        t = open_device(client, DeviceType.ENTROPY)
        drv = RngDriver.probe(t)
        heard = []
        t.set_interrupt_handler(lambda info: (heard.append(info), drv._on_interrupt(info)))
        for payload in (pack(S.EventUsed(7)), b"\x00", pack(S.EventUsed(0xFFFFFFFF))):
            client._dispatch(encode(Message(0, MsgId.EVENT_USED, n, 0, payload)))  # as if received
        client._dispatch(encode(Message(0, MsgId.EVENT_CONFIG, n, 0, b"\x01\x02")))
        assert t.dropped_events == 4 and not t.wait_for_interrupt(0.01) and heard == []
        assert len(drv.read(256)) == 256  # the real ones still come
        drv.remove()
        t.close()
    finally:
        client.close()


@pytest.mark.parametrize("size", [0, 44, 47])
def test_a_bus_too_small_for_queue_setup_is_refused_at_connect(tmp_path, size):
    fake = FakeDeviceSide(str(tmp_path / "small.sock"), max_message_size=size)
    try:
        with pytest.raises(MalformedMessage) as err:
            BusClient.connect(str(tmp_path / "small.sock"), memory_size=1 << 20)
        assert "48 bytes" in str(err.value)
    finally:
        fake.close()


@pytest.mark.parametrize("packed", [False, True])
def test_kicks_carry_positions_the_ring_bears_out(tmp_path, packed):
    """VIRTIO_F_NOTIFICATION_DATA over EVENT_AVAIL: every position the driver sends agrees with
    the ring the device reads (a wrong mapping would be counted as the driver's fault).

    With ``sync_kicks`` each EVENT_AVAIL is handled before the driver goes on: unsynchronised,
    a loaded machine let the device's message thread fall a lap behind the ring (drained
    meanwhile on completions, kicks held), and a 15-bit position a lap old reads like one
    ahead — no check of a hint can tell them apart then (pyvirtio.virtq.notification)."""
    from pyvirtio.drivers.blk import BlkDriver
    from pyvirtio.spec.features import Feature
    image = tmp_path / "d.img"
    image.write_bytes(bytes(1 << 20))
    device = BlkDevice(str(image))
    if packed:
        device.offer_packed_ring()
    server = BusServer()
    n = server.bus.add(device)
    client = BusClient(server.connect_in_process(), memory_size=4 << 20)
    try:
        drv = BlkDriver.probe(open_device(client, DeviceType.BLOCK, sync_kicks=True))
        assert drv.has_feature(Feature.NOTIFICATION_DATA) and drv.has_feature(Feature.RING_PACKED) == packed
        for round_ in range(3):  # a packed ring of 256 wraps: positions with the wrap bit set
            pending = [drv.submit_read(i * 8, 4096) for i in range(100)]
            for p in pending:
                drv.wait(p)
        assert server.bus.devices[n].regs.notification_faults == 0
        drv.remove()
    finally:
        client.close()
        server.close()
        device.close()
