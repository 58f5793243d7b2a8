"""A real Linux guest (QEMU 7.2, vhost-user-vsock-pci on memfd memory) on ``pyvirtio serve vsock``.

socat in the guest (VSOCK-LISTEN / VSOCK-CONNECT) and host programs on the hybrid UNIX sockets
(``CONNECT <port>`` on UDS, listeners on UDS_P) run eight 16 MiB streams at once: guest-initiated
and host-initiated connections, in both directions, each checked with sha256.  Then the guest
is booted again on the same daemon (a reboot: QEMU runs with -no-reboot, so a new QEMU connects)
and the host connects to it again.  SEQPACKET sockets (socat ``type=5``) carry messages both ways
with their boundaries.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
import threading
import time

import pytest

from pyvirtio import vsock
from pyvirtio.guest import VSOCK_MODULES
from pyvirtio.testing.serve import ServeProcess

pytestmark = [pytest.mark.guest, pytest.mark.timeout(900)]

MiB = 1 << 20
SIZE = int(os.environ.get("PYVIRTIO_VSOCK_TEST_MIB", "16")) * MiB
CLI = [sys.executable, "-m", "pyvirtio.cli"]
SOCAT = shutil.which("socat")

GUEST = r"""
dd if=/dev/urandom of=/data bs=1M count={mib} 2>/dev/null
echo "data_sha=$(sha256sum /data | cut -d' ' -f1)"
# host-initiated: two streams the host sends, two the guest sends
for p in 6000 6001; do (socat -u VSOCK-LISTEN:$p - | sha256sum | cut -d' ' -f1 > /r$p) & done
for p in 6002 6003; do socat -u FILE:/data VSOCK-LISTEN:$p & done
usleep 300000
echo "listening=1"
# guest-initiated: two streams to host port 5000 (the guest sends), two from 5001 (the host sends)
socat -u FILE:/data VSOCK-CONNECT:2:5000 &
socat -u FILE:/data VSOCK-CONNECT:2:5000 &
(socat -u VSOCK-CONNECT:2:5001 - | sha256sum | cut -d' ' -f1 > /r5001a) &
(socat -u VSOCK-CONNECT:2:5001 - | sha256sum | cut -d' ' -f1 > /r5001b) &
wait
for f in /r*; do echo "sha_${f#/r}=$(cat $f)"; done
echo "guest_done=1"
"""

REBOOTED = r"""
(socat -u VSOCK-LISTEN:6000 - | sha256sum | cut -d' ' -f1 > /r6000) &
usleep 300000
echo "listening=1"
echo again | socat -u - VSOCK-CONNECT:2:5000
wait
echo "sha_6000=$(cat /r6000)"
echo "guest_done=1"
"""


class Daemon(ServeProcess):
    def __init__(self, tmp):
        self.socket, self.uds = str(tmp / "vsock.sock"), str(tmp / "vm.vsock")
        super().__init__(tmp, "vsock", ["vsock", f"--socket-path={self.socket}", "--guest-cid=3",
                                        f"--uds-path={self.uds}"], [self.socket, self.uds])

    def qemu_args(self):
        return ["-chardev", f"socket,id=vs,path={self.socket}",
                "-device", "vhost-user-vsock-pci,chardev=vs"]

def _connect(uds, port, deadline):
    """CONNECT to a guest port, again until the guest listens."""
    while True:
        try:
            return vsock.connect(uds, port, timeout=30)
        except vsock.VsockRefused:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _read_all(sock) -> str:
    h = hashlib.sha256()
    while chunk := sock.recv(1 << 20):
        h.update(chunk)
    sock.close()
    return h.hexdigest()


def _send_all(sock, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):  # until the guest closes
        pass
    sock.close()


class Runner:
    """Host threads; each result (or exception) is kept by name."""

    def __init__(self):
        self.results: dict[str, object] = {}
        self.threads: list[threading.Thread] = []

    def run(self, name, fn, *args):
        def body():
            try:
                self.results[name] = fn(*args)
            except BaseException as exc:  # reported by the test
                self.results[name] = exc
        t = threading.Thread(target=body, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"host streams still running: {alive}"
        errors = {k: v for k, v in self.results.items() if isinstance(v, BaseException)}
        assert not errors, errors
        return self.results


def _accept_loop(server, count, fn, runner, prefix):
    for i in range(count):
        conn, _ = server.accept()
        runner.run(f"{prefix}{i}", fn, conn)


@pytest.mark.skipif(SOCAT is None, reason="socat is not installed")
def test_eight_streams_both_ways_then_reboot(boot, tmp_path):
    daemon = Daemon(tmp_path)
    host_data = os.urandom(SIZE)
    host_sha = hashlib.sha256(host_data).hexdigest()
    runner = Runner()
    to_host = vsock.listen(daemon.uds, 5000)  # the guest sends here
    from_host = vsock.listen(daemon.uds, 5001)  # the guest reads from here
    to_host.settimeout(300)
    from_host.settimeout(300)
    try:
        threading.Thread(target=_accept_loop, args=(to_host, 2, _read_all, runner, "g2h-guest-init-"),
                         daemon=True).start()
        threading.Thread(target=_accept_loop,
                         args=(from_host, 2, lambda c: _send_all(c, host_data), runner, "h2g-guest-init-"),
                         daemon=True).start()
        guest = boot.start(GUEST.replace("{mib}", str(SIZE // MiB)), qemu_args=daemon.qemu_args(),
                           modules=VSOCK_MODULES, host_binaries=[SOCAT], timeout=600)
        data_sha = guest.expect(r"data_sha=([0-9a-f]{64})", timeout=240).group(1)
        guest.expect("listening=1", timeout=120)
        started = time.monotonic()
        deadline = started + 60
        for port in (6000, 6001):
            sock = _connect(daemon.uds, port, deadline)
            runner.run(f"h2g-host-init-{port}", _send_all, sock, host_data)
        for port in (6002, 6003):
            sock = _connect(daemon.uds, port, deadline)
            runner.run(f"g2h-host-init-{port}", _read_all, sock)
        result = guest.wait(timeout=400)
        elapsed = time.monotonic() - started
        results = runner.join(60)
        values = result.values()
        assert values.get("guest_done") == "1", result.output[-3000:]
        assert len(results) == 8, results
        for name, sha in results.items():
            if name.startswith("g2h"):
                assert sha == data_sha, name
        for key in ("sha_6000", "sha_6001", "sha_5001a", "sha_5001b"):
            assert values.get(key) == host_sha, (key, values)
        print(f"8 streams of {SIZE // MiB} MiB (4 each way) in {elapsed:.1f} s", file=sys.stderr)

        # The guest reboots (a new QEMU on the same daemon) and the host connects again.
        runner = Runner()
        threading.Thread(target=_accept_loop, args=(to_host, 1, _read_all, runner, "again-"),
                         daemon=True).start()
        guest = boot.start(REBOOTED, qemu_args=daemon.qemu_args(), modules=VSOCK_MODULES,
                           host_binaries=[SOCAT], timeout=300)
        guest.expect("listening=1", timeout=200)
        small = os.urandom(MiB)
        runner.run("h2g-again", _send_all, _connect(daemon.uds, 6000, time.monotonic() + 60), small)
        result = guest.wait(timeout=200)
        results = runner.join(60)
        assert result.values().get("sha_6000") == hashlib.sha256(small).hexdigest(), result.output[-2000:]
        assert results["again-0"] == hashlib.sha256(b"again\n").hexdigest()
    finally:
        to_host.close()
        from_host.close()
        code = daemon.stop()
        log = daemon.log.read_text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-5000:]


SEQPACKET_GUEST = r"""
dd if=/dev/urandom of=/data bs=64k count=16 2>/dev/null
echo "data_sha=$(sha256sum /data | cut -d' ' -f1)"
(socat -u -b 262144 VSOCK-LISTEN:7001,type=5 - | sha256sum | cut -d' ' -f1 > /r7001) &
usleep 300000
echo "listening=1"
socat -u -b 3000 FILE:/data VSOCK-CONNECT:2:7000,type=5; echo "send_rc=$?"
wait
echo "sha_7001=$(cat /r7001)"
echo "guest_done=1"
"""


@pytest.mark.skipif(SOCAT is None, reason="socat is not installed")
def test_seqpacket_messages_both_ways(boot, tmp_path):
    """SOCK_SEQPACKET (VIRTIO_VSOCK_F_SEQPACKET): socat in the guest sends 3000-byte blocks as
    messages to a SOCK_SEQPACKET listener on UDS_7000; the host opens one through
    UDS.seqpacket to the guest's listener and sends messages of many sizes (socat reads them
    with a 256 KiB buffer: a smaller one truncates a larger message, as recv(2) does)."""
    daemon = Daemon(tmp_path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(daemon.uds + "_7000")
    server.listen()
    server.settimeout(200)
    runner = Runner()

    def receive():
        conn, _ = server.accept()
        sizes, h = [], hashlib.sha256()
        while message := conn.recv(1 << 20):
            sizes.append(len(message))
            h.update(message)
        conn.close()
        return sizes, h.hexdigest()
    runner.run("g2h", receive)
    messages = [os.urandom(n) for n in (1, 4096, 4097, 65536, 100000, 200000) * 3]
    try:
        guest = boot.start(SEQPACKET_GUEST, qemu_args=daemon.qemu_args(), modules=VSOCK_MODULES,
                           host_binaries=[SOCAT], timeout=300)
        data_sha = guest.expect(r"data_sha=([0-9a-f]{64})", timeout=200).group(1)
        guest.expect("listening=1", timeout=60)
        deadline = time.monotonic() + 60
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.connect(daemon.uds + ".seqpacket")
            sock.send(b"CONNECT 7001\n")
            answer = sock.recv(64)
            if answer.startswith(b"OK "):
                break
            sock.close()
            assert time.monotonic() < deadline, "the guest did not accept"
            time.sleep(0.2)
        for m in messages:
            sock.send(m)
        sock.close()
        result = guest.wait(timeout=200)
        (sizes, g2h_sha), = runner.join(60).values()
        values = result.values()
        assert values.get("send_rc") == "0", result.output[-2000:]
        assert g2h_sha == data_sha and max(sizes) <= 3000 and sum(sizes) == 1 << 20, sizes[:10]
        assert values.get("sha_7001") == hashlib.sha256(b"".join(messages)).hexdigest()
    finally:
        server.close()
        code = daemon.stop()
    assert code == 0
