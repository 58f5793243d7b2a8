"""VhostUserTransport and the socket shell: pyvirtio's rng and blk drivers, unchanged, over a
real UNIX socket to pyvirtio's own vhost-user server (in a thread), and the shell's typed errors
for back-ends that vanish, hang, or answer wrongly."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from pyvirtio.bus import Bus
from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.drivers import ALL_DRIVERS, BlkDriver, RngDriver
from pyvirtio.errors import RequestError, TransportError
from pyvirtio.interrupt import Interrupt
from pyvirtio.spec.blk import BlkStatus
from pyvirtio.spec.ids import DeviceType
from pyvirtio.spec.status import DeviceStatus as S
from pyvirtio.vhost_user.backend import connection as backend_module
from pyvirtio.vhost_user.frontend.client import VhostUserClient
from pyvirtio.vhost_user.frontend.errors import (BackendHungUp, BackendUnreachable, ReplyTimeout,
                                                 WrongReplyType)
from pyvirtio.vhost_user.protocol import FrontendReq as R
from pyvirtio.vhost_user.backend.server import VhostUserServer
from pyvirtio.vhost_user.frontend.transport import VhostUserTransport
from pyvirtio.vhost_user.wire import U64, encode_reply


@pytest.fixture
def serve(tmp_path):
    """``serve(device, **options) -> socket path``: pyvirtio's back-end in a thread."""
    running = []

    def _serve(device, **options):
        path = str(tmp_path / f"be{len(running)}.sock")
        server = VhostUserServer()
        server.add(device, socket_path=path, **options)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread))
        return path

    _serve.running = running
    yield _serve
    for server, thread in running:
        server.shutdown()
        thread.join(5)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(8 << 20)
    return str(path)


def test_rng_driver_unchanged_over_vhost_user(serve):
    t = VhostUserTransport(serve(RngDevice()))
    try:
        assert t.device_type == DeviceType.ENTROPY and "guessed" in t.device_type_reason
        rng = RngDriver.probe(t)
        data = rng.read(20000)
        assert len(data) == 20000 and len(set(data)) > 200
        assert t.get_status() & S.DRIVER_OK
        rng.remove()
    finally:
        t.close()


@pytest.mark.parametrize("regions", [1, 3])
def test_blk_driver_unchanged_over_vhost_user(serve, image, regions):
    t = VhostUserTransport(serve(BlkDevice(image, num_queues=2, serial="fe-test")), regions=regions,
                           device_type=DeviceType.BLOCK)
    try:
        disk = BlkDriver.probe(t)
        assert disk.capacity == (8 << 20) // 512 and len(disk.queues) == 2
        assert disk.get_id() == "fe-test"
        payload = os.urandom(256 * 1024)
        reqs = [disk.submit_write(64 + i * 64, payload[i * 32768:(i + 1) * 32768], queue=i % 2)
                for i in range(8)]  # many in flight, both queues
        for r in reqs:
            disk.wait(r)
        disk.flush()
        assert disk.read(64, len(payload)) == payload
        disk.discard(64, 64)
        assert disk.read(64, 512) == bytes(512)
        disk.remove()
    finally:
        t.close()
    with open(image, "rb") as f:
        f.seek(128 * 512)
        assert f.read(32768) == payload[32768:65536]


def test_bus_binds_drivers_by_inferred_type(serve, image):
    bus = Bus(drivers=ALL_DRIVERS)
    bus.add(VhostUserTransport(serve(RngDevice())))
    bus.add(VhostUserTransport(serve(BlkDevice(image))))
    try:
        bound = bus.probe()
        assert [type(b.driver).__name__ for b in bound] == ["RngDriver", "BlkDriver"]
        assert len(bus.find(DeviceType.BLOCK)[0].read(0, 4096)) == 4096
    finally:
        for b in bus.bindings:
            if b.driver:
                b.driver.remove()
            b.transport.close()


def test_read_only_disk_refuses_writes_with_ioerr(serve, image):
    t = VhostUserTransport(serve(BlkDevice(image, read_only=True)))
    try:
        disk = BlkDriver.probe(t)
        assert disk.read_only
        with pytest.raises(RequestError) as info:
            disk.write(0, bytes(512))
        assert info.value.status == BlkStatus.IOERR
        disk.remove()
    finally:
        t.close()


def test_status_mapping_reset_stops_rings(serve, image):
    path = serve(BlkDevice(image))
    t = VhostUserTransport(path)
    try:
        disk = BlkDriver.probe(t)
        disk.read(0, 512)
        assert t.conn.status == S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK
        assert t.conn.rings[0].started
        seen = []
        t.set_interrupt_handler(seen.append)
        req = disk.submit_read(0, 512)
        while not req.pending.done:
            t.wait_for_interrupt(1.0)
            disk.queues[0].poll()
        assert Interrupt(0) in seen
        disk.remove()  # reset: GET_VRING_BASE, RESET_DEVICE, SET_STATUS 0
        assert not t.conn.rings[0].started and t.get_status() == 0
        assert t.conn.status in (None, 0)  # RESET_DEVICE reset it (else SET_STATUS 0)
        disk = BlkDriver.probe(t)  # and the device comes up again on the same connection
        assert len(disk.read(8, 1024)) == 1024
        disk.remove()
    finally:
        t.close()


def test_config_reads_past_a_short_config_space_read_zeros(serve, image, monkeypatch):
    monkeypatch.setattr(backend_module, "MAX_CONFIG_SIZE", 60)  # a back-end with a 60-byte space
    t = VhostUserTransport(serve(BlkDevice(image)))
    try:
        assert t.config_size() == 60
        raw = t.read_config(0, 96)
        assert len(raw) == 96 and raw[60:] == bytes(36)
        disk = BlkDriver.probe(t)
        assert disk.capacity == (8 << 20) // 512
        disk.remove()
    finally:
        t.close()


def test_back_end_gone_mid_run_is_a_typed_error_and_needs_reset(serve, image):
    path = serve(BlkDevice(image))
    t = VhostUserTransport(path)
    try:
        disk = BlkDriver.probe(t)
        server, thread = serve.running[0]
        server.shutdown()
        thread.join(5)
        with pytest.raises(BackendHungUp):
            disk.read(0, 512)
        assert t.get_status() & S.DEVICE_NEEDS_RESET
    finally:
        t.close()


# --- the shell against misbehaving back-ends -----------------------------------------------------


class FakeBackend:
    """A listener that does what the test says with the first front-end's bytes."""

    def __init__(self, path, behaviour):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.thread = threading.Thread(target=self._run, args=(behaviour,), daemon=True)
        self.thread.start()

    def _run(self, behaviour):
        conn, _ = self.sock.accept()
        with conn:
            behaviour(conn)

    def close(self):
        self.sock.close()
        self.thread.join(2)


def _hang_up(conn):
    pass


def _never_answer(conn):
    conn.recv(100)
    time.sleep(1.0)


def _wrong_type(conn):
    conn.recv(100)
    conn.sendall(encode_reply(R.GET_QUEUE_NUM, U64(1).pack()))
    time.sleep(0.5)


@pytest.mark.parametrize("behaviour, error", [
    (_hang_up, BackendHungUp), (_never_answer, ReplyTimeout), (_wrong_type, WrongReplyType)])
def test_client_turns_misbehaviour_into_typed_errors(tmp_path, behaviour, error):
    path = str(tmp_path / "fake.sock")
    fake = FakeBackend(path, behaviour)
    try:
        client = VhostUserClient.connect(path, timeout=0.3)
        with pytest.raises(error):
            client.handshake()
        with pytest.raises(Exception) as again:
            client.get_features()
        assert "broken" in str(again.value)
        client.close()
    finally:
        fake.close()


def test_connect_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(BackendUnreachable, match="no such socket"):
        VhostUserClient.connect(str(tmp_path / "missing.sock"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(BackendUnreachable, match="not a UNIX socket"):
        VhostUserClient.connect(str(tmp_path / "file"))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))  # bound, never listening: refused
    try:
        with pytest.raises(BackendUnreachable, match="connection refused"):
            VhostUserClient.connect(str(tmp_path / "stale.sock"))
    finally:
        stale.close()
    assert issubclass(BackendUnreachable, TransportError)


def test_without_protocol_features_the_transport_still_works(serve):
    path = serve(RngDevice())
    guess = VhostUserTransport(path, protocol_features=0)  # no REPLY_ACK, STATUS, CONFIG, MQ
    assert guess.device_type == 0 and "--type" in guess.device_type_reason  # nothing to go on
    guess.close()
    t = VhostUserTransport(path, protocol_features=0, device_type=DeviceType.ENTROPY)
    try:
        assert t.conn.protocol_features == 0 and t.num_queues() == 1
        rng = RngDriver.probe(t)
        assert len(rng.read(1000)) == 1000 and t.conn.status is None  # no SET_STATUS sent
        with pytest.raises(TransportError, match="CONFIG"):
            t.read_config(0, 4)
        rng.remove()
    finally:
        t.close()
