"""Register-model fuzzing shared by ``pci_registers.py`` and ``mmio_registers.py``: guest RAM
laid out as :class:`~pyvirtio.platform.machine.InProcessMachine` lays it out, and a recorder that turns an
ordinary driver's session on that machine into seed ops (its register accesses, with the RAM it
wrote in between as "scribble" ops)."""

from __future__ import annotations

from _harness import Writer

from pyvirtio.memory import GuestMemory

RAM_BASE = 0x1000_0000
RAM_SIZE = 1 << 20
MAX_OPS = 200
SCRIBBLE_MAX = 512


def guest_ram() -> GuestMemory:
    return GuestMemory.from_buffers((RAM_BASE, bytearray(RAM_SIZE)))


def size_of(code: int) -> int:
    return code % 8 + 1


def scribble(mem: GuestMemory, offset: int, data: bytes) -> None:
    offset %= RAM_SIZE
    mem.write(RAM_BASE + offset, data[:RAM_SIZE - offset])


class Recorder:
    """Wraps methods of a register model; each call is written as an op after the guest RAM
    changes made since the previous call (as scribble ops)."""

    def __init__(self, machine, scribble_op: int):
        self.machine = machine
        self.scribble_op = scribble_op
        self.w = Writer()
        self.ops = 0
        self._ram = bytes(RAM_SIZE)

    def wrap(self, obj, name: str, op: int, fields: str) -> None:
        real = getattr(obj, name)

        def recorded(*args):
            self._sync_ram()
            self.w.pick(op)
            for kind, value in zip(fields, args):
                {"b": self.w.u8, "o": self.w.u16, "s": lambda v: self.w.u8(v - 1),
                 "v": self.w.u64}[kind](value)
            self.ops += 1
            return real(*args)

        setattr(obj, name, recorded)

    def _sync_ram(self) -> None:
        now = self.machine.memory.read(RAM_BASE, RAM_SIZE)
        if now == self._ram:
            return
        start = None
        for block in range(0, RAM_SIZE + 64, 64):
            same = block >= RAM_SIZE or now[block:block + 64] == self._ram[block:block + 64]
            if not same and start is None:
                start = block
            elif same and start is not None:
                for at in range(start, block, SCRIBBLE_MAX):
                    end = min(block, at + SCRIBBLE_MAX)
                    self.w.pick(self.scribble_op).u32(at).blob(now[at:end])
                    self.ops += 1
                start = None
        self._ram = now
