#!/usr/bin/env python3
"""``pyvirtio serve scsi`` against ``pyvirtio serve blk``, measured by fio inside one Linux guest.

One boot, two vhost-user disks at fixed PCI slots, each on its own copy of the same random-filled
image (on /dev/shm when it exists, so host storage adds no noise): ``vhost-user-scsi-pci`` on
``pyvirtio serve scsi --disk`` at 00:04 (the guest's sda) and ``vhost-user-blk-pci`` on
``pyvirtio serve blk`` at 00:05 (vda).  fio (the host's binary and its libraries, copied into
the initramfs) runs each test on one disk then the other, test by test, reversing the order every
other round (PEERS.md: noise here is up to ±25%; compare only inside one run).  The report gives
each side's median and the median of the per-round ratios scsi / blk.

What each side does per request:

* virtio-blk: the guest's virtio_blk queues one chain (16-byte request header, the data buffers,
  a 1-byte status); the back-end reads the header, does one preadv/pwritev on the image into the
  guest's buffers, and writes the status byte.
* virtio-scsi: the guest's sd builds a READ(10)/WRITE(10) CDB through the SCSI mid-layer and
  virtio_scsi queues one chain (51-byte virtio_scsi_cmd_req: 19-byte head + 32-byte CDB, the data
  buffers, a 108-byte virtio_scsi_cmd_resp: 12-byte head + 96 bytes of sense); the back-end
  decodes the LUN and the CDB, checks the LBA range, does the same image I/O and writes the
  response head (status, residual; sense only on errors).

    python benchmarks/scsi_guest_fio.py [--rounds 5] [--runtime 3] [--size 256] [--json out.json]

Needs qemu-system-x86_64, busybox-static and fio on the host.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from pyvirtio.bench.peers import fill_image, start_pyvirtio
from pyvirtio.guest import boot_guest, prepare_kernel

TESTS = (
    # name, fio arguments, metric
    ("read 1M qd8", "--rw=read --bs=1M --iodepth=8", "bw"),
    ("randread 4k qd1", "--rw=randread --bs=4k --iodepth=1", "iops"),
    ("randread 4k qd16", "--rw=randread --bs=4k --iodepth=16", "iops"),
)
#: (side, guest block device, PCI slot)
DISKS = (("scsi", "sda", "0x4"), ("blk", "vda", "0x5"))
SCSI_MODULES = ("virtio_scsi", "sd_mod")


def _blk_bench():
    """benchmarks/blk_guest_fio.py, for its helpers (fio's metric, a process's CPU time)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "blk_guest_fio.py")
    spec = importlib.util.spec_from_file_location("blk_guest_fio", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def guest_script(rounds: int, runtime: int) -> str:
    lines = [
        "n=0; while [ ! -b /dev/sda ] && [ $n -lt 600 ]; do usleep 100000; n=$((n+1)); done",
        "for d in sda vda; do echo \"disk_$d=$(cat /sys/block/$d/size)\"; done",
        # Interrupts the disk's virtio device took so far (the virtioN above the block device).
        "irqs() { v=$(readlink -f /sys/block/$1/device | grep -o 'virtio[0-9]*' | tail -1); "
        "awk -v v=\"$v-\" 'index($0, v) { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i } "
        "END { print s + 0 }' /proc/interrupts; }",
    ]
    for r in range(rounds):
        order = DISKS if r % 2 == 0 else DISKS[::-1]
        for t, (_, args, _) in enumerate(TESTS):
            for side, dev, _ in order:
                lines.append(
                    f"a=$(irqs {dev}); out=$(fio --name=b --filename=/dev/{dev} {args} "
                    f"--ioengine=libaio --direct=1 --time_based --runtime={runtime} "
                    f"--output-format=json 2>/dev/null | tr -d '\\n '); "
                    f"echo \"FIO {r} {t} {side} $(( $(irqs {dev}) - a )) $out\"")
    return "\n".join(lines) + "\n"


def parse(lines: list[str], metric) -> tuple[dict, dict]:
    """(results, interrupts): (test index, side) -> {round: value}, and -> {round: the guest's
    interrupts per request from that disk}."""
    results: dict = {}
    interrupts: dict = {}
    for line in lines:
        if not line.startswith("FIO "):
            continue
        _, r, t, side, irqs, payload = line.split(" ", 5)
        _, args, kind = TESTS[int(t)]
        job = json.loads(payload)["jobs"][0]
        results.setdefault((int(t), side), {})[int(r)] = metric(job, kind, args.split()[0].split("=")[1])
        ios = job["read"]["total_ios"] + job["write"]["total_ios"]
        interrupts.setdefault((int(t), side), {})[int(r)] = int(irqs) / ios if ios else 0.0
    return results, interrupts


def report(results: dict, interrupts: dict, args, disks: dict, elapsed: float, cpu: dict) -> None:
    print(f"guest: {args.cpus} vCPU (TCG), {args.rounds} rounds x {args.runtime} s, {args.size} MiB "
          f"images (host page cache); disks {disks}; {elapsed:.0f} s")
    print(f"{'test':18} {'scsi':>10} {'blk':>10}  ratio scsi/blk (median [min, max] of rounds)"
          "   guest interrupts per request scsi/blk")
    for t, (name, _, kind) in enumerate(TESTS):
        s, b = results.get((t, "scsi"), {}), results.get((t, "blk"), {})
        rounds = sorted(set(s) & set(b))
        if not rounds:
            print(f"{name:18} (no result)")
            continue
        ratios = [s[r] / b[r] for r in rounds if b[r]]
        unit = "MiB/s" if kind == "bw" else "IOPS"
        irq = [statistics.median(interrupts.get((t, side), {0: 0.0}).values()) for side in ("scsi", "blk")]
        print(f"{name:18} {statistics.median(s.values()):10.1f} {statistics.median(b.values()):10.1f}  "
              f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}] ({unit})"
              f"   {irq[0]:.2f} / {irq[1]:.2f}")
    print("back-end CPU over the whole run (user+system, all threads): "
          + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in cpu.items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runtime", type=int, default=3, help="seconds per fio run")
    ap.add_argument("--size", type=int, default=256, help="image size in MiB")
    ap.add_argument("--cpus", type=int, default=1, help="guest CPUs")
    ap.add_argument("--json", help="write the raw numbers here")
    args = ap.parse_args(argv)
    for tool in ("qemu-system-x86_64", "fio"):
        if not shutil.which(tool):
            print(f"scsi_guest_fio: {tool} is not installed", file=sys.stderr)
            return 2
    helpers = _blk_bench()
    kernel = prepare_kernel(progress=lambda m: print(f"kernel: {m}", file=sys.stderr))
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="pyvirtio-scsi-fio-", dir=base) as tmp:
        images = {side: os.path.join(tmp, f"{side}.img") for side, _, _ in DISKS}
        for path in images.values():
            fill_image(path, args.size << 20)
        scsi = start_pyvirtio("scsi", os.path.join(tmp, "scsi.sock"), extra_args=[f"--disk={images['scsi']}"])
        blk = start_pyvirtio("blk", os.path.join(tmp, "blk.sock"), blk_file=images["blk"])
        peers = {"scsi": scsi, "blk": blk}
        try:
            qemu_args = ["-chardev", f"socket,id=scsi,path={scsi.socket_path}",
                         "-device", "vhost-user-scsi-pci,chardev=scsi,num_queues=1,addr=0x4",
                         "-chardev", f"socket,id=blk,path={blk.socket_path}",
                         "-device", "vhost-user-blk-pci,chardev=blk,num-queues=1,addr=0x5"]
            budget = args.rounds * len(TESTS) * len(DISKS) * (args.runtime + 3) + 180
            print(f"booting; {args.rounds} rounds of {len(TESTS)} tests on 2 disks "
                  f"(about {budget - 180} s)", file=sys.stderr)
            t0 = time.monotonic()
            cpu0 = {name: helpers.cpu_seconds(p.process.pid) for name, p in peers.items()}
            res = boot_guest(kernel, guest_script(args.rounds, args.runtime), qemu_args=qemu_args,
                             cpus=args.cpus, timeout=budget, host_binaries=[shutil.which("fio")],
                             modules=SCSI_MODULES, console_log=os.path.join(tmp, "console.log")).check()
            elapsed = time.monotonic() - t0
            cpu = {name: helpers.cpu_seconds(p.process.pid) - cpu0[name] for name, p in peers.items()}
        finally:
            scsi.close()
            blk.close()
    disks = {k: v for k, v in res.values().items() if k.startswith("disk_")}
    results, interrupts = parse(res.lines, helpers.metric)
    report(results, interrupts, args, disks, elapsed, cpu)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "disks": disks,
                       "results": {f"{TESTS[t][0]}|{s}": v for (t, s), v in results.items()},
                       "interrupts_per_request": {f"{TESTS[t][0]}|{s}": v for (t, s), v in interrupts.items()},
                       "cpu_seconds": cpu}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
