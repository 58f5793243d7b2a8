"""The console served over vhost-user by pyvirtio's server, driven by pyvirtio's console driver
over the vhost-user driver-side transport: two processes' worth of code, one real socket."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest

from pyvirtio.devices.console import ConsoleDevice, PortSpec
from pyvirtio.devices.console import attach
from pyvirtio.devices.console_endpoints import MemoryEndpoint, SocketEndpoint
from pyvirtio.drivers.console import ConsoleDriver
from pyvirtio.spec.ids import DeviceType
from pyvirtio.vhost_user.backend.server import VhostUserServer
from pyvirtio.vhost_user.frontend.transport import VhostUserTransport

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def served(tmp_path):
    """A console with a socketpair port and a memory console, served on a vhost-user socket."""
    path = str(tmp_path / "console.sock")
    host_sock, dev_sock = socket.socketpair()
    console = MemoryEndpoint()
    dev = ConsoleDevice(console, [PortSpec(SocketEndpoint(dev_sock), "org.example.pipe")],
                        max_nr_ports=4)
    server = VhostUserServer()
    ep = server.add(dev, socket_path=path)
    attach(dev, ep)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path, dev, host_sock, console, ep
    server.shutdown()
    thread.join(10)
    host_sock.close()
    dev.close()


def _recv_all(sock, n, out):
    while len(out) < n:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return
        out += chunk


def test_console_driver_over_vhost_user_moves_data_both_ways(served):
    path, dev, host_sock, console, _ = served
    t = VhostUserTransport(path, device_type=DeviceType.CONSOLE)
    try:
        drv = ConsoleDriver.probe(t)
        port = drv.open_port("org.example.pipe", timeout=10)
        size = 1 << 20
        up, down, got_up = os.urandom(size), os.urandom(size), bytearray()
        threads = [threading.Thread(target=port.write, args=(up,), daemon=True),
                   threading.Thread(target=_recv_all, args=(host_sock, size, got_up), daemon=True),
                   threading.Thread(target=host_sock.sendall, args=(down,), daemon=True)]
        for th in threads:
            th.start()
        got_down = port.read_exactly(size, timeout=60)
        for th in threads:
            th.join(60)
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
        drv.console.write(b"hvc0 says hi")
        deadline = time.monotonic() + 10
        while console.pending_from_guest < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert console.take() == b"hvc0 says hi"
        drv.emergency_write(b"!")  # SET_CONFIG of emerg_wr
        assert console.take() == b"!"
        dev.resize(100, 40)  # no config interrupt over vhost-user: the RESIZE message carries it
        deadline = time.monotonic() + 10
        while drv.console_size != (100, 40) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert drv.console_size == (100, 40)
        drv.remove()
    finally:
        t.close()


def test_hotplug_reaches_a_vhost_user_driver_and_a_new_front_end_starts_clean(served):
    path, dev, host_sock, console, ep = served
    for round_ in range(2):
        t = VhostUserTransport(path, device_type=DeviceType.CONSOLE)
        try:
            drv = ConsoleDriver.probe(t)
            extra = MemoryEndpoint()
            pid = dev.add_port(extra, f"hot{round_}")  # the session's worker sends the DEVICE_ADD
            port = drv.open_port(f"hot{round_}", timeout=10)
            port.write(b"plugged in")
            deadline = time.monotonic() + 10
            while extra.pending_from_guest < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert extra.take() == b"plugged in"
            dev.remove_port(pid)
            deadline = time.monotonic() + 10
            while pid in drv.ports and time.monotonic() < deadline:
                drv.poll_events()
                time.sleep(0.01)
            assert pid not in drv.ports
        finally:
            t.close()
        deadline = time.monotonic() + 10
        while ep.session is not None and time.monotonic() < deadline:
            time.sleep(0.01)  # the server noticed the hang-up and reset the device
        assert not dev.device_ready
