"""Finding virtio-mmio devices (VIRTIO 1.3, 4.2.1): MMIO has no self-describing bus, so the
platform lists the windows — on a kernel command line or in a device tree.

* :func:`parse_kernel_cmdline` reads Linux's ``virtio_mmio.device=<size>@<base>:<irq>[:<id>]``
  syntax (``size`` takes K/M/G suffixes, ``base`` is C-style 0x/0/decimal; what QEMU's microvm
  appends to the kernel command line);
* :func:`parse_device_tree` reads device-tree-like nodes: ``{"compatible": "virtio,mmio",
  "reg": [base, size], "interrupts": [irq]}`` (the spec's binding) or ``{"base", "size", "irq"}``.

:func:`discover_mmio` opens each window: one whose DeviceID is 0 is a placeholder and is skipped
silently (4.2.2.2: the driver MUST ignore it and MUST NOT report an error); a bad magic or a
version other than 2 is skipped and reported in ``rejected``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from ..errors import UsageError, VirtioError
from ..platform.interface import Platform
from .transport import MmioPlaceholder, MmioTransport

log = logging.getLogger(__name__)

_SUFFIX = {"k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
_NUMBER = r"(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)"
_SPEC = re.compile(rf"^({_NUMBER})([kKmMgGtTpPeE]?)@(-?{_NUMBER}):([0-9]+)(?::(-?[0-9]+))?$")


@dataclass(frozen=True)
class MmioWindow:
    base: int
    size: int
    irq: int | None = None
    id: int | None = None  # the platform device id the kernel syntax may carry

    def __str__(self) -> str:
        irq = "" if self.irq is None else f":{self.irq}"
        return f"{self.size}@{self.base:#x}{irq}"


def _c_int(text: str) -> int:
    """strtoull with base 0: 0x hex, leading-0 octal, else decimal."""
    neg = text.startswith("-")
    text = text.lstrip("-")
    if text[:2].lower() == "0x":
        value = int(text, 16)
    elif len(text) > 1 and text.startswith("0"):
        value = int(text, 8)
    else:
        value = int(text)
    return -value if neg else value


def parse_device_spec(spec: str) -> MmioWindow:
    """One ``<size>@<base>:<irq>[:<id>]`` (Linux drivers/virtio/virtio_mmio.c vm_cmdline_set)."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise UsageError(f"{spec!r} is not <size>@<base>:<irq>[:<id>]")
    size = _c_int(m.group(1)) << _SUFFIX.get(m.group(2).lower(), 0)
    base, irq = _c_int(m.group(3)), int(m.group(4))
    if size <= 0 or base < 0 or irq == 0:
        raise UsageError(f"{spec!r}: size and base must be positive and the irq non-zero")
    return MmioWindow(base, size, irq, int(m.group(5)) if m.group(5) else None)


def parse_kernel_cmdline(cmdline: str) -> list[MmioWindow]:
    """Every ``virtio_mmio.device=`` parameter of a kernel command line, in order."""
    out = []
    for word in cmdline.split():
        key, sep, value = word.partition("=")
        if sep and key == "virtio_mmio.device":
            out.append(parse_device_spec(value))
    return out


def parse_device_tree(nodes: Iterable[Mapping]) -> list[MmioWindow]:
    """Windows from device-tree-like nodes; nodes that are not ``virtio,mmio`` are skipped."""
    out = []
    for node in nodes:
        compatible = node.get("compatible", "virtio,mmio")
        if isinstance(compatible, str):
            compatible = [compatible]
        if "virtio,mmio" not in compatible:
            continue
        if "reg" in node:
            base, size = node["reg"][0], node["reg"][1]
        else:
            base, size = node["base"], node.get("size", 0x200)
        irqs = node.get("interrupts", [node["irq"]] if "irq" in node else [])
        out.append(MmioWindow(int(base), int(size), int(irqs[0]) if irqs else None))
    return out


@dataclass
class MmioScan:
    transports: list[MmioTransport] = field(default_factory=list)
    rejected: list[tuple[MmioWindow, VirtioError]] = field(default_factory=list)
    empty: list[MmioWindow] = field(default_factory=list)  # DeviceID 0 placeholders


def discover_mmio(platform: Platform, windows: Iterable[MmioWindow], *, split_only: bool = False) -> MmioScan:
    """Open a transport on every window that holds a virtio-mmio version 2 device
    (``split_only``: hiding VIRTIO_F_RING_PACKED from the drivers)."""
    result = MmioScan()
    for window in windows:
        # 4.2.3.1.1: check magic and version first, then DeviceID; a 0 ends the probe quietly.
        try:
            transport = MmioTransport(platform, window.base, window.size, window.irq, split_only=split_only)
        except MmioPlaceholder:
            result.empty.append(window)
            continue
        except VirtioError as exc:
            log.warning("virtio-mmio %s: %s", window, exc)
            result.rejected.append((window, exc))
            continue
        result.transports.append(transport)
    return result
