"""Virtio over PCI (VIRTIO 1.3, 4.1), both sides.

Device side: :class:`VirtioPciFunction` wraps any :class:`~pyvirtio.device.VirtioDevice` as a
modern virtio PCI function (configuration space, capability list, BARs, MSI-X, INTx).
Driver side: :func:`scan_pci` enumerates a platform's bus 0, assigns BARs the platform left
unassigned, and returns a :class:`PciTransport` per virtio function, ready for
:class:`pyvirtio.bus.Bus`.  The platforms it scans (:mod:`pyvirtio.platform`) are an in-process
machine whose devices are pyvirtio's own models and QEMU over qtest (:mod:`pyvirtio.qtest`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..errors import VirtioError
from ..platform.interface import Platform
from .function import VirtioPciFunction
from .scan import (PciAddress, PciCapabilityError, PciFunction, ResourceAllocator, assign_resources,
                   enumerate_bus, read_function)
from .transport import PciTransport, VirtioPciLayoutError, virtio_device_type

log = logging.getLogger(__name__)


__all__ = ["PciAddress", "PciCapabilityError", "PciScan", "PciTransport",
           "VirtioPciFunction", "VirtioPciLayoutError", "scan_pci"]


@dataclass
class PciScan:
    """What a scan found: transports for usable virtio functions, and the ones it rejected."""

    transports: list[PciTransport] = field(default_factory=list)
    rejected: list[tuple[PciAddress, VirtioError]] = field(default_factory=list)
    functions: list[PciFunction] = field(default_factory=list)  # every function on the bus


def scan_pci(platform: Platform, *, bus: int = 0, assign: bool = True, interrupts: str = "auto",
             split_only: bool = False) -> PciScan:
    """Enumerate ``bus``, place unassigned BARs (``assign``), and open every virtio function.

    A function whose capabilities lie (a looping list, a structure outside its BAR …) is listed
    in ``rejected`` with its typed error; the others still come back.  ``split_only`` hides
    VIRTIO_F_RING_PACKED on every transport (:class:`~pyvirtio.platform.interface.PlatformTransport`)."""
    result = PciScan()
    for addr in enumerate_bus(platform, bus):
        try:
            result.functions.append(read_function(platform, addr))
        except VirtioError as exc:
            log.warning("%s: %s", addr, exc)
            result.rejected.append((addr, exc))
    if assign:
        assign_resources(platform, result.functions, ResourceAllocator(platform.mmio_window, platform.io_window))
    for fn in result.functions:
        if virtio_device_type(fn) is None:
            continue
        try:
            result.transports.append(PciTransport(platform, fn, interrupts=interrupts, split_only=split_only))
        except VirtioError as exc:
            log.warning("%s: %s", fn.address, exc)
            result.rejected.append((fn.address, exc))
    return result
