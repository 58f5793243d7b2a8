#!/usr/bin/env python3
"""``pyvirtio serve blk`` against qemu-storage-daemon, measured by fio inside one Linux guest.

One boot, two vhost-user-blk disks at fixed PCI slots: qemu-storage-daemon at 00:04 (vda) and
``pyvirtio serve blk`` at 00:05 (vdb), each on its own copy of the same random-filled image (on
/dev/shm when it exists, so host storage adds no noise).  fio (the host's binary and its
libraries, copied into the initramfs) runs each test on one disk then the other, test by test,
reversing the order every other round (PEERS.md: noise here is up to ±25%; compare only inside
one run).  The report gives each back-end's median and the median of the per-round ratios
pyvirtio / qemu-storage-daemon.

    python benchmarks/blk_guest_fio.py [--rounds 5] [--runtime 3] [--size 256] [--direct] [--json out.json]

``--direct`` opens both images O_DIRECT on the host (``pyvirtio serve blk --direct --aio=io_uring``
against qemu-storage-daemon's ``cache.direct=on,aio=io_uring``), with the images on a disk-backed
file system (``--dir``, default /var/tmp) instead of /dev/shm.

``--baseline SRC`` adds a third disk at 00:06 (vdc), ``pyvirtio serve blk`` imported from another
checkout's ``src``, served and measured alike in the same boot, and reports pyvirtio/baseline
beside pyvirtio/qsd: an A/B of a change to the request path whose rounds share the guest, the
host's state and qemu-storage-daemon's reference (two runs of one code here differ by more
than the few percent such a change is worth).  ``--floor`` adds a disk served by
``blk_qd1_floor.py``'s flat loop (the least Python can do per request; chains of other shapes go
to pyvirtio's own path), reported as pyvirtio/floor and floor/qsd: how far the request path's
layers are from that in a guest.

``--pin QEMU:BACKENDS`` (CPU lists, e.g. ``--pin 0:1``) runs QEMU on the first CPUs and both
back-ends, every thread, on the second — where vhost-user back-ends are usually deployed, on
cores of their own — and says so in the report; without it the host's scheduler places
everything (the default, and the figures of record).

Needs qemu-system-x86_64, qemu-storage-daemon, busybox-static and fio on the host.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Sequence

from pyvirtio.bench.peers import fill_image, start_pyvirtio, start_qsd
from pyvirtio.bench.peers import process_cpu_times as cpu_times
from pyvirtio.guest import boot_guest, prepare_kernel

TESTS = (
    # name, fio arguments, metric
    ("read 1M qd8", "--rw=read --bs=1M --iodepth=8", "bw"),
    ("write 1M qd8", "--rw=write --bs=1M --iodepth=8", "bw"),
    ("randread 4k qd1", "--rw=randread --bs=4k --iodepth=1", "iops"),
    ("randread 4k qd16", "--rw=randread --bs=4k --iodepth=16", "iops"),
)
DISKS = (("qsd", "vda", "0x4"), ("pyvirtio", "vdb", "0x5"))
#: More disks, each when asked for (--baseline, --floor), at these slots; named vdc, vdd ... in
#: slot order among those present.
EXTRA = (("baseline", "0x6"), ("floor", "0x7"))
FLOOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "blk_qd1_floor.py")


def served_disks(extra: Sequence[str]) -> tuple[tuple[str, str, str], ...]:
    """The disks of a run: qsd's and pyvirtio's, then the ``extra`` back-ends asked for."""
    more = [(name, slot) for name, slot in EXTRA if name in extra]
    return DISKS + tuple((name, f"vd{chr(ord('c') + i)}", slot) for i, (name, slot) in enumerate(more))


def guest_script(rounds: int, runtime: int, tests: Sequence[int] = range(len(TESTS)),
                 disks: Sequence[tuple[str, str, str]] = DISKS) -> str:
    lines = [
        # size, serial, and bit 34 (VIRTIO_F_RING_PACKED) of the features the guest negotiated
        f"for d in {' '.join(dev for _, dev, _ in disks)}; do echo \"disk_$d=$(cat /sys/block/$d/size) $(cat /sys/block/$d/serial) "
        "packed=$(cut -c35 /sys/block/$d/device/features)\"; done",
        # Interrupts the disk's virtio device took so far (every CPU's column of /proc/interrupts).
        "irqs() { v=$(basename $(readlink /sys/block/$1/device)); awk -v v=\"$v-\" "
        "'index($0, v) { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i } END { print s + 0 }' "
        "/proc/interrupts; }",
    ]
    for r in range(rounds):
        order = disks if r % 2 == 0 else disks[::-1]
        for t in tests:
            name, args, _ = TESTS[t]
            for backend, dev, _ in order:
                lines.append(
                    f"a=$(irqs {dev}); out=$(fio --name=b --filename=/dev/{dev} {args} "
                    f"--ioengine=libaio --direct=1 --time_based --runtime={runtime} "
                    f"--output-format=json 2>/dev/null | tr -d '\\n '); "
                    f"echo \"FIO {r} {t} {backend} $(( $(irqs {dev}) - a )) $out\"")
    return "\n".join(lines) + "\n"


def metric(job: dict, kind: str, rw: str) -> float:
    side = job["write" if rw.startswith("write") else "read"]
    return side["bw"] / 1024 if kind == "bw" else side["iops"]  # MiB/s or IOPS


def parse(lines: list[str]) -> tuple[dict, dict]:
    """(results, interrupts): (test index, backend) -> {round: value}, and -> {round: the
    guest's interrupts per request from that disk}."""
    results: dict = {}
    interrupts: dict = {}
    for line in lines:
        if not line.startswith("FIO "):
            continue
        _, r, t, backend, irqs, payload = line.split(" ", 5)
        name, args, kind = TESTS[int(t)]
        job = json.loads(payload)["jobs"][0]
        value = metric(job, kind, args.split()[0].split("=")[1])
        results.setdefault((int(t), backend), {})[int(r)] = value
        ios = job["read"]["total_ios"] + job["write"]["total_ios"]
        interrupts.setdefault((int(t), backend), {})[int(r)] = int(irqs) / ios if ios else 0.0
    return results, interrupts


def cpu_list(text: str) -> set[int]:
    """``0``, ``0-2``, ``0,3``: the CPUs named; ValueError if malformed, empty, or not all of
    them are this process's to use."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        lo, hi = int(first), int(last or first)
        if lo < 0 or hi < lo:
            raise ValueError(f"bad CPU range {part!r}")
        cpus.update(range(lo, hi + 1))
    if not cpus <= os.sched_getaffinity(0):
        raise ValueError(f"CPUs {sorted(cpus - os.sched_getaffinity(0))} are not available here")
    return cpus


def parse_pin(text: str) -> tuple[set[int], set[int]]:
    """``QEMU:BACKENDS`` CPU lists (argparse type: --pin)."""
    qemu, sep, backends = text.partition(":")
    try:
        if not sep:
            raise ValueError("give two CPU lists, QEMU's and the back-ends', as QEMU:BACKENDS")
        return cpu_list(qemu), cpu_list(backends)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@contextlib.contextmanager
def on_cpus(cpus: set[int] | None):
    """This process (and what it starts meanwhile) on ``cpus`` for the block; None: unchanged."""
    everywhere = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, everywhere)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runtime", type=int, default=3, help="seconds per fio run")
    ap.add_argument("--size", type=int, default=256, help="image size in MiB")
    ap.add_argument("--cpus", type=int, default=1, help="guest CPUs (the host has few; the back-ends need some)")
    ap.add_argument("--direct", action="store_true",
                    help="both back-ends open their image O_DIRECT with io_uring (images on --dir)")
    ap.add_argument("--dir", default="/var/tmp",
                    help="where the images go with --direct: disk-backed, not tmpfs (default /var/tmp)")
    ap.add_argument("--json", help="write the raw numbers here")
    ap.add_argument("--packed", action="store_true",
                    help="packed=on on both disks: pyvirtio serves packed rings; qemu-storage-daemon "
                    "(libvhost-user, no packed ring) stays on split")
    ap.add_argument("--pyvirtio-src", default=None, metavar="DIR",
                    help="run pyvirtio serve from this src directory (another checkout: A/B against "
                    "an earlier commit)")
    ap.add_argument("--baseline", default=None, metavar="SRC",
                    help="a third disk: pyvirtio serve from this src directory (another checkout), "
                    "measured in the same boot; reports pyvirtio/baseline too")
    ap.add_argument("--floor", action="store_true",
                    help="a disk served by blk_qd1_floor.py's flat loop, measured in the same boot; "
                    "reports pyvirtio/floor too")
    ap.add_argument("--pin", type=parse_pin, default=None, metavar="QEMU:BACKENDS",
                    help="CPU lists: QEMU on the first, both back-ends (every thread) on the "
                    "second, e.g. 0:1 (default: the scheduler places everything)")
    ap.add_argument("--tests", default=None,
                    help="comma-separated row numbers to run (0-based, default all): "
                    + "; ".join(f"{i}={t[0]}" for i, t in enumerate(TESTS)))
    args = ap.parse_args(argv)
    try:
        tests = [int(t) for t in args.tests.split(",")] if args.tests else list(range(len(TESTS)))
        if any(not 0 <= t < len(TESTS) for t in tests):
            raise ValueError
    except ValueError:
        ap.error(f"--tests: row numbers between 0 and {len(TESTS) - 1}, comma-separated")
    for tool in ("qemu-system-x86_64", "qemu-storage-daemon", "fio"):
        if not shutil.which(tool):
            print(f"blk_guest_fio: {tool} is not installed", file=sys.stderr)
            return 2
    kernel = prepare_kernel(progress=lambda m: print(f"kernel: {m}", file=sys.stderr))
    base = args.dir if args.direct else ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    host_io = dict(direct=True, aio="io_uring") if args.direct else {}
    served = served_disks([name for name, asked in (("baseline", args.baseline), ("floor", args.floor)) if asked])
    with tempfile.TemporaryDirectory(prefix="pyvirtio-fio-", dir=base) as tmp:
        images = {}
        for backend, _, _ in served:
            images[backend] = os.path.join(tmp, f"{backend}.img")
            fill_image(images[backend], args.size << 20)
        peers: dict = {}
        try:
            # --pin: a child inherits this process's CPUs, so the back-ends start with theirs
            # and QEMU with its own.
            with on_cpus(args.pin[1] if args.pin else None):
                peers["qsd"] = start_qsd(os.path.join(tmp, "qsd.sock"), images["qsd"], **host_io)
                for name, src in (("pyvirtio", args.pyvirtio_src), ("baseline", args.baseline), ("floor", None)):
                    if name in images:
                        program = [sys.executable, FLOOR, "--serve-floor"] if name == "floor" else None
                        peers[name] = start_pyvirtio("blk", os.path.join(tmp, f"{name}.sock"), blk_file=images[name],
                                                     src=src, program=program, **host_io)
            qemu_args = []
            for backend, _, slot in served:
                qemu_args += ["-chardev", f"socket,id={backend},path={peers[backend].socket_path}",
                              "-device", f"vhost-user-blk-pci,chardev={backend},num-queues=1,addr={slot}"
                              + (",packed=on" if args.packed else "")]
            budget = args.rounds * len(tests) * len(served) * (args.runtime + 3) + 120
            print(f"booting; {args.rounds} rounds of {len(tests)} tests on {len(served)} disks "
                  f"(about {budget - 120} s)", file=sys.stderr)
            t0 = time.monotonic()
            cpu0 = {name: cpu_times(peer.process.pid) for name, peer in peers.items()}
            with on_cpus(args.pin[0] if args.pin else None):
                res = boot_guest(kernel, guest_script(args.rounds, args.runtime, tests, served), qemu_args=qemu_args,
                                 cpus=args.cpus, timeout=budget, host_binaries=[shutil.which("fio")],
                                 console_log=os.path.join(tmp, "console.log")).check()
            elapsed = time.monotonic() - t0
            # (user, system) seconds over the run: the back-end's own code, and the kernel's
            # work for it (system calls, io_uring), which the two should share
            split = {name: tuple(b - a for a, b in zip(cpu0[name], cpu_times(peer.process.pid)))
                     for name, peer in peers.items()}
            cpu = {name: sum(times) for name, times in split.items()}
        finally:
            for peer in peers.values():
                peer.close()
    disks = {k: v for k, v in res.values().items() if k.startswith("disk_")}
    results, interrupts = parse(res.lines)
    report(results, interrupts, args, disks, elapsed)
    print("back-end CPU over the whole run (user+system, all threads): "
          + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in cpu.items())
          + (f"; per request: " + ", ".join(
              f"{name} {cpu[name] / n * 1e6:.0f} us (user {split[name][0] / n * 1e6:.0f}, "
              f"system {split[name][1] / n * 1e6:.0f})" for name, n in requests(results, args).items())
             if all(TESTS[t][2] == "iops" for t in tests) else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "disks": disks,
                       "results": {f"{TESTS[t][0]}|{b}": v for (t, b), v in results.items()},
                       "interrupts_per_request": {f"{TESTS[t][0]}|{b}": v for (t, b), v in interrupts.items()},
                       "cpu_seconds": cpu, "cpu_user_system_seconds": split}, f, indent=1)
    return 0


def requests(results: dict, args) -> dict:
    """Requests each back-end served in the IOPS rows (IOPS x runtime, every round)."""
    out: dict = {}
    for (t, backend), per_round in results.items():
        if TESTS[t][2] == "iops":
            out[backend] = out.get(backend, 0) + sum(per_round.values()) * args.runtime
    return out


def report(results: dict, interrupts: dict, args, disks: dict, elapsed: float) -> None:
    host = "O_DIRECT + io_uring on the host" if args.direct else "host page cache"
    pin = (f"QEMU on CPUs {sorted(args.pin[0])}, both back-ends on {sorted(args.pin[1])}" if args.pin
           else "not pinned")
    print(f"guest: {args.cpus} vCPU (TCG), {args.rounds} rounds x {args.runtime} s, "
          f"{args.size} MiB images ({host}); {pin}; disks {disks}; {elapsed:.0f} s")
    extra = [name for name, _ in EXTRA if any(b == name for _, b in results)]
    print(f"{'test':18} {'qsd':>10} {'pyvirtio':>10}  ratio pyvirtio/qsd (median [min, max] of rounds)"
          "   guest interrupts per request qsd/pyvirtio"
          + "".join(f"   | {n}, pyvirtio/{n}, {n}/qsd" for n in extra))
    for t, (name, _, kind) in enumerate(TESTS):
        q, p = results.get((t, "qsd"), {}), results.get((t, "pyvirtio"), {})
        rounds = sorted(set(q) & set(p))
        if not q and not p:  # not run (--tests)
            continue
        if not rounds:
            print(f"{name:18} (no result)")
            continue
        unit = "MiB/s" if kind == "bw" else "IOPS"
        irq = [statistics.median(interrupts.get((t, b), {0: 0.0}).values()) for b in ("qsd", "pyvirtio")]
        line = (f"{name:18} {statistics.median(q.values()):10.1f} {statistics.median(p.values()):10.1f}  "
                f"{_ratios(p, q)} ({unit})   {irq[0]:.2f} / {irq[1]:.2f}")
        for n in extra:
            b = results.get((t, n), {})
            line += f"   | {statistics.median(b.values()):.1f}, {_ratios(p, b)}, {_ratios(b, q)}" if b else "   | -"
        print(line)


def _ratios(num: dict, den: dict) -> str:
    """The same-round ratios num/den of two back-ends' {round: value}: median [min, max]."""
    ratios = [num[r] / den[r] for r in sorted(set(num) & set(den)) if den[r]]
    if not ratios:
        return "(no rounds)"
    return f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]"


if __name__ == "__main__":
    sys.exit(main())
