"""The vhost-user daemon over real UNIX sockets: fd passing, kick/call eventfds, many devices on
one event loop, a worker per ring, reconnect, and the ``pyvirtio serve`` program conventions."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.testing.serve import signal_thread, worker_threads
from pyvirtio.vhost_user.backend.server import SocketInUse, bind_unix
from pyvirtio.vhost_user.testing import TestFrontend

pytestmark = pytest.mark.timeout(60)


def image(tmp_path, size=4 << 20, name="disk.img"):
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def rng_roundtrip(fe, n=64):
    addr, length = fe.buffer(n)
    fe.rings[0].queue.add(fe.memory, [], [(addr, length)], token=addr)
    fe.kick(0)
    [(token, written)] = fe.wait_used(0)
    assert token == addr and written == n
    return fe.memory.read(addr, n)


def blk_write(fe, q, sector, data, token=None):
    hdr = fe.buffer(struct.pack("<IIQ", 1, 0, sector))
    status = fe.buffer(1)
    fe.rings[q].queue.add(fe.memory, [hdr, fe.buffer(data)], [status], token=token or sector)
    fe.kick(q)
    return status


def test_rng_over_a_socket_signals_the_call_fd(server, tmp_path):
    path = str(tmp_path / "rng.sock")
    server.add(RngDevice(), socket_path=path)
    server.start()
    fe = TestFrontend.connect(path)
    fe.start(size=16)
    a, b = rng_roundtrip(fe), rng_roundtrip(fe)
    assert a != b and a != bytes(64)
    ready, _, _ = select.select([fe.rings[0].call_fd], [], [], 5)
    assert ready and os.eventfd_read(fe.rings[0].call_fd) >= 1
    fe.close()


def test_reconnect_after_the_front_end_hangs_up(server, tmp_path):
    path = str(tmp_path / "rng.sock")
    ep = server.add(RngDevice(), socket_path=path)
    server.start()
    for _ in range(3):
        fe = TestFrontend.connect(path)
        fe.start(size=16)
        rng_roundtrip(fe)
        fe.close()
    deadline = time.monotonic() + 5
    while ep.session is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ep.connections == 3 and ep.session is None


def test_second_front_end_waits_until_the_first_leaves(server, tmp_path):
    path = str(tmp_path / "rng.sock")
    server.add(RngDevice(), socket_path=path)
    server.start()
    first = TestFrontend.connect(path)
    first.start(size=16)
    second = TestFrontend.connect(path)  # sits in the listen backlog
    rng_roundtrip(first)
    first.close()
    second.start(size=16)
    rng_roundtrip(second)
    second.close()


class SlowBlk(BlkDevice):
    """A disk whose requests on queue 0 take a while (a slow storage call)."""

    def handle_chain(self, queue_index, chain):
        if queue_index == 0:
            time.sleep(1.0)
        return super().handle_chain(queue_index, chain)


def test_slow_io_does_not_stall_other_queues_or_devices(server, tmp_path):
    blk_path, rng_path = str(tmp_path / "blk.sock"), str(tmp_path / "rng.sock")
    server.add(SlowBlk(image(tmp_path), num_queues=2), socket_path=blk_path)
    server.add(RngDevice(), socket_path=rng_path)
    server.start()
    disk, rng = TestFrontend.connect(blk_path), TestFrontend.connect(rng_path)
    disk.start(queues=2, size=16)
    rng.start(size=16)
    blk_write(disk, 0, 0, b"a" * 512)  # takes a second
    time.sleep(0.05)
    t0 = time.monotonic()
    blk_write(disk, 1, 8, b"b" * 512)
    disk.wait_used(1)
    rng_roundtrip(rng)
    assert time.monotonic() - t0 < 0.5, "queue 1 or the other device waited for queue 0"
    disk.wait_used(0)
    disk.close(), rng.close()


def test_blk_parallel_writers_on_two_queues(server, tmp_path):
    path = image(tmp_path)
    dev = BlkDevice(path, num_queues=2)
    sock = str(tmp_path / "blk.sock")
    server.add(dev, socket_path=sock)
    server.start()
    fe = TestFrontend.connect(sock, memory_size=8 << 20)
    fe.start(queues=2, size=64)
    statuses = [blk_write(fe, i % 2, i * 8, bytes([i]) * 4096, token=i) for i in range(40)]
    got = fe.wait_used(0, 20) + fe.wait_used(1, 20)
    assert sorted(t for t, _ in got) == list(range(40))
    assert all(fe.memory.read(s[0], 1) == b"\0" for s in statuses)
    with open(path, "rb") as f:
        for i in range(40):
            f.seek(i * 8 * 512)
            assert f.read(4096) == bytes([i]) * 4096
    fe.close()
    dev.close()


def test_bind_unix_replaces_a_stale_socket_and_refuses_a_live_one(tmp_path):
    path = str(tmp_path / "x.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    live = bind_unix(path)
    with pytest.raises(SocketInUse, match="in use"):
        bind_unix(path)
    live.close()
    (tmp_path / "file").write_text("")
    with pytest.raises(SocketInUse, match="not a socket"):
        bind_unix(str(tmp_path / "file"))


# --- the program -----------------------------------------------------------------------------


def serve(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "pyvirtio.cli", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def run_serve(*args, timeout=20):
    return subprocess.run([sys.executable, "-m", "pyvirtio.cli", "serve", *args],
                          capture_output=True, text=True, timeout=timeout)


def wait_for(path, proc, timeout=10):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no socket: {proc.communicate(timeout=5)}")
        time.sleep(0.02)


def test_print_capabilities():
    r = run_serve("blk", "--print-capabilities")
    assert r.returncode == 0 and json.loads(r.stdout) == {"type": "block", "features": ["read-only", "blk-file"]}
    r = run_serve("rng", "--print-capabilities", "--socket-path=/nonexistent/x")
    assert r.returncode == 0 and json.loads(r.stdout) == {"type": "rng"}


@pytest.mark.parametrize("args,message", [
    (["blk", "--socket-path=S", "--bogus"], "unrecognized arguments: --bogus"),
    (["blk", "--socket-path=S", "--num-queues=x"], "invalid int value"),
    (["blk", "--socket-path=S"], "--blk-file=FILE is required"),
    (["blk", "--socket-path=S", "--blk-file=/nonexistent/disk.img"], "no such file"),
    (["blk", "--socket-path=S", "--blk-file=IMG", "--num-queues=0"], "must be 1..64"),
    (["rng"], "exactly one of --socket-path"),
    (["rng", "--socket-path=S", "--fd=0"], "exactly one of --socket-path"),
    (["rng", "--fd=99"], "--fd=99"),
    (["rng", "--socket-path=/nonexistent/dir/x.sock"], "No such file or directory"),
])
def test_bad_input_exits_early_with_one_line(tmp_path, args, message):
    img = image(tmp_path)
    args = [a.replace("=S", f"={tmp_path}/s.sock").replace("IMG", img) for a in args]
    r = run_serve(*args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_unusable_file_is_refused(tmp_path):
    if os.geteuid() == 0:  # root reads every file: use one nobody can open read-write
        img, why = "/proc/version", "--blk-file=/proc/version: "
    else:
        img, why = image(tmp_path), "Permission denied"
        os.chmod(img, 0)
    r = run_serve("blk", f"--socket-path={tmp_path}/s.sock", f"--blk-file={img}")
    assert r.returncode != 0 and why in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "s.sock")


def test_socket_in_use_is_refused_and_sigterm_ends_cleanly(tmp_path):
    path = str(tmp_path / "rng.sock")
    proc = serve("rng", f"--socket-path={path}")
    try:
        wait_for(path, proc)
        r = run_serve("rng", f"--socket-path={path}")
        assert r.returncode != 0 and "in use" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        fe = TestFrontend.connect(path)
        fe.start(size=16)
        rng_roundtrip(fe)
        proc.send_signal(signal.SIGTERM)  # with a front-end connected
        assert proc.wait(10) == 0
        assert not os.path.exists(path)
        fe.close()
    finally:
        proc.kill()
        proc.communicate()


def test_sigterm_taken_by_any_thread_ends_the_daemon(tmp_path):
    """The kernel may hand SIGTERM to a worker thread (an aio thread, the engine) rather than the
    main one; Python runs the handler only in the main thread, which must wake up for it."""
    img = image(tmp_path)
    path = str(tmp_path / "blk.sock")
    proc = serve("blk", f"--socket-path={path}", f"--blk-file={img}", "--aio=threads")
    try:
        wait_for(path, proc)
        fe = TestFrontend.connect(path)  # a session: the engine's thread runs too
        fe.start(size=16)
        status = blk_write(fe, 0, 0, b"x" * 512)
        fe.wait_used(0)
        assert fe.memory.read(status[0], 1) == b"\0"
        tids = worker_threads(proc.pid)
        assert tids, "serve blk --aio=threads runs worker threads"
        signal_thread(proc.pid, tids[-1], signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not os.path.exists(path)
        fe.close()
    finally:
        proc.kill()
        proc.communicate()


def test_stale_socket_file_is_replaced(tmp_path):
    path = str(tmp_path / "rng.sock")
    proc = serve("rng", f"--socket-path={path}")
    wait_for(path, proc)
    proc.kill()  # no cleanup: the socket file stays behind
    proc.communicate()
    assert os.path.exists(path)
    proc = serve("rng", f"--socket-path={path}")
    try:
        time.sleep(0.5)
        fe = TestFrontend.connect(path)
        fe.start(size=16)
        rng_roundtrip(fe)
        fe.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_inherited_listening_socket(tmp_path):
    path = str(tmp_path / "rng.sock")
    listener = bind_unix(path)
    fd = listener.fileno()
    proc = serve("rng", f"--fd={fd}", pass_fds=[fd])
    listener.close()
    try:
        fe = TestFrontend.connect(path)
        fe.start(size=16)
        rng_roundtrip(fe)
        fe.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.communicate()


# --- the vhost-user.json description files --------------------------------------------------

VHOST_USER_TYPES = {"9p", "balloon", "block", "caif", "console", "crypto", "gpu", "input", "net",
                    "rng", "rpmsg", "rproc-serial", "scsi", "vsock", "fs"}


@pytest.mark.parametrize("backend", ["blk", "rng", "net", "console"])
def test_installed_json_descriptions_match_the_program(backend, tmp_path):
    from pyvirtio.commands.descriptors import install
    written = {p.name: p for p in install(tmp_path)}
    desc = json.loads(written[f"50-pyvirtio-{backend}.json"].read_text())
    assert set(desc) <= {"description", "type", "binary", "tags"}
    assert {"description", "type", "binary"} <= set(desc)
    assert desc["type"] in VHOST_USER_TYPES and os.path.isabs(desc["binary"])
    assert os.access(desc["binary"], os.X_OK)  # the installed entry point, not a guess
    assert all(isinstance(t, str) for t in desc.get("tags", []))
    caps = json.loads(run_serve(backend, "--print-capabilities").stdout)
    assert caps["type"] == desc["type"]
    # the binary is the program: it answers --print-capabilities the same way
    run = subprocess.run([desc["binary"], "--print-capabilities"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and json.loads(run.stdout)["type"] == desc["type"]


def test_entry_points_run_serve(capsys):
    from pyvirtio.cli import main_blk, main_rng
    assert main_blk(["--print-capabilities"]) == 0
    assert json.loads(capsys.readouterr().out)["type"] == "block"
    assert main_rng(["--print-capabilities"]) == 0
    assert json.loads(capsys.readouterr().out) == {"type": "rng"}


def test_inherited_connected_socket_serves_one_front_end_then_exits(tmp_path):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = serve("rng", f"--fd={theirs.fileno()}", pass_fds=[theirs.fileno()])
    theirs.close()
    try:
        from pyvirtio.vhost_user.testing import SocketChannel
        fe = TestFrontend(SocketChannel(sock=ours))
        fe.start(size=16)
        rng_roundtrip(fe)
        fe.close()
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_a_kicks_turn_in_one_call_serves_only_the_rings_current_kick_fd():
    """Session.serve_kick, the worker's usual turn in one call: a kick fd the control path
    replaced since the poll (or a ring not started) gets -1 — nothing served; the ring's own fd
    serves the ring and sends the notification the device asks for: the used element, the
    bytes, the call eventfd, 1 notification."""
    import socket as socketlib
    from pyvirtio.vhost_user.backend.server import Endpoint, Session
    from pyvirtio.vhost_user.testing import PairChannel

    device = RngDevice()
    ours, theirs = socketlib.socketpair()
    session = Session(Endpoint(device, theirs, name="serve-kick"), theirs)
    try:
        session.workers[0].stop()  # its turns are taken here
        assert session.serve_kick(0, 12345) == -1  # no ring started yet
        fe = TestFrontend(PairChannel(session.conn), memory_size=4 << 20)
        fe.start(size=16)
        ring, kick = fe.rings[0], session.kick_fd(0)
        addr, length = fe.buffer(64)
        ring.queue.add(fe.memory, [], [(addr, length)], token=7)
        assert session.serve_kick(0, kick + 1000) == -1
        assert ring.queue.get_buf(fe.memory) is None  # not served
        assert session.serve_kick(0, kick) == 1
        assert ring.queue.get_buf(fe.memory) == (7, 64)
        assert fe.memory.read(addr, 64) != bytes(64)
        assert select.select([ring.call_fd], [], [], 5)[0] and os.eventfd_read(ring.call_fd) == 1
    finally:
        session.close()
        ours.close()
