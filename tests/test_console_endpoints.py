"""Host endpoints of console ports, served by the engine: sockets, a listener, a pty, stdio."""

from __future__ import annotations

import os
import select
import socket
import time

import pytest

from pyvirtio.devices.console import ConsoleDevice, PortSpec
from pyvirtio.devices.console_endpoints import (FdEndpoint, MemoryEndpoint, NullEndpoint,
                                                PtyEndpoint, SocketEndpoint, StdioEndpoint,
                                                UnixConnectEndpoint, UnixListenEndpoint)
from pyvirtio.drivers.console import ConsoleDriver
from pyvirtio.errors import UsageError
from pyvirtio.loopback import LoopbackTransport

pytestmark = pytest.mark.timeout(60)


def rig(endpoint, name="p", console=None):
    dev = ConsoleDevice(console or NullEndpoint(), [PortSpec(endpoint, name)], max_nr_ports=4)
    t = LoopbackTransport(dev, memory_size=8 << 20)
    events = []
    drv = ConsoleDriver.probe(t, listeners=[events.append])
    return dev, t, drv, events


def recv_exactly(read, n, timeout=5.0):
    out, deadline = bytearray(), time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += read()
    return bytes(out)


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


# --- the endpoints on their own -----------------------------------------------------------------


def test_socket_endpoint_reads_into_several_views_and_reports_hangup():
    a, b = socket.socketpair()
    ep = SocketEndpoint(a)
    assert ep.read_into([memoryview(bytearray(4))]) is None  # nothing yet: would block
    b.sendall(b"abcdefgh")
    v1, v2 = bytearray(3), bytearray(10)
    assert ep.read_into([memoryview(v1), memoryview(v2)]) == 8
    assert bytes(v1) + bytes(v2[:5]) == b"abcdefgh"
    assert ep.write_from([memoryview(b"xy"), memoryview(b"z")]) == 3
    assert b.recv(10) == b"xyz"
    b.close()
    assert ep.read_into([memoryview(bytearray(4))]) == 0 and not ep.connected
    assert ep.read_fd == -1


def test_socket_endpoint_write_stops_when_the_peer_is_full():
    a, b = socket.socketpair()
    ep = SocketEndpoint(a)
    block, total = memoryview(bytes(65536)), 0
    while (n := ep.write_from([block])) > 0:
        total += n
    assert total > 0 and ep.connected  # full, not broken
    b.close()
    assert ep.write_from([block]) == 0 and not ep.connected  # EPIPE: gone


def test_memory_endpoint_is_bounded_both_ways():
    ep = MemoryEndpoint(capacity=10)
    assert ep.feed(b"0123456789abc") == 10
    assert ep.write_from([memoryview(b"x" * 25)]) == 10
    assert ep.write_from([memoryview(b"y")]) == 0
    assert ep.take(4) == b"xxxx" and ep.high_water == 10
    with pytest.raises(UsageError):
        MemoryEndpoint(capacity=0)


def test_fd_endpoint_eof_on_input_leaves_output_working():
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    ep = FdEndpoint(r_in, w_out)
    os.write(w_in, b"hello")
    buf = bytearray(16)
    assert ep.read_into([memoryview(buf)]) == 5
    assert ep.write_from([memoryview(b"out")]) == 3 and os.read(r_out, 10) == b"out"
    os.close(w_in)
    assert ep.read_into([memoryview(buf)]) is None and ep.input_done  # input over ...
    assert ep.connected and ep.read_fd == -1
    assert ep.write_from([memoryview(b"more")]) == 4  # ... output goes on
    assert os.read(r_out, 10) == b"more"
    ep.close()
    os.close(r_out)
    with pytest.raises(OSError):
        os.fstat(r_in)  # owned fds are closed


def test_pty_endpoint_eof_is_a_hangup():
    ep = PtyEndpoint()
    os.close(ep.slave_fd)  # nobody holds the terminal any more
    ep.slave_fd = -1
    assert ep.read_into([memoryview(bytearray(8))]) == 0 and not ep.connected  # EIO: hung up
    ep.close()


def test_stdio_endpoint_leaves_the_fds_open_and_restores_blocking():
    r, w = os.pipe()
    ep = StdioEndpoint(r, w)
    assert not os.get_blocking(r)
    ep.close()
    assert os.get_blocking(r)
    os.close(r)
    os.close(w)


# --- through the device, served by the loopback transport's engine ------------------------------------------------


def test_socketpair_port_served_by_the_engine():
    ours, theirs = socket.socketpair()
    dev, t, drv, _ = rig(SocketEndpoint(ours))
    try:
        port = drv.open_port("p")
        port.write(b"guest says hi")
        assert recv_exactly(lambda: theirs.recv(100), 13) == b"guest says hi"
        theirs.sendall(b"host says hi")
        assert port.read_exactly(12, timeout=5) == b"host says hi"
    finally:
        t.close()
        theirs.close()


def test_unix_listen_endpoint_accepts_reconnects_and_tells_the_guest(tmp_path):
    path = str(tmp_path / "port.sock")
    ep = UnixListenEndpoint(path)
    dev, t, drv, events = rig(ep)
    try:
        port = drv.open_port("p")
        assert not port.host_connected
        for round_ in range(3):
            client = socket.socket(socket.AF_UNIX)
            client.connect(path)
            wait_for(lambda: (drv.poll_events(), port.host_connected)[1])
            client.sendall(b"round %d" % round_)
            assert port.read_exactly(7, timeout=5) == b"round %d" % round_
            port.write(b"ack")
            assert recv_exactly(lambda: client.recv(10), 3) == b"ack"
            client.close()
            assert port.read(10, timeout=5) == b""  # host hung up: end of stream
            assert not port.host_connected
        opens = [e.value for e in events if e.kind == "open" and e.port_id == 1]
        assert opens == [True, False] * 3
    finally:
        t.close()
        ep.close()
    assert not os.path.exists(path)


def test_unix_connect_endpoint(tmp_path):
    path = str(tmp_path / "host.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    ep = UnixConnectEndpoint(path)
    peer, _ = server.accept()
    dev, t, drv, _ = rig(ep)
    try:
        port = drv.open_port("p")
        port.write(b"over unix")
        assert recv_exactly(lambda: peer.recv(100), 9) == b"over unix"
    finally:
        t.close()
        peer.close()
        server.close()
    with pytest.raises(OSError):
        UnixConnectEndpoint(str(tmp_path / "nobody.sock"))


def test_pty_console():
    ep = PtyEndpoint()
    slave = os.open(ep.path, os.O_RDWR | os.O_NOCTTY)
    dev, t, drv, _ = rig(MemoryEndpoint(), console=ep)
    try:
        console = drv.console
        console.write(b"Welcome\r\n")
        got = recv_exactly(lambda: os.read(slave, 100) if select.select([slave], [], [], 0.2)[0] else b"", 9)
        assert got == b"Welcome\r\n"
        os.write(slave, b"ls -l\n")
        assert console.read_exactly(6, timeout=5) == b"ls -l\n"  # raw mode: bytes as typed
    finally:
        t.close()
        os.close(slave)
        ep.close()
