"""`pyvirtio serve console` and `pyvirtio serve net` as programs, driven by pyvirtio's drivers."""

import os
import socket
import subprocess
import sys
import time

import pytest

from pyvirtio.drivers.console import ConsoleDriver
from pyvirtio.spec.ids import DeviceType
from pyvirtio.vhost_user.frontend.transport import VhostUserTransport


def _serve(tmp_path, *args):
    sock = str(tmp_path / "vu.sock")
    proc = subprocess.Popen([sys.executable, "-m", "pyvirtio.cli", "serve", *args, f"--socket-path={sock}"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"serve did not start: {proc.stderr.read()}")
        time.sleep(0.05)
    return proc, sock


def _stop(proc):
    proc.terminate()
    try:
        assert proc.wait(10) == 0
    finally:
        proc.kill()


def test_serve_console_bridges_a_named_port_to_a_unix_socket(tmp_path):
    port_path = str(tmp_path / "port.sock")
    proc, sock = _serve(tmp_path, "console", f"--port=name=org.example.pipe,path={port_path}")
    t = VhostUserTransport(sock, device_type=DeviceType.CONSOLE)
    host = socket.socket(socket.AF_UNIX)
    try:
        drv = ConsoleDriver.probe(t)
        port = drv.open_port("org.example.pipe", timeout=10)
        host.connect(port_path)
        port.wait_connected(timeout=10)
        payload = os.urandom(256 * 1024)
        host.sendall(payload)
        assert port.read_exactly(len(payload), timeout=20) == payload
        port.write(b"from the guest")
        host.settimeout(10)
        got = b""
        while len(got) < 14:
            got += host.recv(64)
        assert got == b"from the guest"
        drv.remove()
    finally:
        host.close()
        t.close()
        _stop(proc)


def test_serve_net_null_takes_frames(tmp_path):
    from pyvirtio.drivers.net import NetDriver
    proc, sock = _serve(tmp_path, "net", "--null")
    t = VhostUserTransport(sock, device_type=DeviceType.NET)
    try:
        drv = NetDriver.probe(t)
        frame = bytes(6) + bytes.fromhex("020000000001") + b"\x08\x00" + bytes(50)
        for _ in range(100):
            drv.send(frame)
        drv.flush()
        drv.remove()
    finally:
        t.close()
        _stop(proc)


def test_serve_console_rejects_a_bad_port_option(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pyvirtio.cli", "serve", "console", "--port=bogus",
                          f"--socket-path={tmp_path / 'x.sock'}"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "port" in out.stderr and "Traceback" not in out.stderr
