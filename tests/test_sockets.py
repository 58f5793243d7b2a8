"""Issue 12, sockets: --socket-mode (0600 by default, no window with looser permissions), a live
socket of another program is never deleted, and the front-end's credentials are logged."""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading

import pytest

from pyvirtio.devices.rng import RngDevice
from pyvirtio.net.stream import StreamBackend
from pyvirtio.sockets import SocketInUse, bind_unix, inode_of, unlink_if_ours
from pyvirtio.vhost_user.backend.server import VhostUserServer
from pyvirtio.vhost_user.testing import TestFrontend


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _live(path) -> socket.socket:
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen(8)
    return other


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_socket_mode_defaults_to_0600_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        sock = bind_unix(str(tmp_path / "a.sock"))
        sock2 = bind_unix(str(tmp_path / "b.sock"), mode=0o660)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.sock") == 0o600 and _mode(tmp_path / "b.sock") == 0o660
    assert sorted(os.listdir(tmp_path)) == ["a.sock", "b.sock"]  # no private dir left behind
    sock.close()
    sock2.close()


def test_another_programs_live_socket_is_neither_taken_nor_deleted(tmp_path):
    path = tmp_path / "live.sock"
    other = _live(path)
    with pytest.raises(SocketInUse):
        bind_unix(str(path))
    with pytest.raises(SocketInUse):  # serve net --socket=PATH --socket-listen
        StreamBackend(str(path), listen=True)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.connect(str(path))  # still the other program's
    probe.close()
    other.close()


def test_a_stale_socket_is_replaced_and_a_replaced_path_is_not_removed(tmp_path):
    path = str(tmp_path / "s.sock")
    _live(path).close()  # stale: nobody listens
    sock = bind_unix(path)
    ino = inode_of(path)
    os.unlink(path)
    other = _live(path)  # another program took the name meanwhile
    unlink_if_ours(path, ino)
    assert os.path.exists(path)
    sock.close()
    other.close()


def test_stream_listener_removes_only_its_own_socket(tmp_path):
    path = str(tmp_path / "net.sock")
    be = StreamBackend(path, listen=True)
    assert _mode(path) == 0o600
    be.close()
    assert not os.path.exists(path)


def test_serve_logs_the_front_ends_credentials(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pyvirtio.vhost_user")
    srv = VhostUserServer()
    path = str(tmp_path / "rng.sock")
    srv.add(RngDevice(), socket_path=path, socket_mode=0o640)
    assert _mode(path) == 0o640
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        fe = TestFrontend.connect(path)
        fe.negotiate()
        fe.close()
    finally:
        srv.shutdown()
        thread.join(10)
    want = f"front-end connected (pid {os.getpid()}, uid {os.getuid()}, gid {os.getgid()})"
    assert any(want in r.getMessage() for r in caplog.records)
    assert not os.path.exists(path)
