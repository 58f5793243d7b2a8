# Invariant: any exception that is not a typed pyvirtio error (pyvirtio.errors.VirtioError
# subclasses) is a finding; a hang is a finding.  Input: control-queue chains (any layout, direct
# or indirect, any class/command/data bytes) put on a NetDevice's control queue and kicked —
# NetDevice._ctrl_chain and pyvirtio.devices.net_ctrl.execute — with every control feature negotiated.
"""Fuzz target: the virtio-net control queue (VIRTIO 1.3, 5.1.6.5)."""

from __future__ import annotations

import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _device  # noqa: E402
from _harness import main  # noqa: E402

from pyvirtio.devices.net import NetDevice  # noqa: E402
from pyvirtio.net.mock import MockBackend  # noqa: E402
from pyvirtio.spec import net as spec  # noqa: E402

MAC = bytes.fromhex("525400000001")


def _device_and_ctrl():
    dev = NetDevice(MockBackend(), mac=MAC, queue_pairs=2, queue_size=16)
    _device.bring_up(dev)
    ctrl = next(i for i in range(len(dev.queues)) if dev.queue_role(i)[0] == "ctrl")
    return dev, ctrl


def test_one_input(data: bytes) -> None:
    dev, ctrl = _device_and_ctrl()
    _device.run(dev, [ctrl], data, kick=lambda mem, q: dev.process_queue(mem, dev.queues[q]))


def seeds() -> dict[str, bytes]:
    """Each command the tests send (test_net_device, test_net_hostile), good and bad."""
    _, ctrl = _device_and_ctrl()
    C = spec.NetCtrlClass
    cmds = {
        "promisc": (C.RX, spec.NetCtrlRx.PROMISC, [b"\x01"]),
        "allmulti": (C.RX, spec.NetCtrlRx.ALLMULTI, [b"\x00"]),
        "mac-addr": (C.MAC, spec.NetCtrlMac.ADDR_SET, [b"\x52\x54\x00\x00\x00\x02"]),
        "mac-table": (C.MAC, spec.NetCtrlMac.TABLE_SET,
                      [struct.pack("<I", 2) + MAC + b"\x52\x54\x00\x00\x00\x03", struct.pack("<I", 1) + b"\x01\x00\x5e\x00\x00\x01"]),
        "mq-pairs": (C.MQ, spec.NetCtrlMq.VQ_PAIRS_SET, [struct.pack("<H", 2)]),
        "announce": (C.ANNOUNCE, spec.NetCtrlAnnounce.ACK, []),
        "offloads": (C.GUEST_OFFLOADS, spec.NetCtrlGuestOffloads.SET, [struct.pack("<Q", 1)]),
        "unknown": (99, 0, [b"\x00" * 8]),
    }
    out = {}
    for name, (cls, cmd, data) in cmds.items():
        s = _device.Seed([ctrl])
        s.chain(ctrl, [bytes((cls, cmd))] + data, [1]).kick(ctrl)
        s.chain(ctrl, [bytes((cls, cmd)) + b"".join(data)], [1], indirect=True).kick(ctrl)
        out[name] = s.bytes()
    return out


if __name__ == "__main__":
    main(test_one_input, extra_modules=("_device",))
