# Invariant: any exception that is not a typed pyvirtio error (pyvirtio.errors.VirtioError
# subclasses) is a finding; a hang is a finding; an fd left open after close() is a finding.
# Input: a sequence of requests built with pyvirtio.vhost_user.frontend.connection.FrontendConnection (any
# method, fuzzed arguments) whose bytes a real BackendConnection (entropy device) answers; the
# back-end's replies reach the front-end as they are or mutated (a flipped byte, cut short,
# bytes appended, fds attached), mixed with raw bytes and fds from a hostile back-end.
"""Fuzz target: the vhost-user front-end connection, fed back-end replies."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import Reader, Writer, check_fds, main, open_fds  # noqa: E402

from pyvirtio.devices.rng import RngDevice  # noqa: E402
from pyvirtio.errors import VirtioError  # noqa: E402
from pyvirtio.memory import GuestMemory  # noqa: E402
from pyvirtio.vhost_user.backend.connection import BackendConnection, Reply  # noqa: E402
from pyvirtio.vhost_user.frontend.connection import FrontendConnection  # noqa: E402
from pyvirtio.vhost_user.wire import MemoryRegion  # noqa: E402

GPA = 0x4000_0000
MEM_SIZE = 1 << 16
MAX_OPS = 64
CALL, DELIVER, RAW, RESULTS = range(4)
AS_IS, FLIP, CUT, APPEND, WITH_FDS = range(5)


class Session:
    """One input's world: the front-end under test, an honest back-end, borrowed fds."""

    def __init__(self) -> None:
        self.memory = GuestMemory.memfd(MEM_SIZE, gpa=GPA, name="fuzz-guest")
        self.eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.fe = FrontendConnection(name="fuzz")
        self.be = BackendConnection(RngDevice(), name="fuzz-backend")
        self.pending = bytearray()

    def region(self, r: Reader) -> MemoryRegion:
        (reg,) = self.memory.regions
        if r.flag():
            return MemoryRegion(r.u64(), r.u64(), r.u64(), r.u64())
        return MemoryRegion(reg.gpa, reg.size, reg.userspace_addr, 0)

    def uva(self, r: Reader) -> int:
        return self.memory.regions[0].userspace_addr + r.u16() % MEM_SIZE

    def call(self, r: Reader):
        fe, m = self.fe, r.pick(24)
        idx = r.u8() % 4
        fd = self.eventfd if r.u8() < 0xF0 else None
        mem_fd = self.memory.regions[0].fd
        calls = (
            lambda: fe.get_features(), lambda: fe.set_features(r.u64()),
            lambda: fe.get_protocol_features(),
            lambda: fe.set_protocol_features(None if r.flag() else r.u64()),
            lambda: fe.set_owner(), lambda: fe.get_queue_num(), lambda: fe.reset_device(),
            lambda: fe.set_mem_table([self.region(r) for _ in range(r.pick(10))], [mem_fd] * r.pick(10)),
            lambda: fe.get_max_mem_slots(), lambda: fe.add_mem_reg(self.region(r), mem_fd),
            lambda: fe.rem_mem_reg(self.region(r)), lambda: fe.set_vring_num(idx, r.u16()),
            lambda: fe.set_vring_base(idx, r.u16()),
            lambda: fe.set_vring_addr(idx, self.uva(r), self.uva(r), self.uva(r)),
            lambda: fe.get_vring_base(idx), lambda: fe.set_vring_kick(idx, fd),
            lambda: fe.set_vring_call(idx, fd), lambda: fe.set_vring_err(idx, fd),
            lambda: fe.set_vring_enable(idx, r.flag()),
            lambda: fe.get_config(r.u16() % 0x200, r.u8()),
            lambda: fe.set_config(r.u16() % 0x200, r.blob(300)), lambda: fe.set_status(r.u8()),
            lambda: fe.get_status(),
            lambda: fe.raw(r.u32(), r.blob(300)),
        )
        out = calls[m]()
        self.to_backend(out.data, out.fds)

    def to_backend(self, data: bytes, fds) -> None:
        if self.be.error is not None:
            return
        try:
            for o in self.be.receive(data, [os.dup(fd) for fd in fds]):
                if isinstance(o, Reply):
                    self.pending += o.data
        except VirtioError:
            pass

    def deliver(self, r: Reader) -> None:
        data, fds = bytes(self.pending), []
        self.pending.clear()
        how = r.pick(5)
        if how == FLIP and data:
            at = r.u16() % len(data)
            data = data[:at] + bytes([data[at] ^ (r.u8() or 1)]) + data[at + 1:]
        elif how == CUT:
            data = data[:r.u16() % (len(data) + 1)]
        elif how == APPEND:
            data += r.blob(64)
        elif how == WITH_FDS:
            fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(r.pick(4))]
        self.fe.receive(data, fds)

    def results(self) -> None:
        for _ in range(32):
            try:
                if self.fe.next_result() is None:
                    return
            except VirtioError:
                if self.fe.error is not None:
                    return

    def close(self) -> None:
        self.fe.close()
        self.be.close()
        os.close(self.eventfd)
        self.memory.close()


def test_one_input(data: bytes) -> None:
    before = open_fds()
    _run(data)
    check_fds(before)


def _run(data: bytes) -> None:
    r = Reader(data)
    s = Session()
    try:
        for _ in range(MAX_OPS):
            if not r.more():
                break
            op = r.pick(4)
            try:
                if op == CALL:
                    s.call(r)
                elif op == DELIVER:
                    s.deliver(r)
                elif op == RAW:
                    s.fe.receive(r.blob(300), [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(r.pick(3))])
                else:
                    s.results()
            except VirtioError:
                pass
    finally:
        s.close()


def seeds() -> dict[str, bytes]:
    """A QEMU-like set-up: each request answered as the honest back-end answers it."""
    def call(w: Writer, method: int, *fields) -> Writer:
        w.pick(CALL).pick(method).u8(0).u8(0)
        for kind, value in fields:
            getattr(w, kind)(value)
        return w.pick(DELIVER).pick(AS_IS).pick(RESULTS)

    out = {}
    for name, pf in (("qemu-like", None), ("no-protocol-features", 0)):
        w = Writer()
        call(w, 0)
        call(w, 2)
        call(w, 3, *((("flag", True),) if pf is None else (("flag", False), ("u64", pf))))
        call(w, 4)
        call(w, 1, ("u64", (1 << 32) | (1 << 30) | (1 << 28) | (1 << 29)))
        call(w, 5)
        call(w, 8)
        call(w, 9, ("flag", False))
        call(w, 11, ("u16", 16))
        call(w, 12, ("u16", 0))
        call(w, 13, ("u16", 0x1000), ("u16", 0x1200), ("u16", 0x1100))
        call(w, 16)
        call(w, 15)
        call(w, 18, ("flag", True))
        call(w, 19, ("u16", 0), ("u8", 8))
        call(w, 21, ("u8", 15))
        call(w, 22)
        call(w, 14)
        call(w, 6)
        out[name] = w.bytes()
    return out


if __name__ == "__main__":
    main(test_one_input)
