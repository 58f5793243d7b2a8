"""Console device and driver over loopback: ports, names, hot-plug, big transfers, slow readers."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest

from pyvirtio.devices.console import ConsoleDevice, PortSpec
from pyvirtio.devices.console_endpoints import MemoryEndpoint, SocketEndpoint
from pyvirtio.drivers.console import ConsoleDriver, PortClosed, PortEvent
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec import console as spec

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20


def make(ports=(), console=None, memory=32 * MiB, driver_kw=None, **dev_kw):
    """A console with ``ports`` [(name, endpoint)], its loopback transport and a probed driver."""
    console = console if console is not None else MemoryEndpoint()
    dev = ConsoleDevice(console, [PortSpec(ep, name) for name, ep in ports], **dev_kw)
    t = LoopbackTransport(dev, memory_size=memory)
    events: list[PortEvent] = []
    drv = ConsoleDriver.probe(t, listeners=[events.append], **(driver_kw or {}))
    return dev, t, drv, events


def digest(data) -> str:
    return hashlib.sha256(data).hexdigest()


# --- discovery, names, the console --------------------------------------------------------------


def test_ports_are_announced_named_and_opened_by_name():
    a, b = MemoryEndpoint(), MemoryEndpoint()
    dev, t, drv, events = make([("org.example.a", a), ("org.example.b", b)], max_nr_ports=4)
    names = {p.id: p.name for p in drv.list_ports()}
    assert names == {0: None, 1: "org.example.a", 2: "org.example.b"}
    kinds = [(e.kind, e.port_id) for e in events]
    assert ("add", 1) in kinds and ("name", 1) in kinds and ("console", 0) in kinds
    with drv.open_port("org.example.b") as port:
        assert port.id == 2 and port.host_connected
        assert dev.ports[2].guest_open
        port.write(b"to b")
        assert b.take() == b"to b"
    assert not dev.ports[2].guest_open  # close sent PORT_OPEN 0


def test_open_unknown_name_times_out_and_double_open_is_refused():
    dev, t, drv, _ = make([("p", MemoryEndpoint())])
    with pytest.raises(TimeoutError):
        drv.open_port("no.such.port", timeout=0.2)
    port = drv.open_port("p")
    with pytest.raises(Exception, match="already open"):
        drv.open_port("p")
    port.close()
    drv.open_port("p").close()  # open again after close


def test_console_port_both_ways_and_it_cannot_be_opened_as_a_pipe():
    con = MemoryEndpoint()
    dev, t, drv, _ = make(console=con)
    c = drv.console
    assert c.id == 0 and c.is_console
    c.write(b"login: ")
    assert con.take() == b"login: "
    con.feed(b"root\n")
    dev.poll()
    assert c.read(100, timeout=2) == b"root\n"
    with pytest.raises(Exception, match="console"):
        drv.open_port(port_id=0)


def test_without_multiport_port0_is_the_console():
    con = MemoryEndpoint()
    dev, t, drv, _ = make(console=con, multiport=False)
    assert not drv.multiport and len(dev.queues) == 2
    drv.console.write(b"early")
    assert con.take() == b"early"
    con.feed(b"in")
    dev.poll()
    assert drv.console.read(10, timeout=2) == b"in"


def test_driver_that_refuses_multiport_gets_port0_only():
    class NoMultiport(ConsoleDriver):
        features = ConsoleDriver.features & ~(1 << spec.ConsoleFeature.MULTIPORT)

    con, pipe = MemoryEndpoint(), MemoryEndpoint()
    dev = ConsoleDevice(con, [PortSpec(pipe, "pipe")])
    drv = NoMultiport.probe(LoopbackTransport(dev))
    assert not dev.multiport and not dev.ports[1].announced
    drv.console.write(b"x")
    assert con.take() == b"x"


# --- resize and emergency write -----------------------------------------------------------------


def test_resize_raises_a_config_interrupt_and_the_driver_sees_the_size():
    dev, t, drv, events = make(size=(80, 25))
    assert drv.console_size == (80, 25)
    before = drv.config_changes
    dev.resize(132, 43)
    assert drv.config_changes == before + 1
    assert dev.config_generation > 0
    assert drv.console_size == (132, 43)
    assert spec.CONSOLE_CONFIG.unpack(t.read_config(0, 12))[:2] == (132, 43)
    assert [e.value for e in events if e.kind == "resize"] == [(132, 43)]  # one event, not two


def test_resize_without_multiport_is_config_only():
    dev, t, drv, events = make(multiport=False)
    dev.resize(100, 30)
    assert drv.console_size == (100, 30)
    assert drv.config_changes == 1


def test_resize_of_another_console_port_sends_a_resize_message():
    dev, t, drv, events = make([("c2", MemoryEndpoint())])
    dev.ports[1].console = True  # a second console port (5.3.6.2: there MAY be more than one)
    dev.remove_port(1, close=False)
    pid = dev.add_port(MemoryEndpoint(), "c2", console=True)
    drv.poll_events()
    dev.resize(40, 10, port_id=pid)
    drv.poll_events()
    assert drv.ports[pid].size == (40, 10)
    assert drv.console_size == (80, 25)  # port 0 is unchanged


def test_emergency_write_reaches_the_console_endpoint():
    con = MemoryEndpoint()
    dev, t, drv, _ = make(console=con)
    drv.emergency_write(b"panic!\n")
    assert con.take() == b"panic!\n"


# --- data: synchronous drive, large transfers ----------------------------------------------------


def test_large_transfer_guest_to_host_synchronously():
    ep = MemoryEndpoint(capacity=64 * 1024)
    dev, t, drv, _ = make([("big", ep)])
    data = os.urandom(4 * MiB)
    view, sent, got = memoryview(data), 0, bytearray()
    with drv.open_port("big") as port:
        while len(got) < len(data):
            if sent < len(data):
                sent += port.write_some(view[sent:])
            got += ep.take()
            assert dev.pending_bytes(1) <= drv.tx_chunk  # at most one chain held
            dev.poll()
        port.drain(timeout=5)
    assert digest(got) == digest(data)
    assert ep.high_water <= ep.capacity


def test_large_transfer_host_to_guest_synchronously():
    ep = MemoryEndpoint(capacity=32 * 1024)
    dev, t, drv, _ = make([("big", ep)])
    data = os.urandom(4 * MiB)
    fed, got = 0, bytearray()
    with drv.open_port("big") as port:
        while len(got) < len(data):
            fed += ep.feed(data[fed:fed + 64 * 1024])
            dev.poll()
            chunk = port.read_nowait(1 << 20)
            got += chunk or b""
    assert digest(got) == digest(data)


def test_host_hangup_is_end_of_stream_after_the_data():
    ep = MemoryEndpoint()
    dev, t, drv, events = make([("p", ep)])
    port = drv.open_port("p")
    ep.feed(b"last words")
    ep.hangup()
    dev.poll()
    assert port.read(100, timeout=2) == b"last words"
    assert port.read(100, timeout=2) == b""
    assert not port.host_connected
    assert ("open", 1, False) in [(e.kind, e.port_id, e.value) for e in events]


# --- threads, sockets, many ports ---------------------------------------------------------------


class SocketRig:
    """A console whose ports are socketpairs, served by the loopback transport's engine."""

    def __init__(self, nports: int, spare: int = 0, **kw):
        self.host_socks, eps = [], []
        for _ in range(nports):
            ours, theirs = socket.socketpair()
            self.host_socks.append(theirs)
            eps.append(SocketEndpoint(ours))
        self.dev, self.t, self.drv, self.events = make(
            [(f"port{i}", ep) for i, ep in enumerate(eps)], max_nr_ports=nports + 1 + spare, **kw)

    def close(self):
        self.t.close()
        for s in self.host_socks:
            s.close()


def _host_send(sock, data):
    sock.sendall(data)


def _host_recv(sock, n, out):
    while len(out) < n:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        out += chunk


def _guest_read(port, n, out):
    while len(out) < n:
        chunk = port.read(1 << 16, timeout=30)
        if not chunk:
            break
        out += chunk


def _run_all(threads):
    for th in threads:
        th.daemon = True
        th.start()
    for th in threads:
        th.join(90)
        assert not th.is_alive(), f"{th.name} hung"


def test_eight_ports_both_ways_at_once_over_sockets():
    rig = SocketRig(8)
    try:
        size = 384 * 1024
        ports = [rig.drv.open_port(f"port{i}") for i in range(8)]
        up = [os.urandom(size) for _ in range(8)]
        down = [os.urandom(size) for _ in range(8)]
        got_up = [bytearray() for _ in range(8)]
        got_down = [bytearray() for _ in range(8)]
        threads = []
        for i, (port, sock) in enumerate(zip(ports, rig.host_socks)):
            threads += [
                threading.Thread(target=port.write, args=(up[i],), name=f"gw{i}"),
                threading.Thread(target=_host_recv, args=(sock, size, got_up[i]), name=f"hr{i}"),
                threading.Thread(target=_host_send, args=(sock, down[i]), name=f"hw{i}"),
                threading.Thread(target=_guest_read, args=(port, size, got_down[i]), name=f"gr{i}"),
            ]
        _run_all(threads)
        for i in range(8):
            assert digest(got_up[i]) == digest(up[i]), f"port {i} guest->host"
            assert digest(got_down[i]) == digest(down[i]), f"port {i} host->guest"
    finally:
        rig.close()


def test_several_mib_each_way_over_one_socket_port():
    rig = SocketRig(1)
    try:
        size = 6 * MiB
        port, sock = rig.drv.open_port("port0"), rig.host_socks[0]
        up, down = os.urandom(size), os.urandom(size)
        got_up, got_down = bytearray(), bytearray()
        _run_all([threading.Thread(target=port.write, args=(up,)),
                  threading.Thread(target=_host_recv, args=(sock, size, got_up)),
                  threading.Thread(target=_host_send, args=(sock, down)),
                  threading.Thread(target=_guest_read, args=(port, size, got_down))])
        assert digest(got_up) == digest(up) and digest(got_down) == digest(down)
    finally:
        rig.close()


def test_slow_guest_reader_pushes_back_into_the_host_socket():
    rig = SocketRig(1, driver_kw={"rx_buffers": 8})
    try:
        size = 3 * MiB
        port, sock = rig.drv.open_port("port0"), rig.host_socks[0]
        data, got = os.urandom(size), bytearray()
        sender = threading.Thread(target=_host_send, args=(sock, data), daemon=True)
        sender.start()
        time.sleep(0.5)
        # The guest has read nothing: 8 buffers of 4 KiB are full, the rest waits in the socket.
        assert sender.is_alive(), "the host could send 3 MiB into a guest that reads nothing"
        assert sum(p.written for p, _ in rig.drv.ports[1].inbox) <= 8 * 4096
        assert rig.dev.ports[1].stats["rx_bytes"] <= 8 * 4096
        while len(got) < size:  # a slow reader: small reads
            got += port.read(1000, timeout=30)
        sender.join(30)
        assert digest(got) == digest(data)
    finally:
        rig.close()


def test_slow_host_reader_holds_the_guest_writer_and_memory_stays_bounded():
    ep = MemoryEndpoint(capacity=16 * 1024)
    dev, t, drv, _ = make([("slow", ep)], driver_kw={"tx_chunk": 2048})
    try:
        port = drv.open_port("slow")
        data, got = os.urandom(2 * MiB), bytearray()
        ring = drv.queue(spec.transmitq_index(1)).vq.size
        writer = threading.Thread(target=port.write, args=(data,), daemon=True)
        writer.start()
        worst = 0
        while len(got) < len(data):
            time.sleep(0.001)
            got += ep.take(8192)  # slower than the writer
            worst = max(worst, dev.pending_bytes(1))
            assert drv._tx_inflight.get(spec.transmitq_index(1), 0) <= ring
        writer.join(30)
        assert digest(got) == digest(data)
        assert worst <= 2048  # the device holds at most one chain, in guest memory
        assert ep.high_water <= 16 * 1024  # and the endpoint never went over its bound
    finally:
        t.close()


# --- hot-plug while data flows ------------------------------------------------------------------


def _stream_until(port, stop, sent):
    """Write random 64 KiB blocks until ``stop`` is set; ``sent`` gets every byte written."""
    while not stop.is_set():
        block = os.urandom(64 * 1024)
        port.write(block, timeout=30)
        sent += block
    port.drain(timeout=30)


def _recv_until(sock, done, sent, got):
    sock.settimeout(0.1)
    while not (done.is_set() and len(got) >= len(sent)):
        try:
            got += sock.recv(1 << 16)
        except socket.timeout:
            pass


def test_hotplug_and_unplug_while_another_port_streams():
    rig = SocketRig(1, spare=2)
    try:
        port, sock = rig.drv.open_port("port0"), rig.host_socks[0]
        stop, done, sent, got = threading.Event(), threading.Event(), bytearray(), bytearray()
        writer = threading.Thread(target=lambda: (_stream_until(port, stop, sent), done.set()),
                                  daemon=True)
        reader = threading.Thread(target=_recv_until, args=(sock, done, sent, got), daemon=True)
        writer.start()
        reader.start()
        for round_ in range(6):
            ep = MemoryEndpoint()
            pid = rig.dev.add_port(ep, f"hot{round_}")
            hot = rig.drv.open_port(f"hot{round_}", timeout=5)
            hot.write(b"ping %d" % round_)
            deadline = time.monotonic() + 5
            while ep.pending_from_guest < 6 and time.monotonic() < deadline:
                time.sleep(0.001)
            assert ep.take() == b"ping %d" % round_
            assert writer.is_alive()  # the other port is still streaming
            rig.dev.remove_port(pid)
            rig.drv.poll_events()
            with pytest.raises(PortClosed):
                hot.write(b"after unplug", timeout=1)
            assert hot.read(10, timeout=1) == b""
        stop.set()
        writer.join(60)
        reader.join(60)
        assert len(sent) >= 64 * 1024 and digest(got) == digest(sent)
        assert [e.kind for e in rig.events].count("remove") == 6
    finally:
        rig.close()


def test_unplug_with_a_held_chain_returns_it_and_port_id_is_reused():
    ep = MemoryEndpoint(capacity=1024)
    dev, t, drv, events = make([("p", ep)])
    port = drv.open_port("p")
    port.write_some(b"x" * 8192)  # more than the endpoint takes: a chain stays held
    assert dev.pending_bytes(1) > 0
    dev.remove_port(1)
    assert dev.pending_bytes(1) == 0
    port_tx = spec.transmitq_index(1)
    drv.poll_events()
    assert port_tx not in drv._tx_inflight  # every transmit buffer came back
    pid = dev.add_port(MemoryEndpoint(), "again")
    assert pid == 1
    again = drv.open_port("again")
    again.write(b"fresh")
    assert dev.ports[1].endpoint.take() == b"fresh"


def test_driver_can_be_removed_and_probed_again():
    pipe = MemoryEndpoint()
    dev, t, drv, _ = make([("p", pipe)])
    drv.open_port("p").write(b"one")
    drv.remove()
    drv2 = ConsoleDriver.probe(t)
    drv2.open_port("p").write(b"two")
    assert pipe.take() == b"onetwo"


def test_console_over_packed_rings():
    ep = MemoryEndpoint(capacity=16 * 1024)
    dev = ConsoleDevice(MemoryEndpoint(), [PortSpec(ep, "p")])
    dev.offer_packed_ring()
    t = LoopbackTransport(dev, memory_size=32 * MiB)
    drv = ConsoleDriver.probe(t)
    assert dev.queues[0].packed
    data = os.urandom(512 * 1024)
    view, sent, got, back = memoryview(data), 0, bytearray(), bytearray()
    with drv.open_port("p") as port:
        while len(got) < len(data):
            if sent < len(data):
                sent += port.write_some(view[sent:])
            got += ep.take()
            dev.poll()
        fed = 0
        while len(back) < len(data):
            fed += ep.feed(data[fed:fed + 8192])
            dev.poll()
            back += port.read_nowait(1 << 20) or b""
    assert digest(got) == digest(data) and digest(back) == digest(data)


def test_a_port_re_added_under_the_same_id_sees_none_of_the_old_data():
    old_ep, new_ep = MemoryEndpoint(), MemoryEndpoint()
    dev, t, drv, _ = make([("old", old_ep)])
    drv.open_port("old")
    old_ep.feed(b"stale bytes")
    dev.poll()  # delivered into a receive buffer the driver has not collected yet
    dev.remove_port(1)
    assert dev.add_port(new_ep, "new", port_id=1) == 1
    port = drv.open_port("new")
    new_ep.feed(b"fresh")
    dev.poll()
    assert port.read(100, timeout=2) == b"fresh"


# --- issue 12, class 5: a receive buffer over the segment limit --------------------------------


class _BigRingConsoleDriver(ConsoleDriver):
    queue_size = 2048  # room for a direct chain longer than MAX_CHAIN_SEGMENTS


@pytest.mark.parametrize("segments", [1024, 1025])
def test_a_receive_buffer_of_too_many_segments_does_not_kill_the_port(segments):
    """A chain of 1025 descriptors breaks the queue (VIRTIO 2.7.5.3.1; the ring core refuses it);
    once the driver resets the device the same port works both ways — its endpoint was not
    disconnected.  1024 segments are served (one recvmsg takes them)."""
    from pyvirtio.spec.status import DeviceStatus as S
    ours, host = socket.socketpair()
    dev, t, drv, _ = make([("p", SocketEndpoint(ours))], max_nr_ports=2, queue_max_size=2048)
    drv.remove()
    drv = _BigRingConsoleDriver.probe(t, rx_buffers=1)
    try:
        port = drv.open_port("p")
        rxq = drv.queue(spec.receiveq_index(port.id))
        rxq.submit([], [1] * segments, kick=True)  # behind the driver's one buffer
        host.sendall(b"x" * (4096 + segments))
        stats = dev.ports[port.id].stats
        deadline = time.monotonic() + 5
        while not (dev.status & S.DEVICE_NEEDS_RESET or stats["rx_bytes"] == 4096 + segments) \
                and time.monotonic() < deadline:
            try:
                port.read(8192, timeout=0.05)
            except TimeoutError:
                pass
        assert bool(dev.status & S.DEVICE_NEEDS_RESET) == (segments > 1024)
        assert dev.ports[port.id].endpoint.connected
        assert stats["rx_bytes"] == 4096 + (segments if segments <= 1024 else 0)
        drv.remove()
        drv = _BigRingConsoleDriver.probe(t)
        port = drv.open_port("p")
        host.sendall(b"after reset")
        got = b""
        while not got.endswith(b"after reset"):
            chunk = port.read(4096, timeout=5)
            assert chunk, got
            got += chunk
        port.write(b"and back")
        host.settimeout(5)
        assert host.recv(100) == b"and back"
    finally:
        drv.remove()
        t.close()
        dev.close()
        host.close()
