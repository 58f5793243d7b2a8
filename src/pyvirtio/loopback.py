"""In-process transport: a driver and a device in one process over one shared memory.

The memory is a memfd mapped **twice**: the driver's :class:`GuestMemory` and the device's are
different mappings of the same pages, and ring addresses cross the transport as the driver's
virtual addresses (as vhost-user's SET_VRING_ADDR does) which the device translates through its
own region table.  A bug that confuses the two address spaces, or caches a view of the wrong
mapping, shows up here as it would between two processes.
"""

from __future__ import annotations

import mmap
import os
import threading

from .alloc import GuestAllocator
from .device import VirtioDevice
from .engine import LocalEngine
from .errors import VirtioError
from .interrupt import Interrupt, InterruptHandler
from .memory import GuestMemory, Region, _buffer_address
from .transport import DriverTransport
from .virtq.kinds import RingLayout

DEFAULT_MEMORY = 16 << 20


def _map(fd: int, size: int) -> tuple[mmap.mmap, memoryview, int]:
    m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    return m, memoryview(m), _buffer_address(m)


class LoopbackTransport(DriverTransport):
    """Driver-side transport whose device is a :class:`VirtioDevice` in this process."""

    def __init__(self, device: VirtioDevice, memory_size: int = DEFAULT_MEMORY, gpa: int = 0x1000_0000):
        self.device = device
        self._fd = os.memfd_create("pyvirtio-loopback", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, memory_size)
        drv_map, drv_view, drv_uva = _map(self._fd, memory_size)
        dev_map, dev_view, _ = _map(self._fd, memory_size)
        self.memory = GuestMemory([Region(gpa, memory_size, drv_view, userspace_addr=drv_uva, _owner=drv_map)])
        # The device knows the driver's addresses only as the front-end's userspace_addr.
        self.device_memory = GuestMemory([Region(gpa, memory_size, dev_view, userspace_addr=drv_uva,
                                                 _owner=dev_map)])
        self.allocator = GuestAllocator(gpa, memory_size)
        self._handler: InterruptHandler | None = None
        self._cond = threading.Condition()
        self._interrupts = 0
        self._seen = 0
        device.interrupt = self._device_interrupt
        self.engine = LocalEngine(device, lambda: self.device_memory, self._device_interrupt,
                                  name=self.describe())

    @property
    def device_type(self) -> int:
        return int(self.device.device_type)

    def describe(self) -> str:
        return f"loopback:{type(self.device).__name__}"

    def _device_interrupt(self, info: Interrupt) -> None:
        with self._cond:
            self._interrupts += 1
            self._cond.notify_all()
        if self._handler is not None:
            self._handler(info)

    # status, features, config
    def get_status(self) -> int:
        return int(self.device.status)

    def set_status(self, status: int) -> None:
        with self.engine.hold():
            self.device.set_status(status)

    def get_device_features(self) -> int:
        return self.device.device_features

    def set_driver_features(self, features: int) -> None:
        self.device.set_driver_features(features)

    def read_config(self, offset: int, size: int) -> bytes:
        return self.device.read_config(offset, size)

    def write_config(self, offset: int, data: bytes) -> None:
        with self.engine.hold():
            self.device.write_config(offset, data)

    def config_generation(self) -> int:
        return self.device.config_generation

    # queues
    def num_queues(self) -> int:
        return len(self.device.queues)

    def queue_max_size(self, index: int) -> int:
        if not 0 <= index < len(self.device.queues):
            return 0
        return self.device.queues[index].max_size

    def setup_queue(self, index: int, layout: RingLayout) -> None:
        with self.engine.hold():
            self._setup_queue(index, layout)

    def _setup_queue(self, index: int, layout: RingLayout) -> None:
        queue = self.device.queues[index]
        to_uva = self.memory.gpa_to_uva
        to_gpa = self.device_memory.uva_to_gpa
        queue.set_size(layout.size)
        queue.set_addresses(to_gpa(to_uva(layout.desc_table)), to_gpa(to_uva(layout.avail_ring)),
                            to_gpa(to_uva(layout.used_ring)))
        queue.activate(self.device_memory)

    def notify(self, index: int, position: int | None = None) -> None:
        # ``position`` never comes: this transport does not carry VIRTIO_F_NOTIFICATION_DATA.
        self.engine.kick(index)

    # interrupts
    def set_interrupt_handler(self, handler: InterruptHandler) -> None:
        self._handler = handler

    def wait_for_interrupt(self, timeout: float | None) -> bool:
        with self._cond:
            if self._interrupts == self._seen:
                self._cond.wait(timeout)
            got = self._interrupts != self._seen
            self._seen = self._interrupts
            return got

    def close(self) -> None:
        self.engine.stop()
        try:
            self.device.reset()
        except VirtioError:
            pass
        self.memory.close()
        self.device_memory.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
