# Invariant: any exception that is not a typed pyvirtio error (pyvirtio.errors.VirtioError
# subclasses) is a finding; a hang is a finding.  Input: up to 200 accesses to a virtio-mmio
# window (pyvirtio.mmio.device) over an entropy device — reads and writes with fuzzed offsets,
# sizes and values — and writes of guest RAM between them (rings, descriptors, buffers).
"""Fuzz target: the virtio-mmio register model (VIRTIO 1.3, 4.2.2)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import Reader, main  # noqa: E402
from _regs import MAX_OPS, RAM_SIZE, SCRIBBLE_MAX, Recorder, guest_ram, scribble, size_of  # noqa: E402

from pyvirtio.devices.rng import RngDevice  # noqa: E402
from pyvirtio.errors import VirtioError  # noqa: E402
from pyvirtio.mmio.device import VirtioMmioDevice  # noqa: E402

READ, WRITE, SCRIBBLE = range(3)


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    mem = guest_ram()
    window = VirtioMmioDevice(RngDevice(), mem)
    try:
        for _ in range(MAX_OPS):
            if not r.more():
                break
            op = r.pick(3)
            try:
                if op == READ:
                    window.read(r.u16() % 0x240, size_of(r.u8()))
                elif op == WRITE:
                    window.write(r.u16() % 0x240, size_of(r.u8()), r.u64())
                else:
                    scribble(mem, r.u32(), r.blob(SCRIBBLE_MAX))
            except VirtioError:
                pass
    finally:
        window.close()


def seeds() -> dict[str, bytes]:
    """An entropy driver probing the window and reading through it, as recorded ops."""
    from pyvirtio.drivers.rng import RngDriver
    from pyvirtio.mmio import MmioTransport
    from pyvirtio.platform.machine import InProcessMachine
    from _regs import RAM_BASE

    out = {}
    for name, n in (("probe", 0), ("read16", 16), ("read3x", 48)):
        with InProcessMachine(ram_size=RAM_SIZE, ram_base=RAM_BASE) as machine:
            w = machine.add_mmio(RngDevice())
            rec = Recorder(machine, SCRIBBLE)
            rec.wrap(w, "read", READ, "os")
            rec.wrap(w, "write", WRITE, "osv")
            t = MmioTransport(machine, 0xFEB00000, w.size, irq=5)
            drv = RngDriver.probe(t)
            for _ in range(n // 16):
                drv.read(16)
            out[name] = rec.w.bytes()
    return out


if __name__ == "__main__":
    main(test_one_input)
