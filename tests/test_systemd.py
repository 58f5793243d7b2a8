"""``pyvirtio serve`` under systemd: socket activation (``systemd-socket-activate``, the real
program, sets LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES), readiness on NOTIFY_SOCKET (READY=1, then
STOPPING=1), SIGHUP removing the socket file, and the contrib/ units as systemd reads them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyvirtio.errors import CliUsageError
from pyvirtio.commands import systemd
from pyvirtio.commands.probe import probe

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


def wait_for(cond, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(30)
    yield path, sock
    sock.close()


# --- the environment protocol ---------------------------------------------------------------------

def test_listen_fd_reads_and_clears_the_environment():
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "whatever"}
    r, w = os.pipe()  # fd 3 may be anything here: only its number and flags matter
    try:
        assert systemd.listen_fd("blk", env) == systemd.SD_LISTEN_FDS_START and env == {}
    finally:
        os.close(r)
        os.close(w)


def test_listen_fd_picks_the_named_socket_among_several():
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "rng:blk"}
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]  # make sure 3 and 4 are open
    try:
        assert systemd.listen_fd("blk", env) == 4
        env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
        with pytest.raises(CliUsageError, match="FileDescriptorName=blk"):
            systemd.listen_fd("blk", env)
    finally:
        for fd in fds:
            os.close(fd)


def test_listen_fds_for_another_process_are_ignored():
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert systemd.listen_fd("blk", env) is None and env == {}
    assert systemd.listen_fd("blk", {}) is None


def test_notify_sends_one_datagram(notify_socket):
    path, sock = notify_socket
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": path})
    assert sock.recv(64) == b"READY=1"
    assert not systemd.notify("READY=1", {})


# --- the daemon --------------------------------------------------------------------------------------

def test_serve_socket_activated_tells_systemd_and_serves_clients(tmp_path, image, notify_socket, boot):
    """systemd-socket-activate listens, starts ``pyvirtio serve blk`` (no --socket-path, no --fd)
    on the first connection; a probe then a guest use the disk; SIGTERM ends it with STOPPING=1."""
    notify_path, notify = notify_socket
    sock = str(tmp_path / "blk.sock")
    proc = subprocess.Popen([SOCKET_ACTIVATE, f"--listen={sock}", "--fdname=blk",
                             f"--setenv=NOTIFY_SOCKET={notify_path}",
                             sys.executable, "-m", "pyvirtio", "serve", "blk", f"--blk-file={image}"],
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: os.path.exists(sock), "systemd-socket-activate did not listen")
        report = probe(sock, timeout=30)  # this connection starts the service
        assert report["device_type_name"] == "blk" and report["config"]["capacity"] == (32 << 20) // 512
        assert notify.recv(64) == b"READY=1"
        args = ["-chardev", f"socket,id=vu,path={sock}", "-device", "vhost-user-blk-pci,chardev=vu"]
        result = boot("echo sectors=$(cat /sys/block/vda/size)", qemu_args=args, timeout=240)
        assert result.values()["sectors"] == str((32 << 20) // 512), result.lines
        proc.terminate()
        assert proc.wait(30) == 0
        assert notify.recv(64) == b"STOPPING=1"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert "on inherited fd 3 (systemd)" in err and f"path={sock}" in err, err


def test_sighup_ends_serve_and_removes_its_socket(tmp_path):
    sock = tmp_path / "r.sock"
    proc = subprocess.Popen([sys.executable, "-m", "pyvirtio", "serve", "rng", f"--socket-path={sock}"],
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(sock.exists, "serve did not listen")
        time.sleep(0.2)  # the signal handlers are installed after the socket is made
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not sock.exists()


# --- the units in contrib/ ---------------------------------------------------------------------------

def test_contrib_units_pass_systemd_analyze_verify(tmp_path):
    """``systemd-analyze verify`` with ExecStart pointed at this venv's program."""
    program = shutil.which("pyvirtio", path=os.path.dirname(sys.executable))
    assert program, "pyvirtio is not installed next to this interpreter"
    for unit in ("pyvirtio-blk@.socket", "pyvirtio-blk@.service"):
        text = (CONTRIB / unit).read_text()
        assert "ExecStart=/usr/local/bin/pyvirtio serve blk" in text or unit.endswith(".socket")
        text = text.replace("/usr/local/bin/pyvirtio", program)
        (tmp_path / unit.replace("@.", "@vm1.")).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", "pyvirtio-blk@vm1.socket",
                        "pyvirtio-blk@vm1.service"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    socket_unit = (CONTRIB / "pyvirtio-blk@.socket").read_text()
    assert "FileDescriptorName=blk" in socket_unit and "Type=notify" in (CONTRIB / "pyvirtio-blk@.service").read_text()
