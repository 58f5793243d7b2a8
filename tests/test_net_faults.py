"""Network device fault rules (pyvirtio.devices.net_faults) over loopback with our own driver:
drop, dup, reorder, corrupt and delay in both directions, link flaps, and the fast paths."""

import time

import pytest

from pyvirtio.devices.net import NetDevice
from pyvirtio.drivers.net import NetDriver
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.net.frame import frame_seq, mac_bytes, numbered_frame
from pyvirtio.net.mock import MockBackend

MAC = mac_bytes("52:54:00:00:00:01")
PEER = mac_bytes("52:54:00:00:00:99")


@pytest.fixture
def net():
    transports = []

    def make():
        backend = MockBackend()
        dev = NetDevice(backend, mac=MAC)
        t = LoopbackTransport(dev)
        transports.append(t)
        return dev, backend, NetDriver.probe(t)
    yield make
    for t in transports:
        t.close()


def frames(n, dst=PEER, src=MAC, size=100):
    return [numbered_frame(dst, src, i, size) for i in range(n)]


def sent_seqs(backend):
    return [frame_seq(f)[0] for f in backend.sent]


def receive(dev, backend, drv, items):
    backend.incoming.extend(items)
    dev.serve_backend()
    return drv.recv_all()


def test_tx_drop_at_a_rate_with_a_seed_takes_the_general_path(net):
    dev, backend, drv = net()
    rule = dev.faults.add("drop:rate=0.5,dir=tx,seed=3")
    drv.send_batch(frames(200))  # single-descriptor frames: the fast path unless a rule stands
    drv.flush()
    got = sent_seqs(backend)
    assert len(got) == 200 - rule.fired and 70 < rule.fired < 130
    assert got == sorted(got) and dev.stats["tx_dropped"] == rule.fired
    dev.faults.clear()
    backend.sent.clear()
    drv.send_batch(frames(10))
    drv.flush()
    assert sent_seqs(backend) == list(range(10))


def test_tx_dup_reorder_corrupt(net):
    dev, backend, drv = net()
    dev.faults.add("dup:dir=tx,after=1,count=1")
    for f in frames(3):
        drv.send(f)
    drv.flush()
    assert sent_seqs(backend) == [0, 1, 1, 2]
    dev.faults.clear()
    backend.sent.clear()
    dev.faults.add("reorder:dir=tx,count=1")
    for f in frames(3):
        drv.send(f)
    drv.flush()
    assert sent_seqs(backend) == [1, 0, 2]
    dev.faults.clear()
    backend.sent.clear()
    dev.faults.add("corrupt:dir=tx")
    original = frames(1)[0]
    drv.send(original)
    drv.flush()
    bad = backend.sent[0]
    diff = [i for i in range(len(original)) if bad[i] != original[i]]
    assert len(bad) == len(original) and len(diff) == 1 and diff[0] >= 14


def test_tx_delay_holds_frames_without_blocking(net):
    dev, backend, drv = net()
    dev.faults.add("delay:ms=150,dir=tx")
    start = time.monotonic()
    drv.send(frames(1)[0])
    drv.flush()
    assert backend.sent == [] and time.monotonic() - start < 0.1
    deadline = time.monotonic() + 5
    while not backend.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(backend.sent) == 1 and time.monotonic() - start >= 0.15


def test_rx_rules(net):
    dev, backend, drv = net()
    dev.faults.add("drop:dir=rx,after=2,count=3")
    got = receive(dev, backend, drv, frames(8, dst=MAC, src=PEER))
    assert [frame_seq(f)[0] for f in got] == [0, 1, 5, 6, 7]
    assert dev.stats["rx_dropped"] == 3
    dev.faults.clear()
    dev.faults.add("dup:dir=rx,count=1")
    dev.faults.add("reorder:dir=rx,after=1,count=1")
    got = receive(dev, backend, drv, frames(4, dst=MAC, src=PEER))
    assert [frame_seq(f)[0] for f in got] == [0, 0, 2, 1, 3]


def test_rx_delay_and_frames_from_the_host(net):
    dev, backend, drv = net()
    dev.faults.add("delay:ms=100,dir=rx")
    start = time.monotonic()
    assert dev.host_frames(frames(3, dst=MAC, src=PEER)) == 3
    assert drv.recv_all(timeout=0.03) == []
    got = []
    while len(got) < 3 and time.monotonic() - start < 5:
        got += drv.recv_all(timeout=0.05)
    assert [frame_seq(f)[0] for f in got] == [0, 1, 2] and time.monotonic() - start >= 0.1


def test_a_tx_rule_leaves_rx_alone(net):
    dev, backend, drv = net()
    dev.faults.add("drop:dir=tx")
    assert len(receive(dev, backend, drv, frames(5, dst=MAC, src=PEER))) == 5


def test_flap_takes_the_link_down_and_up(net):
    dev, backend, drv = net()
    changes = []
    dev.link_listeners.append(changes.append)
    rule = dev.faults.add("flap:period_ms=60,count=4")
    deadline = time.monotonic() + 5
    while len(changes) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert changes == [False, True, False, True] and rule.fired == 4
    assert dev.link_up and drv.link_up


def test_clearing_a_flap_brings_the_link_back(net):
    dev, backend, drv = net()
    dev.faults.add("flap:period_ms=50")
    deadline = time.monotonic() + 5
    while dev.link_up and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not dev.link_up and not drv.wait_link(True, timeout=0.01)
    dev.faults.clear()
    assert drv.wait_link(True, timeout=5) and dev.link_up
