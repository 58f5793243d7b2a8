#!/usr/bin/env python3
"""O_DIRECT vhost-user-blk: ``pyvirtio serve blk --direct`` against qemu-storage-daemon.

Three groups, each one pair of back-ends on two copies of one image (a disk-backed file under
--dir, default /var/tmp, not tmpfs; preallocated and filled with random data, so reads reach the
disk and not holes):

* ``direct io_uring``: ``pyvirtio serve blk --direct --aio=io_uring`` and qemu-storage-daemon
  ``--blockdev driver=file,...,cache.direct=on,aio=io_uring``;
* ``direct threads``: ``--direct --aio=threads`` and ``cache.direct=on,aio=threads``;
* ``page cache``: neither side O_DIRECT (pyvirtio's default, qemu-storage-daemon's default).

The load generator for every side is ``pyvirtio bench blk --verify`` (its engine): every block a
run touches is stamped first, every read is checked, writes write the stamp and are read back.
Both sides run split rings (qemu-storage-daemon's libvhost-user has no packed ring); ``--ring
packed`` puts pyvirtio on packed rings instead (qemu-storage-daemon stays on split).
Inside a group the two back-ends run test by test, interleaved, the order reversed every other
round (PEERS.md); the report gives each side's median IOPS and the median [min, max] of the
same-round ratios pyvirtio / qemu-storage-daemon.

    python benchmarks/blk_direct.py [--rounds 5] [--runtime 3] [--size 1G] [--groups page,uring,threads]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from pyvirtio.bench.blk import BlkBenchConfig, parse_size, run
from pyvirtio.bench.peers import (CpuSampler, fill_image, interleave, same_round_ratios, start_pyvirtio,
                                  start_qsd)

DIRECT_TESTS = (
    ("4k randread qd1", dict(rw="randread", bs=4096, iodepth=1)),
    ("4k randread qd32", dict(rw="randread", bs=4096, iodepth=32)),
    ("1M read qd8", dict(rw="read", bs=1 << 20, iodepth=8)),
    ("4k randwrite qd32", dict(rw="randwrite", bs=4096, iodepth=32)),
)
CACHE_TESTS = (
    ("4k randread qd1", dict(rw="randread", bs=4096, iodepth=1)),
    ("4k randread qd32", dict(rw="randread", bs=4096, iodepth=32)),
    ("1M read qd8", dict(rw="read", bs=1 << 20, iodepth=8)),
)
# key: (title, back-end options for both sides, tests)
GROUPS = {
    "page": ("page cache", {}, CACHE_TESTS),
    "uring": ("O_DIRECT, aio=io_uring", dict(direct=True, aio="io_uring"), DIRECT_TESTS),
    "threads": ("O_DIRECT, aio=threads", dict(direct=True, aio="threads"), DIRECT_TESTS),
}
SIDES = ("pyvirtio", "qsd")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds of every test (default 5)")
    p.add_argument("--runtime", type=float, default=3.0, help="seconds per timed run (default 3)")
    p.add_argument("--size", default="1G", help="image size (default 1G)")
    p.add_argument("--groups", default="page,uring,threads",
                   help="comma-separated, of: page, uring, threads (default all three)")
    p.add_argument("--dir", default="/var/tmp", help="where the images go: a disk-backed file "
                   "system, not tmpfs (default /var/tmp)")
    p.add_argument("--ring", default="split", choices=("split", "packed"),
                   help="pyvirtio's ring layout (default split, as qemu-storage-daemon's)")
    p.add_argument("--json", metavar="FILE", help="also write every run's result here")
    args = p.parse_args(argv)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = set(groups) - set(GROUPS)
    if unknown:
        p.error(f"--groups: unknown {', '.join(sorted(unknown))} (of {', '.join(GROUPS)})")
    size = parse_size(args.size)
    t0 = time.monotonic()
    results = {}
    with tempfile.TemporaryDirectory(prefix="pyvirtio-bench-direct-", dir=args.dir) as tmp:
        images = {side: os.path.join(tmp, f"{side}.img") for side in SIDES}
        for image in images.values():
            fill_image(image, size)
        for key in groups:
            title, options, tests = GROUPS[key]
            results[key] = measure_group(tmp, images, options, tests, args.rounds, args.runtime, title,
                                         args.ring)
    print(f"\nvhost-user-blk, O_DIRECT and page cache; {args.rounds} rounds x {args.runtime:g} s per "
          f"run; images {size >> 20} MiB on {args.dir}; load: pyvirtio bench blk --verify; "
          f"rings: pyvirtio {args.ring}, qsd split; "
          f"{time.monotonic() - t0:.0f} s\n")
    for key in groups:
        report(GROUPS[key][0], GROUPS[key][2], results[key])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": results}, f, indent=1)
    return 0


def measure_group(tmp: str, images: dict, options: dict, tests, rounds: int, runtime: float,
                  title: str, ring: str = "split") -> list[dict]:
    peers = {}
    try:
        peers["pyvirtio"] = start_pyvirtio("blk", os.path.join(tmp, "pv.sock"),
                                           blk_file=images["pyvirtio"], **options)
        peers["qsd"] = start_qsd(os.path.join(tmp, "qsd.sock"), images["qsd"], **options)

        def run_one(name, params):
            layout = ring if name == "pyvirtio" else "split"
            with CpuSampler(peers[name].process.pid) as cpu:
                r = run(BlkBenchConfig(peers[name].socket_path, runtime=runtime, verify=True,
                                       timeout=30, ring=layout, **params)).as_dict()
                end = time.monotonic()
            # The back-end's CPU (all its threads, its io_uring workers too) in the timed phase.
            r["cpu_us_per_io"] = cpu.between(end - r["seconds"], end) * 1e6 / max(1, r["ios"])
            return r

        def log(r):
            print(f"{title}: round {r['round'] + 1}/{rounds} {r['test']:<17} {r['backend']:<8} "
                  f"{r['iops']:>9,.0f} IOPS {r['mib_per_second']:>8.1f} MiB/s "
                  f"(stamped {r['stamped_blocks']} blocks in {r['stamp_seconds']:.1f} s, "
                  f"{r['verified']} checked)", file=sys.stderr, flush=True)

        return interleave(list(SIDES), tests, rounds, run_one, log)
    finally:
        for peer in peers.values():
            peer.close()


def report(title: str, tests, runs: list[dict]) -> None:
    print(f"{title}")
    print(f"  {'test':<18} {'pyvirtio IOPS':>13} {'qsd IOPS':>10} {'pyvirtio MiB/s':>14} "
          f"{'qsd MiB/s':>10} {'CPU us/io pv':>12} {'qsd':>6}  ratio pyvirtio/qsd (median [min, max] of "
          f"same-round ratios)")
    med = statistics.median
    for test, _ in tests:
        side = {s: [r for r in runs if r["test"] == test and r["backend"] == s] for s in SIDES}
        ratios = same_round_ratios(runs, test, "pyvirtio", "qsd")
        if not ratios:
            print(f"  {test:<18} (no result)")
            continue
        print(f"  {test:<18} {med(r['iops'] for r in side['pyvirtio']):>13,.0f} "
              f"{med(r['iops'] for r in side['qsd']):>10,.0f} "
              f"{med(r['mib_per_second'] for r in side['pyvirtio']):>14.1f} "
              f"{med(r['mib_per_second'] for r in side['qsd']):>10.1f} "
              f"{med(r.get('cpu_us_per_io', 0) for r in side['pyvirtio']):>12.1f} "
              f"{med(r.get('cpu_us_per_io', 0) for r in side['qsd']):>6.1f}  "
              f"{med(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]")
    print()


if __name__ == "__main__":
    sys.exit(main())
