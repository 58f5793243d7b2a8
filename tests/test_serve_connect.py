"""Client mode (``pyvirtio serve --connect``): the daemon connects to a front-end that listens
(DPDK virtio-user ``server=1``, QEMU ``server=on``), waits for it when it is not there yet, and
connects again after it goes away."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from pyvirtio.bench.peers import run_virtio_user_txonly
from pyvirtio.cli import main
from pyvirtio.control.client import ControlClient, ControlUnavailable
from pyvirtio.devices.rng import RngDevice
from pyvirtio.testing.env import require
from pyvirtio.vhost_user.backend.server import VhostUserServer

pytestmark = pytest.mark.timeout(120)
GET_FEATURES, VERSION, REPLY = 1, 0x1, 0x4
TESTPMD = "dpdk-testpmd"


def listener(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(1)
    sock.settimeout(10)
    return sock


def get_features(conn: socket.socket) -> int:
    conn.sendall(struct.pack("<III", GET_FEATURES, VERSION, 0))
    reply = b""
    while len(reply) < 20:
        chunk = conn.recv(20 - len(reply))
        assert chunk, "the daemon hung up"
        reply += chunk
    request, flags, size, features = struct.unpack("<IIIQ", reply)
    assert (request, flags & REPLY, size) == (GET_FEATURES, REPLY, 8)
    return features


@pytest.fixture
def client_daemon(tmp_path):
    """An in-process daemon serving an entropy device in client mode on tmp_path/fe.sock."""
    path = str(tmp_path / "fe.sock")
    server = VhostUserServer()
    endpoint = server.add(RngDevice(), socket_path=path, connect=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path, endpoint
    server.shutdown()
    thread.join(10)
    assert not thread.is_alive()


def test_waits_for_the_front_end_then_connects_again_after_each_hang_up(client_daemon):
    path, endpoint = client_daemon
    time.sleep(0.3)  # the daemon is already trying: nothing listens yet
    assert endpoint.session is None and endpoint.connections == 0
    fe = listener(path)
    try:
        for round_ in range(3):  # a front-end that restarts: the daemon comes back each time
            conn, _ = fe.accept()
            with conn:
                assert get_features(conn) & (1 << 32)  # VIRTIO_F_VERSION_1
            deadline = time.monotonic() + 5
            while endpoint.connections < round_ + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert endpoint.connections == round_ + 1
    finally:
        fe.close()


def test_front_end_that_goes_away_for_a_while(client_daemon):
    path, endpoint = client_daemon
    fe = listener(path)
    conn, _ = fe.accept()
    with conn:
        get_features(conn)
    fe.close()
    os.unlink(path)  # gone: the daemon retries with a back-off, quietly
    time.sleep(1.0)
    assert endpoint.session is None
    fe = listener(path)
    try:
        conn, _ = fe.accept()  # back within the longest back-off
        with conn:
            get_features(conn)
        assert endpoint.connections == 2
    finally:
        fe.close()


def test_cli_connect_needs_a_socket_path(capsys):
    assert main(["serve", "rng", "--fd=3", "--connect"]) == 2
    assert "--connect needs --socket-path" in capsys.readouterr().err


def test_dpdk_virtio_user_server_mode_restarts(tmp_path):
    """testpmd listens (virtio-user server=1); `serve net --null --connect` connects, frames flow;
    testpmd is stopped and started again; the daemon connects again and frames flow again."""
    require(shutil.which(TESTPMD) is not None, f"{TESTPMD} (Debian: dpdk-dev)")
    sock = str(tmp_path / "vu.sock")
    log = tmp_path / "serve.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pyvirtio.cli", "-v", "serve", "net", "--null",
                                 f"--socket-path={sock}", "--connect"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        outputs = []
        for run in range(2):
            outputs.append(run_virtio_user_txonly(sock, prefix=f"pvconn-{os.getpid()}-{run}",
                                                  seconds=6.0, vdev_opts="server=1"))
            deadline = time.monotonic() + 10
            while log.read_text().count("requests served") < run + 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            if os.path.exists(sock):
                os.unlink(sock)  # testpmd may leave its socket file behind
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    text = log.read_text()
    served = [int(m) for m in re.findall(r"requests served: ring 0: \d+, ring 1: (\d+)", text)]
    print("tx chains per testpmd run:", served)
    assert len(served) >= 2 and all(n > 1000 for n in served[:2]), text[-3000:]
    for out in outputs:
        pps = [int(x) for x in re.findall(r"Tx-pps:\s+(\d+)", out)]
        assert pps and max(pps) > 0, out[-3000:]


def _tx_frames_within(control: str, frames: int, seconds: float) -> bool:
    """Whether the daemon behind ``control`` reports at least ``frames`` transmitted frames
    within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with ControlClient(control, timeout=5) as client:
                if client.call("stats")["device"]["tx_packets"] >= frames:
                    return True
        except ControlUnavailable:
            pass  # not listening yet
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("packed", [0, 1], ids=["split", "packed"])
def test_dpdk_virtio_user_keeps_running_while_the_daemon_restarts(tmp_path, packed):
    """What virtio-user's server mode is for: the back-end goes away (here: killed) and a new one
    connects to the same running front-end.  DPDK 22.11 then sends SET_VRING_BASE 0 for its split
    transmit ring, whose avail idx is far past 0; the new daemon resumes at the used idx (net
    returns every chain in order) instead of breaking the ring, and frames flow again.  (A
    packed ring DPDK resets itself before it connects again.)"""
    require(shutil.which(TESTPMD) is not None, f"{TESTPMD} (Debian: dpdk-dev)")
    sock = str(tmp_path / "vu.sock")
    logs = [tmp_path / "serve0.log", tmp_path / "serve1.log"]
    output: list[str] = []
    frontend = threading.Thread(target=lambda: output.append(run_virtio_user_txonly(
        sock, prefix=f"pvrestart-{os.getpid()}", seconds=12.0, vdev_opts=f"server=1,packed_vq={packed}")))
    frontend.start()
    procs = []
    control = str(tmp_path / "serve0.ctl")
    try:
        for n, log in enumerate(logs):
            with open(log, "ab") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "pyvirtio.cli", "-v", "serve", "net", "--null",
                     f"--socket-path={sock}", "--connect"] + ([f"--control={control}"] if n == 0 else []),
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
            if n == 0:
                # the first daemon has carried traffic (the ring's indexes moved) before it dies
                assert _tx_frames_within(control, 1000, 30), logs[0].read_text()[-3000:]
                procs[0].kill()  # a crash: no goodbye to the front-end
                procs[0].wait(10)
            else:
                time.sleep(4)
        assert procs[1].poll() is None, logs[1].read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
        frontend.join(60)
    text = logs[1].read_text()
    assert "broken" not in text, text[-3000:]
    served = [int(m) for m in re.findall(r"requests served: ring 0: \d+, ring 1: (\d+)", text)]
    print("tx chains after the restart:", served, re.findall(r"resum.*", text))
    assert served and served[-1] > 1000, text[-3000:]
