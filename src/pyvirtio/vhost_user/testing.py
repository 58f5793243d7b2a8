"""The front-end driven step by step, for tests of back-ends.

:class:`TestFrontend` is pyvirtio's one front-end core, :class:`~pyvirtio.vhost_user.frontend.
connection.FrontendConnection`, with the requests chosen by the test: every message is built by
the connection and every reply is framed and checked by it (REPLY flag, request code, fds), while
the test decides what to send, in what order, with which flags.  The bytes go over a channel: a
:class:`SocketChannel` (a real back-end program) or a :class:`PairChannel` (a
:class:`BackendConnection` in this process, fed bytes directly; fds are dup'd both ways, as
SCM_RIGHTS would).  It owns a memfd "guest memory" and sets rings up the way QEMU does, so a test
can put requests on a queue with :class:`~pyvirtio.virtq.SplitDriverQueue` and watch the
back-end answer them.  Hostile tests use :meth:`TestFrontend.send_raw` (or the channel's
``send``) to send anything at all, past the connection.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from dataclasses import dataclass

from ..alloc import GuestAllocator
from ..memory import GuestMemory
from ..spec.features import Feature
from ..virtq import PackedDriverQueue, PackedRingLayout, SplitDriverQueue, SplitRingLayout, driver_queue
from .backend.connection import BackendConnection, Reply
from .fdio import ancillary, recv_with_fds
from .frontend.connection import Expect, FrontendConnection
from .protocol import MAX_FDS, VERSION, VHOST_USER_F_PROTOCOL_FEATURES, FrontendReq, HeaderFlag, ProtocolFeature
from .wire import (U64, ConfigSpace, MemoryRegion, MemoryTable, Message, SingleMemoryRegion, VringAddr,
                   VringState)

R = FrontendReq
#: Requests that are always answered with a body.
ALWAYS_REPLY = frozenset({R.GET_FEATURES, R.GET_PROTOCOL_FEATURES, R.GET_VRING_BASE,
                          R.GET_QUEUE_NUM, R.GET_CONFIG, R.GET_MAX_MEM_SLOTS, R.GET_STATUS})


class FrontendError(AssertionError):
    """The back-end did not answer as the test front-end expected."""


class SocketChannel:
    """Messages over a connected UNIX socket, fds as SCM_RIGHTS."""

    def __init__(self, path: str | None = None, *, sock: socket.socket | None = None,
                 timeout: float = 10.0, connect_timeout: float = 10.0):
        if sock is None:
            if path is None:
                raise FrontendError("give the socket path or a connected socket")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            deadline = time.monotonic() + connect_timeout
            while True:
                try:
                    sock.connect(path)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        sock.settimeout(timeout)
        self.sock = sock

    def send(self, data: bytes, fds=()) -> None:
        self.sock.sendmsg([data], ancillary(fds))

    def receive(self) -> tuple[bytes, list[int]]:
        """What the back-end sent next (at least one byte) and the fds that came with it."""
        data, fds, _ = recv_with_fds(self.sock, 65536, MAX_FDS)
        if not data:
            raise ConnectionResetError("the back-end hung up")
        return data, fds

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """Whether the back-end closes the connection within ``timeout`` (reads until EOF)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(4096):
                pass
            return True
        except (socket.timeout, TimeoutError):
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


class PairChannel:
    """Messages straight into a BackendConnection in this process (fds are dup'd, as
    SCM_RIGHTS would)."""

    def __init__(self, conn: BackendConnection):
        self.conn = conn
        self.replies: deque[Reply] = deque()  # sent by the back-end, not yet received
        self.outputs: list = []  # everything the back-end's receive() returned

    def send(self, data: bytes, fds=()) -> None:
        out = self.conn.receive(data, [os.dup(fd) for fd in fds])
        self.outputs += out
        self.replies.extend(o for o in out if isinstance(o, Reply))

    def receive(self) -> tuple[bytes, list[int]]:
        if not self.replies:
            raise FrontendError("the back-end sent no reply")
        reply = self.replies.popleft()
        return reply.data, [os.dup(fd) for fd in reply.fds]

    def close(self) -> None:
        self.conn.close()


@dataclass
class DriverRing:
    """One ring as the test front-end set it up."""

    index: int
    queue: SplitDriverQueue | PackedDriverQueue
    kick_fd: int
    call_fd: int


class TestFrontend:
    """Drives a vhost-user back-end like QEMU does, over a channel."""

    __test__ = False  # not a pytest class

    def __init__(self, channel, *, memory_size: int = 4 << 20, gpa: int = 0x4000_0000):
        self.ch = channel
        #: The front-end core that builds every request and checks every reply.
        self.conn = FrontendConnection(name="test front-end", reply_ack=False)
        self.memory = GuestMemory.memfd(memory_size, gpa=gpa, name="pyvirtio-test-frontend")
        self.alloc = GuestAllocator(gpa, memory_size)
        self.protocol_features = 0
        self.rings: dict[int, DriverRing] = {}
        self.features = 0  # what SET_FEATURES sent (RING_PACKED there: rings are packed)

    @classmethod
    def pair(cls, conn: BackendConnection, **kw) -> "TestFrontend":
        return cls(PairChannel(conn), **kw)

    @classmethod
    def connect(cls, path: str, **kw) -> "TestFrontend":
        return cls(SocketChannel(path), **kw)

    # --- raw messages ---------------------------------------------------------------------------

    def send_raw(self, data: bytes, fds=()) -> None:
        self.ch.send(data, fds)

    def request(self, req: int, payload: bytes = b"", fds=(), *, need_reply: bool = False,
                flags: int | None = None) -> Message | None:
        """Send one request; return its reply when one is due (GET_*, or REPLY_ACK asked)."""
        if flags is None:
            flags = VERSION | (HeaderFlag.NEED_REPLY if need_reply else 0)
        acked = need_reply and self.protocol_features & (1 << ProtocolFeature.REPLY_ACK)
        due = req in ALWAYS_REPLY or acked
        out = self.conn.raw(req, payload, fds, flags=flags, expect=Expect.BODY if due else Expect.NONE)
        self.ch.send(out.data, out.fds)
        if not due:
            return None
        while (done := self.conn.next_result()) is None:
            self.conn.receive(*self.ch.receive())
        return done.value

    def answer(self, req: int, payload: bytes = b"", fds=(), *, need_reply: bool = False) -> Message:
        """Send a request that must be answered (GET_*, or REPLY_ACK asked); its reply."""
        reply = self.request(req, payload, fds, need_reply=need_reply)
        if reply is None:
            raise FrontendError(f"{FrontendReq(req).name}: no reply is due (REPLY_ACK not negotiated?)")
        return reply

    def ack(self, req: int, payload: bytes = b"", fds=()) -> int:
        """Send with NEED_REPLY (REPLY_ACK must be negotiated); the u64 status (0 = success)."""
        return U64.unpack(self.answer(req, payload, fds, need_reply=True).payload).value

    def get_u64(self, req: int) -> int:
        return U64.unpack(self.answer(req).payload).value

    # --- set-up, as QEMU does it ----------------------------------------------------------------

    def negotiate(self, features: int | None = None, protocol_features: int | None = None) -> int:
        """GET/SET_FEATURES and GET/SET_PROTOCOL_FEATURES, SET_OWNER; returns the features."""
        offered = self.get_u64(R.GET_FEATURES)
        if offered & (1 << VHOST_USER_F_PROTOCOL_FEATURES):
            pf = self.get_u64(R.GET_PROTOCOL_FEATURES)
            pf = pf if protocol_features is None else protocol_features
            self.request(R.SET_PROTOCOL_FEATURES, U64(pf).pack())
            self.protocol_features = pf
        self.request(R.SET_OWNER)
        features = offered if features is None else features
        self.request(R.SET_FEATURES, U64(features).pack())
        self.features = features
        return features

    def region(self) -> MemoryRegion:
        (r,) = self.memory.regions
        return MemoryRegion(r.gpa, r.size, r.userspace_addr, 0)

    def set_mem_table(self) -> None:
        (r,) = self.memory.regions
        self.request(R.SET_MEM_TABLE, MemoryTable((self.region(),)).pack(), [r.fd])

    def add_mem_reg(self) -> int:
        (r,) = self.memory.regions
        return self.ack(R.ADD_MEM_REG, SingleMemoryRegion.of(self.region()).pack(), [r.fd])

    def setup_ring(self, index: int, size: int = 64, *, event_idx: bool = True,
                   enable: bool = True) -> DriverRing:
        """Lay out a ring in guest memory and hand it over (NUM, BASE, ADDR, CALL, KICK, ENABLE).
        With RING_PACKED negotiated the ring is packed (any size; the base carries both wrap
        counters, as QEMU sends it)."""
        packed = bool(self.features & (1 << Feature.RING_PACKED))
        kind = (PackedRingLayout, PackedDriverQueue) if packed else (SplitRingLayout, SplitDriverQueue)
        layout = kind[0].contiguous(self.alloc.alloc(kind[0].bytes_needed(size), 4096), size)
        queue = driver_queue(layout, index=index, event_idx=event_idx)
        queue.setup(self.memory)
        base = 0x8000_8000 if packed else 0
        uva = self.memory.gpa_to_uva
        kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.request(R.SET_VRING_NUM, VringState(index, size).pack())
        self.request(R.SET_VRING_BASE, VringState(index, base).pack())
        self.request(R.SET_VRING_ADDR, VringAddr(index, 0, uva(layout.desc_table), uva(layout.used_ring),
                                                 uva(layout.avail_ring), 0).pack())
        self.request(R.SET_VRING_CALL, U64(index).pack(), [call])
        self.request(R.SET_VRING_KICK, U64(index).pack(), [kick])
        if enable and self.protocol_features:
            self.request(R.SET_VRING_ENABLE, VringState(index, 1).pack())
        ring = self.rings[index] = DriverRing(index, queue, kick, call)
        return ring

    def start(self, queues: int = 1, size: int = 64, **kw) -> int:
        """The whole QEMU-like sequence: negotiate, memory table, rings."""
        features = self.negotiate(**kw)
        if self.protocol_features & (1 << ProtocolFeature.CONFIGURE_MEM_SLOTS):
            if self.add_mem_reg():
                raise FrontendError("ADD_MEM_REG refused")
        else:
            self.set_mem_table()
        for i in range(queues):
            self.setup_ring(i, size, event_idx=bool(features & (1 << Feature.EVENT_IDX)))
        return features

    def get_vring_base(self, index: int) -> int:
        return VringState.unpack(self.answer(R.GET_VRING_BASE, VringState(index, 0).pack()).payload).num

    def get_config(self, offset: int, size: int) -> bytes:
        reply = self.answer(R.GET_CONFIG, ConfigSpace(offset, size, 0, bytes(size)).pack())
        return ConfigSpace.unpack(reply.payload).data if reply.payload else b""

    # --- using a ring ---------------------------------------------------------------------------

    def buffer(self, data: bytes | int) -> tuple[int, int]:
        """A guest buffer holding ``data`` (or ``data`` zero bytes): (gpa, length)."""
        n = data if isinstance(data, int) else len(data)
        addr = self.alloc.alloc(max(n, 1))
        if not isinstance(data, int):
            self.memory.write(addr, data)
        return addr, n

    def kick(self, index: int) -> None:
        os.eventfd_write(self.rings[index].kick_fd, 1)

    def wait_used(self, index: int, count: int = 1, timeout: float = 10.0) -> list[tuple[object, int]]:
        """Wait (polling the used ring) until ``count`` chains came back; return them."""
        q = self.rings[index].queue
        got: list[tuple[object, int]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            got += q.get_bufs(self.memory)
            if len(got) < count:
                if time.monotonic() > deadline:
                    raise FrontendError(f"ring {index}: {len(got)} of {count} buffers came back")
                time.sleep(0.001)
        return got

    def close(self) -> None:
        for ring in self.rings.values():
            os.close(ring.kick_fd)
            os.close(ring.call_fd)
        self.rings.clear()
        self.ch.close()
        self.memory.close()


__all__ = ["TestFrontend", "SocketChannel", "PairChannel", "DriverRing", "FrontendError",
           "ALWAYS_REPLY"]
