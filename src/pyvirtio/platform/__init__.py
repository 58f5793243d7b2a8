"""The machine a driver-side transport runs on, and the register semantics PCI and MMIO share.

* ``interface`` — :class:`Platform` (guest RAM, physical and port accesses, configuration
  cycles, interrupt lines, MSI) and :class:`PlatformTransport`, the driver-side base that
  :class:`~pyvirtio.pci.PciTransport` and :class:`~pyvirtio.mmio.MmioTransport` build on;
* ``registers`` — :class:`DeviceRegisters`, the device-side state behind both register layouts;
* ``machine`` — :class:`~pyvirtio.platform.machine.InProcessMachine`, a platform whose devices
  are pyvirtio's own PCI and MMIO models (it imports both, so it is not re-exported here).

This package sits below :mod:`pyvirtio.pci`, :mod:`pyvirtio.mmio` and :mod:`pyvirtio.qtest`;
it imports none of them except from ``machine``.
"""

from .interface import IrqLine, MsiController, Platform, PlatformTransport, check_access, split_access
from .registers import DeviceRegisters

__all__ = ["DeviceRegisters", "IrqLine", "MsiController", "Platform", "PlatformTransport",
           "check_access", "split_access"]
