"""Hostile front-ends against the daemon: every fault gets one clear log line, the fds that came
with a refused message are closed, and the daemon keeps serving — the same socket afterwards and
another device on another socket meanwhile."""

from __future__ import annotations

import logging
import os
import select
import struct
import threading
import time

import pytest

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.vhost_user.protocol import FrontendReq as R
from pyvirtio.vhost_user.backend.server import VhostUserServer
from pyvirtio.vhost_user.testing import SocketChannel, TestFrontend
from pyvirtio.vhost_user.wire import (U64, ConfigSpace, MemoryRegion, SingleMemoryRegion, VringAddr,
                                      VringState, encode)

pytestmark = pytest.mark.timeout(60)
LOGGER = "pyvirtio.vhost_user"


@pytest.fixture
def daemon(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(4 << 20)
    blk = BlkDevice(str(img))
    srv = VhostUserServer()
    paths = {"blk": str(tmp_path / "blk.sock"), "rng": str(tmp_path / "rng.sock")}
    srv.add(blk, socket_path=paths["blk"])
    srv.add(RngDevice(), socket_path=paths["rng"])
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield paths, srv
    srv.shutdown()
    thread.join(10)
    blk.close()


def log_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def wait_log(caplog, *words, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_lines(caplog):
            if all(w in line for w in words):
                return line
        time.sleep(0.01)
    raise AssertionError(f"no log line with {words}: {log_lines(caplog)}")


def pipe_end_closed(w: int) -> bool:
    os.set_blocking(w, False)
    try:
        os.write(w, b"x")
        return False
    except BrokenPipeError:
        return True


def good_rng_session(path):
    fe = TestFrontend.connect(path)
    fe.start(size=16)
    addr, n = fe.buffer(32)
    fe.rings[0].queue.add(fe.memory, [], [(addr, n)], token=addr)
    fe.kick(0)
    assert fe.wait_used(0) == [(addr, 32)]
    fe.close()


def good_blk_session(path):
    fe = TestFrontend.connect(path)
    fe.start(size=16)
    hdr, data, status = fe.buffer(struct.pack("<IIQ", 1, 0, 0)), fe.buffer(b"ok" * 256), fe.buffer(1)
    fe.rings[0].queue.add(fe.memory, [hdr, data], [status], token="w")
    fe.kick(0)
    assert fe.wait_used(0) == [("w", 1)] and fe.memory.read(status[0], 1) == b"\0"
    fe.close()


def test_refused_messages_are_logged_and_the_connection_goes_on(daemon, caplog):
    paths, _ = daemon
    fe = TestFrontend.connect(paths["blk"])
    fe.negotiate()
    r, w = os.pipe()
    faults = [
        (encode(77, b"junk"), [], ("request 77", "unknown request")),
        (encode(R.SET_FEATURES, bytes(4)), [], ("SET_FEATURES", "payload is 4 bytes, expected 8")),
        (encode(R.SET_OWNER), [r], ("SET_OWNER", "1 fds, expected 0")),
        (encode(R.SET_VRING_NUM, VringState(0, 100).pack()), [], ("SET_VRING_NUM", "not a power of two")),
        (encode(R.SET_VRING_NUM, VringState(0, 1024).pack()), [], ("SET_VRING_NUM", "1024")),
        (encode(R.SET_VRING_NUM, VringState(9, 64).pack()), [], ("SET_VRING_NUM", "ring index 9")),
        (encode(R.SET_LOG_BASE, bytes(16)), [], ("SET_LOG_BASE", "does not implement")),
        (encode(R.SET_OWNER, flags=1 | 0x40), [], ("SET_OWNER", "reserved header flag")),
    ]
    for data, fds, _ in faults:
        fe.send_raw(data, fds)
    os.close(r)
    assert fe.add_mem_reg() == 0
    uva = fe.region().userspace_addr
    assert fe.ack(R.SET_VRING_ADDR, VringAddr(0, 0, uva + (64 << 20), uva, uva + 0x800, 0).pack()) == 1
    assert fe.get_u64(R.GET_FEATURES)  # still answering
    for _, _, words in faults:
        wait_log(caplog, "rejected", *words)
    wait_log(caplog, "rejected SET_VRING_ADDR", "front-end address range")
    assert pipe_end_closed(w)
    os.close(w)
    fe.close()
    good_blk_session(paths["blk"])


@pytest.mark.parametrize("data,nfds,words", [
    (struct.pack("=III", R.GET_FEATURES, 2, 0), 1, ("version 2",)),
    (struct.pack("=III", R.SET_OWNER, 1, 1 << 20), 2, ("1048576-byte payload",)),
    (encode(R.GET_VRING_BASE, VringState(7, 0).pack()), 0, ("GET_VRING_BASE must be answered", "ring index 7")),
    (encode(R.GET_FEATURES, b"extra"), 0, ("GET_FEATURES must be answered", "payload is 5 bytes")),
    (encode(R.GET_PROTOCOL_FEATURES), 1, ("GET_PROTOCOL_FEATURES must be answered", "1 fds")),
])
def test_fatal_faults_end_the_connection_and_the_socket_serves_again(daemon, caplog, data, nfds, words):
    paths, _ = daemon
    ch = SocketChannel(paths["blk"])
    pipes = [os.pipe() for _ in range(nfds)]
    ch.send(data, [r for r, _ in pipes])
    for r, _ in pipes:
        os.close(r)
    assert ch.closed_by_peer()
    wait_log(caplog, "connection broken", *words)
    wait_log(caplog, "front-end gone", "protocol error")
    for _, w in pipes:
        assert pipe_end_closed(w)
        os.close(w)
    good_blk_session(paths["blk"])


def test_truncated_message_then_hang_up(daemon, caplog):
    paths, _ = daemon
    ch = SocketChannel(paths["rng"])
    ch.send(encode(R.SET_VRING_ADDR, VringAddr(0, 0, 0, 0, 0, 0).pack())[:20])
    ch.close()
    wait_log(caplog, "hung up in the middle of a message", "20 bytes")
    good_rng_session(paths["rng"])


def test_region_past_the_end_of_its_file_is_refused(daemon, caplog):
    """A region longer than its memfd would SIGBUS the daemon on first touch."""
    paths, _ = daemon
    fe = TestFrontend.connect(paths["blk"])
    fe.negotiate()
    fd = os.memfd_create("short", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 4096)
    region = MemoryRegion(0, 1 << 20, 0x7f00_0000_0000, 0)
    assert fe.ack(R.ADD_MEM_REG, SingleMemoryRegion.of(region).pack(), [fd]) == 1
    os.close(fd)
    wait_log(caplog, "rejected ADD_MEM_REG", "runs past the end")
    fe.close()
    good_blk_session(paths["blk"])


def test_descriptor_outside_memory_breaks_only_that_ring(daemon, caplog):
    paths, _ = daemon
    fe = TestFrontend.connect(paths["blk"])
    fe.start(size=16)
    err = os.eventfd(0, os.EFD_NONBLOCK)
    fe.request(R.SET_VRING_ERR, U64(0).pack(), [err])
    fe.get_u64(R.GET_FEATURES)  # SET_VRING_ERR is handled before the bad chain goes in
    fe.rings[0].queue.add(fe.memory, [(0x10, 16)], [(0x20, 1)], token=1)  # not guest memory
    fe.kick(0)
    assert select.select([err], [], [], 5)[0], "the err eventfd was not signalled"
    wait_log(caplog, "ring 0 broken by the driver", "outside guest memory")
    assert fe.get_u64(R.GET_FEATURES)  # the connection itself is fine
    os.close(err)
    fe.close()
    good_blk_session(paths["blk"])


def test_garbage_flood_while_another_device_serves(daemon, caplog):
    paths, _ = daemon
    stop = threading.Event()
    errors = []

    def other_device():
        try:
            while not stop.is_set():
                good_rng_session(paths["rng"])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=other_device)
    t.start()
    try:
        for seed in range(20):
            ch = SocketChannel(paths["blk"])
            try:
                ch.send(os.urandom(64 + seed * 8))
                ch.closed_by_peer(timeout=0.5)
            except OSError:
                pass
            ch.close()
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    good_blk_session(paths["blk"])


def test_config_requests_with_bad_ranges_get_the_empty_reply(daemon, caplog):
    paths, _ = daemon
    fe = TestFrontend.connect(paths["blk"])
    fe.negotiate()
    reply = fe.request(R.GET_CONFIG, ConfigSpace(0, 4096, 0, bytes(0)).pack()[:12] + bytes(8))
    assert reply.payload == b""
    wait_log(caplog, "GET_CONFIG refused")
    assert fe.get_config(0, 8)  # and a good one still works
    fe.close()


def test_a_call_fd_nobody_reads_cannot_block_the_daemon(daemon, caplog):
    """Issue 12, class 2.  A pipe as call fd is refused (only eventfds are taken).  An eventfd
    call fd whose counter the front-end pushed to its maximum, and whose O_NONBLOCK it cleared
    again (the flag lives in the open file description it shares), cannot block the worker:
    notifications are dropped, requests are still served, the control path still answers."""
    paths, _ = daemon
    fe = TestFrontend.connect(paths["rng"])
    fe.start(size=16)
    r, w = os.pipe()
    fe.request(R.SET_VRING_CALL, U64(0).pack(), [w])
    os.close(w)
    wait_log(caplog, "rejected SET_VRING_CALL", "not an eventfd")
    os.close(r)
    call = os.eventfd(0)
    os.eventfd_write(call, 0xFFFF_FFFF_FFFF_FFFE - 1)  # room for one more notification
    fe.request(R.SET_VRING_CALL, U64(0).pack(), [call])
    fe.get_u64(R.GET_FEATURES)  # handled (and the fd made non-blocking) before the kicks
    os.set_blocking(call, True)  # the front-end takes the non-blocking mode away again
    q = fe.rings[0].queue
    buf = fe.alloc.alloc(8)
    for i in range(50):
        q.add(fe.memory, [], [(buf, 8)], token=i + 1)
        fe.kick(0)
        fe.wait_used(0, timeout=5)
    assert os.eventfd_read(call) == 0xFFFF_FFFF_FFFF_FFFE  # the first one went in, then full
    assert fe.get_u64(R.GET_FEATURES)
    fe.close()
    os.close(call)
    good_rng_session(paths["rng"])


@pytest.mark.parametrize("kind", ["devnull", "closed-pipe", "file"])
def test_a_dead_kick_fd_neither_floods_the_log_nor_spins(daemon, caplog, tmp_path, kind):
    """Issue 12, class 4: a kick fd at end of file (/dev/null, a pipe whose writer is gone, a
    regular file) is refused at SET_VRING_KICK with one log line; afterwards the daemon is idle
    (no log flood, no busy worker) and still serves."""
    paths, _ = daemon
    fe = TestFrontend.connect(paths["rng"])
    fe.start(size=16)
    if kind == "devnull":
        fd = os.open("/dev/null", os.O_RDONLY)
    elif kind == "file":
        (tmp_path / "f").write_bytes(b"")
        fd = os.open(tmp_path / "f", os.O_RDONLY)
    else:
        fd, w = os.pipe()
        os.close(w)
    fe.request(R.SET_VRING_KICK, U64(0).pack(), [fd])
    os.close(fd)
    fe.get_u64(R.GET_FEATURES)
    cpu = time.process_time()
    time.sleep(1.0)
    assert time.process_time() - cpu < 0.5, "a worker spins on the dead kick fd"
    kick_lines = [line for line in log_lines(caplog) if "kick fd" in line]  # (the socket path has "kick" in it)
    assert 1 <= len(kick_lines) <= 2, kick_lines
    q = fe.rings[0].queue  # the ring keeps its good eventfd and still serves
    q.add(fe.memory, [], [(fe.alloc.alloc(8), 8)], token=1)
    fe.kick(0)
    assert fe.wait_used(0, timeout=5)
    fe.close()
    good_rng_session(paths["rng"])
