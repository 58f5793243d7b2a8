"""Our driver over vhost-user survives kill -9 of its back-end (issue 10, item 2).

``pyvirtio serve blk`` runs as a child process; a :class:`BlkDriver` over
``VhostUserTransport(reconnect=True)`` keeps stamped writes in flight on two queues while a thread
SIGKILLs the daemon and starts another at random moments, 20 times.  The transport reconnects and
replays the set-up with the inflight buffer; the new daemon resubmits what was in flight.  Every
write the driver saw complete must read back (through the driver and from the image file), and
no request may fail.  Once with packed rings (the daemon's default engine), once with split rings
(``--aio=threads``: completions out of order, so resuming at the used idx alone would redo some
requests and lose others — without the inflight buffer this test fails, both layouts).
"""

from __future__ import annotations

import os
import random
import re
import sys
import threading
import time

import pytest

from pyvirtio.bench.peers import Peer, _start
from pyvirtio.drivers import BlkDriver
from pyvirtio.spec.features import Feature
from pyvirtio.spec.ids import DeviceType
from pyvirtio.spec.status import DeviceStatus
from pyvirtio.vhost_user.frontend.connection import FrontendConnection
from pyvirtio.vhost_user.frontend.errors import (BackendHungUp, BadReplyValue, ReconnectFailed,
                                                 UnexpectedFds)
from pyvirtio.vhost_user.protocol import FrontendReq as R
from pyvirtio.vhost_user.protocol import ProtocolFeature as PF
from pyvirtio.vhost_user.frontend.transport import VhostUserTransport
from pyvirtio.vhost_user.wire import U64, Inflight, encode_reply

IMAGE_SIZE = 4 << 20
BLOCK = 4096  # one write: 8 sectors
BLOCKS = IMAGE_SIZE // BLOCK
KILLS = 20
DEPTH = 8  # writes in flight per queue
QUEUES = 2
RESUBMIT = re.compile(r"resubmitting (\d+) requests")


def _serve(sock: str, image: str, aio: str = "auto") -> Peer:
    """``pyvirtio -v serve blk`` (INFO: the daemon logs each resubmission)."""
    argv = [sys.executable, "-m", "pyvirtio.cli", "-v", "serve", "blk", f"--socket-path={sock}",
            f"--blk-file={image}", f"--num-queues={QUEUES}", f"--aio={aio}"]
    return _start("pyvirtio serve blk", argv, sock, 15.0)


def _stamp(block: int, seq: int) -> bytes:
    return (f"block {block:5d} write {seq:7d};".encode() * (BLOCK // 24 + 1))[:BLOCK]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(IMAGE_SIZE)
    return str(path)


class Killer(threading.Thread):
    """SIGKILL the daemon at a random moment after the transport reached it, start another."""

    def __init__(self, peer: Peer, image: str, aio: str, transport: VhostUserTransport, seed: int):
        super().__init__(daemon=True)
        self.peer, self.sock, self.image, self.aio = peer, peer.socket_path, image, aio
        self.transport = transport
        self.rng = random.Random(seed)
        self.logs: list[str] = []
        self.kills = 0
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            for i in range(KILLS):
                deadline = time.monotonic() + 30
                while self.transport.reconnects < i:  # under load on the current daemon
                    assert time.monotonic() < deadline, f"no reconnect after kill {i}"
                    time.sleep(0.01)
                time.sleep(self.rng.uniform(0.05, 0.6))
                self.peer.process.kill()
                self.peer.process.wait()
                self.kills += 1
                self.logs.append(self.peer.log())
                os.unlink(self.sock)  # stale: nobody listens until the next daemon binds it
                time.sleep(self.rng.uniform(0.0, 0.3))  # a while with no back-end at all
                self.peer = _serve(self.sock, self.image, self.aio)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def close(self) -> None:
        self.logs.append(self.peer.log())
        self.peer.close()


def _kill_loop(tmp_path, image: str, *, split_only: bool, aio: str, seed: int) -> None:
    sock = str(tmp_path / "blk.sock")
    first = _serve(sock, image, aio)
    t = VhostUserTransport(sock, device_type=DeviceType.BLOCK, reconnect=True, split_only=split_only)
    killer = Killer(first, image, aio, t, seed)
    disk = None
    try:
        disk = BlkDriver.probe(t)
        assert len(disk.queues) == QUEUES
        assert disk.has_feature(Feature.RING_PACKED) is not split_only
        rng = random.Random(seed)
        expected: dict[int, bytes] = {}
        busy: set[int] = set()
        inflight: list = []  # (request, block, data), oldest first
        failed: list[str] = []
        completed = seq = 0
        killer.start()
        while not killer.done.is_set() or inflight:
            while not killer.done.is_set() and len(inflight) < DEPTH * QUEUES:
                block = rng.randrange(BLOCKS)
                if block in busy:
                    continue
                seq += 1
                data = _stamp(block, seq)
                req = disk.submit_write(block * BLOCK // 512, data, queue=seq % QUEUES)
                busy.add(block)
                inflight.append((req, block, data))
            oldest = inflight[0][0]
            oldest.queue.wait(oldest.pending, 60)  # reconnects inside when the daemon dies
            for q in disk.queues:
                q.poll()
            still = []
            for req, block, data in inflight:
                if not req.pending.done:
                    still.append((req, block, data))
                    continue
                try:
                    disk.wait(req, timeout=0)
                    expected[block] = data
                    completed += 1
                except Exception as exc:  # any failed request fails the test below
                    failed.append(f"block {block}: {exc}")
                busy.discard(block)
            inflight = still
        killer.join(5)
        assert killer.error is None, killer.error
        assert killer.kills == KILLS and t.reconnects == KILLS
        lost = [b for b, data in expected.items() if disk.read(b * BLOCK // 512, BLOCK) != data]
        with open(image, "rb") as f:
            on_disk = f.read()
        lost_on_disk = [b for b, data in expected.items() if on_disk[b * BLOCK:(b + 1) * BLOCK] != data]
        stray = [b for b in range(BLOCKS) if b not in expected and any(on_disk[b * BLOCK:(b + 1) * BLOCK])]
    finally:
        if disk is not None:
            try:
                disk.remove()
            except Exception:
                pass
        t.close()
        killer.done.wait(60)
        killer.close()
    # every daemon on the socket writes to the same log: the last snapshot holds them all
    resubmitted = sum(int(n) for n in RESUBMIT.findall(killer.logs[-1]))
    print(f"\n{'split' if split_only else 'packed'}: {killer.kills} kills, {t.reconnects} reconnects, "
          f"{completed} writes completed ({len(expected)} blocks), {resubmitted} requests "
          f"resubmitted, {len(failed)} failed, {len(lost)} lost (driver), {len(lost_on_disk)} "
          "lost (image)")
    assert failed == []
    assert lost == [] and lost_on_disk == []
    assert stray == []  # a block never acknowledged was not written (by a request of the past)
    assert completed > KILLS * 10  # the load went on between kills
    assert resubmitted > 0  # the kills hit requests in flight, and the new daemons redid them


@pytest.mark.peer
def test_driver_survives_20_kills_packed(tmp_path, image):
    _kill_loop(tmp_path, image, split_only=False, aio="auto", seed=10)


@pytest.mark.peer
def test_driver_survives_20_kills_split(tmp_path, image):
    _kill_loop(tmp_path, image, split_only=True, aio="threads", seed=11)


# --- without reconnect, and when no back-end returns -------------------------------------------


def _disk(sock: str, **kw) -> BlkDriver:
    return BlkDriver.probe(VhostUserTransport(sock, device_type=DeviceType.BLOCK, **kw))


@pytest.mark.peer
def test_hang_up_without_reconnect_raises_and_needs_reset(tmp_path, image):
    sock = str(tmp_path / "blk.sock")
    peer = _serve(sock, image)
    disk = _disk(sock)
    try:
        assert disk.transport._inflight is None  # no inflight buffer unless asked for
        disk.write(0, _stamp(0, 1))
        peer.process.kill()
        peer.process.wait()
        with pytest.raises(BackendHungUp) as info:
            disk.write(8, _stamp(1, 2))
        assert not isinstance(info.value, ReconnectFailed)
        assert disk.transport.get_status() & DeviceStatus.DEVICE_NEEDS_RESET
        assert disk.transport.reconnects == 0
    finally:
        disk.transport.close()
        peer.close()


@pytest.mark.peer
def test_reconnect_gives_up_with_a_typed_error(tmp_path, image):
    sock = str(tmp_path / "blk.sock")
    peer = _serve(sock, image)
    disk = _disk(sock, reconnect=True, reconnect_timeout=0.5)
    try:
        assert disk.transport._inflight is not None  # GET_INFLIGHT_FD when the rings were set up
        disk.write(0, _stamp(0, 1))
        peer.process.kill()
        peer.process.wait()
        began = time.monotonic()
        with pytest.raises(ReconnectFailed, match="no back-end took over"):
            disk.write(8, _stamp(1, 2))
        assert 0.4 < time.monotonic() - began < 10
        assert disk.transport.get_status() & DeviceStatus.DEVICE_NEEDS_RESET
    finally:
        disk.transport.close()
        peer.close()


@pytest.mark.peer
def test_reconnect_after_a_restart_between_requests(tmp_path, image):
    """A daemon killed while idle: the next request reconnects, and what was written is there."""
    sock = str(tmp_path / "blk.sock")
    peer = _serve(sock, image)
    disk = _disk(sock, reconnect=True)
    try:
        disk.write(0, _stamp(0, 1))
        peer.process.kill()
        peer.process.wait()
        os.unlink(sock)
        peer = _serve(sock, image)
        disk.write(8, _stamp(1, 2))
        assert disk.transport.reconnects == 1
        assert disk.read(0, 2 * BLOCK) == _stamp(0, 1) + _stamp(1, 2)
    finally:
        disk.transport.close()
        peer.close()


# --- GET_INFLIGHT_FD on the front-end core (sans I/O) --------------------------------------------


def _inflight_core() -> FrontendConnection:
    fe = FrontendConnection(name="t", protocol_features=1 << PF.INFLIGHT_SHMFD)
    fe.protocol_features = 1 << PF.INFLIGHT_SHMFD  # as SET_PROTOCOL_FEATURES would leave it
    return fe


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
        return False
    except OSError:
        return True


def test_get_inflight_fd_hands_over_the_fd_of_its_reply():
    fe = _inflight_core()
    out = fe.get_inflight_fd(2, 128)
    assert out.reply_fds == 1 and out.fds == ()
    fd = os.memfd_create("inflight")
    fe.receive(encode_reply(R.GET_INFLIGHT_FD, Inflight(8192, 0, 2, 128).pack()), [fd])
    info, got = fe.next_result().value
    assert (info.mmap_size, info.num_queues, info.queue_size, got) == (8192, 2, 128, fd)
    assert not _closed(got)  # the caller's now
    os.close(got)
    setting = fe.set_inflight_fd(info, fd)
    assert setting.fds == (fd,) and setting.data[:4] == int(R.SET_INFLIGHT_FD).to_bytes(4, "little")


def test_get_inflight_fd_reply_without_its_fd_breaks_the_connection():
    fe = _inflight_core()
    fe.get_inflight_fd(1, 64)
    with pytest.raises(UnexpectedFds, match="0 fds, not 1"):
        fe.receive(encode_reply(R.GET_INFLIGHT_FD, Inflight(4096, 0, 1, 64).pack()))
    assert fe.error is not None


def test_get_inflight_fd_for_another_shape_is_refused_and_its_fd_closed():
    fe = _inflight_core()
    fe.get_inflight_fd(1, 64)
    fd = os.memfd_create("inflight")
    with pytest.raises(BadReplyValue, match="answered"):
        fe.receive(encode_reply(R.GET_INFLIGHT_FD, Inflight(4096, 0, 1, 32).pack()), [fd])
    assert _closed(fd)


def test_other_replies_still_carry_no_fds():
    fe = _inflight_core()
    fe.get_features()
    fd = os.memfd_create("stray")
    with pytest.raises(UnexpectedFds):
        fe.receive(encode_reply(R.GET_FEATURES, U64(0).pack()), [fd])
    assert _closed(fd)
