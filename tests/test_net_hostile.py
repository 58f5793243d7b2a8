"""A hostile driver against the network device: malformed transmit chains, bad control commands,
bad receive buffers.  Each fails alone (typed error, ERR ack, or a dropped frame) and the device
goes on serving."""

import logging
import os
import socket
import time

import pytest

from pyvirtio.devices.net import NetDevice, NetFrameError
from pyvirtio.drivers.net import NetDriver
from pyvirtio.errors import DriverFault, Scope
from pyvirtio.limits import PeerLog
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.devices.net_ctrl import CtrlRejected, parse_mac_table
from pyvirtio.net.frame import frame_seq, mac_bytes, numbered_frame
from pyvirtio.net.backend import NetBackend
from pyvirtio.net.mock import MockBackend
from pyvirtio.net.tap import TapBackend
from pyvirtio.spec import net as spec
from pyvirtio.spec.status import DeviceStatus as S

MAC = mac_bytes("52:54:00:00:00:01")
PEER = mac_bytes("52:54:00:00:00:99")
ERR, OK = spec.NetCtrlAck.ERR, spec.NetCtrlAck.OK
C = spec.NetCtrlClass


@pytest.fixture
def pair():
    backend = MockBackend()
    dev = NetDevice(backend, mac=MAC)
    t = LoopbackTransport(dev)
    drv = NetDriver.probe(t)
    yield dev, drv, backend
    t.close()


def still_serves(dev, drv, backend, seq=1000):
    frame = numbered_frame(PEER, MAC, seq)
    drv.send(frame)
    assert backend.sent[-1] == frame
    dev.host_frames([numbered_frame(MAC, PEER, seq + 1)])
    assert frame_seq(drv.recv(1.0)) == (seq + 1, 0)
    assert not dev.status & S.DEVICE_NEEDS_RESET


@pytest.mark.parametrize("out,inn", [([b"short"], []), ([], [64]), ([bytes(12)], []), ([bytes(20)], [])])
def test_transmit_chain_without_a_frame_is_dropped(pair, out, inn):
    dev, drv, backend = pair
    txq = drv.queues[1]
    txq.wait(txq.submit(out, inn))
    assert dev.stats["tx_errors"] == 1 and backend.sent == []
    assert isinstance(dev.last_error, NetFrameError) and isinstance(dev.last_error, DriverFault)
    assert dev.last_error.scope is Scope.REQUEST
    still_serves(dev, drv, backend)


def test_header_split_over_descriptors_is_fine(pair):
    dev, drv, backend = pair
    frame = numbered_frame(PEER, MAC, 5, 100)
    txq = drv.queues[1]
    txq.wait(txq.submit([bytes(5), bytes(7), frame[:50], frame[50:]], []))
    assert backend.sent == [frame]


@pytest.mark.parametrize("cls,cmd,data", [
    (99, 0, []),                                     # unknown class
    (C.RX, 77, [b"\x01"]),                           # unknown command
    (C.RX, spec.NetCtrlRx.PROMISC, []),              # data missing
    (C.RX, spec.NetCtrlRx.PROMISC, [b"\x01\x01"]),   # too long
    (C.RX, spec.NetCtrlRx.PROMISC, [b"\x02"]),       # neither 0 nor 1
    (C.MAC, spec.NetCtrlMac.ADDR_SET, [b"\x02" * 5]),
    (C.MAC, spec.NetCtrlMac.TABLE_SET, [b"\xff\xff\xff\xff"]),   # 4 billion entries claimed
    (C.MAC, spec.NetCtrlMac.TABLE_SET, [b"\x00" * 4]),           # the multicast table is missing
    (C.MAC, spec.NetCtrlMac.TABLE_SET, [b"\x00" * 8, b"x"]),     # trailing bytes
    (C.ANNOUNCE, spec.NetCtrlAnnounce.ACK, [b"x"]),
    (C.MQ, spec.NetCtrlMq.VQ_PAIRS_SET, [b"\x01\x00"]),          # MQ not negotiated (one pair)
    (C.GUEST_OFFLOADS, spec.NetCtrlGuestOffloads.SET, [bytes(8)]),  # not negotiated
    (C.VLAN, spec.NetCtrlVlan.ADD, [b"\x01\x00"]),               # VLAN filtering not offered
])
def test_bad_control_commands_get_err(pair, cls, cmd, data):
    dev, drv, backend = pair
    assert drv.ctrl_raw(cls, cmd, data) == ERR
    assert dev.stats["ctrl_err"] == 1 and isinstance(dev.last_error, CtrlRejected)
    assert not dev.filter.promisc
    assert drv.ctrl_raw(C.RX, spec.NetCtrlRx.PROMISC, [b"\x01"]) == OK and dev.filter.promisc
    still_serves(dev, drv, backend)


def test_control_command_without_class_or_ack(pair):
    dev, drv, backend = pair
    ctrlq = drv.ctrlq
    assert ctrlq.call([b"\x00"], [1]) == bytes((ERR,))  # one byte: no command
    pending = ctrlq.wait(ctrlq.submit([b"\x00\x00\x01"], []))  # nowhere to put the ack
    assert pending.written == 0
    ctrlq.release(pending)
    assert dev.stats["ctrl_err"] == 2
    assert drv.ctrl_raw(C.RX, spec.NetCtrlRx.ALLMULTI, [b"\x01"]) == OK
    still_serves(dev, drv, backend)


def test_oversized_mac_table_falls_back_to_all_addresses(pair):
    dev, drv, _ = pair
    many = [bytes((2, 0, 0, 0, i >> 8, i & 0xFF)) for i in range(200)]
    drv.set_mac_table(unicast=many)
    assert dev.filter.unicast_overflow
    dev.host_frames([numbered_frame(mac_bytes("52:54:00:00:12:34"), PEER, 1)])
    assert drv.recv(1.0) is not None


def test_mac_table_parser_whole_and_cut():
    table = b"\x01\x00\x00\x00" + b"\x02" * 6 + b"\x02\x00\x00\x00" + b"\x01" * 12
    assert parse_mac_table(table) == ([b"\x02" * 6], [b"\x01" * 6, b"\x01" * 6])
    for cut in range(len(table)):
        with pytest.raises(CtrlRejected):
            parse_mac_table(table[:cut])
    with pytest.raises(CtrlRejected):
        parse_mac_table(table + b"\x00")


def test_bad_receive_buffers_are_returned_empty(pair):
    dev, drv, backend = pair
    rxq = drv.queues[0]
    rxq.submit([b"device-readable"], [64], kick=True)  # 5.1.6.3.1: receive buffers are writable
    rxq.submit([], [4], kick=True)                     # shorter than the header
    dev.host_frames([numbered_frame(MAC, PEER, 1) for _ in range(200)])
    got = drv.recv_all()
    assert got and dev.rx.placers[0].bad_buffers == 2
    assert drv.stats["rx_errors"] == 2  # the driver saw two empty buffers
    still_serves(dev, drv, backend)


def test_a_broken_ring_needs_reset_and_reset_recovers(pair):
    dev, drv, backend = pair
    txq = drv.queues[1]
    mem = drv.transport.memory
    mem.store16(txq.vq.layout.avail_ring + 2, (txq.vq.avail_idx_shadow + 1000) & 0xFFFF)
    drv.transport.notify(1)
    assert dev.status & S.DEVICE_NEEDS_RESET and drv.device_needs_reset
    drv.remove()
    drv2 = NetDriver.probe(drv.transport)
    still_serves(dev, drv2, backend)


# --- issue 12, class 5: receive buffers a readv cannot take -------------------------------------


class _SocketTap(TapBackend):
    """A TAP back-end whose fd is one end of a datagram socketpair: the same ``os.readv`` into
    guest memory, with the test as the kernel (frames carry the 12-byte vnet header)."""

    def __init__(self, sock):
        NetBackend.__init__(self)
        sock.setblocking(False)
        self.sock, self.fd, self.name = sock, sock.fileno(), "socketpair"
        self.stats.update(errors=0)
        self.log = PeerLog(logging.getLogger("pyvirtio.test.tap"))

    def close(self) -> None:
        NetBackend.close(self)
        self.fd = -1
        self.sock.close()


class _BigRingDriver(NetDriver):
    queue_size = 2048


def _wait_used(rxq, pendings, timeout=5.0):
    return [rxq.wait(p, timeout=timeout) for p in pendings]


def test_receive_buffers_of_more_iovecs_than_readv_takes_do_not_spin_the_tap():
    """Merged receive buffers of 700 two-byte segments each: together more iovecs than readv
    takes (EINVAL).  The frame still arrives (copied), the read is not retried forever, and the
    log is not flooded."""
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tap = _SocketTap(ours)
    dev = NetDevice(tap, mac=MAC, queue_size=2048)
    t = LoopbackTransport(dev)
    drv = _BigRingDriver.probe(t, rx_buffers=1, rx_buffer_size=13)  # one 13-byte buffer first
    try:
        assert drv.mrg
        rxq = drv.queues[0]
        pendings = [rxq.submit([], [2] * 700, kick=True) for _ in range(2)]
        frame = numbered_frame(MAC, PEER, 1, 1500)
        kernel.send(bytes(12) + frame)
        used = _wait_used(rxq, pendings)
        assert [p.written for p in used] == [1400, 12 + len(frame) - 13 - 1400]
        data = b"".join(t.memory.read(a, n) for p in used for a, n in p.in_bufs)
        assert data[:12 + len(frame) - 13] == (bytes(12) + frame)[13:]
        time.sleep(0.3)
        assert tap.stats["errors"] == 0 and dev.stats["rx_packets"] == 1
    finally:
        t.close()
        dev.close()
        kernel.close()


def test_a_receive_buffer_the_tap_refuses_is_retired_and_the_loop_goes_on(monkeypatch):
    """Whatever buffer a readv refuses (EINVAL, EFAULT) is returned empty (counted), once, and the
    next buffer takes the frame."""
    import errno
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tap = _SocketTap(ours)
    real_readv, refused = os.readv, []

    def readv(fd, views):
        if not refused:
            refused.append(len(views))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_readv(fd, views)

    monkeypatch.setattr(os, "readv", readv)
    dev = NetDevice(tap, mac=MAC)
    t = LoopbackTransport(dev)
    drv = NetDriver.probe(t, rx_buffers=4)
    try:
        kernel.send(bytes(12) + numbered_frame(MAC, PEER, 7))
        assert frame_seq(drv.recv(5.0)) == (7, 0)
        assert refused and drv.stats["rx_errors"] == 1 and dev.rx.placers[0].bad_buffers == 1
        time.sleep(0.2)
        assert tap.stats["errors"] == 1
        kernel.send(bytes(12) + numbered_frame(MAC, PEER, 8))
        assert frame_seq(drv.recv(5.0)) == (8, 0)
    finally:
        t.close()
        dev.close()
        kernel.close()
