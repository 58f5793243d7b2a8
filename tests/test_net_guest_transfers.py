"""Real Linux guests (QEMU 7.2, TCG) moving data through pyvirtio's network device over
vhost-user — more than a ping:

1. a guest on a TAP back-end pings the host and fetches a file from a host HTTP server on the
   TAP address (in a network namespace of ours), verifying its sha256;
2. two guests on one in-daemon switch ping each other and transfer a file with busybox ``nc``,
   verifying its sha256 on the receiving side;
3. a pyvirtio guest (``--socket`` back-end, listening on 127.0.0.1) and a plain QEMU guest
   (built-in virtio-net, ``-netdev stream`` connecting to that socket) ping each other.

The daemon, the netns fixture and the small script helpers come from ``test_net_guest``.
Without QEMU or busybox these are skipped (failed with CI set); the TAP test also needs root,
/dev/net/tun and iproute2.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time

import pytest

from pyvirtio.devices.net import NetDevice
from pyvirtio.net.stream import StreamBackend
from pyvirtio.net.switch import get_switch
from pyvirtio.net.tap import TapBackend

from test_net_guest import daemon, net_args, netns, ping_until, setup_ip  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.guest, pytest.mark.timeout(600)]


def _values(guest_or_result) -> dict[str, str]:
    out = {}
    for line in guest_or_result.lines:
        k, s, v = line.partition("=")
        if s and k and " " not in k.strip():
            out[k.strip()] = v.strip()
    return out


# --- 1. TAP + a host HTTP server ----------------------------------------------------------------

HTTP_PORT = 8081


def _wait_listening(ns: str, host: str, port: int, server: subprocess.Popen, timeout: float = 20):
    probe = (f"import socket; socket.create_connection(({host!r}, {port}), 1).close()")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the HTTP server exited early: {server.stderr.read()!r}")
        if subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"the HTTP server did not listen on {host}:{port} within {timeout} s")


def test_guest_on_a_tap_fetches_a_file_over_http(boot, daemon, netns, tmp_path):
    tap = TapBackend(f"pvh{os.getpid() % 100000}", netns=netns)
    ip = ["ip", "netns", "exec", netns, "ip"]
    subprocess.run(ip + ["addr", "add", "10.81.0.1/24", "dev", tap.name], check=True)
    subprocess.run(ip + ["link", "set", tap.name, "up"], check=True)
    subprocess.run(ip + ["link", "set", "lo", "up"], check=True)  # for our own readiness probe
    www = tmp_path / "www"
    www.mkdir()
    payload = os.urandom(random.randint(1 << 20, 4 << 20))
    (www / "blob").write_bytes(payload)
    want = hashlib.sha256(payload).hexdigest()
    server = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "http.server",
                               "--bind", "10.81.0.1", str(HTTP_PORT), "--directory", str(www)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        _wait_listening(netns, "10.81.0.1", HTTP_PORT, server)
        dev = NetDevice(tap, mac="52:54:00:81:00:02")
        sock = daemon.add(dev)
        daemon.start()
        script = (setup_ip("10.81.0.2") + ping_until("10.81.0.1")
                  + "ping -c 3 10.81.0.1\necho ping_rc=$?\n"
                  + "ok=0\nfor i in $(seq 10); do\n"
                  + f"    if wget -q -O /tmp/f http://10.81.0.1:{HTTP_PORT}/blob; then ok=1; break; fi\n"
                  + "    sleep 1\ndone\necho wget_ok=$ok\n"
                  + "echo size=$(wc -c < /tmp/f)\n"
                  + "echo sha=$(sha256sum /tmp/f | cut -d' ' -f1)\n")
        result = boot(script, qemu_args=net_args(sock, "52:54:00:81:00:02"), timeout=240).check()
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        server.stderr.close()
    values = result.values()
    assert values.get("reached") == "10.81.0.1", result.output
    assert values["ping_rc"] == "0", result.output
    assert values["wget_ok"] == "1", result.output
    assert values["size"] == str(len(payload)), result.output
    assert values["sha"] == want, result.output
    assert dev.stats["tx_errors"] == 0 and dev.stats["rx_errors"] == 0
    assert dev.stats["rx_bytes"] >= len(payload)
    assert tap.stats["errors"] == 0


# --- 2. two guests on one switch, a file over busybox nc ------------------------------------------

NC_PORT = 5001

# Busybox's small nc: at end of stdin it shuts down its sending half and keeps reading; it exits
# when the peer closes.  So the receiver must not see end of stdin (it would send FIN at once and
# the sender would stop early): it reads from a FIFO we hold open and never write.
RECEIVER = f"""
mkfifo /tmp/hold
nc -l -p {NC_PORT} </tmp/hold >/tmp/recv &
ncpid=$!
exec 3>/tmp/hold
for i in $(seq 100); do netstat -ltn 2>/dev/null | grep -q ':{NC_PORT} ' && break; usleep 100000; done
echo listening=1
wait $ncpid
echo nc_rc=$?
exec 3>&-
echo recv_size=$(wc -c < /tmp/recv)
echo recv_sha=$(sha256sum /tmp/recv | cut -d' ' -f1)
"""

SENDER = f"""
dd if=/dev/urandom of=/tmp/f bs=64k count=16 2>/dev/null
echo sent_size=$(wc -c < /tmp/f)
echo sent_sha=$(sha256sum /tmp/f | cut -d' ' -f1)
nc 10.82.0.1 {NC_PORT} </tmp/f
echo send_rc=$?
"""


def test_two_guests_on_one_switch_transfer_a_file_with_nc(boot, daemon):
    switch_name = f"xfer-{os.getpid()}"
    macs = ("52:54:00:82:00:01", "52:54:00:82:00:02")
    socks = [daemon.add(NetDevice(get_switch(switch_name).port(), mac=mac)) for mac in macs]
    daemon.start()
    receiver = boot.start(setup_ip("10.82.0.1") + RECEIVER,
                          qemu_args=net_args(socks[0], macs[0]), timeout=300)
    receiver.expect("listening=1", timeout=120)
    sent = boot(setup_ip("10.82.0.2") + ping_until("10.82.0.1") + SENDER,
                qemu_args=net_args(socks[1], macs[1]), timeout=240).check()
    sv = sent.values()
    assert sv.get("reached") == "10.82.0.1", sent.output
    assert sv["send_rc"] == "0", sent.output
    assert sv["sent_size"] == str(16 * 65536)
    receiver.expect(r"recv_sha=", timeout=60)
    rv = _values(receiver)
    assert rv["nc_rc"] == "0", receiver.output
    assert rv["recv_size"] == sv["sent_size"], receiver.output
    assert rv["recv_sha"] == sv["sent_sha"], receiver.output
    switch = get_switch(switch_name)
    assert switch.stats["forwarded"] > 0 and len(switch.macs) == 2
    assert all(d.stats["tx_errors"] == 0 for d in daemon.devices)


# --- 3. a pyvirtio guest and a plain QEMU guest through --socket ---------------------------------

def _peer_script(me: str, peer: str) -> str:
    return (setup_ip(me) + ping_until(peer) + f"ping -c 3 {peer}\necho ping_rc=$?\n"
            + "echo done=1\nsleep 30\n")


def test_pyvirtio_guest_and_qemu_guest_over_a_stream_socket(boot, daemon):
    backend = StreamBackend("127.0.0.1:0", listen=True)
    host, port = backend.bound_address
    dev = NetDevice(backend, mac="52:54:00:83:00:01")
    sock = daemon.add(dev)
    daemon.start()
    ours = boot.start(_peer_script("10.83.0.1", "10.83.0.2"),
                      qemu_args=net_args(sock, "52:54:00:83:00:01"), timeout=300)
    theirs = boot.start(_peer_script("10.83.0.2", "10.83.0.1"), shared_memory=False,
                        qemu_args=["-netdev", f"stream,id=n0,server=off,addr.type=inet,"
                                              f"addr.host={host},addr.port={port}",
                                   "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:83:00:02"],
                        timeout=300)
    for guest, peer in ((ours, "10.83.0.2"), (theirs, "10.83.0.1")):
        guest.expect(f"reached={peer}", timeout=200)
        guest.expect("3 packets received", timeout=60)
        guest.expect("done=1", timeout=60)
    assert _values(ours)["ping_rc"] == "0" and _values(theirs)["ping_rc"] == "0"
    assert backend.stats["connects"] == 1 and backend.stats["errors"] == 0
    assert backend.stats["rx_frames"] >= 3 and backend.stats["tx_frames"] >= 3
    assert dev.stats["tx_errors"] == 0 and dev.stats["rx_errors"] == 0
