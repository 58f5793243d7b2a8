#!/usr/bin/env python3
"""The same block device over virtio-msg and over vhost-user, from the same driver.

Starts two ``pyvirtio serve blk`` programs on the same raw image (``--locking=off``: both only
read it): one with ``--transport=virtio-msg`` (the socket binding: a UNIX socket, guest memory by
memfd, every transport operation a message, kicks and completions as EVENT_AVAIL / EVENT_USED
messages on the socket), one with vhost-user (kicks and completions on eventfds).  pyvirtio's
``BlkDriver`` — the ordinary driver, not the bench engine of ``pyvirtio bench blk``, which is
vhost-user only — reads 4 KiB blocks at random offsets through each, at queue depth 1 and 32,
test by test, interleaved, reversing the order every other round (PEERS.md: compare only within
one run).  Reports each transport's median IOPS and the median of the per-round ratios.

    python benchmarks/virtio_msg_vs_vhost_user.py [--rounds 3] [--runtime 3] [--size 64M] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import deque

from pyvirtio.bench.peers import fill_image, interleave, same_round_ratios, start_pyvirtio
from pyvirtio.drivers.blk import BlkDriver
from pyvirtio.spec.ids import DeviceType

TESTS = (("4k randread qd1", dict(iodepth=1)), ("4k randread qd32", dict(iodepth=32)))
BS = 4096


def open_transport(name: str, socket_path: str):
    if name == "virtio-msg":
        from pyvirtio.virtio_msg import open_transport as open_msg
        return open_msg(socket_path, DeviceType.BLOCK)
    from pyvirtio.vhost_user.frontend.transport import VhostUserTransport
    return VhostUserTransport(socket_path, device_type=DeviceType.BLOCK, memory_size=16 << 20)


def run_reads(socket_path: str, name: str, iodepth: int, runtime: float, seed: int = 1) -> dict:
    """Random 4 KiB reads at ``iodepth`` for ``runtime`` seconds through BlkDriver."""
    t = open_transport(name, socket_path)
    try:
        drv = BlkDriver.probe(t)
        blocks = drv.capacity * 512 // BS
        rnd = random.Random(seed)
        offsets = [rnd.randrange(blocks) * (BS // 512) for _ in range(1 << 14)]
        inflight: deque = deque()
        done, i = 0, 0
        lat: list[int] = []
        start = time.perf_counter()
        deadline = start + runtime
        while True:
            now = time.perf_counter()
            while len(inflight) < iodepth and now < deadline:
                inflight.append((drv.submit_read(offsets[i % len(offsets)], BS), time.perf_counter_ns()))
                i += 1
            if not inflight:
                break
            pending, t0 = inflight.popleft()
            drv.wait(pending)
            lat.append(time.perf_counter_ns() - t0)
            done += 1
        seconds = time.perf_counter() - start
        drv.remove()
    finally:
        t.close()
    lat.sort()
    return {"iops": done / seconds, "ios": done, "seconds": seconds,
            "p50_us": lat[len(lat) // 2] / 1e3, "p99_us": lat[int(len(lat) * 0.99)] / 1e3}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds of every test on each transport (default 3)")
    p.add_argument("--runtime", type=float, default=3.0, help="seconds per run (default 3)")
    p.add_argument("--size", type=int, default=64, help="disk size in MiB (default 64)")
    p.add_argument("--json", metavar="FILE", help="also write every run's result here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pyvirtio-bench-vmsg-") as tmp:
        image = os.path.join(tmp, "disk.img")
        fill_image(image, args.size << 20)
        sockets = {"virtio-msg": os.path.join(tmp, "msg.sock"), "vhost-user": os.path.join(tmp, "vu.sock")}
        peers = [start_pyvirtio("blk", sockets["virtio-msg"], blk_file=image,
                                extra_args=["--transport=virtio-msg", "--locking=off"]),
                 start_pyvirtio("blk", sockets["vhost-user"], blk_file=image, extra_args=["--locking=off"])]
        try:
            def one(name, params):
                return run_reads(sockets[name], name, params["iodepth"], args.runtime)

            def log(r):
                print(f"round {r['round'] + 1}/{args.rounds} {r['test']:<17} {r['backend']:<10} "
                      f"{r['iops']:>8,.0f} IOPS p50 {r['p50_us']:>6.0f} us", file=sys.stderr, flush=True)
            runs = interleave(list(sockets), TESTS, args.rounds, one, log)
        finally:
            for peer in peers:
                peer.close()
    print(f"\nblk 4 KiB random reads, pyvirtio BlkDriver, {args.rounds} rounds x {args.runtime:g} s; medians\n")
    print(f"{'test':<18} {'transport':<10} {'IOPS':>8} {'p50 us':>7} {'p99 us':>7}")
    for test, _ in TESTS:
        for name in sockets:
            rs = [r for r in runs if r["test"] == test and r["backend"] == name]
            med = statistics.median
            print(f"{test:<18} {name:<10} {med(r['iops'] for r in rs):>8,.0f} "
                  f"{med(r['p50_us'] for r in rs):>7.0f} {med(r['p99_us'] for r in rs):>7.0f}")
    print("\nIOPS ratio virtio-msg / vhost-user, median of same-round ratios (range):")
    for test, _ in TESTS:
        ratios = same_round_ratios(runs, test, "virtio-msg", "vhost-user")
        print(f"  {test:<18} {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
