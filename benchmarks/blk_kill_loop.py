#!/usr/bin/env python3
"""The kill -9 loop of tests/guest/test_guest_blk_kill.py against any vhost-user-blk back-end,
for pass rates over many runs: qemu-storage-daemon (the reference) or ``pyvirtio serve blk``.

Each run boots one Linux guest (QEMU 7.2, chardev ``reconnect=1``, vhost-user-blk with 2 queues)
running fio ``--verify=crc32c`` rounds (the test's guest script), kills the back-end with SIGKILL
at random moments and starts a new one on the same socket and image, CYCLES times, then waits
for two more fio rounds.  A run fails when a fio round fails, when no round finishes within
STALL seconds (a lost request hangs fio: the failing kill is reported), or when the guest logs
an I/O error.

    python benchmarks/blk_kill_loop.py --backend qsd --runs 10 [--cycles 20] [--packed] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time

from pyvirtio.bench.peers import start_pyvirtio, start_qsd
from pyvirtio.guest import prepare_kernel, start_guest
from pyvirtio.guest.errors import GuestTimeout

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "guest"))
from test_guest_blk_kill import SCRIPT, STOP  # noqa: E402 (the one guest script)

MiB = 1 << 20
STALL = 90.0


def start(backend: str, sock: str, image: str, aio: str):
    if backend == "qsd":
        return start_qsd(sock, image, num_queues=2, aio=aio)
    return start_pyvirtio("blk", sock, blk_file=image, num_queues=2, aio=aio, extra_args=["-v"])


def qemu_connections(pid: int) -> int:
    """Connected UNIX sockets the back-end process ``pid`` holds — how the loop sees that QEMU
    reached a back-end it cannot look into (qemu-storage-daemon logs nothing).  Its fds name
    socket inodes; /proc/net/unix gives each one's state (03: SS_CONNECTED).  The socket file's
    path does not help: pyvirtio binds under a temporary name and renames it into place."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return 0
    n = 0
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split()
            if len(parts) >= 7 and parts[5] == "03" and parts[6] in inodes:
                n += 1
    return n


def wait_connected(peer, guest, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while qemu_connections(peer.process.pid) < 1:
        if time.monotonic() > deadline or not guest.running:
            raise GuestTimeout(f"QEMU did not reconnect to the new back-end within {timeout:.0f} s")
        time.sleep(0.02)


def diagnose(guest, peer, sock: str, image: str, aio: str, result: dict) -> None:
    """After a stall: who lost the request?  The stalled back-end is killed and ``pyvirtio serve
    blk`` is started in its place.  If QEMU negotiates with it (its log says "negotiated"), QEMU's
    reconnect path still works (so this was not QEMU 7.2's lost reconnect); if fio then goes on,
    every request was still recoverable from the ring and the inflight region (pyvirtio
    resubmits what is marked in flight and signals the driver once) — the stalled back-end lost
    an interrupt or failed to resubmit; if fio stays stuck, the request was lost for good."""
    result["qemu_connected_to_stalled"] = qemu_connections(peer.process.pid) > 0
    peer.process.send_signal(signal.SIGKILL)
    peer.process.wait(10)
    if os.path.exists(sock):
        os.unlink(sock)
    before = len([ln for ln in guest.lines if ln.startswith("round=")])
    rescue = start("pyvirtio", sock, image, aio)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(
                [ln for ln in guest.lines if ln.startswith("round=")]) <= before:
            time.sleep(0.5)
        log = rescue.log().rsplit("--- pyvirtio serve blk started", 1)[-1]
        result["rescue_negotiated"] = "negotiated" in log
        result["rescue_resubmitted"] = [int(n) for n in re.findall(r"resubmitting (\d+) requests", log)]
        result["recovered_by_pyvirtio"] = len(
            [ln for ln in guest.lines if ln.startswith("round=")]) > before
    finally:
        rescue.close()


def one_run(kernel, backend: str, cycles: int, packed: bool, aio: str, rnd, tmp: str,
            restart_delay: float = 0.0, wait: bool = False, diagnose_stall: bool = False) -> dict:
    image, control, sock = (os.path.join(tmp, n) for n in ("disk.img", "control.img", "blk.sock"))
    for path, size in ((image, 64 * MiB), (control, MiB)):
        with open(path, "wb") as f:
            f.truncate(size)
    qemu_args = ["-chardev", f"socket,id=blk,path={sock},reconnect=1",
                 "-device", "vhost-user-blk-pci,chardev=blk,num-queues=2,addr=0x4"
                 + (",packed=on" if packed else ""),
                 "-drive", f"if=none,id=ctl,file={control},format=raw",
                 "-device", "virtio-blk-pci,drive=ctl,addr=0x5"]
    peer = start(backend, sock, image, aio)
    result = {"backend": backend, "cycles": 0, "ok": False, "why": ""}
    t0 = time.monotonic()
    with start_guest(kernel, SCRIPT, cpus=2, timeout=cycles * 10 + 400, qemu_args=qemu_args,
                     host_binaries=[shutil.which("fio")],
                     console_log=os.path.join(tmp, "console.log")) as guest:
        try:
            guest.expect(r"round_start=0", timeout=120)
            seen = 0
            for cycle in range(cycles):
                time.sleep(rnd.uniform(0.2, 2.5))
                peer.process.send_signal(signal.SIGKILL)
                peer.process.wait(10)
                if os.path.exists(sock):
                    os.unlink(sock)
                time.sleep(restart_delay)  # no back-end at all for a while (QEMU retries every 1 s)
                peer = start(backend, sock, image, aio)
                if wait:  # the CI test's regime: the next kill comes 0.2-2.5 s after QEMU is back
                    wait_connected(peer, guest)
                result["cycles"] = cycle + 1
                seen = len([line for line in guest.lines if line.startswith("round=")])
            last = None
            deadline = time.monotonic() + STALL
            while last is None or len([ln for ln in guest.lines if ln.startswith("round=")]) < last + 2:
                if last is None:
                    last = seen
                if time.monotonic() > deadline:
                    raise GuestTimeout(f"no fio round finished within {STALL:.0f} s after the last kill")
                time.sleep(0.5)
            with open(control, "r+b") as f:
                f.write(STOP)
            res = guest.wait(timeout=120)
            v = res.values()
            rcs = [ln.split("rc=")[1] for ln in res.lines if ln.startswith("round=")]
            bad = [rc for rc in rcs if rc != "0"]
            result.update(rounds=len(rcs), io_errors=int(v.get("io_errors", -1)))
            result["ok"] = not bad and v.get("io_errors") == "0" and v.get("hung") == "0"
            result["why"] = "" if result["ok"] else f"fio rc {bad}, io_errors {v.get('io_errors')}"
        except GuestTimeout as exc:
            rounds = [ln for ln in guest.lines if ln.startswith("round")]
            result["why"] = f"stalled: {exc}; last guest lines {rounds[-2:]}"
            if diagnose_stall and result["cycles"] == cycles and guest.running:
                diagnose(guest, peer, sock, image, aio, result)
        finally:
            peer.close()
    result["seconds"] = round(time.monotonic() - t0)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("qsd", "pyvirtio"), default="qsd")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--packed", action="store_true", help="packed rings (qsd does not offer them)")
    ap.add_argument("--aio", choices=("io_uring", "threads"), default="threads")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--restart-delay", type=float, default=0.0, metavar="SECONDS",
                    help="wait this long after a kill before starting the next back-end")
    ap.add_argument("--wait-connected", action="store_true",
                    help="after each restart, wait until QEMU has connected to the new back-end "
                         "before the 0.2-2.5 s to the next kill (the CI test's regime): no kill "
                         "lands in QEMU's start-up handshake, which QEMU 7.2 does not survive "
                         "(benchmarks/qemu_lost_reconnect.py)")
    ap.add_argument("--diagnose", action="store_true",
                    help="after a stall, put pyvirtio serve blk in the stalled back-end's place and "
                         "report whether QEMU negotiates with it and whether fio goes on (who lost "
                         "the request: QEMU's reconnect, or the back-end)")
    ap.add_argument("--keep", metavar="DIR",
                    help="copy a failed run's directory (console log, back-end logs) to DIR/run-N")
    args = ap.parse_args(argv)
    kernel = prepare_kernel()
    rnd = random.Random(args.seed)
    results = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="pyvirtio-kill-") as tmp:
            r = one_run(kernel, args.backend, args.cycles, args.packed, args.aio, rnd, tmp,
                        args.restart_delay, args.wait_connected, args.diagnose)
            if not r["ok"] and args.keep:
                kept = os.path.join(args.keep, f"run-{run}")
                shutil.copytree(tmp, kept, ignore=shutil.ignore_patterns("*.img", "*.sock"))
                r["kept"] = kept
        results.append(r)
        diag = {k: r[k] for k in ("qemu_connected_to_stalled", "rescue_negotiated",
                                  "rescue_resubmitted", "recovered_by_pyvirtio") if k in r}
        print(f"run {run}: {'pass' if r['ok'] else 'FAIL'} after {r['cycles']} kills, "
              f"{r.get('rounds', '?')} fio rounds, {r['seconds']} s {r['why']}"
              + (f" diagnosis {diag}" if diag else ""), flush=True)
    passed = sum(r["ok"] for r in results)
    print(f"{args.backend}: {passed} of {len(results)} runs passed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
