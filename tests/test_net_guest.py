"""Real Linux guests (QEMU 7.2, TCG) on pyvirtio's network device over vhost-user
(``-netdev vhost-user`` with ``vectors=0``, which TCG needs: PEERS.md):

1. a guest on a TAP back-end pings the host (an address on the TAP, in a namespace of ours);
2. two guests on one in-daemon switch ping each other;
3. the daemon takes the link down and up again: the guest sees its carrier go and come back,
   and pings a host on the switch before and after.

The daemon (a VhostUserServer with NetDevices) runs in this process, as ``pyvirtio serve net``
runs it.  Without QEMU or busybox these are skipped (failed with CI set); the TAP test also
needs root and /dev/net/tun.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

import pytest

from pyvirtio.devices.net import NetDevice
from pyvirtio.drivers.net import NetDriver
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.net.responder import Responder
from pyvirtio.net.switch import get_switch
from pyvirtio.net.tap import TapBackend, tun_available
from pyvirtio.net.vhost_link import VhostLinkControl
from pyvirtio.vhost_user.backend.server import VhostUserServer
from pyvirtio.testing.env import require

pytestmark = [pytest.mark.guest, pytest.mark.timeout(600)]




class Daemon:
    """A vhost-user server for network devices, served from a thread (each connection's engine
    workers serve the devices' back-ends)."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.server = VhostUserServer()
        self.devices, self.endpoints, self.sockets = [], [], []
        self.thread = None

    def add(self, device: NetDevice):
        path = str(self.tmp / f"net{len(self.sockets)}.sock")
        self.endpoints.append(self.server.add(device, socket_path=path))
        self.devices.append(device)
        self.sockets.append(path)
        return path

    def start(self):
        self.thread = threading.Thread(target=self.server.serve_forever, name="vhost-user", daemon=True)
        self.thread.start()
        return self

    def close(self):
        self.server.shutdown()
        if self.thread is not None:
            self.thread.join(10)
        self.server.close()
        for device in self.devices:
            device.close()


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    yield d
    d.close()


def net_args(sock: str, mac: str, reconnect: bool = False) -> list[str]:
    return ["-chardev", f"socket,id=c0,path={sock}" + (",reconnect=1" if reconnect else ""),
            "-netdev", "vhost-user,id=n0,chardev=c0",
            "-device", f"virtio-net-pci,netdev=n0,vectors=0,mac={mac}"]


def setup_ip(addr: str) -> str:
    return f"ip link set eth0 up\nip addr add {addr}/24 dev eth0\n"


def ping_until(peer: str, tries: int = 60) -> str:
    return (f"for i in $(seq {tries}); do ping -c1 -W1 {peer} >/dev/null 2>&1 && "
            f"{{ echo reached={peer}; break; }}; done\n")


# --- 1. TAP ----------------------------------------------------------------------------------------

@pytest.fixture
def netns():
    why = None
    if shutil.which("ip") is None:
        why = "the ip command (iproute2) is missing"
    elif os.geteuid() != 0:
        why = "a TAP and a network namespace need root"
    else:
        why = tun_available()
    require(not why, "the TAP guest test", f"cannot run: {why}")
    name = f"pyvirtio-guest-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def test_guest_on_a_tap_pings_the_host(boot, daemon, netns):
    tap = TapBackend(f"pvg{os.getpid() % 100000}", netns=netns)
    ip = ["ip", "netns", "exec", netns, "ip"]
    subprocess.run(ip + ["addr", "add", "10.78.0.1/24", "dev", tap.name], check=True)
    subprocess.run(ip + ["link", "set", tap.name, "up"], check=True)
    dev = NetDevice(tap, mac="52:54:00:78:00:02")
    sock = daemon.add(dev)
    daemon.start()
    script = setup_ip("10.78.0.2") + "ping -c 5 -s 1400 10.78.0.1\necho ping_rc=$?\n"
    result = boot(script, qemu_args=net_args(sock, "52:54:00:78:00:02"), timeout=180).check()
    assert result.values()["ping_rc"] == "0", result.output
    assert "5 packets received" in result.output
    assert dev.stats["tx_errors"] == 0 and dev.stats["rx_packets"] >= 5 and tap.stats["errors"] == 0


# --- 2. two guests, one switch ------------------------------------------------------------------------

def test_two_guests_on_one_switch_ping_each_other(boot, daemon):
    switch_name = f"guests-{os.getpid()}"
    socks = [daemon.add(NetDevice(get_switch(switch_name).port(), mac=f"52:54:00:79:00:0{i}"))
             for i in (1, 2)]
    daemon.start()
    guests = []
    for i, (me, peer) in enumerate((("10.79.0.1", "10.79.0.2"), ("10.79.0.2", "10.79.0.1"))):
        script = setup_ip(me) + ping_until(peer) + "ping -c 3 " + peer + "\nsleep 15\n"
        guests.append(boot.start(script, qemu_args=net_args(socks[i], f"52:54:00:79:00:0{i + 1}"),
                                 timeout=240))
    for guest, peer in zip(guests, ("10.79.0.2", "10.79.0.1")):
        guest.expect(f"reached={peer}", timeout=200)
        guest.expect("3 packets received", timeout=60)
    switch = get_switch(switch_name)
    assert switch.stats["forwarded"] > 0 and len(switch.macs) == 2
    assert all(d.stats["tx_errors"] == 0 for d in daemon.devices)


# --- 3. link down and up ------------------------------------------------------------------------------

WATCH_CARRIER = r"""
last=x
n=0
while [ $n -lt 3000 ]; do
    c=$(cat /sys/class/net/eth0/carrier 2>/dev/null)
    if [ "$c" != "$last" ]; then
        echo "carrier=$c"
        last=$c
        if [ "$c" = 1 ]; then
            ok=0
            for i in $(seq 20); do ping -c1 -W1 10.80.0.1 >/dev/null 2>&1 && { ok=1; break; }; done
            echo "ping_ok=$ok"
        fi
    fi
    usleep 100000
    n=$((n + 1))
done
"""


def test_daemon_link_down_and_up_is_seen_by_the_guest(boot, daemon):
    switch = get_switch(f"link-{os.getpid()}")
    dev = NetDevice(switch.port(), mac="52:54:00:80:00:02")
    sock = daemon.add(dev)
    link = VhostLinkControl(dev, daemon.endpoints[-1])
    host_dev = NetDevice(switch.port(), mac="52:54:00:80:00:01")
    host_t = LoopbackTransport(host_dev)
    host = NetDriver.probe(host_t)
    responder, stop = Responder(host.mac, "10.80.0.1").start(host)
    daemon.start()
    try:
        guest = boot.start(setup_ip("10.80.0.2") + WATCH_CARRIER,
                           qemu_args=net_args(sock, "52:54:00:80:00:02", reconnect=True), timeout=300)
        guest.expect("carrier=1", timeout=120)
        guest.expect("ping_ok=1", timeout=60)
        dev.set_link(False)
        guest.expect("carrier=0", timeout=60)
        dev.set_link(True)
        guest.expect("carrier=1", timeout=60)
        guest.expect("ping_ok=1", timeout=60)
        assert daemon.endpoints[-1].connections == 2  # QEMU came back after the link came up
    finally:
        stop.set()
        responder.join(5)
        link.close()
        host.remove()
        host_t.close()
        host_dev.close()
