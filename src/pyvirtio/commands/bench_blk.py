"""``pyvirtio bench blk --socket-path=PATH``: load a vhost-user-blk back-end from the host.

Registered by :mod:`pyvirtio.commands.bench` (``register(targets)``).  The engine is
:mod:`pyvirtio.bench.blk`; this module parses flags, prints fio-like text (or JSON) and a
progress line on stderr while the run lasts.  ``--json`` is fio's JSON layout (:func:`fio_json`).
"""

from __future__ import annotations

import json
import sys

from ..errors import UsageError
from .values import positive_seconds, socket_path


def register(targets) -> None:
    p = targets.add_parser(
        "blk", help="IOPS, bandwidth and latency of a vhost-user-blk back-end (fio-like)",
        description="Connect to a vhost-user-blk back-end (qemu-storage-daemon, pyvirtio serve "
                    "blk, …) as the guest's driver would, keep IODEPTH requests in flight on each "
                    "queue for RUNTIME seconds, and report IOPS, MiB/s and completion-latency "
                    "percentiles.  Buffers are allocated once and reused (zero copy); kicks and "
                    "interrupts are suppressed with EVENT_IDX and batched.")
    p.add_argument("--socket-path", metavar="PATH", required=True, type=socket_path,
                   help="the back-end's vhost-user UNIX socket")
    p.add_argument("--rw", default="randread", choices=("randread", "randwrite", "read", "write"),
                   help="access pattern (default randread); writes overwrite the disk's data")
    p.add_argument("--bs", default="4k", metavar="SIZE",
                   help="bytes per request, a multiple of 512, e.g. 4k, 64k, 1M (default 4k)")
    p.add_argument("--iodepth", type=int, default=32, metavar="N",
                   help="requests kept in flight on each queue (default 32)")
    p.add_argument("--runtime", type=positive_seconds, default=10.0, metavar="SECONDS",
                   help="how long to submit requests (default 10); in-flight ones are then drained")
    p.add_argument("--queues", type=int, default=1, metavar="N",
                   help="request queues to use, each with IODEPTH in flight (default 1; the "
                        "back-end must offer that many)")
    p.add_argument("--size", metavar="SIZE",
                   help="use only the first SIZE bytes of the disk (default: all of it)")
    p.add_argument("--seed", type=int, default=1, help="seed of the random offsets (default 1)")
    p.add_argument("--timeout", type=positive_seconds, default=5.0, metavar="SECONDS",
                   help="call the back-end hung after this long without an answer (default 5)")
    p.add_argument("--verify", action="store_true",
                   help="first write a stamp (block number and a per-run nonce in every 512-byte "
                        "sector) to every block the run will touch, then check every read against "
                        "it and fail on the first wrong block; writes write the stamp and are read "
                        "back afterwards.  Overwrites the disk.  Stamps at most 4 GiB unless --size "
                        "is given (random runs touch at most 65536 distinct blocks)")
    p.add_argument("--seg-size", metavar="SIZE",
                   help="describe each request's buffer in BS/SIZE descriptors of SIZE bytes, as a "
                        "guest's scattered pages are (Linux: one per 4k page); default: one")
    p.add_argument("--ring", default="auto", choices=("auto", "split", "packed"),
                   help="ring layout: split hides VIRTIO_F_RING_PACKED from the back-end, packed "
                        "fails unless it is negotiated, auto (default) takes packed if offered")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw a completion-latency histogram to FILE (needs matplotlib: "
                        "pip install 'pyvirtio[plot]')")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="do not print the progress line on stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench.blk import BlkBenchConfig, format_result, parse_size, progress_line
    from ..bench.blk import run as run_bench

    try:
        cfg = BlkBenchConfig(args.socket_path, rw=args.rw, bs=parse_size(args.bs),
                             iodepth=args.iodepth, runtime=args.runtime, queues=args.queues,
                             size=parse_size(args.size) if args.size else None, seed=args.seed,
                             timeout=args.timeout, verify=args.verify, ring=args.ring,
                             seg_size=parse_size(args.seg_size) if args.seg_size else None)
        cfg.check()
    except UsageError as exc:
        from ..errors import CliUsageError
        raise CliUsageError(str(exc)) from None
    tty = sys.stderr.isatty()
    if args.plot:  # say it before a long run, not after it
        from ..bench.plot import PlotUnavailable, latency_histogram
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            from ..errors import CliError
            raise CliError("--plot needs matplotlib (pip install 'pyvirtio[plot]')") from None

    def progress(elapsed, ios, interval):
        line = progress_line(cfg, elapsed, ios, interval)
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    try:
        result = run_bench(cfg, progress if args.progress else None)
    finally:
        if args.progress and tty:
            print(file=sys.stderr)
    print(json.dumps(fio_json(result.as_dict()), indent=2) if args.json else format_result(result))
    if args.plot:
        try:
            latency_histogram(result.samples or [], args.plot,
                              f"{cfg.rw} bs={cfg.bs} iodepth={cfg.iodepth} — {cfg.socket_path}")
        except (PlotUnavailable, OSError, ValueError) as exc:
            from ..errors import CliError
            raise CliError(f"--plot={args.plot}: {exc}") from None
        print(f"latency histogram: {args.plot}", file=sys.stderr)
    return 0


def fio_json(flat: dict) -> dict:
    """The result in fio's ``--output-format=json`` layout (``jobs`` → ``read``/``write`` →
    ``iops``, ``bw`` in KiB/s, ``clat_ns`` with ``percentile``), so fio's plotting and parsing
    tools read it; our own keys (``iops``, ``ios``, ``lat_ns``, ``kicks`` …) stay at the top."""
    lat = flat.get("lat_ns") or {}
    percentiles = {f"{float(k[1:]):.6f}": v for k, v in lat.items() if k.startswith("p")}
    done = {"io_bytes": flat["ios"] * flat["bs"], "io_kbytes": flat["ios"] * flat["bs"] // 1024,
            "bw_bytes": round(flat["iops"] * flat["bs"]), "bw": round(flat["iops"] * flat["bs"] / 1024),
            "iops": flat["iops"], "runtime": round(flat["seconds"] * 1000), "total_ios": flat["ios"],
            "clat_ns": {"min": lat.get("min", 0), "max": lat.get("max", 0), "mean": lat.get("mean", 0.0),
                        "N": flat["ios"], "percentile": percentiles}}
    idle = {"io_bytes": 0, "io_kbytes": 0, "bw_bytes": 0, "bw": 0, "iops": 0.0, "runtime": 0,
            "total_ios": 0, "clat_ns": {"min": 0, "max": 0, "mean": 0.0, "N": 0, "percentile": {}}}
    writes = flat["rw"] in ("randwrite", "write")
    job = {"jobname": f"pyvirtio-bench-blk-{flat['rw']}", "groupid": 0, "error": 0,
           "job options": {"rw": flat["rw"], "bs": str(flat["bs"]), "iodepth": str(flat["iodepth"]),
                           "numjobs": str(flat["queues"]), "runtime": str(flat["seconds"])},
           "read": idle if writes else done, "write": done if writes else idle,
           "trim": idle, "job_runtime": round(flat["seconds"] * 1000)}
    return {"fio version": "pyvirtio-bench-blk", "global options": {"filename": flat["socket_path"]},
            "jobs": [job], **flat}
