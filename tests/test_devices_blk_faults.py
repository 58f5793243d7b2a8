"""Block device fault rules (pyvirtio.devices.blk_faults) over loopback with our own driver."""

import os
import time

import pytest

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.drivers.blk import BlkDriver
from pyvirtio.errors import RequestError
from pyvirtio.faults import parse_rule
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec import blk as spec

MiB = 1 << 20
IOERR, UNSUPP = spec.BlkStatus.IOERR, spec.BlkStatus.UNSUPP


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
    return str(path)


@pytest.fixture
def blk(image):
    made = []

    def make(**kw):
        dev = BlkDevice(image, **kw)
        t = LoopbackTransport(dev, memory_size=16 * MiB)
        made.append(t)
        return dev, BlkDriver.probe(t)
    yield make
    for t in made:
        t.close()


def status_of(fn):
    try:
        fn()
    except RequestError as exc:
        return exc.status
    return spec.BlkStatus.OK


@pytest.mark.parametrize("aio", ["threads", "io_uring"])
def test_ioerr_on_a_range_fails_only_requests_that_overlap_it(blk, aio):
    dev, drv = blk(aio=aio)
    rule = dev.faults.add("ioerr:sectors=2048-4095")
    outcomes = {s: status_of(lambda s=s: drv.read(s, 4096)) for s in (0, 2040, 2041, 2048, 3000, 4095, 4096)}
    assert outcomes == {0: 0, 2040: 0, 2041: IOERR, 2048: IOERR, 3000: IOERR, 4095: IOERR, 4096: 0}
    assert status_of(lambda: drv.write(4000, b"x" * 512)) == IOERR
    assert status_of(lambda: drv.flush()) == 0  # no sectors: a sector rule does not match
    assert rule.fired == 5 and dev.stats["errors"] == 5
    dev.faults.clear()
    assert drv.read(2048, 4096) == bytes(4096)


def test_a_failed_write_leaves_the_image_alone_and_ops_select(blk, image):
    dev, drv = blk()
    dev.faults.add("ioerr:ops=write")
    assert status_of(lambda: drv.write(0, b"\xff" * 4096)) == IOERR
    assert drv.read(0, 4096) == bytes(4096)
    with open(image, "rb") as f:
        assert f.read(4096) == bytes(4096)
    dev.faults.clear()
    dev.faults.add("unsupp:ops=get-id")
    with pytest.raises(RequestError) as err:
        drv.get_id()
    assert err.value.status == UNSUPP


def test_after_and_count(blk):
    dev, drv = blk()
    dev.faults.add("ioerr:ops=read,after=3,count=2")
    got = [status_of(lambda: drv.read(0, 512)) for _ in range(8)]
    assert got == [0, 0, 0, IOERR, IOERR, 0, 0, 0]


def test_probability_with_a_seed_repeats_exactly(blk):
    dev, drv = blk()
    text = "ioerr:ops=read,prob=0.5,seed=42"
    model = parse_rule(text)
    expected = [IOERR if model.trigger() else 0 for _ in range(40)]
    dev.faults.add(text)
    assert [status_of(lambda: drv.read(8, 512)) for _ in range(40)] == expected
    assert 10 < expected.count(IOERR) < 30


def test_flusherr_fails_flushes_only(blk):
    dev, drv = blk()
    dev.faults.add("flusherr")
    drv.write(0, b"a" * 512)
    assert status_of(drv.flush) == IOERR
    assert drv.read(0, 512) == b"a" * 512


@pytest.mark.parametrize("direct", [False, True])
def test_torn_write_leaves_exactly_keep_sectors_written(blk, image, direct):
    dev, drv = blk(direct=direct)
    dev.faults.add("torn:keep=3,sectors=100-100")
    drv.write(0, b"\x01" * 4096)  # not in the range: whole
    data = bytes(range(256)) * 32  # 8 sectors
    assert status_of(lambda: drv.write(98, data)) == IOERR
    dev.faults.clear()
    assert drv.read(98, 4096) == data[:3 * 512] + bytes(5 * 512)
    assert drv.read(0, 4096) == b"\x01" * 4096
    with open(image, "rb") as f:
        f.seek(98 * 512)
        assert f.read(4096) == data[:3 * 512] + bytes(5 * 512)


@pytest.mark.parametrize("in_order", [False, True])
def test_latency_delays_completion_without_blocking_the_queue(blk, in_order):
    dev, drv = blk(in_order=in_order)
    dev.faults.add("latency:ms=200,sectors=0-7")
    start = time.monotonic()
    slow = drv.submit_read(0, 4096)
    fast = drv.submit_read(64, 4096)
    drv.wait(fast)
    fast_at = time.monotonic() - start
    drv.wait(slow)
    slow_at = time.monotonic() - start
    assert slow_at >= 0.2
    if in_order:  # VIRTIO_F_IN_ORDER: the later request waits for the held one
        assert fast_at >= 0.2
    else:
        assert fast_at < 0.15


def test_latency_applies_to_requests_that_finish_in_the_kernel(blk):
    dev, drv = blk(aio="io_uring", direct=True)
    dev.faults.add("latency:ms=100")
    reqs = [drv.submit_write(i * 8, os.urandom(4096)) for i in range(8)]
    start = time.monotonic()
    for r in reqs:
        drv.wait(r)
    assert time.monotonic() - start >= 0.09


def test_uniform_latency_is_in_its_range(blk):
    dev, drv = blk()
    dev.faults.add("latency:ms=20-60")
    for _ in range(5):
        start = time.monotonic()
        drv.read(0, 512)
        assert 0.02 <= time.monotonic() - start < 0.5


def test_quiesce_publishes_held_requests_at_once(blk):
    dev, drv = blk()
    dev.faults.add("latency:ms=5000")
    req = drv.submit_read(0, 512)
    time.sleep(0.05)
    assert not req.pending.done
    start = time.monotonic()
    with drv.transport.engine.hold():
        assert dev.quiesce(drv.transport.device_memory)
    drv.wait(req, timeout=2)
    assert time.monotonic() - start < 1


def test_no_rules_no_cost_on_the_hot_path(blk):
    dev, drv = blk()
    assert not dev.faults.rules and not dev.holding.queues
    drv.write(0, b"z" * 4096)
    assert dev.host_fds(0) == []
