#!/usr/bin/env python3
"""Does QEMU 7.2 ever talk to a vhost-user-blk back-end again after one died during its
start-up?  A deterministic version of the kill loop's failures, run against any back-end.

Each case boots one guest (QEMU, chardev ``reconnect=1``, vhost-user-blk) that reads its disk
with O_DIRECT in a loop and prints ``io=N`` after each read.  Then:

1. the back-end is killed (SIGKILL) while the guest reads;
2. ``--case dies-in-init``: a stand-in back-end listens on the socket, accepts QEMU's reconnect,
   reads the first message QEMU sends (GET_FEATURES, the start of vhost_dev_init) and hangs up
   — a back-end killed during QEMU's start-up handshake.  ``--case control``: nothing (a plain
   kill and restart, as every kill loop cycle does);
3. the same back-end is started again on the same socket and image, and the guest is watched
   for ``io=`` lines: the device works again, or it never does.

If the guest's reads resume in the control case and never resume after ``dies-in-init`` —
whichever back-end comes third, qemu-storage-daemon or pyvirtio — then what loses the
requests is QEMU's reconnect path and not the back-end: the third back-end is a fresh process
that QEMU connects to (``front-end connected`` in pyvirtio's log) and then never sends a
message.  QEMU's own analysis of that bug: its deferred CHR_EVENT_CLOSED handling (commit
71e076a07d, "hw/virtio: generalise CHR_EVENT_CLOSED handling", first in 7.2) skips the
disconnect — and with it re-installing the chardev's event handler — when the vhost device was
already cleaned up by a failed ``vhost_dev_init``; the device then stays "connected" for ever.
Fixed upstream by "vhost-user: fix lost reconnect" (Li Feng, 2024).

    python benchmarks/qemu_lost_reconnect.py [--backend qsd|pyvirtio|both] [--case control|dies-in-init|both]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import threading
import time

from pyvirtio.bench.peers import start_pyvirtio, start_qsd
from pyvirtio.guest import prepare_kernel, start_guest

MiB = 1 << 20
#: How long the guest's reads have to resume after the third back-end is up.
RESUME = 20.0

SCRIPT = r"""
i=0
while [ $i -lt 100000 ]; do
  dd if=/dev/vda of=/dev/null bs=4096 count=1 skip=$((i % 4096)) iflag=direct 2>/dev/null && echo "io=$i"
  i=$((i + 1))
  sleep 0.1
done
"""


def _start(backend: str, sock: str, image: str):
    if backend == "qsd":
        return start_qsd(sock, image, aio="threads")
    return start_pyvirtio("blk", sock, blk_file=image, aio="threads", extra_args=["-v"])


def _dies_in_init(sock: str, timeout: float = 15.0) -> dict:
    """Listen on ``sock``, accept one connection, read one message header, hang up."""
    seen: dict = {"connected": False, "request": None}
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock)
    srv.listen(1)
    srv.settimeout(timeout)
    try:
        conn, _ = srv.accept()
    except socket.timeout:
        srv.close()
        os.unlink(sock)
        return seen
    seen["connected"] = True
    conn.settimeout(5.0)
    try:
        header = conn.recv(12, socket.MSG_WAITALL)
        if len(header) == 12:
            seen["request"] = struct.unpack("<III", header)[0]
    except socket.timeout:
        pass
    conn.close()
    srv.close()
    os.unlink(sock)
    return seen


def _ios(guest) -> int:
    return sum(1 for line in guest.lines if line.startswith("io="))


def one_case(kernel, backend: str, case: str) -> dict:
    result: dict = {"backend": backend, "case": case}
    with tempfile.TemporaryDirectory(prefix="pyvirtio-lost-reconnect-") as tmp:
        image, sock = os.path.join(tmp, "disk.img"), os.path.join(tmp, "blk.sock")
        with open(image, "wb") as f:
            f.truncate(64 * MiB)
        qemu_args = ["-chardev", f"socket,id=blk,path={sock},reconnect=1",
                     "-device", "vhost-user-blk-pci,chardev=blk,addr=0x4"]
        peer = _start(backend, sock, image)
        with start_guest(kernel, SCRIPT, timeout=180, qemu_args=qemu_args) as guest:
            try:
                guest.expect(r"io=5\b", timeout=120)
                peer.process.send_signal(signal.SIGKILL)
                peer.process.wait(10)
                if os.path.exists(sock):
                    os.unlink(sock)
                if case == "dies-in-init":
                    stub = _dies_in_init(sock)
                    result["stand_in"] = stub
                before = _ios(guest)
                peer = _start(backend, sock, image)
                deadline = time.monotonic() + RESUME
                while time.monotonic() < deadline and _ios(guest) < before + 5:
                    time.sleep(0.2)
                result["resumed"] = _ios(guest) >= before + 5
                if backend == "pyvirtio":
                    log = peer.log()
                    third = log.rsplit("--- pyvirtio serve blk started", 1)[-1]
                    result["third_backend_connected"] = "front-end connected" in third
                    # SET_FEATURES from QEMU: "features ... negotiated" (the device restarted)
                    result["third_backend_negotiated"] = "negotiated" in third
            finally:
                peer.close()
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("qsd", "pyvirtio", "both"), default="both")
    ap.add_argument("--case", choices=("control", "dies-in-init", "both"), default="both")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    kernel = prepare_kernel()
    backends = ("qsd", "pyvirtio") if args.backend == "both" else (args.backend,)
    cases = ("control", "dies-in-init") if args.case == "both" else (args.case,)
    results = []
    for backend in backends:
        for case in cases:
            r = one_case(kernel, backend, case)
            results.append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
