"""Per-op cost of the aio engines against the alternatives (results in benchmarks/aio.md).

    .venv/bin/python benchmarks/aio_bench.py            # 4 KiB reads from the page cache, batch 32
    .venv/bin/python benchmarks/aio_bench.py --big      # 1 MiB reads, two cores kept busy, IOSQE_ASYNC or not
    .venv/bin/python benchmarks/aio_bench.py --big --idle   # the same without the busy loops

Every variant reads the same random 4 KiB blocks of a 64 MiB file (in the page cache) into an
mmap'd memfd, as a blk ring worker reads into guest memory: prepare a batch, submit it, reap until
the whole batch is back.  The PyPI ``liburing`` binding is measured only when importable (it is
not a dependency: run this script from a venv that has it to include it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import random
import struct
import subprocess
import sys
import tempfile
import time

from pyvirtio.aio import open_aio
from pyvirtio.aio.uring import IoUringEngine

BLOCK, FILE_BLOCKS, BATCH, ROUNDS, REPEATS = 4096, 16384, 32, 400, 5


def setup(block=BLOCK, blocks=FILE_BLOCKS):
    fd, path = tempfile.mkstemp(dir="/var/tmp", prefix="aio-bench-")
    os.unlink(path)
    chunk = os.urandom(1 << 20)
    for _ in range(block * blocks >> 20):
        os.write(fd, chunk)
    os.pread(fd, 1, 0)
    for off in range(0, block * blocks, 1 << 20):  # warm the page cache
        os.pread(fd, 1 << 20, off)
    mfd = os.memfd_create("guest")
    os.ftruncate(mfd, block * BATCH)
    mem = mmap.mmap(mfd, block * BATCH)
    view = memoryview(mem)
    bufs = [view[i * block:(i + 1) * block] for i in range(BATCH)]
    return fd, bufs


def offsets(rng, block=BLOCK, blocks=FILE_BLOCKS):
    return [rng.randrange(blocks) * block for _ in range(BATCH)]


def bench(name, run_batch, rounds=ROUNDS, block=BLOCK, blocks=FILE_BLOCKS):
    rng = random.Random(1)
    plans = [offsets(rng, block, blocks) for _ in range(rounds)]
    run_batch(plans[0])  # warm-up
    results = []
    for _ in range(REPEATS):  # the best of a few: the machine is shared
        cpu0, t0 = time.process_time(), time.perf_counter()
        for plan in plans:
            run_batch(plan)
        results.append((time.perf_counter() - t0, time.process_time() - cpu0))
    wall, cpu = min(results)
    n = rounds * BATCH
    print(f"| {name} | {wall / n * 1e6:.2f} | {cpu / n * 1e6:.2f} |")


def sync_preadv(fd, bufs):
    def run(plan):
        for buf, off in zip(bufs, plan):
            os.preadv(fd, [buf], off)
    return run


def engine_batch(eng, fd, bufs):
    def run(plan):
        for i, (buf, off) in enumerate(zip(bufs, plan)):
            eng.prep_readv(fd, [buf], off, i)
        eng.submit()
        got = 0
        while got < BATCH:
            got += len(eng.wait(5.0))
    return run


def pypi_liburing_batch(fd, bufs):
    try:
        import liburing as L
    except ImportError:
        return None
    ring, cqe = L.Ring(), L.Cqe()
    L.io_uring_queue_init(64, ring)

    def run(plan):
        keep = []
        for i, (buf, off) in enumerate(zip(bufs, plan)):
            iov = L.Iovec([buf])
            keep.append(iov)
            sqe = L.io_uring_get_sqe(ring)
            L.io_uring_prep_readv(sqe, fd, iov, off)
            sqe.user_data = i
        L.io_uring_submit(ring)
        got = 0
        while got < BATCH:
            L.io_uring_wait_cqe(ring, cqe)
            ready = L.io_uring_cq_ready(ring)
            for j in range(ready):
                cqe[j].user_data, cqe[j].res
            L.io_uring_cq_advance(ring, ready)
            got += ready
    return run


def liburing2_ctypes_batch(fd, bufs):
    """Debian's liburing.so.2 (2.3) through ctypes: its prep helpers are inline, so we fill SQEs."""
    path = ctypes.util.find_library("uring")
    if not path:
        return None
    lib = ctypes.CDLL(path)
    lib.io_uring_get_sqe.restype = ctypes.c_void_p
    ring = ctypes.create_string_buffer(512)  # struct io_uring (216 bytes in 2.3)
    if lib.io_uring_queue_init(64, ring, 0) != 0:
        return None
    cq_khead = ctypes.c_void_p.from_buffer(ring, 104).value  # struct io_uring_cq's khead (2.3 layout)
    khead = ctypes.c_uint.from_address(cq_khead)
    cqe_ptrs = (ctypes.c_void_p * 64)()
    sqe_struct = struct.Struct("<BBHiQQIIQHHiQQ")
    cqe_struct = struct.Struct("<QiI")
    iovs = ctypes.create_string_buffer(16 * BATCH)
    iov_base = ctypes.addressof(iovs)
    c_from_buffer, addressof = ctypes.c_char.from_buffer, ctypes.addressof
    sqe_type, cqe_type = ctypes.c_char * 64, ctypes.c_char * 16

    def run(plan):
        for i, (buf, off) in enumerate(zip(bufs, plan)):
            struct.pack_into("<QQ", iovs, 16 * i, addressof(c_from_buffer(buf)), len(buf))
            sqe = sqe_type.from_address(lib.io_uring_get_sqe(ring))
            sqe_struct.pack_into(sqe, 0, 1, 0, 0, fd, off, iov_base + 16 * i, 1, 0, i, 0, 0, 0, 0, 0)
        lib.io_uring_submit(ring)
        got = 0
        while got < BATCH:
            n = lib.io_uring_peek_batch_cqe(ring, cqe_ptrs, 64)
            if not n:
                lib.io_uring_submit_and_wait(ring, 1)
                continue
            for j in range(n):
                cqe_struct.unpack(cqe_type.from_address(cqe_ptrs[j]).raw)
            khead.value = (khead.value + n) & 0xFFFFFFFF  # io_uring_cq_advance is inline in 2.3
            got += n
    return run


def main_small():
    fd, bufs = setup()
    print(f"4 KiB reads from the page cache, batch of {BATCH}, {ROUNDS} batches (µs per op)\n")
    print("| variant | wall µs/op | CPU µs/op (all threads) |\n|---|---|---|")
    bench("sync os.preadv (one call per op)", sync_preadv(fd, bufs))
    with open_aio("io_uring", 64) as eng:
        bench("pyvirtio io_uring (ours)", engine_batch(eng, fd, bufs))
    with IoUringEngine(64, force_async=True) as eng:
        bench("pyvirtio io_uring, force_async", engine_batch(eng, fd, bufs))
    for workers in (2, 4):
        with open_aio("threads", 64, workers=workers) as eng:
            bench(f"pyvirtio threads ({workers} workers)", engine_batch(eng, fd, bufs))
    run = liburing2_ctypes_batch(fd, bufs)
    if run:
        bench("liburing.so.2 (2.3) via ctypes", run)
    run = pypi_liburing_batch(fd, bufs)
    if run:
        bench("PyPI liburing binding", run)


def main_big():
    global BATCH
    BATCH = 8
    big = 1 << 20
    fd, bufs = setup(big, 64)
    n_busy = 0 if "--idle" in sys.argv else 2
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n_busy)]
    try:
        time.sleep(0.2)
        print(f"1 MiB reads from the page cache, batch of {BATCH}, {n_busy} busy-loop processes running\n")
        print("| variant | wall µs/op | CPU µs/op (this process) |\n|---|---|---|")
        bench("sync os.preadv", sync_preadv(fd, bufs), 50, big, 64)
        with IoUringEngine(64) as eng:
            bench("io_uring, inline", engine_batch(eng, fd, bufs), 50, big, 64)
        with IoUringEngine(64, force_async=True) as eng:
            bench("io_uring, force_async", engine_batch(eng, fd, bufs), 50, big, 64)
        with open_aio("threads", 64) as eng:
            bench("threads (4 workers)", engine_batch(eng, fd, bufs), 50, big, 64)
    finally:
        for p in busy:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main_big() if "--big" in sys.argv else main_small()
