"""Devices on one in-process L2 switch, each served by its transport's engine worker; and the
switch on its own."""

import threading
import time

import pytest

from pyvirtio.devices.net import NetDevice
from pyvirtio.drivers.net import NetDriver
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.net.frame import BROADCAST, frame_seq, mac_bytes, numbered_frame
from pyvirtio.net import switch as sw


def mac(i):
    return mac_bytes(f"52:54:00:00:01:{i:02x}")


@pytest.fixture
def lan(request):
    """``lan(n, **driver_kw)`` → (devices, drivers) on a fresh switch."""
    transports = []
    name = f"test-{request.node.name}"

    def _lan(n, inbox=sw.DEFAULT_INBOX, **driver_kw):
        switch = sw.get_switch(name)
        devs = [NetDevice(switch.port(inbox), mac=mac(i)) for i in range(n)]
        for dev in devs:
            transports.append(LoopbackTransport(dev))
        drvs = [NetDriver.probe(t, **driver_kw) for t in transports[-n:]]
        return switch, devs, drvs

    yield _lan
    for t in transports:
        t.close()
        t.device.close()


def receive(drv, count, timeout=5.0, quiet=None):
    """Up to ``count`` frames within ``timeout`` s; with ``quiet``, also stop once no frame came
    for that long (a count that must NOT be exceeded, measured without a race against load)."""
    got = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while len(got) < count and time.monotonic() < deadline:
        if quiet is not None and time.monotonic() - last > quiet:
            break
        frame = drv.recv(0.2 if quiet is not None else 0.5)
        if frame is not None:
            got.append(frame)
            last = time.monotonic()
    return got


def test_two_guests_exchange_frames(lan):
    switch, devs, (a, b) = lan(2)
    a.send(numbered_frame(BROADCAST, a.mac, 1))
    assert frame_seq(receive(b, 1)[0]) == (1, 0)
    b.send(numbered_frame(a.mac, b.mac, 2, 1514))
    assert frame_seq(receive(a, 1)[0]) == (2, 0)
    a.send(numbered_frame(b.mac, a.mac, 3, 1514))
    assert frame_seq(receive(b, 1)[0]) == (3, 0)
    assert switch.stats["forwarded"] == 2 and switch.stats["flooded"] == 1


def test_learnt_unicast_reaches_only_its_port(lan):
    switch, devs, (a, b, c) = lan(3)
    b.send(numbered_frame(BROADCAST, b.mac, 0))  # the switch learns b
    for drv in (a, c):
        assert len(receive(drv, 1)) == 1
    a.send(numbered_frame(b.mac, a.mac, 1))
    assert frame_seq(receive(b, 1)[0]) == (1, 0)
    assert c.recv(0.3) is None
    a.send(numbered_frame(mac(9), a.mac, 2))  # unknown: flooded; b's and c's filters drop it
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (devs[1].stats["rx_filtered"] and devs[2].stats["rx_filtered"]):
        time.sleep(0.01)
    assert devs[1].stats["rx_filtered"] == devs[2].stats["rx_filtered"] == 1
    assert switch.stats["flooded"] == 2


def test_slow_receiver_loses_nothing_and_memory_stays_bounded(lan):
    switch, (da, db), (a, b) = lan(2, inbox=32, rx_buffers=8)
    b.send(numbered_frame(BROADCAST, b.mac, 0))  # learn b, so a's frames to b are unicast
    receive(a, 1)
    count, peak = 3000, [0]
    port_b = db.backend
    got = []

    def slow_reader():
        while len(got) < count:
            peak[0] = max(peak[0], len(port_b.inbox), len(db.rx.backlog))
            frame = b.recv(5.0)
            if frame is None:
                return
            got.append(frame_seq(frame)[0])
            if len(got) % 500 == 0:
                time.sleep(0.05)  # the guest stalls now and then

    reader = threading.Thread(target=slow_reader)
    reader.start()
    a.send_batch([numbered_frame(b.mac, a.mac, i, 300) for i in range(count)])
    reader.join(60)
    assert got == list(range(count))
    assert port_b.stats["dropped"] == 0 and db.stats["rx_dropped"] == 0
    assert peak[0] <= 32 and len(db.rx.backlog) == 0


def test_flood_to_a_full_port_drops_there_only(lan):
    switch, devs, (a, b, c) = lan(3, inbox=8, rx_buffers=4)
    for i in range(40):
        a.send(numbered_frame(BROADCAST, a.mac, i))
        assert frame_seq(receive(b, 1)[0]) == (i, 0)  # b keeps up; c never reads
    assert devs[2].backend.stats["dropped"] > 0
    assert devs[1].backend.stats["dropped"] == 0
    assert len(receive(c, 50, timeout=20.0, quiet=1.0)) == 4 + 8  # its buffers and its inbox


def test_switch_alone_learns_ages_and_forgets():
    now = [0.0]
    s = sw.Switch("alone", inbox_frames=2, ageing=10, clock=lambda: now[0])
    p1, p2, p3 = s.port(), s.port(), s.port()
    f12 = numbered_frame(mac(2), mac(1), 1)
    assert p1.send([memoryview(f12)])  # unknown destination: flooded
    assert len(p2.inbox) == len(p3.inbox) == 1
    assert p2.send([memoryview(numbered_frame(mac(1), mac(2), 2))])
    assert len(p1.inbox) == 1 and len(p3.inbox) == 1  # learnt: unicast
    buf = bytearray(100)
    assert p1.recv_into([memoryview(buf)]) == 64 and p1.recv_into([memoryview(buf)]) is None
    now[0] = 11.0  # mac(1) aged out: flooded again
    p2.send([memoryview(numbered_frame(mac(1), mac(2), 3))])
    assert len(p3.inbox) == 2
    assert p2.send([memoryview(numbered_frame(mac(3), mac(2), 4))])  # a flood never blocks:
    assert p3.stats["dropped"] == 1 and len(p1.inbox) == 2  # the full inbox drops its copy
    for port in (p1, p2, p3):
        port.close()
    assert sw.get_switch("alone") is not s


def test_unicast_to_a_full_inbox_blocks_and_wakes_the_sender():
    s = sw.Switch("bp", inbox_frames=2)
    p1, p2 = s.port(), s.port()
    p2.send([memoryview(numbered_frame(BROADCAST, mac(2), 0))])  # learn mac(2) behind p2
    p1.inbox.clear()
    frames = [numbered_frame(mac(2), mac(1), i) for i in range(3)]
    assert p1.send([memoryview(frames[0])]) and p1.send([memoryview(frames[1])])
    assert not p1.send([memoryview(frames[2])])  # full: refused, nothing lost
    buf = memoryview(bytearray(100))
    p2.recv_into([buf])
    import os
    assert os.eventfd_read(p1.tx_event) == 1  # the sender is told there is room
    assert p1.send([memoryview(frames[2])])
    assert [frame_seq(bytes(f))[0] for f in p2.inbox] == [1, 2]
    p1.close()
    p2.close()
