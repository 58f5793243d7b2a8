"""``pyvirtio serve blk --in-order``: VIRTIO_F_IN_ORDER on a device whose requests finish in any
order — they still run concurrently, but go back to the driver in the order it made them
available (2.7.9, 2.8.21).  A driver that negotiated IN_ORDER takes a used entry as "this one and
every one before it", so a device that broke the order would hand back buffers not yet written."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time

import pytest

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.drivers.blk import BlkDriver
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec import blk as spec
from pyvirtio.spec.features import Feature

MiB = 1 << 20


@pytest.fixture
def image():
    # On a disk-backed file system (not tmpfs): large reads then finish later than small ones.
    path = os.path.join("/var/tmp", f"pyvirtio-in-order-{os.getpid()}.img")
    data = random.Random(7).randbytes(8 * MiB)
    with open(path, "wb") as f:
        f.write(data)
    yield path, data
    os.unlink(path)


def submit_mix(drv: BlkDriver, rounds: int = 6) -> list:
    """Large (offloaded) reads, small cached reads and GET_IDs, all in flight together."""
    reqs = []
    for r in range(rounds):
        reqs.append(("read", r * 2048, MiB, drv.submit_read(r * 2048, MiB)))
        reqs.append(("read", 8 * r + 1, 4096, drv.submit_read(8 * r + 1, 4096)))
        reqs.append(("id", 0, 0, drv._submit(spec.BlkReqType.GET_ID, 0, [], spec.BLK_ID_BYTES, None, True)))
    return reqs


def check(drv: BlkDriver, reqs, data: bytes) -> None:
    for kind, sector, length, req in reqs:
        got = drv.wait(req)
        if kind == "read":
            assert got == data[sector * 512:sector * 512 + length], f"read at sector {sector}"
        else:
            assert got.split(b"\0", 1)[0] == b"pyvirtio-blk"


def run_mix(path: str, data: bytes, aio: str, in_order: bool) -> tuple[list[int], list[int]]:
    """(heads in pop order, heads in used-ring order) for the mix on one queue."""
    dev = BlkDevice(path, aio=aio, in_order=in_order)
    popped: list[int] = []
    real_handle = dev.handle_chain

    def handle(index, chain):
        popped.append(chain.head_index)
        return real_handle(index, chain)

    dev.handle_chain = handle
    drv = BlkDriver.probe(LoopbackTransport(dev, memory_size=64 * MiB))
    assert drv.has_feature(Feature.IN_ORDER) == in_order == dev.has_feature(Feature.IN_ORDER)
    queue = dev.queues[0]
    used: list[int] = []
    real_batch = queue.add_used_batch

    def add_used_batch(mem, elems):
        elems = list(elems)
        used.extend(head for head, _ in elems)
        return real_batch(mem, elems)

    queue.add_used_batch = add_used_batch
    check(drv, submit_mix(drv), data)
    drv.remove()
    dev.close()
    return popped, used


@pytest.mark.parametrize("aio", ["threads", "io_uring"])
def test_in_order_device_returns_requests_in_the_order_it_popped_them(image, aio):
    path, data = image
    popped, used = run_mix(path, data, aio, in_order=True)
    assert len(popped) == 18 and used == popped


def test_without_in_order_the_same_mix_completes_out_of_order(image):
    # The control: the mix really finishes out of order, so the test above means something.
    path, data = image
    popped, used = run_mix(path, data, "threads", in_order=False)
    assert sorted(used) == sorted(popped) and used != popped


def test_without_the_flag_blk_does_not_offer_in_order(image):
    dev = BlkDevice(image[0])
    assert not dev.device_features >> Feature.IN_ORDER & 1
    dev.close()


def test_serve_blk_in_order_over_vhost_user(image, tmp_path):
    """A real daemon (pyvirtio serve blk --in-order) and our vhost-user front-end, split and
    packed rings: IN_ORDER negotiated, every read of the mix correct."""
    from pyvirtio.vhost_user.frontend.transport import VhostUserTransport
    path, data = image
    sock = str(tmp_path / "blk.sock")
    proc = subprocess.Popen([sys.executable, "-m", "pyvirtio.cli", "serve", "blk", f"--socket-path={sock}",
                             f"--blk-file={path}", "--in-order", "--aio=threads"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        for split_only in (True, False):
            t = VhostUserTransport(sock, memory_size=64 * MiB, split_only=split_only)
            drv = BlkDriver.probe(t)
            try:
                assert drv.has_feature(Feature.IN_ORDER)
                assert drv.has_feature(Feature.RING_PACKED) == (not split_only)
                check(drv, submit_mix(drv), data)
            finally:
                drv.remove()
                t.close()
    finally:
        proc.terminate()
        proc.wait(20)
