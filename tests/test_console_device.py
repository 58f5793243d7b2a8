"""The console device core: config space, queue layout, emergency write, and a hostile driver."""

from __future__ import annotations

import pytest

from pyvirtio.devices.console import (ConsoleControlError, ConsoleDevice, PortSpec, parse_control,
                                      port_of_queue)
from pyvirtio.devices.console_endpoints import MemoryEndpoint
from pyvirtio.drivers.console import ConsoleDriver
from pyvirtio.errors import Scope, UsageError
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec import console as spec
from pyvirtio.spec.status import DeviceStatus
from pyvirtio.conformance.device_model import check_device

pytestmark = pytest.mark.timeout(60)
E = spec.ConsoleEvent


def make(nports=1, driver_kw=None, **kw):
    con = MemoryEndpoint()
    pipes = [MemoryEndpoint() for _ in range(nports)]
    dev = ConsoleDevice(con, [PortSpec(ep, f"p{i + 1}") for i, ep in enumerate(pipes)],
                        max_nr_ports=kw.pop("max_nr_ports", 4), **kw)
    t = LoopbackTransport(dev, memory_size=8 << 20)
    drv = ConsoleDriver.probe(t, **(driver_kw or {}))
    return dev, t, drv, pipes


def ctrl(port_id, event, value=0):
    return spec.CONSOLE_CONTROL.pack(port_id, event, value)


def send_raw(drv, data: bytes):
    q = drv.queue(spec.CONTROL_TRANSMITQ)
    q.wait(q.submit([data], []), timeout=5)


def assert_port_works(dev, t, drv, pipe, name="p1"):
    port = drv.ports.get(1)
    handle = port.handle if port is not None and port.guest_open else drv.open_port(name)
    handle.write(b"still here")
    assert pipe.take() == b"still here"
    pipe.feed(b"and back")
    dev.poll()
    assert handle.read(100, timeout=2) == b"and back"
    assert not dev.status & DeviceStatus.DEVICE_NEEDS_RESET


# --- layout -------------------------------------------------------------------------------------


def test_config_space_and_features():
    dev = ConsoleDevice(MemoryEndpoint(), max_nr_ports=7, size=(100, 40))
    assert dev.read_config(0, 12) == spec.CONSOLE_CONFIG.pack(100, 40, 7, 0)
    feats = dev.device_features
    for bit in spec.ConsoleFeature:
        assert feats & (1 << bit)
    assert len(dev.queues) == 2 * 7 + 2


def test_queue_numbering_round_trips():
    for port in range(0, 40):
        assert port_of_queue(spec.receiveq_index(port)) == (port, False)
        assert port_of_queue(spec.transmitq_index(port)) == (port, True)
    assert (spec.receiveq_index(1), spec.transmitq_index(1)) == (4, 5)


def test_passes_the_device_conformance_checks():
    check_device(lambda: ConsoleDevice(MemoryEndpoint()))
    check_device(lambda: ConsoleDevice(MemoryEndpoint(), multiport=False))


def test_emergency_write_works_on_an_unconfigured_device():
    con = MemoryEndpoint()
    dev = ConsoleDevice(con)
    assert dev.status == 0
    dev.write_config(spec.ConsoleConfigOffset.EMERG_WR, b"A\0\0\0")
    dev.write_config(spec.ConsoleConfigOffset.EMERG_WR, (0x142).to_bytes(4, "little"))  # low byte
    dev.write_config(0, b"\1\2")  # cols is read-only: ignored
    assert con.take() == b"AB"
    assert dev.read_config(0, 12)[8:] == b"\0\0\0\0"


def test_emergency_write_is_ignored_when_not_offered_and_bounded_when_full():
    con = MemoryEndpoint(capacity=4)
    off = ConsoleDevice(con, emerg_write=False)
    off.write_config(8, b"X\0\0\0")
    assert con.take() == b""
    dev = ConsoleDevice(con)
    for _ in range(10000):
        dev.write_config(8, b"Y\0\0\0")
    assert dev.pending_bytes(0) <= 4096
    assert dev.ports[0].stats["emerg_dropped"] > 0


@pytest.mark.parametrize("name", ["", "a\0b", "x" * 1025])
def test_bad_port_names_are_refused(name):
    with pytest.raises(UsageError):
        ConsoleDevice(MemoryEndpoint(), [PortSpec(MemoryEndpoint(), name)])


def test_port_id_rules():
    dev = ConsoleDevice(MemoryEndpoint(), max_nr_ports=2)
    assert dev.add_port(MemoryEndpoint(), "one") == 1
    with pytest.raises(UsageError):
        dev.add_port(MemoryEndpoint(), "full")
    with pytest.raises(UsageError):
        dev.add_port(MemoryEndpoint(), port_id=1)
    with pytest.raises(UsageError):
        dev.remove_port(5)
    with pytest.raises(UsageError):
        ConsoleDevice(MemoryEndpoint(), max_nr_ports=0)
    with pytest.raises(UsageError):
        dev.resize(70000, 1)
    solo = ConsoleDevice(MemoryEndpoint(), multiport=False)
    with pytest.raises(UsageError):
        solo.add_port(MemoryEndpoint(), "p")


# --- control message parsing --------------------------------------------------------------------


def test_parse_control_whole_short_and_with_trailing_bytes():
    raw = ctrl(3, E.PORT_OPEN, 1)
    assert parse_control(raw) == (3, E.PORT_OPEN, 1)
    assert parse_control(raw + b"trailing") == (3, E.PORT_OPEN, 1)
    for cut in range(len(raw)):
        with pytest.raises(ConsoleControlError):
            parse_control(raw[:cut])
    assert ConsoleControlError.scope is Scope.REQUEST


# --- a hostile driver: the device logs, counts, and keeps serving --------------------------------


HOSTILE = {
    "truncated": ctrl(1, E.PORT_OPEN, 1)[:5],
    "unknown event": ctrl(1, 99, 1),
    "device-only event": ctrl(1, E.DEVICE_ADD, 0),
    "port id out of range": ctrl(1000, E.PORT_OPEN, 1),
    "port never added": ctrl(3, E.PORT_READY, 1),
    "bad PORT_OPEN value": ctrl(1, E.PORT_OPEN, 7),
    "second DEVICE_READY": ctrl(spec.CONSOLE_BAD_ID, E.DEVICE_READY, 1),
    "huge id": ctrl(0xFFFFFFFE, E.PORT_READY, 1),
}


@pytest.mark.parametrize("what", sorted(HOSTILE))
def test_bad_control_message_is_dropped_and_other_ports_keep_working(what, caplog):
    dev, t, drv, (pipe,) = make()
    port = drv.open_port("p1")
    send_raw(drv, HOSTILE[what])
    assert dev.stats["control_errors"] == 1
    assert dev.control.faults and "bad control message" in caplog.text
    assert port.host_connected
    assert_port_works(dev, t, drv, pipe)


def test_empty_control_buffer_is_a_typed_error_too():
    dev, t, drv, (pipe,) = make()
    send_raw(drv, b"")
    assert dev.stats["control_errors"] == 1
    assert_port_works(dev, t, drv, pipe)


def test_port_ready_failure_and_device_ready_failure_are_not_faults():
    dev, t, drv, (pipe,) = make()
    send_raw(drv, ctrl(1, E.PORT_READY, 0))
    assert not dev.ports[1].ready and dev.stats["control_errors"] == 0
    fresh = ConsoleDevice(MemoryEndpoint(), [PortSpec(MemoryEndpoint(), "p")])
    t2 = LoopbackTransport(fresh, memory_size=8 << 20)

    class Failing(ConsoleDriver):
        def _control(self, port_id, event, value):
            super()._control(port_id, event, 0 if event == E.DEVICE_READY else value)

    Failing.probe(t2)
    assert not fresh.device_ready and not fresh.ports[1].announced


def test_control_flood_without_receive_buffers_stays_bounded():
    dev, t, drv, (pipe,) = make(max_nr_ports=2)
    q = drv.queue(spec.CONTROL_TRANSMITQ)
    for _ in range(400):  # each PORT_READY makes the device answer; the driver reads none
        q.release(q.wait(q.submit([ctrl(1, E.PORT_READY, 1)], []), timeout=5))
    assert len(dev.control.outbox) <= 4 * dev.max_nr_ports + 64
    assert dev.stats["control_dropped"] > 0
    drv.poll_events()  # the driver catches up; everything still works
    assert_port_works(dev, t, drv, pipe)


def test_device_readable_buffer_in_a_receiveq_is_returned_empty():
    dev, t, drv, (pipe,) = make(driver_kw={"rx_buffers": 1})
    port = drv.open_port("p1")
    rxq = drv.queue(spec.receiveq_index(1))
    bad = rxq.submit([b"device-readable"], [], kick=False)  # 5.3.6.1: the driver MUST NOT
    pipe.feed(b"data")
    dev.poll()
    assert port.read(10, timeout=2) == b"data"
    assert bad.done and bad.written == 0


def test_data_for_a_port_nobody_opened_waits_in_the_endpoint():
    dev, t, drv, (pipe,) = make()
    pipe.feed(b"early bytes")
    dev.poll()
    assert pipe.pending_to_guest == len(b"early bytes")  # not delivered, not lost
    port = drv.open_port("p1")
    assert port.read(100, timeout=2) == b"early bytes"


def test_transmit_on_a_removed_port_is_consumed():
    dev, t, drv, (pipe,) = make()
    dev.remove_port(1)
    txq = drv.queue(spec.transmitq_index(1))
    req = txq.submit([b"to nowhere"], [])
    txq.wait(req, timeout=2)
    assert req.done


def test_a_corrupt_ring_needs_reset_and_the_driver_sees_it():
    dev, t, drv, (pipe,) = make()
    port = drv.open_port("p1")
    vq = drv.queue(spec.transmitq_index(1)).vq
    vq._avail16[1] = (vq.avail_idx_shadow + 1000) & 0xFFFF  # idx jumps past the ring size
    t.notify(spec.transmitq_index(1))
    assert dev.status & DeviceStatus.DEVICE_NEEDS_RESET
    assert drv.device_needs_reset
    dev.emergency_write(ord("!"))  # emergency write still works on a broken device
    assert dev.ports[0].endpoint.take() == b"!"
    del port
