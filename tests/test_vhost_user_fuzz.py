"""Invariant: whatever a front-end sends, the back-end connection answers with replies and typed
rejections, or raises a PeerProtocolError that ends the connection — never anything untyped —
and every fd it was handed is closed once the connection is closed.

Hypothesis draws a state (fresh, or after a complete QEMU-like set-up with a running ring) and a
list of messages mixing random bytes with well-formed payloads of the right shapes.
"""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirtio.devices.rng import RngDevice
from pyvirtio.errors import PeerProtocolError
from pyvirtio.vhost_user.backend.connection import BackendConnection, Rejected, Reply
from pyvirtio.vhost_user.errors import ConnectionBroken, ConnectionFatal, MessageRejected
from pyvirtio.vhost_user.protocol import FrontendReq
from pyvirtio.vhost_user.testing import TestFrontend
from pyvirtio.vhost_user.wire import HEADER, ConfigSpace, VringAddr, VringState

small = st.integers(0, 4)
u64 = st.integers(0, 2**64 - 1)

payloads = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda v: struct.pack("=Q", v), st.one_of(u64, st.integers(0, 0x1FF))),
    st.builds(lambda i, n: VringState(i, n).pack(), small, st.sampled_from([0, 1, 3, 16, 64, 1 << 16])),
    st.builds(lambda i, f, d, u, a: VringAddr(i, f, d, u, a, 0).pack(), small, st.integers(0, 2),
              u64, u64, u64),
    st.builds(lambda o, n, f: ConfigSpace(o, n, f, bytes(n)).pack(), st.integers(0, 300),
              st.integers(0, 40), st.integers(0, 2)),
)

messages = st.lists(st.tuples(
    st.one_of(st.sampled_from(list(FrontendReq)), st.integers(0, 60), st.integers(0, 2**32 - 1)),
    st.sampled_from([1, 1, 1, 1 | 8, 1 | 4, 0, 2, 1 | 0x10]),
    payloads,
    st.integers(0, 2),  # fds to attach
    st.booleans(),  # lie about the size by one byte
), max_size=12)


def _pipe_closed(w: int) -> bool:
    try:
        os.write(w, b"x")
        return False
    except BrokenPipeError:
        return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), messages, st.integers(1, 64))
def test_random_messages_give_only_typed_outcomes(set_up, msgs, chunk):
    conn = BackendConnection(RngDevice(), name="fuzz")
    fe = TestFrontend.pair(conn, memory_size=1 << 20)
    if set_up:
        fe.start(size=16)
    writers = []
    stream = bytearray()
    try:
        for request, flags, payload, nfds, lie in msgs:
            size = len(payload) + (1 if lie else 0)
            data = HEADER.pack(request, flags, size) + payload
            fds = []
            for _ in range(nfds):
                r, w = os.pipe()
                os.set_blocking(w, False)
                fds.append(r)
                writers.append(w)
            stream += data
            try:
                # feed in chunks; the fds go with the chunk that starts this message
                for i in range(0, len(data), chunk):
                    out = conn.receive(data[i:i + chunk], fds if i == 0 else [])
                    assert all(isinstance(o, (Reply, Rejected)) for o in out)
                    for o in out:
                        if isinstance(o, Rejected):
                            assert isinstance(o.error, MessageRejected)
            except ConnectionFatal as exc:
                assert isinstance(exc, PeerProtocolError)
                break
            for index in range(len(conn.vrings)):
                notify, fault = conn.process_ring(index)
                assert isinstance(notify, bool)
    finally:
        fe.close()  # closes the connection, the ring eventfds and the memory
    for w in writers:
        assert _pipe_closed(w), "an fd the front-end sent is still open after close()"
        os.close(w)
    try:
        conn.receive(b"\0")
    except ConnectionBroken:
        pass
    else:
        raise AssertionError("a closed connection accepted input")
