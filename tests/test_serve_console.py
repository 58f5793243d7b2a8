"""``pyvirtio serve console`` options: parsing, validation, building, and serving end to end."""

from __future__ import annotations

import argparse
import os
import socket
import threading

import pytest

from pyvirtio.commands.serve_console import PortOption, add_arguments, build_device, parse_port, parse_size
from pyvirtio.devices.console import attach
from pyvirtio.devices.console_endpoints import (NullEndpoint, PtyEndpoint, UnixConnectEndpoint,
                                                UnixListenEndpoint)
from pyvirtio.drivers.console import ConsoleDriver
from pyvirtio.errors import UsageError
from pyvirtio.spec.ids import DeviceType
from pyvirtio.vhost_user.backend.server import VhostUserServer
from pyvirtio.vhost_user.frontend.transport import VhostUserTransport

pytestmark = pytest.mark.timeout(60)


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_parse_port_forms():
    want = PortOption("org.example.pipe", "listen", "/tmp/s")
    assert parse_port("name=org.example.pipe,path=/tmp/s") == want
    assert parse_port("name=a,path=/tmp/s,connect").kind == "connect"
    assert parse_port("name=a,pty,id=3,console") == PortOption("a", "pty", None, 3, True)
    assert parse_port("name=a,stdio").kind == "stdio"


@pytest.mark.parametrize("text, message", [
    ("path=/tmp/s", "name=NAME is required"),
    ("name=a", "exactly one of"),
    ("name=a,pty,stdio", "exactly one of"),
    ("name=a,pty,connect", "connect needs path"),
    ("name=a,pty,id=x", "not a number"),
    ("name=a,pty,colour=red", "unknown item"),
])
def test_parse_port_errors(text, message):
    with pytest.raises(UsageError, match=message):
        parse_port(text)


def test_parse_size():
    assert parse_size("132x43") == (132, 43)
    for bad in ("80", "x25", "0x25", "80x70000", "axb"):
        with pytest.raises(UsageError):
            parse_size(bad)


def test_build_device_opens_every_endpoint(tmp_path):
    a, b = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(b)
    listener.listen(1)
    dev = build_device(parse(f"--port=name=one,path={a}", f"--port=name=two,path={b},connect",
                             "--port=name=three,pty", "--max-ports=8", "--size=100x30"))
    try:
        kinds = {p.name: type(p.endpoint) for p in dev.ports.values()}
        assert kinds == {None: NullEndpoint, "one": UnixListenEndpoint, "two": UnixConnectEndpoint,
                         "three": PtyEndpoint}
        assert (dev.cols, dev.rows, dev.max_nr_ports) == (100, 30, 8)
    finally:
        dev.close()
        listener.close()
    assert not os.path.exists(a)  # the listener's socket file is gone with it


@pytest.mark.parametrize("argv, message", [
    (["--port=name=a,pty", "--port=name=a,pty"], "same name"),
    (["--port=name=a,stdio", "--console=stdio"], "stdio"),
    (["--max-ports=0"], "max-ports"),
    (["--port=name=a,path=/nonexistent/dir/x.sock"], "port a"),
    (["--port=name=a,pty,id=99", "--max-ports=4"], "port id 99"),
])
def test_build_device_refuses_bad_options_and_leaves_nothing_open(argv, message):
    with pytest.raises(UsageError, match=message):
        build_device(parse(*argv))


def test_served_console_end_to_end_with_a_listening_port(tmp_path):
    """What ``pyvirtio serve console --socket-path=... --port=name=...,path=...`` does."""
    vu, port_path = str(tmp_path / "vu.sock"), str(tmp_path / "port.sock")
    dev = build_device(parse(f"--port=name=org.example.pipe,path={port_path}"))
    server = VhostUserServer()
    attach(dev, server.add(dev, socket_path=vu))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    t = VhostUserTransport(vu, device_type=DeviceType.CONSOLE)
    client = socket.socket(socket.AF_UNIX)
    try:
        drv = ConsoleDriver.probe(t)
        port = drv.open_port("org.example.pipe", timeout=10)
        client.connect(port_path)  # a host program attaches to the port
        port.wait_connected(timeout=10)
        client.sendall(b"hello guest")
        assert port.read_exactly(11, timeout=10) == b"hello guest"
        assert port.host_connected
        port.write(b"hello host")
        client.settimeout(10)
        got = b""
        while len(got) < 10:
            got += client.recv(100)
        assert got == b"hello host"
        drv.remove()
    finally:
        client.close()
        t.close()
        server.shutdown()
        thread.join(10)
        dev.close()
