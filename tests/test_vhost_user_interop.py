"""Interop with real back-end programs: pyvirtio's block driver against qemu-storage-daemon and
against ``pyvirtio serve blk`` (each a separate process), data written by one read back by the
other, and the entropy driver against ``pyvirtio serve rng``.

With CI set, a missing qemu-storage-daemon is a failure, not a skip.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from pyvirtio.bench.peers import start_pyvirtio, start_qsd
from pyvirtio.drivers import BlkDriver, RngDriver
from pyvirtio.errors import RequestError
from pyvirtio.spec.blk import BlkFeature, BlkStatus
from pyvirtio.spec.ids import DeviceType
from pyvirtio.vhost_user.frontend.transport import VhostUserTransport
from pyvirtio.testing.env import require

pytestmark = pytest.mark.peer
IMAGE_SIZE = 16 << 20




@pytest.fixture(scope="module")
def qsd_binary():
    path = shutil.which("qemu-storage-daemon")
    require(path is not None, "qemu-storage-daemon (Debian: qemu-utils)")
    return path


@pytest.fixture
def image(tmp_path):
    """A disk image whose first MiB is a known pattern; the rest is sparse."""
    path = tmp_path / "disk.img"
    pattern = hashlib.sha256(b"pyvirtio").digest() * (1 << 15)
    with open(path, "wb") as f:
        f.write(pattern)
        f.truncate(IMAGE_SIZE)
    return str(path)


@pytest.fixture
def peers():
    started = []

    def track(peer):
        started.append(peer)
        return peer

    yield track
    for peer in started:
        peer.close()


def _open(sock: str, **kw) -> BlkDriver:
    t = VhostUserTransport(sock, device_type=DeviceType.BLOCK, **kw)
    try:
        return BlkDriver.probe(t)
    except BaseException:
        t.close()
        raise


def _close(disk: BlkDriver) -> None:
    try:
        disk.remove()
    finally:
        disk.transport.close()


def _exercise(disk: BlkDriver, image_path: str) -> None:
    """Capacity, read, write (many in flight), flush, read back, discard."""
    assert disk.capacity * 512 == IMAGE_SIZE
    with open(image_path, "rb") as f:
        assert disk.read(0, 8192) == f.read(8192)
    payload = os.urandom(512 * 1024)
    reqs = [disk.submit_write(4096 + i * 128, payload[i * 65536:(i + 1) * 65536]) for i in range(8)]
    for r in reqs:
        disk.wait(r)
    disk.flush()
    reads = [disk.submit_read(4096 + i * 128, 65536) for i in range(8)]
    assert b"".join(disk.wait(r) for r in reads) == payload
    if disk.has_feature(BlkFeature.DISCARD):
        disk.discard(4096, 128)
        assert disk.read(4096, 65536) == bytes(65536)


# --- qemu-storage-daemon -------------------------------------------------------------------------


def test_blk_driver_against_qemu_storage_daemon(qsd_binary, tmp_path, image, peers):
    peer = peers(start_qsd(str(tmp_path / "qsd.sock"), image, discard=True))
    disk = _open(peer.socket_path)
    try:
        assert disk.has_feature(BlkFeature.FLUSH) and disk.has_feature(BlkFeature.DISCARD)
        assert disk.writeback is False  # qemu-storage-daemon starts write-through
        disk.set_writeback(True)  # SET_CONFIG of the one writable field, read back (5.2.5)
        assert disk.writeback is True
        _exercise(disk, image)
    finally:
        _close(disk)
    assert peer.alive, peer.log()


def test_qsd_several_queues(qsd_binary, tmp_path, image, peers):
    peer = peers(start_qsd(str(tmp_path / "qsd.sock"), image, num_queues=2))
    disk = _open(peer.socket_path)
    try:
        assert disk.has_feature(BlkFeature.MQ) and disk.config["num_queues"] == 2
        assert len(disk.queues) == 2
        data = os.urandom(4096)
        disk.write(100, data, queue=1)
        assert disk.read(100, 4096, queue=0) == data
        assert disk.read(100, 4096, queue=1) == data
        assert disk.transport.stop_queue(1) >= 2  # GET_VRING_BASE counted queue 1's requests
    finally:
        _close(disk)


def test_qsd_read_only_export_refuses_writes(qsd_binary, tmp_path, image, peers):
    peer = peers(start_qsd(str(tmp_path / "qsd.sock"), image, writable=False))
    disk = _open(peer.socket_path)
    try:
        assert disk.read_only
        with pytest.raises(RequestError) as info:
            disk.write(0, bytes(4096))
        assert info.value.status == BlkStatus.IOERR
        with open(image, "rb") as f:
            assert disk.read(0, 4096) == f.read(4096)  # nothing was written
    finally:
        _close(disk)


def test_qsd_with_several_memory_regions(qsd_binary, tmp_path, image, peers):
    peer = peers(start_qsd(str(tmp_path / "qsd.sock"), image))
    disk = _open(peer.socket_path, regions=4, memory_size=16 << 20)
    try:
        _exercise(disk, image)
    finally:
        _close(disk)


# --- pyvirtio serve ------------------------------------------------------------------------------


def test_blk_driver_against_pyvirtio_serve(tmp_path, image, peers):
    peer = peers(start_pyvirtio("blk", str(tmp_path / "pv.sock"), blk_file=image, num_queues=2))
    disk = _open(peer.socket_path)
    try:
        assert len(disk.queues) == 2
        _exercise(disk, image)
    finally:
        _close(disk)


def test_pyvirtio_serve_read_only_refuses_writes(tmp_path, image, peers):
    peer = peers(start_pyvirtio("blk", str(tmp_path / "pv.sock"), blk_file=image, read_only=True))
    disk = _open(peer.socket_path)
    try:
        assert disk.read_only
        with pytest.raises(RequestError) as info:
            disk.write(0, bytes(512))
        assert info.value.status == BlkStatus.IOERR
    finally:
        _close(disk)


def test_rng_driver_against_pyvirtio_serve(tmp_path, peers):
    peer = peers(start_pyvirtio("rng", str(tmp_path / "rng.sock")))
    t = VhostUserTransport(peer.socket_path)
    try:
        assert t.device_type == DeviceType.ENTROPY
        rng = RngDriver.probe(t)
        a, b = rng.read(4096), rng.read(4096)
        assert len(a) == len(b) == 4096 and a != b
        rng.remove()
    finally:
        t.close()


# --- one writes, the other reads -----------------------------------------------------------------


def test_data_written_by_one_back_end_is_read_by_the_other(qsd_binary, tmp_path, image, peers):
    first = os.urandom(256 * 1024)
    second = os.urandom(256 * 1024)
    qsd = peers(start_qsd(str(tmp_path / "qsd.sock"), image))
    disk = _open(qsd.socket_path)
    try:
        disk.write(8192, first)
        disk.flush()
    finally:
        _close(disk)
    qsd.close()
    pv = peers(start_pyvirtio("blk", str(tmp_path / "pv.sock"), blk_file=image))
    disk = _open(pv.socket_path)
    try:
        assert disk.read(8192, len(first)) == first
        disk.write(16384, second)
        disk.flush()
    finally:
        _close(disk)
    pv.close()
    qsd = peers(start_qsd(str(tmp_path / "qsd2.sock"), image))
    disk = _open(qsd.socket_path)
    try:
        assert disk.read(16384, len(second)) == second
        assert disk.read(8192, len(first)) == first
    finally:
        _close(disk)
