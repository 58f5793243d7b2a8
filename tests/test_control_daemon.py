"""`pyvirtio serve ... --control=PATH` as a program, driven by `pyvirtio ctl` / `pyvirtio top` as
programs and by our own vhost-user front-end doing I/O through the daemon."""

import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest

from pyvirtio.control.client import ControlClient
from pyvirtio.spec.ids import DeviceType
from pyvirtio.vhost_user.frontend.transport import VhostUserTransport

CLI = [sys.executable, "-m", "pyvirtio.cli"]


def _serve(tmp_path, kind, *args):
    sock, ctl = str(tmp_path / "vu.sock"), str(tmp_path / "ctl.sock")
    proc = subprocess.Popen([*CLI, "serve", kind, *args, f"--socket-path={sock}", f"--control={ctl}"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not (os.path.exists(sock) and os.path.exists(ctl)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"serve did not start: {proc.stderr.read()}")
        time.sleep(0.05)
    return proc, sock, ctl


def _stop(proc):
    proc.terminate()
    try:
        assert proc.wait(10) == 0
    finally:
        proc.kill()


def ctl(path, *words, json_out=True, check=True):
    run = subprocess.run([*CLI, "ctl", *(["--json"] if json_out else []), path, *words],
                         capture_output=True, text=True, timeout=60)
    if check:
        assert run.returncode == 0, run.stderr
    if json_out and run.stdout:
        return json.loads(run.stdout), run
    return None, run


@pytest.fixture
def rng(tmp_path):
    proc, sock, path = _serve(tmp_path, "rng")
    yield sock, path
    _stop(proc)


def test_the_control_socket_is_0600_and_removed_at_exit(tmp_path):
    proc, sock, path = _serve(tmp_path, "rng")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    _stop(proc)
    assert not os.path.exists(path)


def test_rng_counts_what_our_driver_did_exactly(rng):
    from pyvirtio.drivers.rng import RngDriver
    sock, path = rng
    t = VhostUserTransport(sock, device_type=DeviceType.ENTROPY)
    try:
        drv = RngDriver.probe(t)
        for _ in range(10):
            assert len(drv.read(32)) == 32
        reply, _ = ctl(path, "stats")
        stats = reply["result"]
        deadline = time.monotonic() + 5  # the last interrupt is counted just after it is sent
        while stats["queues"][0]["interrupts"] < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
            stats = ctl(path, "stats")[0]["result"]
        assert stats["type"] == "entropy" and stats["connection"]["connected"]
        q = stats["queues"][0]
        assert (q["chains"], q["bytes_written"], q["bytes_read"]) == (10, 320, 0)
        # Kicks are eventfd writes: one that lands before the worker read the last one (a turn
        # woken by the control path may serve a request before its kick is read) counts once.
        assert 1 <= q["kicks"] <= 10 and q["interrupts"] == 10
        assert q["in_flight"] == 0 and q["errors"] == 0
        assert "VERSION_1" in stats["features"]["names"]
        drv.remove()
    finally:
        t.close()


def test_blk_counts_bytes_both_ways(tmp_path):
    from pyvirtio.drivers.blk import BlkDriver
    image = tmp_path / "d.img"
    image.write_bytes(bytes(1 << 20))
    proc, sock, path = _serve(tmp_path, "blk", f"--blk-file={image}")
    t = VhostUserTransport(sock, device_type=DeviceType.BLOCK)
    try:
        drv = BlkDriver.probe(t)
        for i in range(4):
            drv.write(i * 8, bytes([i]) * 4096)
        for i in range(4):
            assert drv.read(i * 8, 4096) == bytes([i]) * 4096
        # The driver sees each used entry before the worker has sent (and counted) its
        # interrupt: the last count may land a moment after the last read returns.
        deadline = time.monotonic() + 5
        with ControlClient(path) as client:
            stats = client.call("stats")
            while stats["queues"][0]["interrupts"] < 8 and time.monotonic() < deadline:
                time.sleep(0.02)
                stats = client.call("stats")
        q = stats["queues"][0]
        assert q["chains"] == 8
        assert q["bytes_read"] == 8 * 16 + 4 * 4096  # headers, written data
        assert q["bytes_written"] == 8 * 1 + 4 * 4096  # status bytes, read data
        # Kicks are eventfd writes: the worker notifies a completion before it looks at the ring
        # again, so the driver's next request and kick may land while that look serves it, and
        # the kick after that before the fd is read — two kicks, one count (as for rng above).
        assert 1 <= q["kicks"] <= 8 and q["interrupts"] == 8 and q["errors"] == 0
        assert stats["device"]["write_bytes"] == stats["device"]["read_bytes"] == 4 * 4096
        drv.remove()
    finally:
        t.close()
        _stop(proc)


def test_ctl_errors_are_one_line_and_exit_1(rng, tmp_path):
    sock, path = rng
    _, run = ctl(path, "resize", "1G", json_out=False, check=False)
    assert run.returncode == 1
    assert run.stderr.strip() == "pyvirtio ctl: error: unsupported: resize: not a block device (this one is entropy)"
    _, run = ctl(str(tmp_path / "missing"), "stats", json_out=False, check=False)
    assert run.returncode == 1 and "no such control socket" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    dead = tmp_path / "dead"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(dead))
    s.close()  # a socket file nobody listens on
    _, run = ctl(str(dead), "stats", json_out=False, check=False)
    assert run.returncode == 1 and "connection refused" in run.stderr
    _, run = ctl(path, "frobnicate", json_out=False, check=False)
    assert run.returncode == 2


def test_hostile_clients_do_not_stop_the_daemon(rng):
    sock, path = rng
    for junk in (b"\xff" * 100 + b"\n", b"{" * 70000, b'{"cmd":"stats","args":[]}\n'):
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(junk)
        s.close()
    many = []
    for _ in range(20):  # more than MAX_CONTROL_CLIENTS at once: the extra ones are told and closed
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        many.append(s)
    time.sleep(0.3)
    for s in many:
        s.close()
    reply, _ = ctl(path, "version")
    assert reply["result"]["protocol"] == 1


def test_the_fault_rule_words_become_one_rule(rng):
    sock, path = rng
    reply, run = ctl(path, "fault", "add", "stall", "--ms", "5", check=False)
    if reply is not None and not reply["ok"] and reply["error"]["type"] == "unsupported":
        pytest.skip("this device has no fault injection yet")
    assert run.returncode == 0, run.stderr
    rule = reply["result"]
    assert rule["rule"].startswith("stall") and rule["fired"] == 0
    listed, _ = ctl(path, "fault", "list")
    assert [r["id"] for r in listed["result"]] == [rule["id"]]
    stats, _ = ctl(path, "stats")
    assert [r["id"] for r in stats["result"]["faults"]] == [rule["id"]]
    cleared, _ = ctl(path, "fault", "clear")
    assert cleared["result"] == {"removed": 1}
    bad, run = ctl(path, "fault", "add", "nosuchkind", check=False)
    assert run.returncode == 1 and bad["error"]["type"] == "failed"


def test_net_link_down_and_up_over_the_connection(tmp_path):
    from pyvirtio.drivers.net import NetDriver
    proc, sock, path = _serve(tmp_path, "net", "--null")
    t = VhostUserTransport(sock, device_type=DeviceType.NET)
    try:
        NetDriver.probe(t)
        reply, _ = ctl(path, "link", "down")
        assert reply["result"] == {"link": "down"}
        # QEMU sees a vhost-user net's link only by the connection: the daemon hangs up and
        # hides its socket until the link is up again (pyvirtio.net.vhost_link).
        deadline = time.monotonic() + 10
        while os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(sock)
        stats, _ = ctl(path, "stats")
        assert stats["result"]["link"] == "down"
        reply, _ = ctl(path, "link", "up")
        assert reply["result"] == {"link": "up"} and os.path.exists(sock)
    finally:
        t.close()
        _stop(proc)
    assert not os.path.exists(sock) and not os.path.exists(sock + ".link-down")


def test_console_port_add_and_remove_end_to_end(tmp_path):
    from pyvirtio.drivers.console import ConsoleDriver
    proc, sock, path = _serve(tmp_path, "console")
    t = VhostUserTransport(sock, device_type=DeviceType.CONSOLE)
    host = socket.socket(socket.AF_UNIX)
    port_path = str(tmp_path / "port.sock")
    try:
        drv = ConsoleDriver.probe(t)
        _, run = ctl(path, "port", "add", "org.example.live", "--path", port_path, json_out=False)
        assert "org.example.live" in run.stdout
        port = drv.open_port("org.example.live", timeout=10)
        host.connect(port_path)
        port.wait_connected(timeout=10)
        host.sendall(b"hello guest")
        assert port.read_exactly(11, timeout=10) == b"hello guest"
        reply, _ = ctl(path, "port", "resize", "org.example.live", "120", "40")
        assert reply["result"]["cols"] == 120
        reply, _ = ctl(path, "port", "remove", "org.example.live")
        assert reply["result"]["name"] == "org.example.live"
        bad, run = ctl(path, "port", "remove", "org.example.live", check=False)
        assert run.returncode == 1 and bad["error"]["type"] == "failed"
        drv.remove()
    finally:
        host.close()
        t.close()
        _stop(proc)


def test_reset_sets_needs_reset(rng):
    sock, path = rng
    reply, _ = ctl(path, "reset")
    assert "DEVICE_NEEDS_RESET" in reply["result"]["status"]
    stats, _ = ctl(path, "stats")
    assert stats["result"]["needs_reset"]


def test_top_prints_snapshots_with_rates_when_not_a_tty(rng):
    from pyvirtio.drivers.rng import RngDriver
    sock, path = rng
    t = VhostUserTransport(sock, device_type=DeviceType.ENTROPY)
    try:
        drv = RngDriver.probe(t)
        drv.read(16)
        run = subprocess.run([*CLI, "top", path, "--interval", "0.2", "--count", "3"],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert run.stdout.count("--- ") == 3 and "chains/s" in run.stdout
        assert "\x1b[" not in run.stdout
        watch = subprocess.run([*CLI, "ctl", path, "stats", "--watch", "--interval", "0.1",
                                "--count", "2"], capture_output=True, text=True, timeout=60)
        assert watch.returncode == 0 and watch.stdout.count("--- ") == 2
        drv.remove()
    finally:
        t.close()


def test_ring_shows_the_queue_as_both_sides_see_it(rng):
    """``ctl ring N`` against a live daemon: refused with no front-end (no memory to read),
    then the ring our driver set up, in JSON and for reading; a queue that does not exist and
    a window out of range are bad arguments."""
    from pyvirtio.commands.ctl import to_request
    from pyvirtio.drivers.rng import RngDriver
    sock, path = rng
    _, run = ctl(path, "ring", "0", check=False)
    assert run.returncode == 1 and "no front-end connected" in run.stderr
    t = VhostUserTransport(sock, device_type=DeviceType.ENTROPY)
    try:
        drv = RngDriver.probe(t)
        for _ in range(5):
            assert len(drv.read(16)) == 16
        reply, _ = ctl(path, "ring", "0", "--window", "2")
        r = reply["result"]
        assert r["ready"] and not r["broken"] and r["in_flight"] == 0 and r["index"] == 0
        if r["layout"] == "packed":
            assert (r["next_avail"], r["next_used"]) == (5, 5)
            assert r["descriptors"] and r["next_avail_ready"] is False
        else:
            assert (r["next_avail"], r["next_used"]) == (5, 5)
            assert r["driver"]["avail_idx"] == 5 and r["device"]["used_idx"] == 5
        _, run = ctl(path, "ring", "0", json_out=False)
        assert run.stdout.startswith(f"queue 0: {r['layout']} ring of ") and "next_avail 5" in run.stdout
        _, run = ctl(path, "ring", "3", check=False)
        assert run.returncode == 1 and "queue 3 does not exist" in run.stderr
        _, run = ctl(path, "ring", "0", "--window", "65", check=False)
        assert run.returncode == 1 and "window 65" in run.stderr
        drv.remove()
    finally:
        t.close()
    assert to_request(["ring", "1", "--window=4"]) == ("ring", {"queue": 1, "window": 4})
    _, run = ctl(path, "ring", "x", check=False)
    assert run.returncode == 2 and "QUEUE" in run.stderr
