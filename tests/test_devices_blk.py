"""Block device and driver, both sides, over loopback with a real image file."""

import os

import pytest

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.drivers.blk import BlkDriver
from pyvirtio.errors import RequestError, UsageError
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec import blk as spec

MiB = 1 << 20


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
    return str(path)


def probe(image, **kw):
    dev = BlkDevice(image, **kw)
    return dev, BlkDriver.probe(LoopbackTransport(dev, memory_size=16 * MiB))


def test_config_space_reaches_the_driver(image):
    dev, drv = probe(image, serial="serial-123", num_queues=3)
    assert drv.capacity == 8 * MiB // 512
    assert drv.get_id() == "serial-123"
    assert len(drv.queues) == 3
    assert drv.block_size == 512
    assert drv.config["seg_max"] == dev.seg_max and drv.config["max_discard_seg"] == 32
    assert not drv.read_only


def test_write_then_read_lands_in_the_file(image):
    _, drv = probe(image)
    data = os.urandom(64 * 1024)
    drv.write(100, data)
    drv.flush()
    assert drv.read(100, len(data)) == data
    with open(image, "rb") as f:
        f.seek(100 * 512)
        assert f.read(len(data)) == data


def test_many_requests_in_flight_across_queues(image):
    _, drv = probe(image, num_queues=2)
    blocks = {i: os.urandom(4096) for i in range(100)}
    reqs = [drv.submit_write(i * 8, blocks[i], kick=False) for i in blocks]
    for q in drv.queues:
        q.kick()
    for r in reqs:
        drv.wait(r)
    reads = [(i, drv.submit_read(i * 8, 4096)) for i in blocks]
    assert all(drv.wait(r) == blocks[i] for i, r in reads)


def test_read_past_capacity_is_ioerr(image):
    _, drv = probe(image)
    with pytest.raises(RequestError) as err:
        drv.read(drv.capacity - 1, 1024)
    assert err.value.status == spec.BlkStatus.IOERR
    assert drv.read(drv.capacity - 1, 512) == bytes(512)  # the last sector is fine


def test_read_only_image_refuses_writes_with_ioerr(image):
    dev, drv = probe(image, read_only=True)
    assert drv.read_only
    with pytest.raises(RequestError) as err:
        drv.write(0, b"x" * 512)
    assert err.value.status == spec.BlkStatus.IOERR
    assert not drv.has_feature(spec.BlkFeature.DISCARD)


def test_discard_and_write_zeroes(image):
    _, drv = probe(image)
    drv.write(0, b"\xff" * 8192)
    drv.discard(0, 8)
    assert drv.read(0, 4096) == bytes(4096)
    assert drv.read(8, 4096) == b"\xff" * 4096
    drv.write_zeroes(8, 8, unmap=True)
    assert drv.read(8, 4096) == bytes(4096)
    drv.write(0, b"\x11" * 512)
    drv.write_zeroes(0, 1)
    assert drv.read(0, 512) == bytes(512)


def test_discard_past_capacity_is_ioerr(image):
    _, drv = probe(image)
    with pytest.raises(RequestError):
        drv.discard(drv.capacity, 1)


def test_unknown_request_type_is_unsupp(image):
    _, drv = probe(image)
    req = drv._submit(99, 0, [], 0, None, True)
    with pytest.raises(RequestError) as err:
        drv.wait(req)
    assert err.value.status == spec.BlkStatus.UNSUPP


def test_get_lifetime_unsupported(image):
    _, drv = probe(image)
    req = drv._submit(spec.BlkReqType.GET_LIFETIME, 0, [], 8, None, True)
    with pytest.raises(RequestError):
        drv.wait(req)


def test_unaligned_length_is_ioerr_from_the_device(image):
    _, drv = probe(image)
    q = drv.queues[0]
    hdr = spec.BLK_REQ_HEADER.pack(spec.BlkReqType.OUT, 0, 0)
    p = q.submit([hdr, b"abc"], [1])
    q.wait(p)
    assert q.read_in(p) == bytes([spec.BlkStatus.IOERR])


def test_chain_without_status_byte_is_returned_empty_and_queue_goes_on(image):
    _, drv = probe(image)
    q = drv.queues[0]
    p = q.submit([spec.BLK_REQ_HEADER.pack(spec.BlkReqType.IN, 0, 0)], [])
    q.wait(p)
    assert p.written == 0
    assert drv.read(0, 512) == bytes(512)


def test_writeback_toggle_with_config_wce(image):
    dev, drv = probe(image, writeback=True)
    assert drv.writeback
    drv.set_writeback(False)
    assert not drv.writeback and not dev.writeback
    drv.write(0, b"a" * 512)  # write-through path (fdatasync per write)
    assert drv.read(0, 512) == b"a" * 512


def test_bad_io_lengths_are_usage_errors(image):
    _, drv = probe(image)
    with pytest.raises(UsageError):
        drv.read(0, 100)


def test_request_split_over_many_descriptors_and_regions(image):
    """The device gathers data from many small readable buffers (scatter-gather)."""
    _, drv = probe(image)
    q = drv.queues[0]
    parts = [os.urandom(512) for _ in range(16)]
    p = q.submit([spec.BLK_REQ_HEADER.pack(spec.BlkReqType.OUT, 0, 40), *parts], [1])
    q.wait(p)
    assert q.read_in(p) == b"\0"
    assert drv.read(40, 16 * 512) == b"".join(parts)


def test_blk_stats_count_requests(image):
    dev, drv = probe(image)
    drv.write(0, b"z" * 1024)
    drv.read(0, 1024)
    assert dev.stats["write_bytes"] == 1024 and dev.stats["read_bytes"] == 1024


def test_failing_requests_a_guest_repeats_are_logged_at_a_bounded_rate(image, monkeypatch, caplog):
    # Every DISCARD fails on the host (a failing disk under the image): the guest may send as
    # many as it likes, each fails with IOERR, and the log takes only PeerLog's budget.
    import errno
    import logging

    from pyvirtio.devices import blk as blk_module
    from pyvirtio.limits import LOG_LINES_PER_SECOND

    def refuse(fd, mode, offset, length):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(blk_module, "fallocate", refuse)
    dev, drv = probe(image)
    dev.guest_log._clock = lambda: 0.0  # one second that never ends
    with caplog.at_level(logging.WARNING, logger="pyvirtio.devices.blk"):
        for i in range(3 * LOG_LINES_PER_SECOND):
            with pytest.raises(RequestError):
                drv.discard(i * 8, 8)
    lines = [r for r in caplog.records if "request type" in r.getMessage()]
    assert len(lines) == LOG_LINES_PER_SECOND
    assert dev.guest_log.suppressed == 2 * LOG_LINES_PER_SECOND
    assert dev.stats["errors"] == 3 * LOG_LINES_PER_SECOND
