"""Virtio over MMIO version 2 (VIRTIO 1.3, 4.2), both sides.

Device side: :class:`VirtioMmioDevice`, the register window over any VirtioDevice.  Driver side:
:class:`MmioTransport` over one window, and :func:`discover_mmio` over a list of windows from a
kernel command line (:func:`parse_kernel_cmdline`) or a device tree (:func:`parse_device_tree`).
"""

from .device import VirtioMmioDevice
from .discovery import (MmioScan, MmioWindow, discover_mmio, parse_device_spec, parse_device_tree,
                        parse_kernel_cmdline)
from .transport import MmioPlaceholder, MmioTransport, VirtioMmioError

__all__ = ["MmioPlaceholder", "MmioScan", "MmioTransport", "MmioWindow", "VirtioMmioDevice",
           "VirtioMmioError", "discover_mmio", "parse_device_spec", "parse_device_tree",
           "parse_kernel_cmdline"]
