"""The console driver: events, a hostile device, the asyncio flavour."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time

import pytest

from pyvirtio.devices.console import ConsoleDevice, PortSpec
from pyvirtio.devices.console_endpoints import MemoryEndpoint
from pyvirtio.drivers.console import ConsoleDriver, PortClosed
from pyvirtio.drivers.console_aio import AsyncConsolePort
from pyvirtio.errors import UsageError
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec import console as spec

pytestmark = pytest.mark.timeout(60)
E = spec.ConsoleEvent


def make(nports=1, **drv_kw):
    con = MemoryEndpoint()
    pipes = [MemoryEndpoint(capacity=256 * 1024) for _ in range(nports)]
    dev = ConsoleDevice(con, [PortSpec(ep, f"p{i + 1}") for i, ep in enumerate(pipes)], max_nr_ports=4)
    t = LoopbackTransport(dev, memory_size=8 << 20)
    events = []
    drv = ConsoleDriver.probe(t, listeners=[events.append], **drv_kw)
    return dev, t, drv, pipes, events


def inject(dev, t, raw: bytes):
    """Make the device send ``raw`` on the control receiveq, as a hostile device would."""
    dev.control.outbox.append(raw)
    dev.poll()


def test_protocol_sequence_matches_linux():
    """DEVICE_READY after DRIVER_OK, PORT_READY per port, PORT_OPEN 1 for the console."""
    seen = []

    dev = ConsoleDevice(MemoryEndpoint(), [PortSpec(MemoryEndpoint(), "a")], max_nr_ports=2)
    handle = dev.control.handle

    def recording(mem, data):
        seen.append(tuple(spec.CONSOLE_CONTROL.unpack_from(data)))
        handle(mem, data)

    dev.control.handle = recording
    drv = ConsoleDriver.probe(LoopbackTransport(dev, memory_size=8 << 20))
    assert seen[0] == (spec.CONSOLE_BAD_ID, E.DEVICE_READY, 1)
    assert (0, E.PORT_READY, 1) in seen and (1, E.PORT_READY, 1) in seen
    assert (0, E.PORT_OPEN, 1) in seen  # the answer to CONSOLE_PORT (5.3.6.2.2)
    assert (1, E.PORT_OPEN, 1) not in seen
    drv.open_port("a").close()
    assert seen[-2:] == [(1, E.PORT_OPEN, 1), (1, E.PORT_OPEN, 0)]


def test_listener_sees_hotplug_in_order_and_errors_in_listeners_are_contained():
    dev, t, drv, pipes, events = make()
    calls = []
    drv.add_listener(lambda ev: (_ for _ in ()).throw(RuntimeError("bad listener")))
    drv.add_listener(calls.append)
    pid = dev.add_port(MemoryEndpoint(), "late")
    drv.poll_events()
    assert [(e.kind, e.port_id) for e in calls] == [("add", pid), ("name", pid), ("open", pid)]
    dev.remove_port(pid)
    drv.poll_events()
    assert calls[-1].kind == "remove" and calls[-1].name == "late"


def test_wait_for_port_and_argument_checks():
    dev, t, drv, pipes, events = make()
    # add_port from another thread: the engine's worker sends the DEVICE_ADD
    threading.Timer(0.2, lambda: dev.add_port(MemoryEndpoint(), "soon")).start()
    assert drv.wait_for_port("soon", timeout=5).name == "soon"
    with pytest.raises(UsageError):
        drv.open_port()
    with pytest.raises(UsageError):
        drv.open_port("p1", port_id=1)


def test_closed_port_refuses_io():
    dev, t, drv, (pipe,), _ = make()
    port = drv.open_port("p1")
    port.close()
    port.close()  # twice is fine
    with pytest.raises(PortClosed):
        port.read(1)
    with pytest.raises(PortClosed):
        port.write(b"x")


def test_write_waits_for_a_host_peer_like_linux():
    dev, t, drv, (pipe,), _ = make()
    pipe.connected = False
    dev.poll()
    port = drv.open_port("p1")
    assert not port.host_connected
    assert port.read(10, timeout=1) == b""  # no host: end of stream at once
    assert port.write_some(b"nobody", timeout=0.2) == 0
    pipe.connected = True
    dev.poll()
    assert port.write(b"somebody", timeout=2) == 8
    assert pipe.take() == b"somebody"


HOSTILE_DEVICE = {
    "truncated": b"\1\0\0",
    "unknown event": spec.CONSOLE_CONTROL.pack(1, 42, 0),
    "unknown port": spec.CONSOLE_CONTROL.pack(3, E.DEVICE_REMOVE, 0),
    "resize without size": spec.CONSOLE_CONTROL.pack(0, E.RESIZE, 0),
    "port out of range": spec.CONSOLE_CONTROL.pack(4000, E.DEVICE_ADD, 0),
    "second name": spec.CONSOLE_CONTROL.pack(1, E.PORT_NAME, 0) + b"evil",
    "console 0": spec.CONSOLE_CONTROL.pack(1, E.CONSOLE_PORT, 0),
}


@pytest.mark.parametrize("what", sorted(HOSTILE_DEVICE))
def test_bad_message_from_the_device_is_dropped(what):
    dev, t, drv, (pipe,), events = make()
    inject(dev, t, HOSTILE_DEVICE[what])
    drv.poll_events()
    port = drv.open_port("p1")  # still named p1, still a plain port
    assert not port.is_console and sorted(drv.ports) == [0, 1]
    port.write(b"ok")
    assert pipe.take() == b"ok"


def test_data_for_a_closed_port_is_dropped_and_buffers_come_back():
    dev, t, drv, (pipe,), _ = make(rx_buffers=4)
    port = drv.open_port("p1")
    port.close()
    dev.ports[1].guest_open = True  # a device that sends anyway
    pipe.feed(b"z" * 10000)
    for _ in range(5):
        dev.poll()
        drv.poll_events()
    assert pipe.pending_to_guest == 0  # the driver kept re-posting its buffers


# --- asyncio ------------------------------------------------------------------------------------


def test_async_ports_move_data_both_ways():
    dev, t, drv, (pipe,), _ = make()
    size = 512 * 1024
    up, down = os.urandom(size), os.urandom(size)
    got_up = bytearray()

    def host():
        fed = 0
        while len(got_up) < size or fed < size:
            fed += pipe.feed(down[fed:fed + 65536])
            got_up.extend(pipe.take())
            time.sleep(0.0005)

    async def guest():
        port = await AsyncConsolePort.open(drv, "p1")
        async with port:
            writer = asyncio.create_task(port.write(up))
            got = await port.read_exactly(size)
            await writer
            await port.drain()
        return got

    host_thread = threading.Thread(target=host, daemon=True)  # the engine serves the port
    host_thread.start()
    got_down = asyncio.run(guest())
    host_thread.join(30)
    assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()


def test_async_read_can_be_cancelled():
    dev, t, drv, (pipe,), _ = make()
    port = drv.open_port("p1").aio()
    port.slice_time = 0.05

    async def main():
        task = asyncio.create_task(port.read(10))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    t0 = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - t0 < 2
