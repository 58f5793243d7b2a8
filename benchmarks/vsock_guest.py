#!/usr/bin/env python3
"""vsock throughput through ``pyvirtio serve vsock``, beside TCP through ``pyvirtio serve net``,
in one Linux guest (QEMU 7.2, TCG).

One boot with both devices: ``vhost-user-vsock-pci`` on ``pyvirtio serve vsock`` and a
``virtio-net-pci`` on ``pyvirtio serve net --tap`` (the TAP in a network namespace of ours,
10.90.0.1 on the host side, 10.90.0.2 in the guest).  socat in the guest moves ``--size`` MiB
per transfer with 64 KiB writes (``-b 65536``), guest → host and host → guest, over a vsock
stream (the guest connects to host port 7000/7001: ``UDS_7000``/``UDS_7001``) and over TCP
(the guest connects to 10.90.0.1:7000/7001); the host ends write and read 64 KiB at a time
and time each transfer from accept to the end of the stream.  Tests are interleaved and their
order reversed every other round (PEERS.md: compare only inside one run).

    python benchmarks/vsock_guest.py [--rounds 3] [--size 32] [--json out.json]

Needs root (a TAP and a network namespace), qemu-system-x86_64, busybox-static and socat.
The NIC has ``vectors=0`` as in the net guest tests (QEMU 7.2 crashed, SIGSEGV, after boot with
MSI-X vectors on the vhost-user NIC beside the vsock device).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

CHUNK = 64 * 1024
TESTS = ("vsock g2h", "tcp g2h", "vsock h2g", "tcp h2g")
HOST_IP, GUEST_IP = "10.90.0.1", "10.90.0.2"
MAC = "52:54:00:90:00:02"


# --- the host ends: one accept loop per (kind, direction); each connection timed -------------------


def serve(listener: socket.socket, mode: str, size: int, out, count: int) -> None:
    """Accept ``count`` connections; ``mode`` sink (g2h) or source (h2g); print MB/s lines."""
    payload = os.urandom(CHUNK)
    for _ in range(count):
        conn, _ = listener.accept()
        start = time.monotonic()
        moved = 0
        if mode == "sink":
            buf = bytearray(CHUNK)
            while n := conn.recv_into(buf):
                moved += n
        else:
            while moved < size:
                conn.sendall(payload[:min(CHUNK, size - moved)])
                moved += min(CHUNK, size - moved)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(CHUNK):  # until the guest has read all and closed
                pass
        elapsed = time.monotonic() - start
        conn.close()
        out(json.dumps({"bytes": moved, "seconds": elapsed, "mbps": moved / elapsed / 1e6}))


def tcp_server(args) -> int:
    """Run inside the namespace: TCP sink on 7000 and source on 7001."""
    threads = []
    lock = threading.Lock()
    for port, mode in ((7000, "sink"), (7001, "source")):
        ls = socket.create_server((HOST_IP, port), reuse_port=True)

        def out(line, port=port):
            with lock:
                print(f"{port} {line}", flush=True)
        t = threading.Thread(target=serve, args=(ls, mode, args.size * (1 << 20), out, args.rounds))
        t.start()
        threads.append(t)
    print("ready", flush=True)
    for t in threads:
        t.join()
    return 0


# --- the guest ------------------------------------------------------------------------------------


def guest_script(rounds: int, size_mib: int) -> str:
    lines = [
        f"ip link set eth0 up\nip addr add {GUEST_IP}/24 dev eth0",
        f"for i in $(seq 60); do ping -c1 -W1 {HOST_IP} >/dev/null 2>&1 && break; done",
        f"dd if=/dev/urandom of=/data bs=1M count={size_mib} 2>/dev/null",
        "echo guest_ready=1",
    ]
    cmds = {
        "vsock g2h": "socat -u -b 65536 FILE:/data VSOCK-CONNECT:2:7000",
        "tcp g2h": f"socat -u -b 65536 FILE:/data TCP:{HOST_IP}:7000",
        "vsock h2g": "socat -u -b 65536 VSOCK-CONNECT:2:7001 OPEN:/dev/null",
        "tcp h2g": f"socat -u -b 65536 TCP:{HOST_IP}:7001 OPEN:/dev/null",
    }
    for r in range(rounds):
        order = TESTS if r % 2 == 0 else TESTS[::-1]
        for name in order:
            lines.append(f"{cmds[name]}; echo \"rc {r} {name.replace(' ', '_')}=$?\"")
    lines.append("echo bench_done=1")
    return "\n".join(lines) + "\n"


def _wait_path(path: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start")
        time.sleep(0.05)


def run(args) -> dict:
    from pyvirtio import vsock
    from pyvirtio.guest import prepare_kernel, start_guest
    from pyvirtio.guest import VSOCK_MODULES

    tmp = tempfile.mkdtemp(prefix="pyvirtio-vsock-bench-")
    ns, tap = f"pvvs{os.getpid()}", f"pvvs{os.getpid() % 100000}"
    cli = [sys.executable, "-m", "pyvirtio.cli"]
    size = args.size << 20
    procs: list[subprocess.Popen] = []
    results: dict[str, list[float]] = {name: [] for name in TESTS}
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        vs_sock, uds = os.path.join(tmp, "vsock.sock"), os.path.join(tmp, "vm.vsock")
        net_sock = os.path.join(tmp, "net.sock")
        log = open(os.path.join(tmp, "daemons.log"), "w")
        procs.append(subprocess.Popen([*cli, "serve", "vsock", f"--socket-path={vs_sock}", "--guest-cid=3",
                                       f"--uds-path={uds}"], stdout=log, stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen([*cli, "serve", "net", f"--socket-path={net_sock}", f"--tap={tap}",
                                       f"--tap-netns={ns}"], stdout=log, stderr=subprocess.STDOUT))
        _wait_path(vs_sock, procs[0], "serve vsock")
        _wait_path(net_sock, procs[1], "serve net")
        ip = ["ip", "netns", "exec", ns, "ip"]
        subprocess.run(ip + ["addr", "add", f"{HOST_IP}/24", "dev", tap], check=True)
        subprocess.run(ip + ["link", "set", tap, "up"], check=True)
        tcp = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__),
                                "--tcp-server", f"--size={args.size}", f"--rounds={args.rounds}"],
                               stdout=subprocess.PIPE, text=True)
        procs.append(tcp)
        assert tcp.stdout is not None and tcp.stdout.readline().strip() == "ready"

        def collect_tcp():
            assert tcp.stdout is not None
            for line in tcp.stdout:
                port, _, data = line.partition(" ")
                results["tcp g2h" if port == "7000" else "tcp h2g"].append(json.loads(data)["mbps"])
        threading.Thread(target=collect_tcp, daemon=True).start()
        for port, mode, name in ((7000, "sink", "vsock g2h"), (7001, "source", "vsock h2g")):
            ls = vsock.listen(uds, port)
            threading.Thread(target=serve, args=(ls, mode, size, lambda line, n=name: results[n].append(
                json.loads(line)["mbps"]), args.rounds), daemon=True).start()
        kernel = prepare_kernel()
        guest = start_guest(kernel, guest_script(args.rounds, args.size), memory_mb=512,
                            modules=VSOCK_MODULES, host_binaries=[shutil.which("socat") or "socat"],
                            timeout=args.timeout, qemu_args=[
                                "-chardev", f"socket,id=vs,path={vs_sock}",
                                "-device", "vhost-user-vsock-pci,chardev=vs",
                                "-chardev", f"socket,id=c0,path={net_sock}",
                                "-netdev", "vhost-user,id=n0,chardev=c0",
                                "-device", f"virtio-net-pci,netdev=n0,vectors=0,mac={MAC}"])
        guest.expect("bench_done=1", timeout=args.timeout)
        time.sleep(0.5)
        bad = [line for line in guest.lines if line.startswith("rc ") and not line.endswith("=0")]
        if bad:
            raise SystemExit(f"transfers failed: {bad}")
        guest.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"size_mib": args.size, "rounds": args.rounds, "write_size": CHUNK,
            "mbps": results, "median_mbps": {k: statistics.median(v) for k, v in results.items() if v}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", type=int, default=32, help="MiB per transfer (default 32)")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--tcp-server", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tcp_server:
        return tcp_server(args)
    report = run(args)
    print(f"{'test':12} {'median MB/s':>12}   rounds")
    for name in TESTS:
        values = report["mbps"][name]
        print(f"{name:12} {report['median_mbps'].get(name, 0):12.1f}   "
              + " ".join(f"{v:.1f}" for v in values))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
