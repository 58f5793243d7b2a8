"""Both aio engines against real files and memfd-backed buffers (the way guest memory looks)."""

from __future__ import annotations

import errno
import mmap
import os
import re
import select
import tempfile
import time

import pytest

from pyvirtio.aio import AioQueueFull, io_uring_unavailable_reason, open_aio
from pyvirtio.errors import UsageError

BLOCK = 4096
URING_REASON = io_uring_unavailable_reason()


@pytest.fixture(params=["io_uring", "threads"])
def engine(request, guest):  # after guest: the engine lets go of guest views before it unmaps
    if request.param == "io_uring" and URING_REASON is not None:
        pytest.skip(f"io_uring unavailable here: {URING_REASON}")
    eng = open_aio(request.param, depth=128)
    yield eng
    eng.close()


@pytest.fixture
def guest():
    """A memfd mapped like a guest memory region; yields a writable memoryview of 1 MiB."""
    fd = os.memfd_create("aio-test-guest", os.MFD_CLOEXEC)
    os.ftruncate(fd, 1 << 20)
    m = mmap.mmap(fd, 1 << 20)
    view = memoryview(m)
    yield view
    view.release()
    m.close()
    os.close(fd)


def _pattern(block: int) -> bytes:
    return bytes((block * 7 + i) & 0xFF for i in range(256)) * (BLOCK // 256)


@pytest.fixture
def image(tmp_path):
    """A 64-block file whose block b holds _pattern(b)."""
    path = tmp_path / "image"
    path.write_bytes(b"".join(_pattern(b) for b in range(64)))
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    yield fd
    os.close(fd)


@pytest.fixture
def pipe():
    """An empty pipe ``(r, w)``: a read of ``r`` never finishes until ``w`` is written."""
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def _drain(eng, count, timeout=10.0):
    out, deadline = [], time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        out += eng.wait(deadline - time.monotonic())
    return out


@pytest.mark.timeout(30)
def test_readv_several_iovecs(engine, image, guest):
    iovecs = [guest[0:100], guest[8192:8192 + 1000], guest[65536:65536 + 2996]]
    engine.prep_readv(image, iovecs, BLOCK, token=42)
    assert engine.inflight == 1 and engine.submit() == 1
    assert _drain(engine, 1) == [(42, BLOCK)]
    got = bytes(guest[0:100]) + bytes(guest[8192:9192]) + bytes(guest[65536:65536 + 2996])
    assert got == _pattern(1)
    assert engine.inflight == 0


@pytest.mark.timeout(30)
def test_many_small_and_empty_iovecs(engine, image, guest):
    iovecs = [guest[i * 512:i * 512 + 200] for i in range(20)] + [guest[0:0]]  # > 16 per op
    engine.prep_readv(image, iovecs, 2 * BLOCK, token=3)
    engine.submit()
    assert _drain(engine, 1) == [(3, 4000)]
    assert b"".join(bytes(v) for v in iovecs) == _pattern(2)[:4000]


@pytest.mark.timeout(30)
def test_requests_in_scattered_pages(engine, image, guest):
    """A guest's request in scattered pages: one iovec per page, more than a slot's share of the
    shared table (io_uring: the slot's own table, grown as needed and kept), reads and writes,
    again and again through the same slots, every byte where it belongs."""
    for round_, pages in enumerate((17, 40, 20, 63, 33)):  # the image has 64 blocks
        # Page i of the request lives at guest page 2 * i + 1: nothing adjacent.
        views = [guest[(2 * i + 1) * BLOCK:(2 * i + 2) * BLOCK] for i in range(pages)]
        first = round_ % 2  # the image's first block read
        engine.prep_readv(image, views, first * BLOCK, token=round_)
        engine.submit()
        assert _drain(engine, 1) == [(round_, pages * BLOCK)]
        assert [bytes(v) for v in views] == [_pattern(first + i) for i in range(pages)]
    # And written out from scattered pages: the image gets them back to back.
    views = [guest[(2 * i + 1) * BLOCK:(2 * i + 2) * BLOCK] for i in range(24)]
    for i, v in enumerate(views):
        v[:] = bytes([i]) * BLOCK
    engine.prep_writev(image, views, 8 * BLOCK, token=99)
    engine.submit()
    assert _drain(engine, 1) == [(99, 24 * BLOCK)]
    assert os.pread(image, 24 * BLOCK, 8 * BLOCK) == b"".join(bytes([i]) * BLOCK for i in range(24))


@pytest.mark.timeout(30)
def test_force_async_io_uring(image, guest):
    if URING_REASON is not None:
        pytest.skip(f"io_uring unavailable here: {URING_REASON}")
    from pyvirtio.aio.uring import IoUringEngine

    with IoUringEngine(8, force_async=True) as eng:
        eng.prep_readv(image, [guest[0:BLOCK]], 5 * BLOCK, token=1)
        eng.submit()
        assert _drain(eng, 1) == [(1, BLOCK)]
    assert bytes(guest[0:BLOCK]) == _pattern(5)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("single", [True, False], ids=["read-write-ops", "vectored"])
def test_one_buffer_with_its_address(image, guest, single, monkeypatch):
    """A request in one buffer whose host address the caller passes (a virtqueue walk knows it)
    goes as IORING_OP_READ/WRITE, address and length in the SQE and no iovec; a kernel without
    those ops (the probe) gets READV/WRITEV.  Same bytes either way."""
    if URING_REASON is not None:
        pytest.skip(f"io_uring unavailable here: {URING_REASON}")
    import ctypes

    from pyvirtio.aio import uring

    def address(view):
        return ctypes.addressof(ctypes.c_char.from_buffer(view))

    opcodes = []
    sqe_head = uring._SQE_HEAD

    class Spy:  # the SQE's opcode, then the real store
        @staticmethod
        def pack_into(buf, offset, opcode, *rest):
            opcodes.append(opcode)
            sqe_head.pack_into(buf, offset, opcode, *rest)

    with uring.IoUringEngine(8) as eng:
        if not single:
            eng._single_op = {}
        elif not eng._single_op:
            pytest.skip("this kernel has no IORING_OP_READ/WRITE (Linux < 5.6)")
        monkeypatch.setattr(uring, "_SQE_HEAD", Spy)
        read = guest[3 * BLOCK:4 * BLOCK]
        eng.prep_readv(image, [read], 7 * BLOCK, token=1, addresses=[address(read)])
        write = guest[5 * BLOCK:5 * BLOCK + 1000]
        write[:] = b"\x5a" * 1000
        eng.prep_writev(image, [write], 9 * BLOCK + 100, token=2, addresses=[address(write)])
        monkeypatch.undo()
        eng.submit()
        assert sorted(_drain(eng, 2)) == [(1, BLOCK), (2, 1000)]
    assert opcodes == ([uring.IORING_OP_READ, uring.IORING_OP_WRITE] if single
                       else [uring.IORING_OP_READV, uring.IORING_OP_WRITEV])
    assert bytes(read) == _pattern(7)
    assert os.pread(image, 1000, 9 * BLOCK + 100) == b"\x5a" * 1000


@pytest.mark.timeout(30)
def test_writev_then_read_back(engine, image, guest):
    guest[0:BLOCK] = b"\xab" * BLOCK
    guest[BLOCK:2 * BLOCK] = b"\xcd" * BLOCK
    engine.prep_writev(image, [guest[0:BLOCK], guest[BLOCK:2 * BLOCK]], 3 * BLOCK, token=1)
    engine.prep_writev(image, [b"read-only bytes"], 10 * BLOCK, token=2, dsync=True)
    engine.submit()
    assert sorted(_drain(engine, 2)) == [(1, 2 * BLOCK), (2, 15)]
    assert os.pread(image, 2 * BLOCK, 3 * BLOCK) == b"\xab" * BLOCK + b"\xcd" * BLOCK
    assert os.pread(image, 15, 10 * BLOCK) == b"read-only bytes"


@pytest.mark.timeout(30)
def test_many_in_flight_one_submit(engine, image, guest):
    for b in range(64):
        engine.prep_readv(image, [guest[b * BLOCK:(b + 1) * BLOCK]], (63 - b) * BLOCK, token=1000 + b)
    assert engine.inflight == 64 and engine.available == 64
    assert engine.submit() == 64
    done = _drain(engine, 64)
    assert sorted(t for t, _ in done) == list(range(1000, 1064))  # each token once, any order
    assert all(r == BLOCK for _, r in done)
    for b in range(64):
        assert bytes(guest[b * BLOCK:(b + 1) * BLOCK]) == _pattern(63 - b)
    assert engine.inflight == 0 and engine.reap() == []


@pytest.mark.timeout(30)
def test_depth_is_a_hard_limit(image, guest):
    for kind in ("io_uring", "threads"):
        if kind == "io_uring" and URING_REASON is not None:
            continue
        with open_aio(kind, depth=4) as eng:
            for t in range(4):
                eng.prep_readv(image, [guest[0:512]], 0, t)
            assert eng.available == 0
            with pytest.raises(AioQueueFull) as info:
                eng.prep_fsync(image, 99)
            assert isinstance(info.value, UsageError)
            eng.submit()
            assert len(_drain(eng, 4)) == 4
            assert eng.available == 4


@pytest.mark.timeout(30)
def test_errors_are_negative_errno(engine, image, guest):
    ro = os.open("/dev/zero", os.O_RDONLY)
    bad = os.open("/dev/null", os.O_RDONLY)
    os.close(bad)  # a closed fd number (nothing reopens it during the test)
    engine.prep_readv(bad, [guest[0:512]], 0, token=1)
    engine.prep_readv(image, [guest[0:512]], 64 * BLOCK, token=2)  # at end of file
    engine.prep_readv(image, [guest[0:BLOCK]], 63 * BLOCK + 100, token=3)  # short read
    engine.prep_writev(ro, [guest[0:512]], 0, token=4)
    engine.submit()
    results = dict(_drain(engine, 4))
    os.close(ro)
    assert results == {1: -errno.EBADF, 2: 0, 3: BLOCK - 100, 4: -errno.EBADF}


@pytest.mark.timeout(30)
def test_readv_needs_writable_buffers(engine, image):
    if engine.name == "threads":
        engine.prep_readv(image, [b"immutable"], 0, token=1)  # checked by os.preadv on a worker
        engine.submit()
        assert _drain(engine, 1) == [(1, -errno.EINVAL)]
    else:
        with pytest.raises(UsageError):
            engine.prep_readv(image, [b"immutable"], 0, token=1)
        assert engine.inflight == 0


@pytest.mark.timeout(30)
def test_fsync_and_fallocate(engine, image):
    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
    engine.prep_fsync(image, token=1)
    engine.prep_fsync(image, token=2, datasync=False)
    engine.prep_fallocate(image, 0, 64 * BLOCK, 16 * BLOCK, token=3)  # grows the file
    engine.submit()
    assert sorted(_drain(engine, 3)) == [(1, 0), (2, 0), (3, 0)]
    assert os.fstat(image).st_size == 80 * BLOCK
    engine.prep_fallocate(image, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, BLOCK, token=4)
    engine.submit()
    (token, result), = _drain(engine, 1)
    if result == -errno.EOPNOTSUPP:
        pytest.skip("this filesystem cannot punch holes")
    assert (token, result) == (4, 0)
    assert os.pread(image, BLOCK, 0) == bytes(BLOCK)
    engine.prep_fallocate(image, 0xFF, 0, BLOCK, token=5)  # unknown mode bits
    engine.submit()
    (token, result), = _drain(engine, 1)
    assert token == 5 and result < 0


@pytest.mark.timeout(30)
def test_o_direct(engine, guest):
    try:
        fd, path = tempfile.mkstemp(dir="/var/tmp", prefix="pyvirtio-aio-")
    except OSError as e:
        pytest.skip(f"cannot create a file under /var/tmp: {e}")
    try:
        os.write(fd, b"".join(_pattern(b) for b in range(8)))
        os.fsync(fd)
        try:
            dfd = os.open(path, os.O_RDWR | os.O_DIRECT)
        except OSError as e:
            pytest.skip(f"the filesystem of /var/tmp refuses O_DIRECT: {e}")
        try:
            guest[0:BLOCK] = b"\x5a" * BLOCK  # guest memory is page-aligned: so are these views
            engine.prep_writev(dfd, [guest[0:BLOCK]], 7 * BLOCK, token=1, dsync=True)
            engine.prep_readv(dfd, [guest[2 * BLOCK:3 * BLOCK], guest[5 * BLOCK:6 * BLOCK]], 2 * BLOCK, token=2)
            engine.submit()
            results = dict(_drain(engine, 2))
            if results.get(2) == -errno.EINVAL:
                pytest.skip("the filesystem of /var/tmp accepts O_DIRECT opens but not 4096-aligned I/O")
            assert results == {1: BLOCK, 2: 2 * BLOCK}
            assert bytes(guest[2 * BLOCK:3 * BLOCK]) == _pattern(2)
            assert bytes(guest[5 * BLOCK:6 * BLOCK]) == _pattern(3)
            assert os.pread(fd, BLOCK, 7 * BLOCK) == b"\x5a" * BLOCK
        finally:
            os.close(dfd)
    finally:
        os.close(fd)
        os.unlink(path)


@pytest.mark.timeout(30)
def test_eventfd_readable_while_completions_wait(engine, image, guest):
    poller = select.poll()
    poller.register(engine.fd, select.POLLIN)
    assert poller.poll(0) == []
    engine.prep_readv(image, [guest[0:BLOCK]], 0, token=5)
    engine.submit()
    assert poller.poll(5000) == [(engine.fd, select.POLLIN)]
    assert engine.reap() == [(5, BLOCK)]
    assert poller.poll(0) == []  # reaping cleared it


@pytest.mark.timeout(30)
def test_wait_times_out_empty(engine, guest, pipe):
    r, w = pipe
    assert engine.wait(0.05) == []  # nothing in flight at all
    engine.prep_readv(r, [guest[0:16]], -1, token=9)  # offset -1: the current position
    engine.submit()
    start = time.monotonic()
    assert engine.wait(0.2) == []
    assert 0.15 <= time.monotonic() - start < 5
    os.write(w, b"wake")
    assert _drain(engine, 1) == [(9, 4)]


@pytest.mark.timeout(30)
def test_submit_and_wait_returns_at_the_first_completion(engine, image, guest, pipe):
    r, w = pipe
    engine.prep_readv(r, [guest[0:16]], -1, token=7)  # never ends on its own
    engine.prep_readv(image, [guest[BLOCK:2 * BLOCK]], 3 * BLOCK, token=3)
    start = time.monotonic()
    done = engine.submit_and_wait(5.0)
    done += _drain(engine, 1) if not done else []
    assert done == [(3, BLOCK)] and time.monotonic() - start < 4
    assert bytes(guest[BLOCK:2 * BLOCK]) == _pattern(3)
    assert engine.inflight == 1  # the pipe read is still in the kernel
    start = time.monotonic()
    assert engine.submit_and_wait(0.2) == []  # nothing new to send: a plain bounded wait
    assert 0.15 <= time.monotonic() - start < 5
    os.write(w, b"wake")
    assert _drain(engine, 1) == [(7, 4)]


@pytest.mark.timeout(30)
@pytest.mark.skipif(URING_REASON is not None, reason=f"io_uring unavailable here: {URING_REASON}")
def test_io_uring_submit_and_wait_sends_the_rest_when_the_kernel_takes_part(image, guest, monkeypatch):
    """io_uring_enter that takes fewer ops than asked (it then does not wait): the rest goes
    through submit(), nothing is lost or sent twice."""
    from pyvirtio.aio import uring

    eng = open_aio("io_uring", depth=16)
    real = uring._syscall
    calls = []

    def partial(nr, fd, to_submit, min_complete, flags, *rest):
        calls.append((to_submit, min_complete))
        if len(calls) == 1:
            return real(nr, fd, 1, 0, 0, None, 0)  # the kernel took one of them
        return real(nr, fd, to_submit, min_complete, flags, *rest)

    monkeypatch.setattr(uring, "_syscall", partial)
    try:
        for b in range(3):
            eng.prep_readv(image, [guest[b * BLOCK:(b + 1) * BLOCK]], (10 + b) * BLOCK, token=b)
        done = eng.submit_and_wait(5.0)
        done += _drain(eng, 3 - len(done))
        assert sorted(done) == [(0, BLOCK), (1, BLOCK), (2, BLOCK)]
        assert calls[0] == (3, 1) and calls[1][0] == 2  # then the other two, by submit()
        assert [bytes(guest[b * BLOCK:(b + 1) * BLOCK]) for b in range(3)] == [_pattern(10 + b) for b in range(3)]
        assert eng.inflight == 0
    finally:
        monkeypatch.undo()
        eng.close()


@pytest.mark.timeout(30)
def test_close_with_ops_in_flight(engine, image, guest):
    for b in range(32):
        engine.prep_readv(image, [guest[b * BLOCK:(b + 1) * BLOCK]], b * BLOCK, token=b)
    engine.submit()
    engine.prep_fsync(image, token=99)  # prepared, never submitted: dropped
    engine.close()
    assert engine.inflight == 0 and engine.fd == -1
    assert bytes(guest[5 * BLOCK:6 * BLOCK]) == _pattern(5)  # submitted ops were waited for
    engine.close()  # twice is fine
    assert engine.reap() == []
    with pytest.raises(Exception):
        engine.prep_fsync(image, token=1)


@pytest.mark.timeout(30)
def test_close_is_bounded_when_an_op_never_ends(engine, guest):
    r, w = os.pipe()
    try:
        engine.prep_readv(r, [guest[0:16]], -1, token=1)
        engine.submit()
        start = time.monotonic()
        engine.close(timeout=0.3)
        assert time.monotonic() - start < 5
        assert engine.fd == -1 or engine.name == "threads"
    finally:
        os.write(w, b"x")  # lets an abandoned worker thread go
        os.close(w)
        time.sleep(0.05)
        os.close(r)


@pytest.mark.timeout(30)
def test_io_uring_takes_coop_taskrun_and_falls_back_without_it():
    """Our rings ask for IORING_SETUP_COOP_TASKRUN (no IPI to the submitting thread for each
    completion posted by task work; 5.19+); a kernel that refuses a setup flag with EINVAL gets
    the next in the list, the last of which is none."""
    if URING_REASON is not None:
        pytest.skip(f"io_uring unavailable here: {URING_REASON}")
    from pyvirtio.aio import uring

    with uring.IoUringEngine(8) as eng:
        major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", os.uname().release).groups())
        if (major, minor) >= (5, 19):
            assert eng.setup_flags == uring.IORING_SETUP_COOP_TASKRUN
    bogus = 1 << 31  # no such setup flag: EINVAL, as an old kernel answers COOP_TASKRUN
    fd, params, flags = uring._setup(2, (bogus, 0))
    os.close(fd)
    assert flags == 0 and params[0] == 2  # sq_entries
    with pytest.raises(OSError) as info:
        uring._setup(2, (bogus,))
    assert info.value.errno == errno.EINVAL


@pytest.mark.timeout(30)
@pytest.mark.parametrize("busy", [False, True], ids=["asleep", "running"])
def test_task_work_completion_reaches_the_submitter(guest, busy, pipe):
    """A completion io_uring posts by task work (a read on an empty pipe finishes when the pipe
    fills, from the writer's context) still signals the eventfd with COOP_TASKRUN: a submitter
    asleep in poll is woken; one busy in user space gets it at its next syscall."""
    if URING_REASON is not None:
        pytest.skip(f"io_uring unavailable here: {URING_REASON}")
    import threading

    from pyvirtio.aio.uring import IoUringEngine

    r, w = pipe
    with IoUringEngine(8) as eng:
        eng.prep_readv(r, [guest[0:16]], -1, token=3)
        eng.submit()
        poller = select.poll()
        poller.register(eng.fd, select.POLLIN)
        writer = threading.Timer(0.1, os.write, (w, b"pipe"))
        writer.start()
        if busy:
            end = time.monotonic() + 0.4
            while time.monotonic() < end:  # busy in Python while the pipe fills: its only
                pass  # system calls are the GIL's hand-offs to the writer thread
        start = time.monotonic()
        assert poller.poll(5000) == [(eng.fd, select.POLLIN)]
        assert time.monotonic() - start < 2.0
        writer.join()
        assert eng.reap() == [(3, 4)]
        assert bytes(guest[0:4]) == b"pipe"


@pytest.mark.timeout(30)
def test_auto_and_bad_arguments():
    with open_aio("auto", depth=8) as eng:
        assert eng.name == ("io_uring" if URING_REASON is None else "threads")
    with pytest.raises(UsageError):
        open_aio("aio-posix")
    with pytest.raises(UsageError):
        open_aio("threads", depth=0)
