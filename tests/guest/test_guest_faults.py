"""Fault injection seen by a real Linux guest (QEMU 7.2) on our in-process vhost-user back-ends
(issue 16, part 3).

1. blk, one boot: an ``ioerr`` rule on sectors 2048-4095 makes the guest's direct ``dd`` of
   those sectors fail with an I/O error while other sectors read fine; a ``latency:ms=40`` rule
   on another range shows up in the guest's timing of 20 direct 4 KiB reads; after
   ``device.faults.clear()`` the failing sectors read again.
2. net, one boot: a ``drop:rate=0.5,dir=tx`` rule makes about half of the guest's pings
   (to a responder on an in-daemon switch) go unanswered.
"""

from __future__ import annotations

import os
import threading

import pytest

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.net import NetDevice
from pyvirtio.drivers.net import NetDriver
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.net.responder import Responder
from pyvirtio.net.switch import get_switch
from pyvirtio.vhost_user.backend.server import VhostUserServer

pytestmark = [pytest.mark.guest, pytest.mark.timeout(600)]

MiB = 1 << 20
LATENCY_MS = 40
READS = 20


@pytest.fixture
def daemon():
    srv = VhostUserServer()
    thread = threading.Thread(target=srv.serve_forever, name="vhost-user", daemon=True)
    devices = []

    def add(device, path):
        devices.append(device)
        return srv.add(device, socket_path=path)
    srv.add_device = add
    srv.start = thread.start
    yield srv
    srv.shutdown()
    if thread.is_alive():
        thread.join(10)
    srv.close()
    for d in devices:
        d.close()


ELAPSED_MS = r"""elapsed_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
timed_reads() {  # timed_reads SKIP_4K: READS direct 4 KiB reads from there, in ms
    t0=$(cut -d' ' -f1 /proc/uptime)
    for i in $(seq READS); do
        dd if=/dev/vda of=/dev/null bs=4k count=1 skip=$(( $1 + i )) iflag=direct 2>/dev/null
    done
    t1=$(cut -d' ' -f1 /proc/uptime)
    elapsed_ms $t0 $t1
}
""".replace("READS", str(READS))

BLK_SCRIPT = ELAPSED_MS + r"""
dd if=/dev/vda of=/dev/null bs=4k count=1 skip=256 iflag=direct 2>/tmp/err; echo "bad_rc=$?"
grep -q "Input/output error" /tmp/err && echo "bad_eio=1" || { cat /tmp/err; echo "bad_eio=0"; }
dd if=/dev/vda of=/dev/null bs=4k count=2 skip=511 iflag=direct 2>/dev/null; echo "edge_rc=$?"
dd if=/dev/vda of=/dev/null bs=4k count=1 skip=255 iflag=direct 2>/dev/null; echo "before_rc=$?"
dd if=/dev/vda of=/dev/null bs=4k count=1 skip=512 iflag=direct 2>/dev/null; echo "after_rc=$?"
echo "pattern=$(dd if=/dev/vda bs=4k count=1 skip=1024 iflag=direct 2>/dev/null | head -c 8)"
echo "slow_ms=$(timed_reads 2048)"
echo "fast_ms=$(timed_reads 3072)"
echo "waiting_for_clear=1"
for i in $(seq 120); do
    dd if=/dev/vda of=/dev/null bs=4k count=1 skip=256 iflag=direct 2>/dev/null && { echo "cleared_after=$i"; break; }
    sleep 1
done
"""


def test_guest_sees_ioerr_on_a_range_latency_and_the_clear(boot, daemon, tmp_path):
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(32 * MiB)
        f.seek(1024 * 4096)
        f.write(b"PYVIRTIO")
    dev = BlkDevice(str(image))
    ioerr = dev.faults.add("ioerr:sectors=2048-4095")
    latency = dev.faults.add(f"latency:ms={LATENCY_MS},sectors=16384-16895")  # 4 KiB blocks 2048..2111
    sock = str(tmp_path / "blk.sock")
    daemon.add_device(dev, sock)
    daemon.start()
    guest = boot.start(BLK_SCRIPT, qemu_args=["-chardev", f"socket,id=blk,path={sock}",
                                              "-device", "vhost-user-blk-pci,chardev=blk"], timeout=300)
    guest.expect("waiting_for_clear=1", timeout=240)
    dev.faults.clear()
    values = guest.wait(120).check().values()
    output = guest.output
    assert values["bad_rc"] != "0" and values["bad_eio"] == "1", output
    assert values["edge_rc"] != "0", output  # 4 KiB blocks 511-512: sectors 4088..4103 overlap
    assert values["before_rc"] == "0" and values["after_rc"] == "0", output
    assert values["pattern"] == "PYVIRTIO", output
    slow, fast = int(values["slow_ms"]), int(values["fast_ms"])
    assert slow >= READS * LATENCY_MS - 10, output  # /proc/uptime counts in 10 ms steps
    assert slow > fast + READS * LATENCY_MS // 2, output
    assert int(values["cleared_after"]) >= 1, output
    assert ioerr.fired >= 2 and latency.fired >= READS  # the bad block and the edge


NET_SCRIPT = r"""
ip link set eth0 up
ip addr add 10.81.0.2/24 dev eth0
for i in $(seq 60); do ping -c1 -W1 10.81.0.1 >/dev/null 2>&1 && { echo reached=1; break; }; done
echo "ready=1"
sleep 2
ok=0
for i in $(seq PINGS); do ping -c1 -W1 10.81.0.1 >/dev/null 2>&1 && ok=$((ok + 1)); done
echo "answered=$ok"
""".replace("PINGS", "80")


def test_guest_ping_loss_under_a_drop_rule(boot, daemon, tmp_path):
    switch = get_switch(f"faults-{os.getpid()}")
    dev = NetDevice(switch.port(), mac="52:54:00:81:00:02")
    sock = str(tmp_path / "net.sock")
    daemon.add_device(dev, sock)
    host_dev = NetDevice(switch.port(), mac="52:54:00:81:00:01")
    host_t = LoopbackTransport(host_dev)
    host = NetDriver.probe(host_t)
    responder, stop = Responder(host.mac, "10.81.0.1").start(host)
    daemon.start()
    try:
        guest = boot.start(NET_SCRIPT, timeout=400, qemu_args=[
            "-chardev", f"socket,id=c0,path={sock}", "-netdev", "vhost-user,id=n0,chardev=c0",
            "-device", "virtio-net-pci,netdev=n0,vectors=0,mac=52:54:00:81:00:02"])
        guest.expect("reached=1", timeout=240)
        rule = dev.faults.add("drop:rate=0.5,dir=tx,seed=16")
        values = guest.wait(300).check().values()
        answered = int(values["answered"])
        assert 80 * 0.25 <= answered <= 80 * 0.75, guest.output
        assert rule.fired >= 20 and dev.stats["tx_dropped"] >= rule.fired
    finally:
        stop.set()
        responder.join(5)
        host.remove()
        host_t.close()
        host_dev.close()
