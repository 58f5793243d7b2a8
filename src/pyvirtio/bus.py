"""The virtual bus: list what transports offer and bind drivers by ID (the seed thread's probing).

A :class:`Bus` collects :class:`~pyvirtio.transport.DriverTransport` objects that transports'
discovery found (a PCI scan, a list of MMIO windows, vhost-user sockets, loopback devices) and
binds each to the first driver whose ID table names its device type.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable

from .driver import VirtioDriver
from .errors import VirtioError
from .spec.ids import DeviceType
from .transport import DriverTransport

log = logging.getLogger(__name__)


@dataclass
class Binding:
    """One device found on the bus, and what became of it."""

    transport: DriverTransport
    driver: VirtioDriver | None = None
    error: VirtioError | None = None

    @property
    def device_type(self) -> int:
        """The device ID the transport reports."""
        return self.transport.device_type

    @property
    def type_name(self) -> str:
        """The device type's name (``blk``, ``net`` ...), or its number for a type pyvirtio does
        not know."""
        try:
            return DeviceType(self.device_type).name.lower()
        except ValueError:
            return f"unknown({self.device_type})"


@dataclass
class Bus:
    """Transports found by any means (a PCI scan, MMIO windows, vhost-user sockets, loopback),
    matched to drivers by their ID tables."""

    drivers: tuple[type[VirtioDriver], ...] = ()
    bindings: list[Binding] = field(default_factory=list)

    def add(self, transport: DriverTransport) -> Binding:
        """Put ``transport`` on the bus; its binding (no driver until :meth:`probe`)."""
        binding = Binding(transport)
        self.bindings.append(binding)
        return binding

    def extend(self, transports: Iterable[DriverTransport]) -> None:
        """Put every transport of ``transports`` on the bus."""
        for t in transports:
            self.add(t)

    def probe(self) -> list[Binding]:
        """Bind every unbound device to the first matching driver; errors are kept per device."""
        for binding in self.bindings:
            if binding.driver is not None:
                continue
            for drv in self.drivers:
                if drv.matches(binding.device_type):
                    try:
                        binding.driver = drv.probe(binding.transport)
                        binding.error = None
                    except VirtioError as exc:
                        log.warning("%s: %s failed to bind: %s", binding.transport.describe(), drv.__name__, exc)
                        binding.error = exc
                    break
        return self.bindings

    def find(self, device_type: int) -> list[VirtioDriver]:
        """Ask for the bound drivers of a class (the seed's "give me a device of this class")."""
        return [b.driver for b in self.bindings if b.driver is not None and b.device_type == device_type]
