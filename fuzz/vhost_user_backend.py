# Invariant: any exception that is not a typed pyvirtio error (pyvirtio.errors.VirtioError
# subclasses) is a finding; a hang is a finding; an fd left open after close() is a finding.
# Input: a message SEQUENCE fed to pyvirtio.vhost_user.backend.connection.BackendConnection (an entropy
# device) — headers with fuzzed request/flags/size, payloads, 0-9 fds of several kinds (the guest
# memfd, eventfds, pipes, /dev/null, small memfds) made per input and closed after, split into
# fuzzed chunks — mixed with ring processing, driver requests on ring 0 and raw guest-memory
# writes.  Seeds are recorded QEMU-like sessions (TestFrontend), so the fuzzer starts from a
# valid prefix and mutates fields, sizes, fd counts and orderings from there.
"""Fuzz target: the vhost-user back-end connection, fed message sequences."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import Reader, Writer, check_fds, main, open_fds  # noqa: E402

from pyvirtio.devices.rng import RngDevice  # noqa: E402
from pyvirtio.errors import VirtioError  # noqa: E402
from pyvirtio.memory import GuestMemory  # noqa: E402
from pyvirtio.vhost_user.backend.connection import BackendConnection  # noqa: E402
from pyvirtio.vhost_user.wire import HEADER  # noqa: E402
from pyvirtio.virtq import SplitDriverQueue, SplitRingLayout  # noqa: E402

GPA = 0x4000_0000
MEM_SIZE = 1 << 16
DATA = GPA + 0x8000
MAX_OPS = 64
MSG, RAW, PROCESS, DRIVER_ADD, SCRIBBLE, CLOSE_EARLY = range(6)
FD_MEMORY, FD_EVENT, FD_PIPE, FD_NULL, FD_SMALL_MEMFD = range(5)


class Fds:
    """The fds one input hands over: each is a fresh one (the connection owns what it gets)."""

    def __init__(self, memory: GuestMemory):
        self.memory_fd = memory.regions[0].fd
        self.keep: list[int] = []  # our own ends (pipe writers), closed after the input

    def make(self, kind: int) -> int:
        if kind == FD_MEMORY:
            return os.dup(self.memory_fd)
        if kind == FD_EVENT:
            return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        if kind == FD_PIPE:
            r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            self.keep.append(w)
            return r
        if kind == FD_NULL:
            return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        fd = os.memfd_create("fuzz-small", os.MFD_CLOEXEC)
        os.ftruncate(fd, 4096)
        return fd

    def close(self) -> None:
        for fd in self.keep:
            os.close(fd)


def _feed(conn: BackendConnection, data: bytes, fds: list[int], chunk: int) -> None:
    """Bytes in chunks (fds with the first); handed-over fds are closed if receive refuses them."""
    step = chunk or len(data) or 1
    for i in range(0, max(len(data), 1), step):
        conn.receive(data[i:i + step], fds if i == 0 else [])


def test_one_input(data: bytes) -> None:
    before = open_fds()
    _run(data)
    check_fds(before)  # after _run's frame is gone: an mmap keeps a dup of its fd while viewed


def _run(data: bytes) -> None:
    r = Reader(data)
    memory = GuestMemory.memfd(MEM_SIZE, gpa=GPA, name="fuzz-guest")
    fds = Fds(memory)
    conn = BackendConnection(RngDevice(), name="fuzz")
    drivers: dict[int, SplitDriverQueue] = {}
    try:
        for _ in range(MAX_OPS):
            if not r.more():
                break
            op = r.pick(6)
            try:
                if op == MSG:
                    request, flags, size = r.u32(), r.u32(), r.u32()
                    payload = r.blob(512)
                    handed = [fds.make(r.pick(5)) for _ in range(r.pick(10))]
                    _feed(conn, HEADER.pack(request, flags, size) + payload, handed, r.u8())
                elif op == RAW:
                    conn.receive(r.blob(512), [fds.make(r.pick(5)) for _ in range(r.pick(3))])
                elif op == PROCESS:
                    if conn.vrings:
                        conn.process_ring(r.u8() % len(conn.vrings))
                elif op == DRIVER_ADD:
                    size = 1 << (r.u8() % 9)
                    q = drivers.get(size)
                    if q is None:
                        q = drivers[size] = SplitDriverQueue(SplitRingLayout.contiguous(GPA, size))
                    q.add(memory, [], [(DATA + r.u16() % 0x8000, r.u16())], token=1)
                elif op == SCRIBBLE:
                    at = r.u16() % MEM_SIZE
                    memory.write(GPA + at, r.blob(64)[:MEM_SIZE - at])
                else:
                    conn.close()
            except VirtioError:
                if conn.error is not None:
                    break
    finally:
        conn.close()
        memory.close()
        fds.close()


# --- seeds: QEMU-like sessions recorded from the test front-end ---------------------------------


def _record_session(protocol_features: int | None, queues: int, size: int) -> bytes:
    from pyvirtio.vhost_user.testing import TestFrontend

    w = Writer()
    conn = BackendConnection(RngDevice(), name="seed")
    fe = TestFrontend.pair(conn, memory_size=MEM_SIZE, gpa=GPA)
    mem_fd = fe.memory.regions[0].fd
    send = fe.ch.send

    def recorded(data, fds=()):
        header = HEADER.unpack_from(data)
        w.pick(MSG).u32(header[0]).u32(header[1]).u32(header[2]).blob(data[HEADER.size:])
        w.pick(len(fds))
        for fd in fds:
            w.pick(FD_MEMORY if fd == mem_fd else FD_EVENT)
        w.u8(0)
        send(data, fds)

    fe.ch.send = recorded
    try:
        fe.start(queues=queues, size=size, protocol_features=protocol_features)
        for i in range(3):
            w.pick(DRIVER_ADD).u8(size.bit_length() - 1).u16(0x100 * i).u16(64)
            w.pick(PROCESS).u8(0)
    finally:
        fe.close()
    return w.bytes()


def seeds() -> dict[str, bytes]:
    return {
        "qemu-like": _record_session(None, 1, 16),
        "no-protocol-features": _record_session(0, 1, 16),
        "set-mem-table-reply-ack": _record_session(0b1000001001, 1, 8),  # MQ, REPLY_ACK, CONFIG
    }


if __name__ == "__main__":
    main(test_one_input)
