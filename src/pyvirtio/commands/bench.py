"""``pyvirtio bench …``: benchmarks, each printed as a table (or JSON)."""

from __future__ import annotations

import argparse
import importlib
import json

from .values import positive_seconds

#: Extra bench targets registered by other modules: name -> module with register(subparsers).
BENCH_MODULES = ("pyvirtio.commands.bench_blk", "pyvirtio.commands.bench_net")


def register(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark", description="Benchmarks of pyvirtio against real peers.")
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    vq = targets.add_parser("virtqueue", help="descriptor chains per second through the split ring cores",
                            description="Driver adds, device drains, driver collects, over two mappings of "
                                        "one memfd; 1 and 4 descriptors per chain, with and without EVENT_IDX. "
                                        "path chain (every configuration): per chain the driver adds and "
                                        "collects one chain, the device pops a DescriptorChain with a view per "
                                        "buffer. path batch (split and packed, 1 descriptor): the driver adds and "
                                        "collects a batch with slice stores and reads; the device pops a batch "
                                        "(every head, flags and buffer bound checked over the batch, no "
                                        "DescriptorChain or view per chain) and returns it with one used store.")
    vq.add_argument("--runtime", type=positive_seconds, default=1.0, metavar="SECONDS",
                    help="seconds per configuration (default 1; fio's name, as bench blk)")
    vq.add_argument("--duration", type=positive_seconds, dest="runtime", help=argparse.SUPPRESS)  # old name
    vq.add_argument("--cpu-time", action="store_true",
                    help="time with this thread's CPU time instead of the wall clock (a busy machine)")
    vq.add_argument("--json", action="store_true", help="print JSON instead of a table")
    vq.set_defaults(func=_virtqueue)
    for name in BENCH_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(targets)


def _virtqueue(args) -> int:
    from ..bench.virtqueue import format_table, run_all

    import time

    from ..accel import describe

    results = run_all(args.runtime, time.thread_time if args.cpu_time else time.perf_counter)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        print(format_table(results))
        print(f"ring cores: {describe()}" + ("; timed in CPU time" if args.cpu_time else ""))
    return 0
