"""Device request fuzzing shared by ``blk_requests.py``, ``net_ctrl.py`` and ``console_control.py``:
a device brought to DRIVER_OK with every feature it offers, its queues handed to hand-written
rings (:class:`~pyvirtio.testing.MockSplitDriver`, so any chain a guest could write is possible,
indirect tables included), and a sequence of "put this chain on queue q" and "kick queue q"."""

from __future__ import annotations

from _harness import Reader, Writer

from pyvirtio.errors import VirtioError
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.features import Feature
from pyvirtio.spec.status import DeviceStatus as S
from pyvirtio.testing import MockSplitDriver, make_device_queue
from pyvirtio.testing.mock_driver import F_WRITE

MEM_SIZE = 1 << 18
RING_SIZE = 16
MAX_OPS = 48
MAX_DESCS = 8
CHAIN, KICK, HOST = range(3)
READABLE, WRITABLE, RAW = range(3)


def bring_up(device, features: int | None = None) -> None:
    """Negotiate (everything offered, or ``features``) and set DRIVER_OK."""
    offered = device.device_features
    device.set_driver_features(offered if features is None else features & offered)
    device.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
    device.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)


def attach(device, queues: list[int]) -> tuple[GuestMemory, dict[int, MockSplitDriver]]:
    """One guest memory; a mock ring per queue index, given to the device as its queue."""
    mem = GuestMemory.from_buffers((0, bytearray(MEM_SIZE)))
    event_idx = device.has_feature(Feature.EVENT_IDX)
    mocks = {}
    for n, q in enumerate(queues):
        mock = MockSplitDriver(RING_SIZE, mem=mem, ring_addr=0x1000 * (n + 1),
                               data_addr=0x10000 + n * 0x8000)
        mock._data_end = 0x10000 + (n + 1) * 0x8000
        dq = make_device_queue(mock, event_idx=event_idx, indirect=True,
                               max_size=device.queues[q].max_size, index=q)
        device.queues[q] = dq
        mocks[q] = mock
    return mem, mocks


def _chain(r: Reader, mock: MockSplitDriver) -> None:
    descs = []
    for _ in range(r.pick(MAX_DESCS) + 1):
        kind = r.pick(3)
        if kind == READABLE:
            data = r.blob(4096)
            addr = mock.alloc(max(1, len(data)))
            mock.write(addr, data)
            descs.append((addr, len(data), 0))
        elif kind == WRITABLE:
            n = r.u16() % 8192
            descs.append((mock.alloc(max(1, n)), n, F_WRITE))
        else:
            descs.append((r.u64(), r.u32(), r.u16()))
    if r.flag():
        mock.add_indirect_chain(descs)
    else:
        mock.add_chain(descs)


def run(device, queues: list[int], data: bytes, *, kick, host=None) -> None:
    """``kick(mem, queue_index)`` serves a kicked queue; ``host(mem)`` a host-side turn."""
    r = Reader(data)
    mem, mocks = attach(device, queues)
    for _ in range(MAX_OPS):
        if not r.more():
            break
        op = r.pick(3)
        q = queues[r.pick(len(queues))]
        try:
            if op == CHAIN:
                _chain(r, mocks[q])
            elif op == KICK:
                kick(mem, q)
            elif host is not None:
                host(mem)
        except VirtioError:
            pass


class Seed:
    """Writes inputs for :func:`run`."""

    def __init__(self, queues: list[int]):
        self.queues = queues
        self.w = Writer()

    def chain(self, q: int, readable: list[bytes], writable: list[int], indirect: bool = False) -> "Seed":
        self.w.pick(CHAIN).pick(self.queues.index(q))
        self.w.pick(len(readable) + len(writable) - 1)
        for data in readable:
            self.w.pick(READABLE).blob(data)
        for n in writable:
            self.w.pick(WRITABLE).u16(n)
        self.w.flag(indirect)
        return self

    def kick(self, q: int) -> "Seed":
        self.w.pick(KICK).pick(self.queues.index(q))
        return self

    def host(self) -> "Seed":
        self.w.pick(HOST).pick(0)
        return self

    def bytes(self) -> bytes:
        return self.w.bytes()
