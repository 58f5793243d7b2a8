"""``pyvirtio loopback-demo``: drive an entropy and a block device in-process and say what happened."""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import TYPE_CHECKING, TypeVar

from ..errors import CliError
from ..spec.ids import DeviceType

if TYPE_CHECKING:
    from ..bus import Bus
    from ..driver import VirtioDriver

D = TypeVar("D", bound="VirtioDriver")


def register(sub) -> None:
    p = sub.add_parser("loopback-demo", help="run the rng and blk drivers against pyvirtio's devices in-process",
                       description="Create an entropy device and a block device on a fresh sparse image, put them "
                                   "on a loopback bus, bind the drivers by device ID, and exercise them.")
    p.add_argument("--image", help="block image to use (default: a fresh 64 MiB sparse file, deleted after)")
    p.set_defaults(func=run)


def _bound(bus: Bus, device_type: int, cls: type[D]) -> D:
    """The first driver of class ``cls`` bound to a device of ``device_type``."""
    found = [d for d in bus.find(device_type) if isinstance(d, cls)]
    if not found:
        raise CliError(f"no {cls.__name__} is bound to a device of type {device_type}")
    return found[0]


def run(args) -> int:
    from ..bus import Bus
    from ..devices.blk import BlkDevice
    from ..devices.rng import RngDevice
    from ..drivers import ALL_DRIVERS
    from ..drivers.blk import BlkDriver
    from ..drivers.rng import RngDriver
    from ..loopback import LoopbackTransport

    with tempfile.TemporaryDirectory(prefix="pyvirtio-demo-") as tmp:
        image = args.image or os.path.join(tmp, "disk.img")
        if not args.image:
            with open(image, "wb") as f:
                f.truncate(64 << 20)
        bus = Bus(drivers=ALL_DRIVERS)
        bus.add(LoopbackTransport(RngDevice()))
        bus.add(LoopbackTransport(BlkDevice(image, serial="pyvirtio-demo", num_queues=2)))
        for b in bus.probe():
            state = f"bound to {type(b.driver).__name__}" if b.driver else f"not bound: {b.error}"
            print(f"bus: {b.transport.describe():28} type {b.device_type:2} ({b.type_name}) {state}")
        rng = _bound(bus, DeviceType.ENTROPY, RngDriver)
        sample = rng.read(32)
        print(f"rng: 32 bytes from the entropy device: {sample.hex()}")
        disk = _bound(bus, DeviceType.BLOCK, BlkDriver)
        print(f"blk: id {disk.get_id()!r}, {disk.capacity} sectors ({disk.capacity * 512 >> 20} MiB), "
              f"{len(disk.queues)} queues, writeback={disk.writeback}")
        payload = rng.read(1 << 20)
        requests = [disk.submit_write(2048 + i * 128, payload[i * 65536:(i + 1) * 65536]) for i in range(16)]
        for r in requests:
            disk.wait(r)
        disk.flush()
        back = b"".join(disk.wait(r) for r in [disk.submit_read(2048 + i * 128, 65536) for i in range(16)])
        same = hashlib.sha256(back).hexdigest() == hashlib.sha256(payload).hexdigest()
        print(f"blk: wrote 1 MiB as 16 requests in flight, flushed, read it back: "
              f"{'identical' if same else 'MISMATCH'} (sha256 {hashlib.sha256(back).hexdigest()[:16]}…)")
        disk.discard(2048, 2048)
        zeroed = disk.read(2048, 4096) == bytes(4096)
        print(f"blk: discarded 1 MiB: reads back as zeros: {zeroed}")
        for b in bus.bindings:
            if b.driver is not None:
                b.driver.remove()
            b.transport.close()
        return 0 if same and zeroed else 1
