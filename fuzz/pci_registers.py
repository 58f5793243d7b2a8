# Invariant: any exception that is not a typed pyvirtio error (pyvirtio.errors.VirtioError
# subclasses) is a finding; a hang is a finding.  Input: up to 200 accesses to a virtio PCI
# function (pyvirtio.pci.function) over an entropy device — configuration-space and BAR reads
# and writes with fuzzed offsets, sizes and values — and writes of guest RAM between them.
"""Fuzz target: the virtio PCI function (VIRTIO 1.3, 4.1: capabilities, common cfg, notify,
ISR, device cfg, MSI-X, the PCI_CFG window)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import Reader, main  # noqa: E402
from _regs import MAX_OPS, RAM_BASE, RAM_SIZE, SCRIBBLE_MAX, Recorder, guest_ram, scribble, size_of  # noqa: E402

from pyvirtio.devices.rng import RngDevice  # noqa: E402
from pyvirtio.errors import VirtioError  # noqa: E402
from pyvirtio.pci.function import VirtioPciFunction  # noqa: E402

CFG_READ, CFG_WRITE, BAR_READ, BAR_WRITE, SCRIBBLE = range(5)


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    mem = guest_ram()
    fn = VirtioPciFunction(RngDevice(), mem)
    try:
        for _ in range(MAX_OPS):
            if not r.more():
                break
            op = r.pick(5)
            try:
                if op == CFG_READ:
                    fn.config_read(r.u16() % 0x1000, size_of(r.u8()))
                elif op == CFG_WRITE:
                    fn.config_write(r.u16() % 0x1000, size_of(r.u8()), r.u64())
                elif op == BAR_READ:
                    fn.bar_read(r.u8() % 8, r.u16(), size_of(r.u8()))
                elif op == BAR_WRITE:
                    fn.bar_write(r.u8() % 8, r.u16(), size_of(r.u8()), r.u64())
                else:
                    scribble(mem, r.u32(), r.blob(SCRIBBLE_MAX))
            except VirtioError:
                pass
    finally:
        fn.close()


def seeds() -> dict[str, bytes]:
    """An entropy driver found by a PCI scan, probing and reading, as recorded ops."""
    from pyvirtio.drivers.rng import RngDriver
    from pyvirtio.pci import scan_pci
    from pyvirtio.platform.machine import InProcessMachine

    out = {}
    for name, n, msix in (("probe", 0, None), ("read16", 16, None), ("read3x-intx", 48, 0)):
        with InProcessMachine(ram_size=RAM_SIZE, ram_base=RAM_BASE) as machine:
            fn = machine.add_pci(RngDevice(), msix_vectors=msix)
            rec = Recorder(machine, SCRIBBLE)
            rec.wrap(fn, "config_read", CFG_READ, "os")
            rec.wrap(fn, "config_write", CFG_WRITE, "osv")
            rec.wrap(fn, "bar_read", BAR_READ, "bos")
            rec.wrap(fn, "bar_write", BAR_WRITE, "bosv")
            (t,) = scan_pci(machine).transports
            drv = RngDriver.probe(t)
            for _ in range(n // 16):
                drv.read(16)
            out[name] = rec.w.bytes()
    return out


if __name__ == "__main__":
    main(test_one_input)
