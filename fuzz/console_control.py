# Invariant: any exception that is not a typed pyvirtio error (pyvirtio.errors.VirtioError
# subclasses) is a finding; a hang is a finding.  Input: chains on a multiport ConsoleDevice's
# control transmitq (driver -> device messages, any bytes, any layout) and receiveq (buffers for
# the device's messages) and on two ports' data queues, kicked in any order, with host turns
# between — src/pyvirtio/devices/console_control.py and the port state it drives.
"""Fuzz target: the virtio-console control queues (VIRTIO 1.3, 5.3.6.2)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _device  # noqa: E402
from _harness import main  # noqa: E402

from pyvirtio.devices.console import ConsoleDevice, PortSpec  # noqa: E402
from pyvirtio.devices.console_endpoints import MemoryEndpoint, NullEndpoint  # noqa: E402
from pyvirtio.spec import console as spec  # noqa: E402

C_IVQ, C_OVQ = 2, 3
QUEUES = [C_OVQ, C_IVQ, 0, 1, 4, 5]


def test_one_input(data: bytes) -> None:
    dev = ConsoleDevice(MemoryEndpoint(), [PortSpec(MemoryEndpoint(), name="fuzz.port"),
                                           PortSpec(NullEndpoint(), name="fuzz.null")],
                        max_nr_ports=4, queue_max_size=16)
    try:
        _device.bring_up(dev)
        _device.run(dev, QUEUES, data, kick=lambda mem, q: dev.process_queue(mem, dev.queues[q]),
                    host=lambda mem: dev.host_ready(mem, 0, []))
    finally:
        dev.close()


def _msg(port: int, event: int, value: int = 0) -> bytes:
    return spec.CONSOLE_CONTROL.pack(port, event, value)


def seeds() -> dict[str, bytes]:
    """The Linux driver's start-up (DEVICE_READY, PORT_READY per port, PORT_OPEN), then data."""
    E = spec.ConsoleEvent
    out = {}
    for name, split in (("linux-start", False), ("linux-start-split-header", True)):
        s = _device.Seed(QUEUES)
        for _ in range(4):
            s.chain(C_IVQ, [], [8 + 64])
        s.kick(C_IVQ)
        for msg in (_msg(0, E.DEVICE_READY, 1), _msg(0, E.PORT_READY, 1), _msg(1, E.PORT_READY, 1),
                    _msg(2, E.PORT_READY, 1), _msg(1, E.PORT_OPEN, 1), _msg(0, E.PORT_OPEN, 1)):
            s.chain(C_OVQ, [msg[:3], msg[3:]] if split else [msg], []).kick(C_OVQ).host()
        s.chain(0, [], [64]).kick(0).chain(1, [b"hello"], []).kick(1).host()
        s.chain(4, [], [64]).kick(4).chain(5, [b"port one"], []).kick(5).host()
        s.chain(C_OVQ, [_msg(1, E.PORT_OPEN, 0)], []).kick(C_OVQ).host()
        out[name] = s.bytes()
    return out


if __name__ == "__main__":
    main(test_one_input, extra_modules=("_device",))
