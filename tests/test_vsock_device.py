"""The vsock device and driver together: over loopback, the PCI and MMIO models and vhost-user
(an in-process server and the ``pyvirtio serve vsock`` program), with host programs on the
hybrid UNIX sockets; a hostile guest (no credit, bad packets, floods) and a host client that
never reads leave the device's memory bounded."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from pyvirtio import vsock
from pyvirtio.devices.vsock import VsockDevice, serve_on_vhost_user
from pyvirtio.drivers.vsock import VsockDriver, VsockError
from pyvirtio.errors import UsageError
from pyvirtio.limits import VSOCK_BUF_ALLOC
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec.ids import DeviceType
from pyvirtio.spec.vsock import TXQ, VsockOp
from pyvirtio.vsock.hybrid import HybridHost, parse_connect_line
from pyvirtio.vsock.packet import build_header

MiB = 1 << 20
CLI = [sys.executable, "-m", "pyvirtio.cli"]


@pytest.fixture
def uds(tmp_path):
    return str(tmp_path / "vm.vsock")


@pytest.fixture
def loop(uds):
    device = VsockDevice(7, HybridHost(uds))
    transport = LoopbackTransport(device, memory_size=32 * MiB)
    driver = VsockDriver.probe(transport)
    yield device, driver
    driver.remove()
    transport.close()
    device.close()


@contextlib.contextmanager
def pumping(driver):
    """The driver runs in a thread meanwhile (a guest kernel would)."""
    stop = threading.Event()

    def pump():
        while not stop.is_set():
            driver.poll()
            time.sleep(0.005)
    t = threading.Thread(target=pump)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(5)


def exchange(driver, uds, size=2 * MiB):
    """A guest-initiated and a host-initiated stream, ``size`` bytes each way, sha256 checked."""
    data = os.urandom(size)
    server = vsock.listen(uds, 6000)
    got = {}

    def host_echo():
        conn, _ = server.accept()
        h = hashlib.sha256()
        while chunk := conn.recv(MiB):
            h.update(chunk)
        got["g2h"] = h.hexdigest()
        conn.sendall(data)
        conn.close()

    t = threading.Thread(target=host_echo)
    t.start()
    stream = driver.connect(6000)
    stream.sendall(data)
    stream.shutdown()
    back = stream.recv_exactly(size)
    assert stream.recv() == b""
    stream.close()
    t.join(30)
    server.close()
    assert got["g2h"] == hashlib.sha256(data).hexdigest() and back == data
    listener = driver.listen(5000)
    host = {}

    def host_side():  # the guest answers only while the driver runs: the host waits meanwhile
        sock, host["port"] = vsock.connect_port(uds, 5000)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        host["answer"] = sock.recv(16)
        sock.close()
    t = threading.Thread(target=host_side)
    t.start()
    peer = listener.accept(timeout=10)
    assert peer.recv_exactly(size) == data and peer.recv() == b""
    peer.sendall(b"bye")
    peer.close()
    t.join(30)
    assert host["answer"] == b"bye" and peer.peer == (2, host["port"])
    listener.close()


def test_loopback_streams_both_ways(loop, uds):
    device, driver = loop
    assert driver.guest_cid == 7
    exchange(driver, uds)
    deadline = time.monotonic() + 5
    while device.core.conns or driver.core.conns:  # both sides forget closed connections
        driver.poll()
        assert time.monotonic() < deadline, (device.core.conns, driver.core.conns)
        time.sleep(0.01)


def test_refused_both_ways(loop, uds):
    device, driver = loop
    with pytest.raises(VsockError, match="refused"):
        driver.connect(6001)  # nothing listens on UDS_6001
    with pumping(driver), pytest.raises(vsock.VsockRefused):
        vsock.connect(uds, 4444)  # the guest does not listen
    assert device.stats["guest_connects_refused"] == 1 and device.stats["host_connects"] == 1


@pytest.mark.parametrize("binding", ["socket", "queue"])
def test_virtio_msg(binding, uds, tmp_path):
    from pyvirtio.virtio_msg.local import device_transport
    device = VsockDevice(9, HybridHost(uds))
    with device_transport(device, binding, str(tmp_path / "vsock-vmsg.sock"), memory_size=32 * MiB) as transport:
        driver = VsockDriver.probe(transport)
        assert driver.guest_cid == 9
        exchange(driver, uds, size=256 * 1024)
        driver.remove()
    device.close()


@pytest.mark.parametrize("kind", ["pci", "mmio"])
def test_pci_and_mmio_models(kind, uds):
    from pyvirtio.mmio import discover_mmio, parse_kernel_cmdline
    from pyvirtio.pci import scan_pci
    from pyvirtio.platform.machine import InProcessMachine
    device = VsockDevice(9, HybridHost(uds))
    with InProcessMachine(ram_size=32 * MiB) as machine:
        if kind == "pci":
            machine.add_pci(device)
            (transport,) = scan_pci(machine).transports
        else:
            machine.add_mmio(device)
            (transport,) = discover_mmio(machine, parse_kernel_cmdline(machine.kernel_cmdline())).transports
        driver = VsockDriver.probe(transport)
        assert driver.guest_cid == 9
        exchange(driver, uds, size=256 * 1024)
        driver.remove()
    device.close()


def test_in_process_vhost_user_and_transport_reset_on_reconnect(server, tmp_path, uds):
    from pyvirtio.vhost_user import VhostUserTransport
    sock = str(tmp_path / "vsock.sock")
    device = VsockDevice(5, HybridHost(uds))
    serve_on_vhost_user(device, server.add(device, socket_path=sock))
    server.start()
    transport = VhostUserTransport(sock, device_type=DeviceType.VSOCK, memory_size=32 * MiB, reconnect=True)
    driver = VsockDriver.probe(transport)
    try:
        assert driver.guest_cid == 5
        exchange(driver, uds, size=512 * 1024)
        assert driver.transport_resets == 0  # a fresh driver: nothing to reset
        # The back-end's connection drops (a restarted daemon) while a stream is open: the front-end
        # reconnects, the rings resume mid-stream, and the driver hears TRANSPORT_RESET.
        listener = driver.listen(5001)
        host_sock = _connect_in_thread(uds, 5001)
        stream = listener.accept(timeout=10)
        host_sock.fileno()  # the host has its OK
        server.endpoints[0].session.sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 20
        while driver.transport_resets == 0:
            assert time.monotonic() < deadline, "no TRANSPORT_RESET after the reconnect"
            driver.poll()
            transport.wait_for_interrupt(0.05)
        assert stream.error == "transport reset" and host_sock.recv(1) == b""
        host_sock.close()
        exchange(driver, uds, size=128 * 1024)  # and the device serves the new connection
    finally:
        driver.remove()
        transport.close()


class _Later:
    """A socket connected by another thread (the driver must run for the guest to accept)."""

    def __init__(self, uds, port):
        self.sock = None
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(uds, port))
        self.thread.start()

    def _run(self, uds, port):
        try:
            self.sock = vsock.connect(uds, port)
        except Exception as exc:
            self.error = exc

    def __getattr__(self, name):
        self.thread.join(30)
        if self.error is not None:
            raise self.error
        return getattr(self.sock, name)


def _connect_in_thread(uds, port):
    return _Later(uds, port)


# --- a hostile guest --------------------------------------------------------------------------------


def raw(driver, op, *, src_port=1234, dst_port=6000, length=0, payload=b"", buf_alloc=0, hdr_len=None):
    header = build_header(src_cid=driver.guest_cid, dst_cid=2, src_port=src_port, dst_port=dst_port,
                          op=op, length=len(payload) if hdr_len is None else hdr_len,
                          buf_alloc=buf_alloc)
    with driver._lock:
        driver._tx.append(driver._q[TXQ].submit([header[:length] if length else header, payload], []))
    driver.poll()


def settle(driver, seconds=0.3):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        driver.poll()
        time.sleep(0.02)


def test_a_guest_that_never_grants_credit_gets_nothing_and_costs_nothing(loop, uds):
    device, driver = loop
    server = vsock.listen(uds, 6000)
    with driver._lock:  # a guest that advertises no receive buffer at all
        conn = driver.core.connect(2, 6000, app=None)
        conn.buf_alloc = 0
    from pyvirtio.drivers.vsock import VsockStream
    stream = VsockStream(driver)
    stream.conn, conn.app = conn, stream
    driver.poll()  # the REQUEST goes out
    host, _ = server.accept()
    host.setblocking(False)
    sent = 0
    try:
        while True:
            sent += host.send(b"x" * 65536)
    except BlockingIOError:
        pass
    settle(driver)
    stats = device.stats
    assert stats["bytes_out"] == 0 and stats["credit_violations"] == 0
    assert stats["host_bytes_buffered"] == 0 and sent > 0  # the bytes wait in the host socket
    assert device.core.conns[(6000, 7, conn.local_port)].credit_requested  # asked once
    host.close()
    server.close()


def test_bad_packets_floods_and_unknown_ports(loop, uds):
    device, driver = loop
    raw(driver, VsockOp.RW, length=20)  # a chain shorter than the header
    raw(driver, VsockOp.RW, payload=b"abc", hdr_len=9)  # len is not the payload's length
    raw(driver, VsockOp.REQUEST, payload=b"zz")  # a payload on REQUEST
    for port in range(300):
        raw(driver, VsockOp.RST, src_port=port)  # never answered
        raw(driver, VsockOp.REQUEST, src_port=port, dst_port=7777)  # nobody at UDS_7777: RST
        raw(driver, VsockOp.RW, src_port=port, payload=b"?")  # no such connection: RST
    settle(driver)
    stats = device.stats
    assert device.counters["bad_chains"] == 1 and stats["bad_packets"] >= 2
    assert stats["connections"] == 0 and stats["guest_connects_refused"] == 300
    assert stats["rst_sent"] + stats["rst_dropped"] == 600  # every RST answered or dropped (bounded)
    exchange(driver, uds, size=64 * 1024)  # and the device still serves


def test_a_host_client_that_never_reads_stops_the_guest_not_the_device(loop, uds):
    device, driver = loop
    listener = driver.listen(5000)
    host = _connect_in_thread(uds, 5000)
    stream = listener.accept(timeout=10)
    with pytest.raises(TimeoutError):
        stream.sendall(os.urandom(16 * MiB), timeout=2)
    assert device.stats["host_bytes_buffered"] <= VSOCK_BUF_ALLOC
    assert device.counters["host_bytes_buffered_max"] <= VSOCK_BUF_ALLOC
    host.close()


def test_asyncio_api(loop, uds):
    device, driver = loop
    listener = driver.listen(5002)

    def guest():
        s = listener.accept(timeout=10)
        s.sendall(s.recv_exactly(5).upper())
        s.close()
    t = threading.Thread(target=guest)
    t.start()

    async def host():
        reader, writer = await vsock.open_connection(uds, 5002)
        writer.write(b"hello")
        await writer.drain()
        answer = await reader.readexactly(5)
        writer.close()
        return answer

    assert asyncio.run(host()) == b"HELLO"
    t.join(10)


def test_handshake_lines_and_cids():
    assert parse_connect_line(b"CONNECT 5000\n") == 5000
    for bad in (b"CONNECT\n", b"CONNECT -1\n", b"connect 5\n", b"CONNECT 99999999999\n", b"OK 5\n"):
        with pytest.raises(UsageError):
            parse_connect_line(bad)
    for cid in (0, 1, 2, 0xFFFFFFFF, 1 << 40):
        with pytest.raises(UsageError):
            VsockDevice(cid)


# --- the daemon ---------------------------------------------------------------------------------------


def test_serve_vsock_daemon_with_a_host_client_that_never_reads(tmp_path):
    from pyvirtio.vhost_user import VhostUserTransport
    sock, uds_path, ctl = str(tmp_path / "v.sock"), str(tmp_path / "vm.vsock"), str(tmp_path / "v.ctl")
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([*CLI, "serve", "vsock", f"--socket-path={sock}", "--guest-cid=11",
                             f"--uds-path={uds_path}", f"--control={ctl}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not all(os.path.exists(p) for p in (sock, uds_path, ctl)):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.02)
        transport = VhostUserTransport(sock, device_type=DeviceType.VSOCK, memory_size=64 * MiB)
        driver = VsockDriver.probe(transport)
        assert driver.guest_cid == 11
        exchange(driver, uds_path, size=MiB)
        rss_before = _rss_kib(proc.pid)
        listener = driver.listen(5000)
        host = _connect_in_thread(uds_path, 5000)  # connects, never reads
        stream = listener.accept(timeout=10)
        with pytest.raises(TimeoutError):
            stream.sendall(os.urandom(32 * MiB), timeout=3)
        stats = _ctl_stats(ctl)
        assert stats["device"]["host_bytes_buffered"] <= VSOCK_BUF_ALLOC
        assert _rss_kib(proc.pid) - rss_before < 8 * 1024  # KiB: the 32 MiB stayed with the guest
        host.close()
        driver.remove()
        transport.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert not os.path.exists(uds_path)


def _closed(sock) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:  # closed with our line unread
        return True


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _ctl_stats(ctl: str) -> dict:
    import json
    run = subprocess.run([*CLI, "ctl", "--json", ctl, "stats"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)["result"]


def test_host_clients_that_never_finish_their_line_are_bounded(loop, uds):
    from pyvirtio.limits import VSOCK_HANDSHAKE_LINE, VSOCK_MAX_HANDSHAKES
    device, driver = loop
    silent = []
    for _ in range(VSOCK_MAX_HANDSHAKES + 6):
        s = socket.socket(socket.AF_UNIX)
        s.connect(uds)
        silent.append(s)
    long_line = socket.socket(socket.AF_UNIX)
    long_line.connect(uds)
    long_line.sendall(b"C" * (VSOCK_HANDSHAKE_LINE + 10))
    deadline = time.monotonic() + 10
    while device.stats["bad_handshakes"] < 1 or device.stats["handshakes_dropped"] < 7:
        assert time.monotonic() < deadline, device.stats
        time.sleep(0.02)
    assert device.stats["handshakes"] <= VSOCK_MAX_HANDSHAKES
    assert _closed(long_line)
    assert _closed(silent[0])  # the oldest silent client was dropped to make room
    for s in silent + [long_line]:
        s.close()


def test_serve_vsock_refuses_bad_flags(tmp_path):
    sock = f"--socket-path={tmp_path / 'v.sock'}"
    uds = f"--uds-path={tmp_path / 'vm.vsock'}"
    for argv, code, words in (
            ([sock, uds], 2, "--guest-cid=N is required"),
            ([sock, "--guest-cid=3"], 2, "--uds-path=UDS is required"),
            ([sock, uds, "--guest-cid=2"], 2, "reserved"),
            ([sock, "--guest-cid=3", f"--uds-path={tmp_path / 'no' / 'dir'}"], 1, "No such file")):
        run = subprocess.run([*CLI, "serve", "vsock", *argv], capture_output=True, text=True, timeout=60)
        assert run.returncode == code and words in run.stderr, (argv, run.returncode, run.stderr)
        assert "Traceback" not in run.stderr


def test_our_driver_on_qemus_vhost_user_vsock_pci_over_qtest(server, tmp_path, uds):
    """QEMU's own device (its virtio-pci function and event queue; the rings served by our
    back-end) driven by our driver over qtest.  QEMU 7.2's vhost-vsock-pci needs the host
    kernel's /dev/vhost-vsock, which these machines lack."""
    from pyvirtio.qtest import QemuMachine, qemu_available
    from pyvirtio.testing.env import require
    require(qemu_available(), "qemu-system-x86_64")
    sock = str(tmp_path / "vs.sock")
    device = VsockDevice(21, HybridHost(uds))
    serve_on_vhost_user(device, server.add(device, socket_path=sock))
    server.start()
    with QemuMachine(["-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa",
                      "node,memdev=mem", "-chardev", f"socket,id=vs,path={sock}",
                      "-device", "vhost-user-vsock-pci,chardev=vs"], memory="256M") as qemu:
        (transport,) = qemu.discover().transports
        driver = VsockDriver.probe(transport)
        assert driver.guest_cid == 21  # QEMU read it from our config space (GET_CONFIG)
        exchange(driver, uds, size=256 * 1024)
        driver.remove()


def test_seqpacket_messages_both_ways_over_loopback(loop, uds):
    from pyvirtio.vsock.hybrid import MAX_SEQ_MESSAGE
    device, driver = loop
    assert driver.seqpacket
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(uds + "_6000")
    server.listen()
    messages = [os.urandom(n) for n in (1, 100, 16384, 16385, 70000, 200000)]
    got = []

    def host():
        conn, _ = server.accept()
        while m := conn.recv(1 << 20):
            got.append(m)
        for m in messages:  # 200000 bytes never fit this guest's buffer: dropped, counted
            conn.send(m)
        conn.send(b"last")
        conn.close()
    t = threading.Thread(target=host)
    t.start()
    driver.core.buf_alloc = 100000  # this guest's receive buffer (<= MAX_SEQ_MESSAGE)
    assert driver.core.buf_alloc <= MAX_SEQ_MESSAGE
    s = driver.connect(6000, seqpacket=True)
    for m in messages:
        s.send_message(m)
    s.shutdown()
    back = []
    while (m := s.recv_message()) is not None:
        back.append(m)
    t.join(10)
    server.close()
    assert got == messages and back == messages[:-1] + [b"last"]
    assert device.counters["seqpacket_dropped"] == 1
    # A SEQPACKET connection to a stream listener (or none) is refused; host-initiated ones
    # come through UDS.seqpacket.
    stream_listener = vsock.listen(uds, 6001)
    with pytest.raises(VsockError):
        driver.connect(6001, seqpacket=True)
    stream_listener.close()
    listener = driver.listen(5000)
    answer = {}

    def host_connects():
        c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        c.connect(uds + ".seqpacket")
        c.send(b"CONNECT 5000\n")
        answer["ok"] = c.recv(64)
        c.send(b"one")
        c.send(b"two")
        answer["echo"] = c.recv(64)
        c.close()
    t = threading.Thread(target=host_connects)
    t.start()
    peer = listener.accept(timeout=10)
    assert [peer.recv_message(), peer.recv_message()] == [b"one", b"two"]
    peer.send_message(b"onetwo")
    t.join(10)
    assert answer["ok"].startswith(b"OK ") and answer["echo"] == b"onetwo"
