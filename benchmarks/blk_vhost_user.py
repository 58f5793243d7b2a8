#!/usr/bin/env python3
"""vhost-user-blk back-ends side by side, from pyvirtio's host-side load generator.

Starts, in one run: qemu-storage-daemon with a null-co device, qemu-storage-daemon with a raw
file (in its main loop, the default — ``aio=threads``: a thread pool does the reads —, the same
with ``aio=io_uring`` like pyvirtio's default, and in an IOThread, whose event loop polls
adaptively for up to ``--poll-us`` µs, default 32 as QEMU's), and ``pyvirtio serve blk`` with the
same kind of file (default, and with the same polling budget); then runs ``pyvirtio bench blk``'s engine against each, test by test, interleaved, for
several rounds, reversing the back-end order every other round (PEERS.md: noise on this machine
is up to ±25%; compare only within one run).  Every back-end runs split rings
(qemu-storage-daemon's libvhost-user has no packed ring).  Reports each back-end's median, the
CPU time its process used per request (every thread, the kernel's io_uring workers too) and the
median of the per-round ratios.  ``--threads`` also splits each back-end's CPU per request by
thread group — ``main`` (qemu-storage-daemon's event loop; pyvirtio's vhost-user control
thread), ``threads`` (pyvirtio's queue workers; qemu-storage-daemon's thread pool), ``io_uring``
(the kernel's io_uring workers) — and reports the load generator's own CPU per request
(``driver``: the same Python driver for every back-end, so a difference there is the back-end's
completion pattern).  Every test but the last describes each request's data in one descriptor;
the last describes 128 KiB in 32 pages, as a guest does (``bench blk --seg-size 4k``).

    python benchmarks/blk_vhost_user.py [--rounds 5] [--runtime 3] [--size 128M] [--threads]
                                        [--tests 1M,qd1] [--backends qsd-file,pyvirtio]
                                        [--relaunch] [--json out.json]

``--tests`` keeps the tests whose name contains one of the given words (e.g. ``1M`` for the
1 MiB row alone); ``--backends`` keeps the named back-ends (the others are not started).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

from pyvirtio.bench.blk import BlkBenchConfig, parse_size, run
from pyvirtio.bench.peers import (THREAD_GROUPS, CpuSampler, fill_image, interleave, relauncher,
                                  same_round_ratios, start_pyvirtio, start_qsd)

TESTS = (
    ("4k randread qd1", dict(rw="randread", bs=4096, iodepth=1)),
    ("4k randread qd32", dict(rw="randread", bs=4096, iodepth=32)),
    ("1M read qd8", dict(rw="read", bs=1 << 20, iodepth=8)),
    # A guest's request: its buffer in scattered pages, one descriptor each (Linux's virtio-blk).
    ("128k randread qd8 32pg", dict(rw="randread", bs=128 << 10, iodepth=8, seg_size=4096)),
)
RATIOS = (("pyvirtio", "qsd-file"), ("pyvirtio", "qsd-uring"), ("pyvirtio-poll", "qsd-iothread"),
          ("pyvirtio-poll", "qsd-file"), ("qsd-iothread", "qsd-file"), ("qsd-uring", "qsd-file"),
          ("pyvirtio", "qsd-null"))
BACKENDS = ("qsd-null", "qsd-file", "qsd-uring", "qsd-iothread", "pyvirtio", "pyvirtio-poll")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds of every test on every back-end (default 5)")
    p.add_argument("--runtime", type=float, default=3.0, help="seconds per run (default 3)")
    p.add_argument("--size", default="128M", help="disk size (default 128M)")
    p.add_argument("--threads", action="store_true",
                   help="split each back-end's CPU per request by thread group, and show the driver's")
    p.add_argument("--tests", metavar="WORDS",
                   help="comma-separated words: run only the tests whose name contains one (default: all)")
    p.add_argument("--backends", metavar="NAMES",
                   help=f"comma-separated back-ends to run (default: all of {', '.join(BACKENDS)})")
    p.add_argument("--poll-us", type=float, default=32.0, metavar="US",
                   help="the polling budget of both polling back-ends: pyvirtio-poll's --poll-us and "
                        "qsd-iothread's poll-max-ns (default 32, QEMU's IOThread default)")
    p.add_argument("--relaunch", action="store_true",
                   help="start every back-end anew before each round (a process's speed on this "
                        "machine differs from one launch to the next: the rounds then sample "
                        "launches, not one launch of each)")
    p.add_argument("--json", metavar="FILE", help="also write every run's result here")
    args = p.parse_args(argv)
    size = parse_size(args.size)
    if not 0 < args.poll_us <= 10_000:
        p.error("--poll-us: between 0 and 10000 microseconds")
    poll = args.poll_us
    try:
        tests, backends = select(args.tests, args.backends)
    except ValueError as exc:
        p.error(str(exc))
    with tempfile.TemporaryDirectory(prefix="pyvirtio-bench-blk-") as tmp:
        # One image per file back-end (each locks its image as QEMU does: a second writer of one
        # file is refused), each written the same way: a copy made with copyfile reads ~25 %
        # slower from the page cache at 1 MiB than the file it was copied from (smaller folios
        # in the cache), which would handicap whichever back-end got the copy.
        images = {name: os.path.join(tmp, f"{name}.img") for name in backends if name != "qsd-null"}
        for path in images.values():
            fill_image(path, size)
        starts = {
            "qsd-null": lambda: start_qsd(os.path.join(tmp, "null.sock"), null_size=size),
            "qsd-file": lambda: start_qsd(os.path.join(tmp, "file.sock"), images["qsd-file"]),
            "qsd-uring": lambda: start_qsd(os.path.join(tmp, "uring.sock"), images["qsd-uring"], aio="io_uring"),
            "qsd-iothread": lambda: start_qsd(os.path.join(tmp, "iot.sock"), images["qsd-iothread"],
                                              iothread=True, poll_max_ns=round(poll * 1000)),
            "pyvirtio": lambda: start_pyvirtio("blk", os.path.join(tmp, "pv.sock"), blk_file=images["pyvirtio"]),
            "pyvirtio-poll": lambda: start_pyvirtio("blk", os.path.join(tmp, "pvp.sock"),
                                                    blk_file=images["pyvirtio-poll"], extra_args=[f"--poll-us={poll:g}"]),
        }
        peers: dict = {}
        try:  # a peer that fails to start stops the ones already started
            for name in backends:
                peers[name] = starts[name]()
            runs = measure(peers, tests, args.rounds, args.runtime, threads=args.threads,
                           each_round=relauncher(peers, starts, backends) if args.relaunch else None)
        finally:
            for peer in peers.values():
                peer.close()
    report(runs, tests, args.rounds, args.runtime, threads=args.threads, poll_us=poll,
           relaunch=args.relaunch)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=2)
    return 0


def select(test_words: str | None, backend_names: str | None) -> tuple[tuple, tuple]:
    """The tests and back-ends ``--tests`` and ``--backends`` keep (ValueError: one that matches
    nothing)."""
    tests = TESTS
    if test_words:
        words = [w.strip() for w in test_words.split(",") if w.strip()]
        for word in words:
            if not any(word in name for name, _ in TESTS):
                raise ValueError(f"--tests: {word!r} is in no test name ({', '.join(n for n, _ in TESTS)})")
        tests = tuple(t for t in TESTS if any(w in t[0] for w in words))
    backends = BACKENDS
    if backend_names:
        names = [n.strip() for n in backend_names.split(",") if n.strip()]
        unknown = [n for n in names if n not in BACKENDS]
        if unknown or not names:
            raise ValueError(f"--backends: unknown {', '.join(unknown) or '(none given)'} "
                             f"(back-ends: {', '.join(BACKENDS)})")
        backends = tuple(n for n in BACKENDS if n in names)
    return tests, backends


def measure(peers: dict, tests, rounds: int, runtime: float, *, threads: bool = False,
            each_round=None) -> list[dict]:
    def run_one(name, params):
        own_cpu = CpuSampler(os.getpid(), threads=True) if threads else contextlib.nullcontext()
        with CpuSampler(peers[name].process.pid, threads=threads) as cpu, own_cpu as own:
            r = run(BlkBenchConfig(peers[name].socket_path, runtime=runtime, ring="split", **params)).as_dict()
            end = time.monotonic()
        start, per_io = end - r["seconds"], 1e6 / max(1, r["ios"])
        r["cpu_us_per_io"] = cpu.between(start, end) * per_io
        r["user_us_per_io"] = cpu.user_between(start, end) * per_io
        if threads:  # the driver is this process's main thread (run() above)
            r["cpu_us_per_io_by_thread"] = {g: v * per_io for g, v in cpu.groups_between(start, end).items()}
            r["driver_cpu_us_per_io"] = own.groups_between(start, end).get("main", 0.0) * per_io
        return r

    def log(r):
        print(f"round {r['round'] + 1}/{rounds} {r['test']:<17} {r['backend']:<9} {r['iops']:>9,.0f} IOPS "
              f"{r['mib_per_second']:>8.1f} MiB/s", file=sys.stderr, flush=True)

    return interleave(list(peers), tests, rounds, run_one, log, each_round=each_round)


def report(runs: list[dict], tests, rounds: int, runtime: float, *, threads: bool = False,
           poll_us: float = 32.0, relaunch: bool = False) -> None:
    started = "; every back-end started anew each round" if relaunch else ""
    print(f"\nvhost-user-blk, {rounds} rounds x {runtime:g}s per run{started}; polling budget of "
          f"qsd-iothread and pyvirtio-poll {poll_us:g} us; medians "
          "(latency: median over rounds of each run's percentile)\n")
    split = "".join(f" {g:>9}" for g in THREAD_GROUPS) + f" {'driver':>7}" if threads else ""
    print(f"{'test':<22} {'back-end':<13} {'IOPS':>9} {'MiB/s':>8} {'p50 us':>8} {'p99 us':>8} "
          f"{'CPU us/io':>9} {'user':>6}{split}")
    for test, _ in tests:
        for name in BACKENDS:
            rs = [r for r in runs if r["test"] == test and r["backend"] == name]
            if not rs:
                continue
            med = statistics.median
            print(f"{test:<22} {name:<13} {med(r['iops'] for r in rs):>9,.0f} "
                  f"{med(r['mib_per_second'] for r in rs):>8.1f} "
                  f"{med(r['lat_ns']['p50'] for r in rs) / 1e3:>8.0f} "
                  f"{med(r['lat_ns']['p99'] for r in rs) / 1e3:>8.0f} "
                  f"{med(r['cpu_us_per_io'] for r in rs):>9.1f} "
                  f"{med(r['user_us_per_io'] for r in rs):>6.1f}" + (_thread_cells(rs) if threads else ""))
    print("\nIOPS ratios, median of same-round ratios (range over rounds):")
    for test, _ in tests:
        cells = []
        for a, b in RATIOS:
            ratios = same_round_ratios(runs, test, a, b)
            if ratios:
                cells.append(f"{a}/{b} {statistics.median(ratios):.2f} "
                             f"({min(ratios):.2f}-{max(ratios):.2f})")
        print(f"  {test:<22} " + "   ".join(cells))


def _thread_cells(rs: list[dict]) -> str:
    """``--threads``' columns: the medians of CPU per request by thread group, then the driver's."""
    med = statistics.median
    cells = [f" {med(r['cpu_us_per_io_by_thread'].get(g, 0.0) for r in rs):>9.1f}" for g in THREAD_GROUPS]
    return "".join(cells) + f" {med(r['driver_cpu_us_per_io'] for r in rs):>7.1f}"


if __name__ == "__main__":
    sys.exit(main())
