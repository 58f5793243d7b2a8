"""``pyvirtio qtest-probe``: drive QEMU's own virtio devices with pyvirtio's drivers.

Starts ``qemu-system-x86_64`` under qtest with the given device arguments (q35 unless ``-M`` says
otherwise; ``-M microvm`` gives virtio-mmio), enumerates its bus, binds pyvirtio's drivers by
device ID, runs one smoke operation per bound device, and prints what happened.

A smoke operation per device type lives in :data:`SMOKE_TESTS`; a driver for a new device type
adds one entry there.  The block test writes one block *and puts the original contents back*.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import TYPE_CHECKING, Callable

from ..spec.features import Feature
from ..spec.ids import DeviceType

if TYPE_CHECKING:
    from ..bus import Binding


def smoke_rng(driver) -> str:
    data = driver.read(64)
    if len(data) != 64:
        raise AssertionError(f"asked for 64 bytes, got {len(data)}")
    return f"read 64 random bytes ({data[:8].hex()}…)"


def smoke_blk(driver) -> str:
    size = driver.block_size if driver.block_size % 512 == 0 else 512
    sector = max(0, driver.capacity - size // 512)
    original = driver.read(sector, size)
    if driver.read_only:
        return f"read-only: read block at sector {sector}"
    pattern = os.urandom(size)
    try:
        driver.write(sector, pattern)
        driver.flush()
        back = driver.read(sector, size)
    finally:
        driver.write(sector, original)
        driver.flush()
    if back != pattern:
        raise AssertionError(f"block at sector {sector} read back different data")
    return f"wrote, flushed, read back and restored {size} bytes at sector {sector}"


def smoke_net(driver) -> str:
    """Send a broadcast ARP request for 10.0.2.2 (QEMU's user-mode gateway answers it)."""
    mac = bytes(driver.config["mac"])
    arp = (b"\xff" * 6 + mac + b"\x08\x06"                       # Ethernet: broadcast, ARP
           + bytes.fromhex("0001080006040001") + mac + bytes((10, 0, 2, 15))  # request from 10.0.2.15
           + bytes(6) + bytes((10, 0, 2, 2))).ljust(60, b"\0")         # who has 10.0.2.2
    driver.send(arp)
    driver.flush()
    reply = driver.recv(timeout=1.0)
    heard = f"received a {len(reply)}-byte frame" if reply else "nothing came back (depends on the netdev)"
    return f"link {'up' if driver.link_up else 'down'}, mac {mac.hex(':')}; sent an ARP request, {heard}"


def smoke_console(driver) -> str:
    driver.poll_events()
    ports = [p for p in driver.list_ports() if not p.removed]
    names = ", ".join(f"{p.id}:{p.name or ('console' if p.console else '?')}" for p in ports)
    return f"{len(ports)} port(s): {names or '-'}"


def smoke_scsi(driver) -> str:
    units = driver.scan(range(8))
    names = ", ".join(f"{t}:{lun} {inq.product or inq.vendor}" for t, lun, inq in units)
    return f"{len(units)} unit(s) on targets 0-7: {names or '-'}"


#: Device type -> one operation that proves the driver works against the device.
SMOKE_TESTS: dict[int, Callable] = {
    DeviceType.ENTROPY: smoke_rng,
    DeviceType.BLOCK: smoke_blk,
    DeviceType.NET: smoke_net,
    DeviceType.CONSOLE: smoke_console,
    DeviceType.SCSI: smoke_scsi,
}


def register(sub) -> None:
    p = sub.add_parser(
        "qtest-probe", help="drive QEMU's virtio devices with pyvirtio's drivers (over qtest)",
        description="Start qemu-system-x86_64 (q35 by default, or the -M you give) under qtest with the "
                    "device arguments after --, find its virtio devices (PCI, or virtio-mmio on microvm), "
                    "bind pyvirtio's drivers by device ID and run a smoke operation on each.  Example: "
                    "pyvirtio qtest-probe -- -device virtio-rng-pci -device virtio-blk-pci,drive=d0 "
                    "-drive if=none,id=d0,file=disk.img,format=raw")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--interrupts", choices=("auto", "msix", "intx"), default="auto",
                   help="PCI interrupt mode (default: MSI-X where available)")
    p.add_argument("--split-only", action="store_true",
                   help="use split rings even where the device offers packed ones (packed=on)")
    p.add_argument("qemu_args", nargs=argparse.REMAINDER, metavar="-- QEMU ARGS",
                   help="QEMU arguments: devices, drives, optionally -M")
    p.set_defaults(func=run)


def _probe_row(binding: Binding) -> dict:
    from ..pci.transport import PciTransport

    t = binding.transport
    row = {"transport": t.describe(), "device_type": binding.device_type, "type": binding.type_name,
           "driver": type(binding.driver).__name__ if binding.driver else None,
           "smoke": None, "ok": False}
    if isinstance(t, PciTransport):
        row["pci_id"] = f"{t.fn.vendor_id:04x}:{t.fn.device_id:04x}"
        row["interrupts"] = t.mode
    if binding.error is not None:
        row["smoke"] = f"probe failed: {binding.error}"
        return row
    if binding.driver is not None:
        row["ring"] = "packed" if binding.driver.has_feature(Feature.RING_PACKED) else "split"
    if binding.driver is None:
        row["smoke"] = "no driver"
        row["ok"] = True  # nothing to drive is not a failure
        return row
    test = SMOKE_TESTS.get(binding.device_type)
    if test is None:
        row["smoke"] = "bound; no smoke test for this type"
        row["ok"] = True
        return row
    start = time.monotonic()
    try:
        row["smoke"] = test(binding.driver)
        row["ok"] = True
    except Exception as exc:  # noqa: BLE001 - report every failure per device, keep going
        row["smoke"] = f"FAILED: {type(exc).__name__}: {exc}"
    row["seconds"] = round(time.monotonic() - start, 3)
    return row


def run(args, drivers=None) -> int:
    """``drivers``: the driver classes the bus binds (default: ``pyvirtio.drivers.ALL_DRIVERS``)."""
    from ..bus import Bus
    from ..drivers import ALL_DRIVERS
    from ..qtest import QemuMachine, split_machine

    qemu_args = list(args.qemu_args)
    if qemu_args[:1] == ["--"]:
        qemu_args = qemu_args[1:]
    machine, rest = split_machine(qemu_args)
    rows, rejected = [], []
    with QemuMachine(rest, machine=machine or "q35", interrupts=args.interrupts,
                     split_only=args.split_only) as qemu:
        found = qemu.discover()
        rejected = [{"where": where, "error": str(err)} for where, err in found.rejected]
        bus = Bus(drivers=tuple(ALL_DRIVERS if drivers is None else drivers))
        bus.extend(found.transports)
        for binding in bus.probe():
            rows.append(_probe_row(binding))
        for binding in bus.bindings:
            try:
                if binding.driver is not None:
                    binding.driver.remove()
            finally:
                binding.transport.close()
    ok = all(r["ok"] for r in rows) and not rejected
    if args.json:
        print(json.dumps({"machine": machine or "q35", "devices": rows, "rejected": rejected, "ok": ok},
                         indent=2))
    else:
        _print_table(machine or "q35", rows, rejected)
    return 0 if ok else 1


def _print_table(machine: str, rows: list[dict], rejected: list[dict]) -> None:
    print(f"QEMU {machine}: {len(rows)} virtio device(s)")
    header = ("TRANSPORT", "ID", "TYPE", "DRIVER", "RESULT")
    table = [header] + [(r["transport"], r.get("pci_id", "-"), r["type"], r["driver"] or "-", r["smoke"] or "")
                        for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + str(row[-1]))
    for r in rejected:
        print(f"rejected {r['where']}: {r['error']}")
