"""The block device's asynchronous engine: many requests in flight, completed as they finish."""

import os
import struct
import time

import pytest

from pyvirtio.aio import io_uring_unavailable_reason
from pyvirtio.devices.blk import BlkDevice
from pyvirtio.drivers.blk import BlkDriver
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec import blk as spec
from pyvirtio.testing.mock_driver import MockSplitDriver, make_device_queue

MiB = 1 << 20
AIO = ["threads", pytest.param("io_uring", marks=pytest.mark.skipif(
    io_uring_unavailable_reason() is not None, reason=f"io_uring: {io_uring_unavailable_reason()}"))]


def _disk(path, size, pattern=True):
    with open(path, "wb") as f:
        if pattern:
            for block in range(size // 4096):
                f.write(struct.pack("<Q", block) * 512)
        else:
            f.truncate(size)
    return str(path)


def _hdr(rtype, sector):
    return spec.BLK_REQ_HEADER.pack(rtype, 0, sector)


def _run(dev, mock, queue, timeout=20.0):
    """Serve the queue, then reap completions until every request is back; the used ring."""
    dev.process_queue(mock.mem, queue)
    deadline = time.monotonic() + timeout
    while dev._io[0].inflight and time.monotonic() < deadline:
        dev.host_ready(mock.mem, 0, [])
        time.sleep(0.0005)
    assert not dev._io[0].inflight, "requests still in flight"
    return mock.used_elems(0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aio", AIO)
def test_used_ring_follows_completion_not_submission(tmp_path, aio):
    """A slow write-through write goes first, quick reads after it: the reads come back first,
    the used ring shows it, and every byte is right."""
    path = _disk(tmp_path / "disk.img", 16 * MiB)
    dev = BlkDevice(path, aio=aio)
    dev.writeback = False  # write-through: the write waits for the disk (RWF_DSYNC)
    mock = MockSplitDriver(size=64, regions=[(0, 32 * MiB)])
    queue = make_device_queue(mock)
    dev.queues[0] = queue
    big = os.urandom(8 * MiB)
    write = mock.add_request(out=[_hdr(spec.BlkReqType.OUT, 0), big], in_lens=[1])
    reads = [mock.add_request(out=[_hdr(spec.BlkReqType.IN, (9 * MiB + i * 4096) // 512)],
                              in_lens=[4096, 1]) for i in range(16)]
    try:
        used = _run(dev, mock, queue)
        order = [head for head, _ in used]
        submitted = [write.head] + [r.head for r in reads]
        assert sorted(order) == sorted(submitted)  # each once
        assert order != submitted, "completions came back in submission order"
        assert order.index(write.head) > 0
        for i, r in enumerate(reads):
            block = (9 * MiB + i * 4096) // 4096
            assert mock.read(*r.writable[0]) == struct.pack("<Q", block) * 512
            assert mock.read(*r.writable[1]) == b"\0"  # VIRTIO_BLK_S_OK
        assert dict(used)[write.head] == 1
        assert mock.read(*write.writable[0]) == b"\0"
        with open(path, "rb") as f:
            assert f.read(8 * MiB) == big
    finally:
        dev.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aio", AIO)
def test_reads_writes_flush_in_flight_together(tmp_path, aio):
    path = _disk(tmp_path / "disk.img", 8 * MiB, pattern=False)
    dev = BlkDevice(path, aio=aio)
    mock = MockSplitDriver(size=128, regions=[(0, 8 * MiB)])
    queue = make_device_queue(mock)
    dev.queues[0] = queue
    blocks = {i: os.urandom(4096) for i in range(40)}
    writes = [mock.add_request(out=[_hdr(spec.BlkReqType.OUT, i * 8), d], in_lens=[1])
              for i, d in blocks.items()]
    flush = mock.add_request(out=[_hdr(spec.BlkReqType.FLUSH, 0)], in_lens=[1])
    try:
        used = dict(_run(dev, mock, queue))
        assert set(used) == {w.head for w in writes} | {flush.head}
        assert all(mock.read(*w.writable[0]) == b"\0" for w in writes + [flush])
        reads = {i: mock.add_request(out=[_hdr(spec.BlkReqType.IN, i * 8)], in_lens=[4096, 1])
                 for i in blocks}
        _run(dev, mock, queue)
        assert all(mock.read(*r.writable[0]) == blocks[i] for i, r in reads.items())
    finally:
        dev.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aio", AIO)
def test_out_of_range_and_read_only_fail_without_reaching_the_kernel(tmp_path, aio):
    path = _disk(tmp_path / "disk.img", 1 * MiB, pattern=False)
    dev = BlkDevice(path, aio=aio, read_only=True)
    mock = MockSplitDriver(size=16, regions=[(0, 1 * MiB)])
    queue = make_device_queue(mock)
    dev.queues[0] = queue
    past = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 2048)], in_lens=[4096, 1])
    write = mock.add_request(out=[_hdr(spec.BlkReqType.OUT, 0), b"x" * 512], in_lens=[1])
    try:
        dev.process_queue(mock.mem, queue)
        assert not dev._io  # nothing went to the engine
        assert mock.read(*past.writable[1]) == bytes([spec.BlkStatus.IOERR])
        assert mock.read(*write.writable[0]) == bytes([spec.BlkStatus.IOERR])
    finally:
        dev.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("aio", AIO)
def test_direct_image_with_unaligned_guest_buffers_goes_through_a_bounce_buffer(tmp_path, aio):
    """O_DIRECT refuses buffers that are not aligned; the device bounces them, never fails."""
    var = "/var/tmp"
    path = _disk(os.path.join(var, f"pyvirtio-direct-{os.getpid()}-{aio}.img"), 4 * MiB)
    try:
        try:
            dev = BlkDevice(path, aio=aio, direct=True)
        except Exception as exc:  # a file system without O_DIRECT
            pytest.skip(f"O_DIRECT not available under {var}: {exc}")
        mock = MockSplitDriver(size=32, regions=[(0, 4 * MiB)])
        queue = make_device_queue(mock)
        dev.queues[0] = queue
        data = os.urandom(4096)
        # mock.alloc aligns to 16 bytes only: guest buffers that O_DIRECT refuses
        write = mock.add_request(out=[_hdr(spec.BlkReqType.OUT, 8), data], in_lens=[1])
        try:
            _run(dev, mock, queue)
            read = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 8)], in_lens=[4096, 1])
            odd = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 1)], in_lens=[512, 1])  # 512 B at 512
            _run(dev, mock, queue)
            assert mock.read(*write.writable[0]) == b"\0"
            assert mock.read(*read.writable[0]) == data and mock.read(*read.writable[1]) == b"\0"
            assert mock.read(*odd.writable[0]) == (struct.pack("<Q", 0) * 512)[512:1024]
        finally:
            dev.close()
    finally:
        os.unlink(path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aio", AIO)
def test_loopback_driver_sees_every_request_complete(tmp_path, aio):
    path = _disk(tmp_path / "disk.img", 8 * MiB)
    dev = BlkDevice(path, aio=aio, num_queues=2)
    drv = BlkDriver.probe(LoopbackTransport(dev, memory_size=16 * MiB))
    try:
        reqs = [(i, drv.submit_read(i * 8, 4096)) for i in range(64)]
        for i, r in reqs:
            assert drv.wait(r, timeout=10) == struct.pack("<Q", i) * 512
        drv.write(0, b"y" * 8192)
        drv.flush()
        assert drv.read(0, 8192) == b"y" * 8192
    finally:
        drv.transport.close() if hasattr(drv, "transport") else None
        dev.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flags, expect", [
    ((), "aio=io_uring, cache=page cache" if io_uring_unavailable_reason() is None
     else "aio=threads, cache=page cache"),
    (("--aio=threads", "--direct"), "aio=threads, cache=direct (O_DIRECT)"),
])
def test_serve_blk_startup_line_names_the_io_engine_and_cache_mode(tmp_path, flags, expect):
    import subprocess
    import sys
    path = _disk(os.path.join("/var/tmp", f"pyvirtio-startup-{os.getpid()}.img"), 1 * MiB, pattern=False)
    sock = str(tmp_path / "vu.sock")
    proc = subprocess.Popen([sys.executable, "-m", "pyvirtio.cli", "serve", "blk", f"--socket-path={sock}",
                             f"--blk-file={path}", *flags], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert f"({expect})" in line, line
    finally:
        proc.terminate()
        proc.wait(10)
        os.unlink(path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("aio", AIO)
def test_get_vring_base_waits_for_requests_in_flight_on_the_host(tmp_path, aio):
    """A ring stopped with O_DIRECT reads still in the kernel: GET_VRING_BASE answers only once
    each is back in the used ring with its data — none lost, none completed twice."""
    import threading
    import struct as st

    from pyvirtio.vhost_user.backend.server import VhostUserServer
    from pyvirtio.vhost_user.testing import TestFrontend

    path = _disk(os.path.join("/var/tmp", f"pyvirtio-stop-{os.getpid()}-{aio}.img"), 16 * MiB)
    try:
        dev = BlkDevice(path, aio=aio, direct=True)
    except Exception as exc:
        os.unlink(path)
        pytest.skip(f"O_DIRECT not available under /var/tmp: {exc}")
    srv = VhostUserServer()
    sock = str(tmp_path / "blk.sock")
    srv.add(dev, socket_path=sock)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        fe = TestFrontend.connect(sock, memory_size=8 << 20)
        fe.start(size=128)
        q = fe.rings[0].queue
        reqs = []
        for i in range(40):  # 3 descriptors each, a 128-entry ring
            block = (i * 37) % 4096
            status, data = fe.buffer(1), fe.buffer(4096)
            q.add(fe.memory, [fe.buffer(st.pack("<IIQ", 0, 0, block * 8))], [data, status], token=i)
            reqs.append((block, data, status))
        fe.kick(0)
        deadline = time.monotonic() + 10
        while dev.queues[0].next_avail != 40 and time.monotonic() < deadline:
            time.sleep(0.0002)  # until the device has taken all 40 (most still in the kernel)
        in_flight = len(dev._io[0].inflight)
        assert in_flight > 0, "the stop must find requests still in the kernel"
        base = fe.get_vring_base(0)
        assert base == 40
        got = q.get_bufs(fe.memory)
        assert sorted(t for t, _ in got) == list(range(40))  # each exactly once
        assert all(n == 4097 for _, n in got)
        for block, data, status in reqs:
            assert fe.memory.read(status[0], 1) == b"\0"
            assert fe.memory.read(data[0], 8) == st.pack("<Q", block)
        fe.close()
    finally:
        srv.shutdown()
        thread.join(10)
        srv.close()
        dev.close()
        os.unlink(path)


@pytest.mark.timeout(60)
def test_cached_small_reads_are_copied_at_once_on_disk_and_on_tmpfs(tmp_path):
    """A small read of cached data completes inside process_queue (no trip through the engine):
    with RWF_NOWAIT on a disk file system, and on tmpfs (no RWF_NOWAIT, but no disk to wait for)."""
    for where in ("/var/tmp", "/dev/shm"):
        if not os.path.isdir(where):
            continue
        path = _disk(os.path.join(where, f"pyvirtio-nowait-{os.getpid()}.img"), 1 * MiB)
        try:
            dev = BlkDevice(path, aio="io_uring" if io_uring_unavailable_reason() is None else "threads")
            mock = MockSplitDriver(size=16, regions=[(0, 2 * MiB)])
            queue = make_device_queue(mock)
            dev.queues[0] = queue
            mock.add_request(out=[_hdr(spec.BlkReqType.IN, 0)], in_lens=[4096, 1])
            _run(dev, mock, queue)  # the first may find RWF_NOWAIT missing (tmpfs) and go async
            r = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 8)], in_lens=[4096, 1])
            dev.process_queue(mock.mem, queue)
            assert not dev._io[0].inflight, where
            assert mock.read(*r.writable[0]) == struct.pack("<Q", 1) * 512
            assert [h for h, _ in mock.used_elems(0)][-1] == r.head
            dev.close()
        finally:
            os.unlink(path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("event_idx", [False, True])
@pytest.mark.parametrize("aio", AIO)
def test_kicks_stay_off_while_requests_are_in_flight_and_come_back_on_after(tmp_path, aio, event_idx,
                                                                            monkeypatch):
    """While a request is in the kernel the queue asks the driver not to kick (the completion
    turn looks at the ring instead: the engine drains ``kicks_held`` queues after host turns); a
    request added meanwhile is served from that look, and once nothing is in flight kicks are
    asked for again.  (The write is large so that it stays in flight a while: counted here as a
    small one, whose kicks are held — the next test has the large ones.)"""
    from pyvirtio.devices import blk_io
    from pyvirtio.spec.ring import VIRTQ_USED_F_NO_NOTIFY
    from pyvirtio.virtq.event import vring_need_event

    monkeypatch.setattr(blk_io, "KICKS_ON_BYTES", 1 << 30)
    path = _disk(tmp_path / "disk.img", 16 * MiB)
    dev = BlkDevice(path, aio=aio)
    dev.writeback = False  # write-through: the write waits for the disk (RWF_DSYNC)
    mock = MockSplitDriver(size=64, regions=[(0, 32 * MiB)])
    queue = make_device_queue(mock, event_idx=event_idx)
    dev.queues[0] = queue
    big = os.urandom(8 * MiB)
    try:
        write = mock.add_request(out=[_hdr(spec.BlkReqType.OUT, 0), big], in_lens=[1])
        dev.process_queue(mock.mem, queue)
        assert dev._io[0].inflight and dev.kicks_held == {0}
        old = mock.avail_idx
        read = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 9 * MiB // 512)], in_lens=[4096, 1])
        if event_idx:  # the driver's kick test (2.7.10) says no
            assert not vring_need_event(mock.avail_event, mock.avail_idx, old)
        else:
            assert mock.used_flags & VIRTQ_USED_F_NO_NOTIFY
        deadline = time.monotonic() + 20
        while (dev._io[0].inflight or dev.kicks_held) and time.monotonic() < deadline:
            dev.host_ready(mock.mem, 0, [])  # a completion turn of the engine ...
            for index in sorted(dev.kicks_held):  # ... then the queues whose kicks are held
                dev.process_queue(mock.mem, queue)
            time.sleep(0.0005)
        assert not dev._io[0].inflight and not dev.kicks_held
        used = dict(mock.used_elems(0))
        assert set(used) == {write.head, read.head}  # each once, the read without a kick
        assert mock.read(*read.writable[0]) == struct.pack("<Q", 9 * MiB // 4096) * 512
        assert mock.read(*read.writable[1]) == b"\0" and mock.read(*write.writable[0]) == b"\0"
        if event_idx:  # kicks asked for again from the next request on
            assert mock.avail_event == mock.avail_idx
        else:
            assert not mock.used_flags & VIRTQ_USED_F_NO_NOTIFY
    finally:
        dev.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("event_idx", [False, True])
@pytest.mark.parametrize("aio", AIO)
def test_kicks_stay_on_while_a_large_request_is_in_flight(tmp_path, aio, event_idx):
    """A large request in flight (``KICKS_ON_BYTES``) leaves the driver's kicks on: the next
    completion may be far off, and a request made available meanwhile is to start at once, from
    the kick's own pass — not wait for that completion's turn."""
    from pyvirtio.devices import blk_io
    from pyvirtio.spec.ring import VIRTQ_USED_F_NO_NOTIFY
    from pyvirtio.virtq.event import vring_need_event

    path = _disk(tmp_path / "disk.img", 16 * MiB)
    dev = BlkDevice(path, aio=aio)
    dev.writeback = False
    mock = MockSplitDriver(size=64, regions=[(0, 32 * MiB)])
    queue = make_device_queue(mock, event_idx=event_idx)
    dev.queues[0] = queue
    big = os.urandom(blk_io.KICKS_ON_BYTES)
    try:
        write = mock.add_request(out=[_hdr(spec.BlkReqType.OUT, 0), big], in_lens=[1])
        dev.process_queue(mock.mem, queue)
        assert not dev.kicks_held
        old = mock.avail_idx
        read = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 9 * MiB // 512)], in_lens=[4096, 1])
        if event_idx:  # the driver's kick test (2.7.10) says yes
            assert vring_need_event(mock.avail_event, mock.avail_idx, old)
        else:
            assert not mock.used_flags & VIRTQ_USED_F_NO_NOTIFY
        dev.process_queue(mock.mem, queue)  # the kick's pass: the read is popped and started
        assert queue.next_avail == mock.avail_idx
        deadline = time.monotonic() + 20
        while dev._io[0].inflight and time.monotonic() < deadline:
            dev.host_ready(mock.mem, 0, [])
            time.sleep(0.0005)
        used = dict(mock.used_elems(0))
        assert set(used) == {write.head, read.head} and not dev.kicks_held
        assert mock.read(*read.writable[0]) == struct.pack("<Q", 9 * MiB // 4096) * 512
        assert mock.read(*read.writable[1]) == b"\0" and mock.read(*write.writable[0]) == b"\0"
        with open(path, "rb") as f:
            assert f.read(len(big)) == big
    finally:
        dev.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aio", AIO)
def test_completions_are_looked_at_after_a_submit_only_if_some_may_be_done(tmp_path, aio, monkeypatch):
    """A pass that sent only large page-cache reads (offloaded to the kernel's workers: they
    finish through the completion fd, never inside the submit) does not look at the completions
    right after its submit; a pass that sent a request the kernel may finish at once does.  Both
    kinds complete either way, each once, with their data."""
    from pyvirtio.devices import blk_io

    path = _disk(tmp_path / "disk.img", 8 * MiB)
    dev = BlkDevice(path, aio=aio)
    mock = MockSplitDriver(size=16, regions=[(0, 8 * MiB)])
    queue = make_device_queue(mock)
    dev.queues[0] = queue
    looks = []
    real = dev.host_ready
    monkeypatch.setattr(dev, "host_ready", lambda mem, group, events: looks.append(list(events)) or real(mem, group, events))
    try:
        big = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 0)], in_lens=[blk_io.OFFLOAD_BYTES, 1])
        dev.process_queue(mock.mem, queue)
        assert looks == []  # offloaded only: nothing to find yet
        dev._io[0]._nowait = False  # the next small read goes to the engine, not copied at once
        small = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 4 * MiB // 512)], in_lens=[4096, 1])
        dev.process_queue(mock.mem, queue)
        assert looks == [[]]  # a request the kernel may have finished inside the submit
        used = dict(_run(dev, mock, queue))
        assert set(used) == {big.head, small.head}
        assert used[big.head] == blk_io.OFFLOAD_BYTES + 1 and used[small.head] == 4096 + 1
        assert mock.read(*small.writable[0]) == struct.pack("<Q", 1024) * 512
        assert mock.read(*big.writable[0])[-4096:] == struct.pack("<Q", blk_io.OFFLOAD_BYTES // 4096 - 1) * 512
    finally:
        dev.close()


@pytest.mark.timeout(60)
def test_reads_copied_at_once_go_back_in_batches_while_the_ring_is_drained(tmp_path):
    """With a transport that lets notifications out mid-turn (``notify_queue``), every
    PUBLISH_EVERY reads copied at once are in the used ring, and the driver told, before the
    pass ends — a driver keeping the ring full refills it meanwhile — and so is the last one,
    as soon as the ring has nothing more (the pass's last look and re-enabled notifications
    come after: nothing is left for the end of the turn).  Without one, or with a fault rule
    set, the used ring moves once at the end of the pass, as before.  Every request completes
    once either way, with its data."""
    from pyvirtio.virtq.drain import PUBLISH_EVERY

    path = _disk(tmp_path / "disk.img", 4 * MiB)
    n = 2 * PUBLISH_EVERY + 3
    for mode in ("mid-pass", "no transport", "fault rule"):
        dev = BlkDevice(path, aio="io_uring" if io_uring_unavailable_reason() is None else "threads")
        mock = MockSplitDriver(size=64, regions=[(0, 2 * MiB)])
        queue = make_device_queue(mock, event_idx=False)
        dev.queues[0] = queue
        seen = []  # the used idx at each mid-pass notification
        if mode != "no transport":
            dev.notify_queue = lambda index: seen.append((index, mock.used_idx))
        if mode == "fault rule":
            dev.faults.add("latency:ms=200,sectors=6000-6007")  # sectors no request reads
        try:
            reqs = [mock.add_request(out=[_hdr(spec.BlkReqType.IN, 8 * i)], in_lens=[4096, 1]) for i in range(n)]
            _run(dev, mock, queue)  # warm the page cache: the first reads may go through the engine
            seen.clear()
            reqs = [mock.add_request(out=[_hdr(spec.BlkReqType.IN, 8 * i)], in_lens=[4096, 1]) for i in range(n)]
            start = mock.used_idx
            # mid-pass: nothing left to notify at the end of the turn; else all of it
            assert dev.process_queue(mock.mem, queue) == (mode != "mid-pass")
            assert not dev._io[0].inflight
            if mode == "mid-pass":  # (the first, answered before the pass, goes with its first batch)
                assert seen == [(0, start + 1 + PUBLISH_EVERY), (0, start + 1 + 2 * PUBLISH_EVERY),
                                (0, start + n)]
            else:
                assert seen == []
            used = dict(mock.used_elems(0)[-n:])
            assert set(used) == {r.head for r in reqs} and all(v == 4097 for v in used.values())
            for i, r in enumerate(reqs):
                assert mock.read(*r.writable[0]) == struct.pack("<Q", i) * 512
        finally:
            dev.close()


@pytest.mark.timeout(60)
def test_one_request_at_a_time_is_answered_before_the_pass_ends(tmp_path):
    """Queue depth 1: a read copied at once is in the used ring, and the driver told, as soon as
    it is done — the ring has nothing more — before the next kick is asked for; a request the
    driver makes available meanwhile is still taken in the same turn (the re-check), and the
    driver told of it; one made available after the turn is found on the next."""
    path = _disk(tmp_path / "disk.img", 4 * MiB)
    dev = BlkDevice(path, aio="io_uring" if io_uring_unavailable_reason() is None else "threads")
    mock = MockSplitDriver(size=16, regions=[(0, 2 * MiB)])
    queue = make_device_queue(mock)
    dev.queues[0] = queue
    told = []
    try:
        for i in range(3):
            mock.add_request(out=[_hdr(spec.BlkReqType.IN, 8 * i)], in_lens=[4096, 1])
        _run(dev, mock, queue)  # warm the page cache: a first read may go through the engine
        dev.notify_queue = lambda index: told.append([h for h, _ in mock.used_elems(0)])
        for i in range(3):
            req = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 8 * i)], in_lens=[4096, 1])
            assert not dev.process_queue(mock.mem, queue)  # nothing left for the end of the turn
            assert told[-1][-1] == req.head and len(told) == i + 1
            assert mock.read(*req.writable[0]) == struct.pack("<Q", i) * 512
        # made available while the first is served: the same turn takes it too, and tells of it
        first = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 0)], in_lens=[4096, 1])
        handle, later = dev.handle_chain, []

        def handle_and_add(index, chain):
            written = handle(index, chain)
            if not later:
                later.append(mock.add_request(out=[_hdr(spec.BlkReqType.IN, 16)], in_lens=[4096, 1]))
            return written
        dev.handle_chain = handle_and_add
        assert not dev.process_queue(mock.mem, queue)
        assert [h for h, _ in mock.used_elems()[-2:]] == [first.head, later[0].head]
        assert told[-1][-1] == later[0].head
        assert mock.read(*later[0].writable[0]) == struct.pack("<Q", 2) * 512
    finally:
        dev.close()


def _count_passes(monkeypatch):
    """Count blk's whole passes (drain_queue), which the short way of one request skips."""
    from pyvirtio.devices import blk as blk_module
    passes = []
    real = blk_module.drain_queue

    def counted(*args, **kwargs):
        passes.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(blk_module, "drain_queue", counted)
    return passes


@pytest.mark.timeout(60)
@pytest.mark.parametrize("event_idx", [False, True])
def test_a_request_alone_on_its_ring_is_answered_the_short_way_and_asks_for_the_next_kick(
        tmp_path, event_idx, monkeypatch):
    """Queue depth 1, a read of cached data: the turn takes the one chain the short way (no
    whole pass: take_one), answers it, tells the driver at once and asks for the next kick — the
    driver's kick test says yes for the next request — each time; data and status right."""
    from pyvirtio.spec.ring import VIRTQ_USED_F_NO_NOTIFY
    from pyvirtio.virtq.event import vring_need_event

    path = _disk(tmp_path / "disk.img", 4 * MiB)
    dev = BlkDevice(path, aio="threads")
    mock = MockSplitDriver(size=16, regions=[(0, 2 * MiB)])
    queue = make_device_queue(mock, event_idx=event_idx)
    dev.queues[0] = queue
    told = []
    try:
        for i in range(4):  # warm the page cache
            mock.add_request(out=[_hdr(spec.BlkReqType.IN, 8 * i)], in_lens=[4096, 1])
        _run(dev, mock, queue)
        dev.notify_queue = told.append
        passes = _count_passes(monkeypatch)
        for i in range(4):
            old = mock.avail_idx
            mock.set_used_event(mock.used_idx)  # the driver wants to hear of the next answer
            req = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 8 * i)], in_lens=[4096, 1])
            if event_idx:  # the driver kicks: avail_event was left at the chain it just added
                assert vring_need_event(mock.avail_event, mock.avail_idx, old)
            else:
                assert not mock.used_flags & VIRTQ_USED_F_NO_NOTIFY
            assert not dev.process_queue(mock.mem, queue)  # told at once
            assert told == [0] * (i + 1) and mock.used_elems()[-1] == (req.head, 4097)
            assert mock.read(*req.writable[0]) == struct.pack("<Q", i) * 512
            assert mock.read(*req.writable[1]) == b"\0"
        assert not passes, "a lone cached read went through the whole pass"
        assert queue.stats.chains == 8 and dev.stats["requests"] == 8
    finally:
        dev.close()


@pytest.mark.timeout(60)
def test_the_short_way_hands_the_turn_to_the_whole_pass_whenever_it_needs_one(tmp_path, monkeypatch):
    """The short way takes one chain; the whole pass takes over, and every request is answered
    once: when more chains are available (the rest drained in the same turn), when the request
    went to the kernel (a flush: the pass sends it and waits for it), when a fault rule is set,
    and when requests are still in flight (then the short way is not taken at all)."""
    from pyvirtio.devices import blk_io

    path = _disk(tmp_path / "disk.img", 4 * MiB)
    dev = BlkDevice(path, aio="threads")
    mock = MockSplitDriver(size=16, regions=[(0, 2 * MiB)])
    queue = make_device_queue(mock, event_idx=True)
    dev.queues[0] = queue
    try:
        for i in range(4):
            mock.add_request(out=[_hdr(spec.BlkReqType.IN, 8 * i)], in_lens=[4096, 1])
        _run(dev, mock, queue)
        passes = _count_passes(monkeypatch)
        start = mock.used_idx
        # three available at once: the first the short way, the other two by the pass
        reqs = [mock.add_request(out=[_hdr(spec.BlkReqType.IN, 8 * i)], in_lens=[4096, 1])
                for i in range(3)]
        dev.process_queue(mock.mem, queue)
        assert len(passes) == 1
        assert mock.used_elems(start) == [(r.head, 4097) for r in reqs]
        # a flush alone: the kernel does it; the pass sends it and it comes back
        flush = mock.add_request(out=[_hdr(spec.BlkReqType.FLUSH, 0)], in_lens=[1])
        used = _run(dev, mock, queue)
        assert len(passes) == 2 and used[-1] == (flush.head, 1)
        # a fault rule set (one this read does not meet): the whole pass, whose rules see it
        dev.faults.add("ioerr:sectors=6000-6007")
        read = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 0)], in_lens=[4096, 1])
        used = _run(dev, mock, queue)
        assert len(passes) == 3 and used[-1] == (read.head, 4097)
        dev.faults.clear()
        # a large read in flight in the kernel: the next request, alone on the ring, is not
        # taken the short way (the pass looks at what finished and holds or frees the kicks)
        big = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 0)], in_lens=[blk_io.OFFLOAD_BYTES, 1])
        dev.process_queue(mock.mem, queue)
        assert dev._io[0].inflight
        small = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 8)], in_lens=[4096, 1])
        used = dict(_run(dev, mock, queue))
        assert len(passes) == 5
        assert used[big.head] == blk_io.OFFLOAD_BYTES + 1 and used[small.head] == 4097
        assert mock.read(*small.writable[0]) == struct.pack("<Q", 1) * 512
    finally:
        dev.close()


@pytest.mark.timeout(60)
@pytest.mark.skipif(io_uring_unavailable_reason() is not None, reason="needs io_uring (a cached read done inside the submit)")
def test_completions_of_a_batch_sent_to_the_kernel_go_back_while_the_ring_is_drained(tmp_path):
    """Requests that go to the kernel are sent in batches (SUBMIT_EVERY) while the ring is
    drained; after each batch, what the kernel already finished goes to the used ring and the
    driver is told (``notify_queue``), before the pass ends — not all at the end of the pass.
    (Cached 4 KiB reads sent through io_uring are done inside the submit: deterministic here.)"""
    from pyvirtio.devices.blk_io import SUBMIT_EVERY

    path = _disk(tmp_path / "disk.img", 4 * MiB)
    n = 3 * SUBMIT_EVERY + 2
    dev = BlkDevice(path, aio="io_uring")
    mock = MockSplitDriver(size=128, regions=[(0, 2 * MiB)])  # 3 descriptors a request
    queue = make_device_queue(mock, event_idx=False)
    dev.queues[0] = queue
    seen = []
    dev.notify_queue = lambda index: seen.append((index, mock.used_idx))
    try:
        with open(path, "rb") as f:  # the data in the page cache
            f.read()
        io = dev._queue_io(0)
        io._nowait = False  # every read through the engine, as with O_DIRECT
        reqs = [mock.add_request(out=[_hdr(spec.BlkReqType.IN, 8 * i)], in_lens=[4096, 1]) for i in range(n)]
        start = mock.used_idx
        dev.process_queue(mock.mem, queue)
        assert seen == [(0, start + k * SUBMIT_EVERY) for k in (1, 2, 3)]
        used = dict(_run(dev, mock, queue)[-n:])
        assert set(used) == {r.head for r in reqs} and all(v == 4097 for v in used.values())
        for i, r in enumerate(reqs):
            assert mock.read(*r.writable[0]) == struct.pack("<Q", i) * 512
    finally:
        dev.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aio", AIO)
@pytest.mark.parametrize("linger", [True, False])
def test_a_turn_waits_briefly_for_the_request_it_sent_to_the_kernel(tmp_path, aio, linger, monkeypatch):
    """Queue depth 1 through the kernel (a read that is not copied at once): with a transport
    that lets the device notify mid-turn, the turn that sent the request waits for it (bounded:
    ``BlkDevice.linger``), puts it in the used ring, tells the driver and ends with kicks back
    on — one worker wake-up per request instead of two.  Without the linger (or when the wait
    ends first) the request stays in flight, kicks stay off, and its completion is answered
    later by ``host_ready``, as before."""
    from pyvirtio.devices import blk_io

    size = 256 * 1024  # io_uring: a read this large goes to the kernel's workers, not inline
    monkeypatch.setattr(blk_io, "KICKS_ON_BYTES", 1 << 30)  # ... and counts as small here
    path = _disk(tmp_path / "disk.img", 4 * MiB)
    dev = BlkDevice(path, aio=aio)
    # Long enough that the read (a first one starts the kernel's workers) ends inside it.
    dev.linger = 10.0 if linger else 0.0
    mock = MockSplitDriver(size=16, regions=[(0, 4 * MiB)])
    queue = make_device_queue(mock)
    dev.queues[0] = queue
    told = []
    dev.notify_queue = lambda index: told.append([h for h, _ in mock.used_elems(0)])
    try:
        io = dev._queue_io(0)
        io._nowait = False  # through the engine, as with O_DIRECT
        for i in range(3):
            req = mock.add_request(out=[_hdr(spec.BlkReqType.IN, (size // 512) * i)], in_lens=[size, 1])
            notify = dev.process_queue(mock.mem, queue)
            if linger:
                assert not notify and told[-1][-1] == req.head and len(told) == i + 1
                assert not io.inflight and 0 not in dev.kicks_held and dev.lingered == i + 1
            else:
                assert io.inflight and 0 in dev.kicks_held and told == [] and dev.lingered == 0
                _run(dev, mock, queue)
                assert mock.used_elems(0)[-1] == (req.head, size + 1)
            block = (size // 4096) * i
            assert mock.read(*req.writable[0])[:4096] == struct.pack("<Q", block) * 512
    finally:
        dev.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aio", AIO)
def test_o_direct_sends_a_request_and_waits_for_it_in_one_call(tmp_path, aio, monkeypatch):
    """O_DIRECT (nothing finishes inside the submit) at queue depth 1 with a linger: the turn
    hands the request to the engine and waits for it in one call (io_uring: one io_uring_enter,
    not a submit and then a wait), then answers it in the same turn — data and status intact.
    (A read alone on its ring would be done at once when O_DIRECT takes its buffer — the mock's
    memory is a bytearray, aligned or not as the heap placed it: that path is tested below, and
    turned off here.)"""
    from pyvirtio.aio import uring

    path = _disk(tmp_path / "disk.img", 4 * MiB)
    dev = BlkDevice(path, aio=aio, direct=True)
    dev.linger = 10.0
    monkeypatch.setattr(dev, "_alone", lambda queue_index: False)
    mock = MockSplitDriver(size=16, regions=[(0, 2 * MiB)])
    queue = make_device_queue(mock)
    dev.queues[0] = queue
    told = []
    dev.notify_queue = told.append
    enters = []
    real_syscall = uring._syscall
    monkeypatch.setattr(uring, "_syscall", lambda nr, *a: enters.append(nr) or real_syscall(nr, *a))
    try:
        io = dev._queue_io(0)
        calls = []
        for name in ("submit", "wait", "submit_and_wait"):
            real = getattr(io.engine, name)
            monkeypatch.setattr(io.engine, name, lambda *a, _n=name, _r=real: calls.append(_n) or _r(*a))
        for i in range(3):
            calls.clear()
            enters.clear()
            req = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 8 * (i + 1))], in_lens=[4096, 1])
            assert not dev.process_queue(mock.mem, queue)
            assert calls[0] == "submit_and_wait" and told == [0] * (i + 1) and dev.lingered == i + 1
            if aio == "io_uring":
                assert calls == ["submit_and_wait"] and enters == [uring.SYS_IO_URING_ENTER]
            assert not io.inflight and 0 not in dev.kicks_held
            assert mock.used_elems(0)[-1] == (req.head, 4097)
            assert mock.read(*req.writable[0]) == struct.pack("<Q", i + 1) * 512
    finally:
        monkeypatch.undo()
        dev.close()


def _aligned_rig(tmp_path, aio):
    """An O_DIRECT device on a ring in page-aligned guest memory (mmap): buffers O_DIRECT takes."""
    import mmap

    from pyvirtio.memory import GuestMemory

    path = _disk(tmp_path / "disk.img", 4 * MiB)
    dev = BlkDevice(path, aio=aio, direct=True)
    dev.linger = 10.0
    mock = MockSplitDriver(size=16, mem=GuestMemory.from_buffers((0, mmap.mmap(-1, 2 * MiB))))
    queue = make_device_queue(mock)
    dev.queues[0] = queue
    told = []
    dev.notify_queue = told.append  # a transport that lets the device notify mid-turn
    return dev, mock, queue


def _aligned_read(mock, block, publish=True, misalign=0):
    """A 4 KiB read of ``block`` into a page-aligned buffer (or ``misalign`` bytes past one):
    (head, data address)."""
    from pyvirtio.testing.mock_driver import F_WRITE

    hdr, data, status = mock.alloc(16), mock.alloc(4096 + misalign, 4096) + misalign, mock.alloc(1)
    mock.write(hdr, _hdr(spec.BlkReqType.IN, 8 * block))
    mock.write(status, b"\xff")
    return mock.add_chain([(hdr, 16, 0), (data, 4096, F_WRITE), (status, 1, F_WRITE)],
                          publish=publish), data


def _count_engine_calls(io, monkeypatch):
    calls = []
    for name in ("submit", "wait", "submit_and_wait"):
        real = getattr(io.engine, name)
        monkeypatch.setattr(io.engine, name, lambda *a, _n=name, _r=real: calls.append(_n) or _r(*a))
    return calls


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aio", AIO)
def test_an_o_direct_read_alone_on_its_ring_is_done_at_once(tmp_path, aio, monkeypatch):
    """O_DIRECT at queue depth 1: a read alone on its ring (nothing in flight, nothing more
    available) is done in the turn with one preadv, no trip through the engine; data, status
    and used length as the engine would give them, kicks left on."""
    dev, mock, queue = _aligned_rig(tmp_path, aio)
    try:
        io = dev._queue_io(0)
        calls = _count_engine_calls(io, monkeypatch)
        for block in (3, 1, 7):
            head, data = _aligned_read(mock, block)
            dev.process_queue(mock.mem, queue)
            assert mock.used_elems(0)[-1] == (head, 4097)
            assert mock.read(data, 4096) == struct.pack("<Q", block) * 512
            assert mock.read(data + 4096, 1) == bytes([spec.BlkStatus.OK])
        assert calls == [] and not io.inflight and 0 not in dev.kicks_held and dev.lingered == 0
        assert dev.stats["requests"] == 3 and dev.stats["read_bytes"] == 3 * 4096
    finally:
        monkeypatch.undo()
        dev.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aio", AIO)
def test_o_direct_reads_that_are_not_alone_go_to_the_engine_together(tmp_path, aio, monkeypatch):
    """Two reads available at once: neither waits for the disk in the turn on its own (the
    first has a second behind it, the second one in flight before it) — both go to the kernel
    together and come back intact."""
    dev, mock, queue = _aligned_rig(tmp_path, aio)
    try:
        io = dev._queue_io(0)
        calls = _count_engine_calls(io, monkeypatch)
        reads = [_aligned_read(mock, block, publish=False) for block in (5, 9)]
        mock.publish()
        used = dict(_run(dev, mock, queue))
        assert "submit_and_wait" in calls or "submit" in calls
        for (head, data), block in zip(reads, (5, 9)):
            assert used[head] == 4097 and mock.read(data, 4096) == struct.pack("<Q", block) * 512
    finally:
        monkeypatch.undo()
        dev.close()


def _aligned_write(mock, block, fill):
    """A 4 KiB write of ``fill`` * 4096 to ``block`` from a page-aligned buffer: (head, status
    byte's address)."""
    from pyvirtio.testing.mock_driver import F_WRITE

    hdr, data, status = mock.alloc(16), mock.alloc(4096, 4096), mock.alloc(1)
    mock.write(hdr, _hdr(spec.BlkReqType.OUT, 8 * block))
    mock.write(data, fill * 4096)
    mock.write(status, b"\xff")
    return mock.add_chain([(hdr, 16, 0), (data, 4096, 0), (status, 1, F_WRITE)]), status


@pytest.mark.timeout(60)
@pytest.mark.parametrize("writeback", [True, False])
def test_an_o_direct_write_alone_on_its_ring_is_done_at_once(tmp_path, monkeypatch, writeback):
    """O_DIRECT at queue depth 1: a write alone on its ring is done in the turn with one
    pwritev (RWF_DSYNC in write-through), no trip through the engine; the image holds it and
    the status says OK.  Two writes available together both go to the engine."""
    from pyvirtio.devices import blk_io

    dev, mock, queue = _aligned_rig(tmp_path, "threads")
    dev.writeback = writeback
    real_pwritev, flags_seen = blk_io.os.pwritev, []

    def pwritev(fd, views, offset, flags=0):
        flags_seen.append(flags)
        return real_pwritev(fd, views, offset, flags)
    try:
        io = dev._queue_io(0)
        calls = _count_engine_calls(io, monkeypatch)
        monkeypatch.setattr(blk_io.os, "pwritev", pwritev)
        head, status = _aligned_write(mock, 3, b"w")
        dev.process_queue(mock.mem, queue)
        monkeypatch.setattr(blk_io.os, "pwritev", real_pwritev)
        assert calls == [] and mock.used_elems(0)[-1] == (head, 1) and not io.inflight
        assert mock.read(status, 1) == bytes([spec.BlkStatus.OK])
        assert flags_seen == [0 if writeback else os.RWF_DSYNC]
        with open(dev.path, "rb") as f:
            f.seek(3 * 4096)
            assert f.read(4096) == b"w" * 4096
        assert dev.stats["write_bytes"] == 4096
        writes = [_aligned_write(mock, 5, b"x"), _aligned_write(mock, 6, b"y")]
        used = dict(_run(dev, mock, queue))
        assert calls[:1] in (["submit"], ["submit_and_wait"])
        for head, status in writes:
            assert used[head] == 1 and mock.read(status, 1) == bytes([spec.BlkStatus.OK])
        with open(dev.path, "rb") as f:
            f.seek(5 * 4096)
            assert f.read(8192) == b"x" * 4096 + b"y" * 4096
    finally:
        monkeypatch.undo()
        dev.close()


@pytest.mark.timeout(60)
def test_a_slow_or_failed_read_at_once_sends_the_next_ones_to_the_engine_for_a_while(tmp_path, monkeypatch):
    """Reads done at once that took longer than AT_ONCE_MAX_WAIT, AT_ONCE_SLOW_RUN in a row (a
    slow disk; one slow read among fast ones is an outlier), or one that failed (a buffer
    O_DIRECT refuses) send the queue's reads through the engine — the worker no longer waits
    for the disk — until AT_ONCE_PAUSE has passed; every read still comes back intact."""
    from pyvirtio.devices import blk_io

    dev, mock, queue = _aligned_rig(tmp_path, "threads")
    if blk_io.in_memory_fs(dev.image.fd):
        dev.close()
        pytest.skip("the image is on a memory file system, whose O_DIRECT takes any buffer")
    now = [1000.0]
    monkeypatch.setattr(blk_io, "_monotonic", lambda: now[0])
    real_preadv = blk_io.os.preadv

    def slow_preadv(fd, views, offset, *flags):  # the disk took 2 ms
        now[0] += 2 * blk_io.AT_ONCE_MAX_WAIT
        return real_preadv(fd, views, offset, *flags)
    try:
        io = dev._queue_io(0)
        calls = _count_engine_calls(io, monkeypatch)
        slow = [True] * (blk_io.AT_ONCE_SLOW_RUN - 1) + [False] + [True] * blk_io.AT_ONCE_SLOW_RUN
        for i, is_slow in enumerate(slow):  # a fast one between slow ones starts the run again
            monkeypatch.setattr(blk_io.os, "preadv", slow_preadv if is_slow else real_preadv)
            head, data = _aligned_read(mock, 10 + i)
            dev.process_queue(mock.mem, queue)  # done at once, slowly or not
            monkeypatch.setattr(blk_io.os, "preadv", real_preadv)
            assert calls == [] and mock.used_elems(0)[-1] == (head, 4097)
            assert mock.read(data, 4096) == struct.pack("<Q", 10 + i) * 512
        head, data = _aligned_read(mock, 4)
        dev.process_queue(mock.mem, queue)  # paused: through the engine
        assert calls[:1] == ["submit_and_wait"] and mock.used_elems(0)[-1] == (head, 4097)
        assert mock.read(data, 4096) == struct.pack("<Q", 4) * 512
        now[0] += blk_io.AT_ONCE_PAUSE + 0.001
        calls.clear()
        head, data = _aligned_read(mock, 6)
        dev.process_queue(mock.mem, queue)  # the pause is over: at once again
        assert calls == [] and mock.used_elems(0)[-1] == (head, 4097)
        assert mock.read(data, 4096) == struct.pack("<Q", 6) * 512
        # A buffer O_DIRECT refuses (not aligned): the engine's bounce buffer does it.
        calls.clear()
        head, data = _aligned_read(mock, 8, misalign=8)
        dev.process_queue(mock.mem, queue)
        assert calls[:1] == ["submit_and_wait"] and mock.used_elems(0)[-1] == (head, 4097)
        assert mock.read(data, 4096) == struct.pack("<Q", 8) * 512
        assert io._at_once_after == now[0] + blk_io.AT_ONCE_PAUSE
    finally:
        monkeypatch.undo()
        dev.close()


@pytest.mark.timeout(60)
def test_a_linger_that_ends_before_the_completion_leaves_the_request_to_host_ready(tmp_path, monkeypatch):
    """The wait is bounded: when it ends with nothing finished, the turn ends with the request
    in flight and kicks off, and the completion is answered when the engine's fd fires."""
    path = _disk(tmp_path / "disk.img", 4 * MiB)
    dev = BlkDevice(path, aio="threads")
    mock = MockSplitDriver(size=16, regions=[(0, 2 * MiB)])
    queue = make_device_queue(mock)
    dev.queues[0] = queue
    told = []
    dev.notify_queue = lambda index: told.append(index)
    try:
        io = dev._queue_io(0)
        io._nowait = False
        waits = []
        monkeypatch.setattr(io.engine, "wait", lambda timeout: waits.append(timeout) or [])
        req = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 8)], in_lens=[4096, 1])
        dev.process_queue(mock.mem, queue)
        assert waits == [dev.linger] and io.inflight and 0 in dev.kicks_held and told == []
        assert dev.lingered == 0
        _run(dev, mock, queue)
        assert mock.used_elems(0)[-1] == (req.head, 4097)
        assert mock.read(*req.writable[0]) == struct.pack("<Q", 1) * 512
    finally:
        dev.close()



@pytest.mark.timeout(60)
def test_after_a_linger_the_ring_is_drained_again_before_the_turn_ends(tmp_path):
    """With requests still in flight after the linger's completions, the drain takes another
    pass (kicks still off): a request the driver made available when it was told — a full
    ring's next one — goes to the kernel in this turn, not one completion later."""
    path = _disk(tmp_path / "disk.img", 4 * MiB)
    dev = BlkDevice(path, aio="threads")
    dev.linger = 10.0
    mock = MockSplitDriver(size=16, regions=[(0, 2 * MiB)])
    queue = make_device_queue(mock)
    dev.queues[0] = queue
    added = []

    def told(index):  # the driver answers the first completion with a new request
        if not added:
            added.append(mock.add_request(out=[_hdr(spec.BlkReqType.IN, 24)], in_lens=[4096, 1]))
    dev.notify_queue = told
    try:
        io = dev._queue_io(0)
        io._nowait = False
        first = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 8)], in_lens=[4096, 1])
        second = mock.add_request(out=[_hdr(spec.BlkReqType.IN, 16)], in_lens=[4096, 1])
        real_wait, stashed = io.engine.wait, []

        def first_only(timeout):  # both finish in the kernel; the second is answered later
            done = []
            while len(done) < 2:
                done += real_wait(timeout)
            stashed.extend(c for c in done if c[0] != first.head)
            return [c for c in done if c[0] == first.head]
        io.engine.wait = first_only
        dev.process_queue(mock.mem, queue)
        io.engine.wait = real_wait
        assert dev.lingered == 1 and added
        assert queue.next_avail == 3 and added[0].head in io.inflight  # popped and sent
        assert second.head in io.inflight and 0 in dev.kicks_held
        dev._complete(mock.mem, 0, io, stashed)
        used = dict(_run(dev, mock, queue))
        assert set(used) >= {first.head, second.head, added[0].head}
        for req, block in ((first, 1), (second, 2), (added[0], 3)):
            assert used[req.head] == 4097
            assert mock.read(*req.writable[0]) == struct.pack("<Q", block) * 512
    finally:
        dev.close()


@pytest.mark.timeout(60)
@pytest.mark.skipif(io_uring_unavailable_reason() is not None, reason="needs io_uring (a cached read done inside the submit)")
def test_large_requests_go_to_the_kernel_in_batches_of_bytes_not_eight(tmp_path):
    """A batch also goes once it holds SUBMIT_BYTES: eight large requests sent together finish
    together and come back as one convoy, so large ones go a few at a time (here 32 KiB reads:
    two a batch), each batch's finished requests answered before the next is popped."""
    from pyvirtio.devices.blk_io import SUBMIT_BYTES, SUBMIT_EVERY

    size = 32 << 10
    per_batch = SUBMIT_BYTES // size
    assert 1 < per_batch < SUBMIT_EVERY
    path = _disk(tmp_path / "disk.img", 4 * MiB)
    n = 3 * per_batch + 1
    dev = BlkDevice(path, aio="io_uring")
    mock = MockSplitDriver(size=64, regions=[(0, 2 * MiB)])
    queue = make_device_queue(mock, event_idx=False)
    dev.queues[0] = queue
    seen = []
    dev.notify_queue = lambda index: seen.append((index, mock.used_idx))
    try:
        with open(path, "rb") as f:  # the data in the page cache: done inside the submit
            f.read()
        io = dev._queue_io(0)
        io._nowait = False  # every read through the engine, as with O_DIRECT
        sectors = size // 512
        reqs = [mock.add_request(out=[_hdr(spec.BlkReqType.IN, sectors * i)], in_lens=[size, 1]) for i in range(n)]
        start = mock.used_idx
        dev.process_queue(mock.mem, queue)
        assert seen[:3] == [(0, start + k * per_batch) for k in (1, 2, 3)]
        used = dict(_run(dev, mock, queue)[-n:])
        assert set(used) == {r.head for r in reqs} and all(v == size + 1 for v in used.values())
        for i, r in enumerate(reqs):
            blocks = size // 4096  # _disk's pattern: each 4 KiB block holds its number
            assert mock.read(*r.writable[0]) == b"".join(struct.pack("<Q", blocks * i + k) * 512 for k in range(blocks))
    finally:
        dev.close()
