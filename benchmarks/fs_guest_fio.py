#!/usr/bin/env python3
"""``pyvirtio serve fs`` against QEMU's virtiofsd, measured by fio inside one Linux guest.

One boot, two vhost-user-fs-pci shares at fixed PCI slots: ``pyvirtio serve fs`` (tag ``pyv``,
00:04) and virtiofsd (tag ``ref``, 00:05), each on its own directory holding the same 64 MiB
random file (under /dev/shm when it exists, so host storage adds no noise), both with their
default cache mode (auto).  fio (the host's binary and its libraries, copied into the
initramfs) runs each test on one share then the other, test by test, reversing the order every
other round (PEERS.md: compare only inside one run).  The report gives each back-end's median
and the median of the same-round ratios pyvirtio / virtiofsd.

Tests: 4 KiB random read (qd1, O_DIRECT: every read is a FUSE READ), 1 MiB sequential read and
write (qd4, O_DIRECT, libaio), and metadata: fio's filecreate, filestat and filedelete engines
on ``--files`` files (10000 by default) in one directory, the guest's dentry and inode caches
dropped before the stat pass (else it never reaches the device).

What a request costs on each side: the guest's virtiofs driver puts one FUSE request per chain
on a request queue (a 4 KiB O_DIRECT read: READ; a file create: LOOKUP (negative) + CREATE +
FLUSH + RELEASE; a stat after the cache drop: LOOKUP; a delete: UNLINK, then a FORGET on hiprio).
virtiofsd (C, libvhost-user; thread pool size 0 by default, so every request runs in the queue's
own thread) pops the chain, parses it and does the syscalls on the inode's O_PATH fd (openat/
preadv/pwritev/fstatat/unlinkat ...) straight into and out of guest memory, then pushes the
reply.  pyvirtio (Python) pops the chain in the queue's worker, copies the request out and runs
its FUSE server: names, attributes, open/close and directory reads inline in the worker, the
data requests (READ, WRITE, FSYNC ...) in a thread pool -- except a page-cache READ of up to
128 KiB and any READ/WRITE of a file on tmpfs (these shares are on /dev/shm), which run inline
too -- with the same *at syscalls on its O_PATH inode table (see ``pyvirtio.devices.fs``).

    python benchmarks/fs_guest_fio.py [--rounds 5] [--runtime 3] [--files 10000] [--json out.json]

Needs qemu-system-x86_64, virtiofsd (/usr/lib/qemu/virtiofsd), busybox-static and fio.
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

from pyvirtio.bench.peers import CpuSampler
from pyvirtio.bench.peers import start_pyvirtio, start_virtiofsd, virtiofsd_path
from pyvirtio.guest import VIRTIOFS_MODULES, boot_guest, prepare_kernel

DATA_MIB = 64
DIRECT = "--direct=1 --filename=data --size=64M --time_based --runtime={runtime}"
TESTS = (
    # name, fio arguments ({runtime}, {files}), metric, side of the fio json that counts
    ("randread 4k qd1", f"--rw=randread --bs=4k --ioengine=psync {DIRECT}", "iops", "read"),
    ("read 1M qd4", f"--rw=read --bs=1M --iodepth=4 --ioengine=libaio {DIRECT}", "bw", "read"),
    ("write 1M qd4", "--rw=write --bs=1M --iodepth=4 --ioengine=libaio --direct=1 --filename=wfile "
                     "--size=64M --time_based --runtime={runtime}", "bw", "write"),
    ("create files", "--ioengine=filecreate --directory=meta --nrfiles={files} --filesize=4k --bs=4k "
                     "--openfiles=1", "iops", "read"),
    ("stat files", "--ioengine=filestat --directory=meta --nrfiles={files} --filesize=4k --bs=4k "
                   "--openfiles=1", "iops", "read"),
    ("delete files", "--ioengine=filedelete --directory=meta --nrfiles={files} --filesize=4k --bs=4k "
                     "--openfiles=1", "iops", "read"),
)
SHARES = (("pyvirtio", "pyv", "0x4"), ("virtiofsd", "ref", "0x5"))


def guest_script(rounds: int, runtime: int, files: int) -> str:
    lines = ["for s in pyv ref; do mkdir -p /mnt/$s; mount -t virtiofs $s /mnt/$s && "
             "mkdir -p /mnt/$s/meta && echo mounted_$s=1; done"]
    for r in range(rounds):
        order = SHARES if r % 2 == 0 else SHARES[::-1]
        for t, (name, args, _, _) in enumerate(TESTS):
            fio_args = args.format(runtime=runtime, files=files)
            for backend, tag, _ in order:
                if name.startswith("stat"):
                    lines.append("sync; echo 3 > /proc/sys/vm/drop_caches")
                lines.append(f"out=$(cd /mnt/{tag} && fio --name=b {fio_args} --output-format=json "
                             f"2>/dev/null | tr -d '\\n '); echo \"FIO {r} {t} {backend} $out\"")
    # No umount: in an A/A run (virtiofsd on both shares, 3 rounds of 3000 files) the first
    # umount hung in the guest (DESTROY never answered?); the guest powers off instead.
    lines.append("echo bench_done=1")
    return "\n".join(lines) + "\n"


def parse(lines: list[str]) -> dict:
    """(test index, backend) -> {round: value} (MiB/s or IOPS)."""
    results: dict = {}
    for line in lines:
        if not line.startswith("FIO "):
            continue
        _, r, t, backend, payload = line.split(" ", 4)
        _, _, kind, side = TESTS[int(t)]
        try:
            job = json.loads(payload)["jobs"][0][side]
        except (ValueError, KeyError, IndexError):
            print(f"unparsed fio output: {line[:300]}", file=sys.stderr)
            continue
        value = job["bw"] / 1024 if kind == "bw" else job["iops"]
        results.setdefault((int(t), backend), {})[int(r)] = value
    return results


def report(results: dict, args, elapsed: float, cpu: dict) -> None:
    print(f"guest: 1 vCPU (TCG), {args.rounds} rounds, {args.runtime} s per throughput run, "
          f"{args.files} files per metadata pass; {elapsed:.0f} s in all; host load at the end: "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'test':16} {'pyvirtio':>10} {'virtiofsd':>10}  ratio pyvirtio/virtiofsd (median [min, max] of rounds)")
    for t, (name, _, kind, _) in enumerate(TESTS):
        p, v = results.get((t, "pyvirtio"), {}), results.get((t, "virtiofsd"), {})
        rounds = sorted(set(p) & set(v))
        if not rounds:
            print(f"{name:16} (no result)")
            continue
        ratios = [p[r] / v[r] for r in rounds if v[r]]
        unit = "MiB/s" if kind == "bw" else "ops/s"
        print(f"{name:16} {statistics.median(p.values()):10.1f} {statistics.median(v.values()):10.1f}  "
              + (f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}] ({unit})" if ratios else "-"))
    print("back-end CPU over the whole run (user+system, all threads): "
          + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in cpu.items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runtime", type=int, default=3, help="seconds per throughput run")
    ap.add_argument("--files", type=int, default=10000, help="files per metadata pass")
    ap.add_argument("--json", help="write the raw numbers here")
    ap.add_argument("--reference-only", action="store_true",
                    help="virtiofsd on both shares (an A/A run: how far apart two identical back-ends land)")
    args = ap.parse_args(argv)
    for tool, ok in (("qemu-system-x86_64", shutil.which("qemu-system-x86_64")), ("fio", shutil.which("fio")),
                     ("virtiofsd", virtiofsd_path())):
        if not ok:
            print(f"fs_guest_fio: {tool} is not installed", file=sys.stderr)
            return 2
    kernel = prepare_kernel(progress=lambda m: print(f"kernel: {m}", file=sys.stderr))
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    data = os.urandom(DATA_MIB << 20)
    with tempfile.TemporaryDirectory(prefix="pyvirtio-fsfio-", dir=base) as tmp:
        dirs = {}
        for backend, tag, _ in SHARES:
            dirs[tag] = os.path.join(tmp, tag)
            os.mkdir(dirs[tag])
            with open(os.path.join(dirs[tag], "data"), "wb") as f:
                f.write(data)
        sock = {tag: os.path.join(tmp, f"{tag}.sock") for tag in dirs}
        if args.reference_only:
            pyv = start_virtiofsd(sock["pyv"], dirs["pyv"])
        else:
            pyv = start_pyvirtio("fs", sock["pyv"], extra_args=[f"--shared-dir={dirs['pyv']}", "--tag=pyv"])
        ref = start_virtiofsd(sock["ref"], dirs["ref"])
        peers = {"pyvirtio": pyv, "virtiofsd": ref}
        try:
            qemu_args = []
            for backend, tag, slot in SHARES:
                qemu_args += ["-chardev", f"socket,id={tag},path={sock[tag]}",
                              "-device", f"vhost-user-fs-pci,chardev={tag},tag={tag},addr={slot}"]
            budget = args.rounds * (6 * (args.runtime + 8) + 6 * args.files / 150) + 180
            print(f"booting; {args.rounds} rounds of {len(TESTS)} tests on 2 shares (at most {budget:.0f} s)",
                  file=sys.stderr)
            t0 = time.monotonic()
            # Every half second, each back-end with its children; the most seen is its whole run
            # (virtiofsd exits when QEMU goes, and then reads 0).
            with contextlib.ExitStack() as sampling:
                samplers = {name: sampling.enter_context(CpuSampler(p.process.pid, interval=0.5, tree=True))
                            for name, p in peers.items()}
                res = boot_guest(kernel, guest_script(args.rounds, args.runtime, args.files),
                                 qemu_args=qemu_args, modules=VIRTIOFS_MODULES, timeout=budget,
                                 host_binaries=[shutil.which("fio")],
                                 console_log=os.path.join(tmp, "console.log")).check()
                elapsed = time.monotonic() - t0
            cpu = {name: sampler.most() for name, sampler in samplers.items()}
        finally:
            pyv.close()
            ref.close()
    if res.values().get("bench_done") != "1":
        print(res.output[-3000:], file=sys.stderr)
        return 1
    results = parse(res.lines)
    report(results, args, elapsed, cpu)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "cpu_seconds": cpu,
                       "results": {f"{TESTS[t][0]}|{b}": v for (t, b), v in results.items()}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
