"""Every size a peer controls, bounded in one place (DESIGN.md, "Limits").

A guest (its rings) and a vhost-user front-end (its messages, its fds, its connections) are
untrusted: each number below caps something they choose, so that no input costs the daemon
unbounded memory, time or log output.  Each constant names where it is enforced.

=============================  ==========  ==================================================
limit                          value       enforced by
=============================  ==========  ==================================================
MAX_CHAIN_SEGMENTS             1024        the split and packed device queues: descriptors of
                                           one chain (direct + indirect) and buffers (iovecs)
                                           it maps to; an indirect table longer than that is
                                           refused *before* it is mapped or walked
MAX_CHAIN_BYTES                2**32 - 1   the device queues (the used length is a u32)
blk ``seg_max``                queue - 2   the blk device: more data segments → IOERR
MAX_MEM_SLOTS                  64          vhost-user GET_MAX_MEM_SLOTS / ADD_MEM_REG
MAX_FDS_PER_MESSAGE            8           vhost-user message checks (SET_MEM_TABLE baseline)
MAX_PENDING_CONNECTIONS        16          the listen(2) backlog of a vhost-user socket; one
                                           front-end is served at a time per socket
LOG_LINES_PER_SECOND           20          :class:`PeerLog`, per peer (connection or device)
MAX_CONTROL_LINE               65536       the control socket (:mod:`pyvirtio.control`): one
                                           request line; a longer one gets an error reply and
                                           is skipped up to its newline
MAX_CONTROL_CLIENTS            16          the control socket: clients connected at once (more
                                           are accepted, told so in one reply, and closed)
MAX_CONTROL_PENDING            1 MiB       the control socket: replies a client has not read
                                           yet; past that the client is dropped
VSOCK_BUF_ALLOC                256 KiB     vsock (:mod:`pyvirtio.vsock.core`): the buf_alloc
                                           each connection advertises, so the most its peer
                                           may have sent and we not yet passed on; a peer
                                           that sends past it is reset
VSOCK_MAX_CONNECTIONS          128         vsock: connections of one device (or driver) at
                                           once; a REQUEST past it gets RST.  With
                                           VSOCK_BUF_ALLOC: 32 MiB of guest bytes buffered
                                           at most in total (and, for SEQPACKET, one host
                                           message of at most VSOCK_BUF_ALLOC per
                                           connection on its way to the guest: 32 MiB more)
VSOCK_MAX_PENDING_RST          256         vsock: RST replies (to packets for no connection)
                                           waiting for the peer's receive buffers; more are
                                           dropped and counted
VSOCK_MAX_HANDSHAKES           64          ``serve vsock``: host clients connected to the UDS
                                           that have not finished ``CONNECT <port>\n``; more
                                           are closed at once
VSOCK_HANDSHAKE_LINE           64          ``serve vsock``: bytes of that line, newline
                                           included; a longer line closes the client
=============================  ==========  ==================================================

libvhost-user and QEMU cap a chain at VIRTQUEUE_MAX_SIZE = 1024 elements (and Linux's
IOV_MAX is 1024, so any chain we accept fits one ``readv``/``writev``/``preadv``); a driver may
not make a chain longer than the queue size anyway (VIRTIO 1.3, 2.7.5.3.1).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

#: Descriptors, and zero-copy buffers, in one descriptor chain (libvhost-user's
#: VIRTQUEUE_MAX_SIZE; Linux's IOV_MAX).
MAX_CHAIN_SEGMENTS = 1024
#: Bytes in one descriptor chain: the used ring's length field is a u32.
MAX_CHAIN_BYTES = (1 << 32) - 1
#: Memory regions one vhost-user front-end may map (GET_MAX_MEM_SLOTS; QEMU asks, DPDK uses 8).
MAX_MEM_SLOTS = 64
#: fds one vhost-user message may carry (SET_MEM_TABLE's VHOST_MEMORY_BASELINE_NREGIONS).
MAX_FDS_PER_MESSAGE = 8
#: Front-ends that may wait in a socket's backlog while one is served.
MAX_PENDING_CONNECTIONS = 16
#: Log lines one peer may cause per second; the rest are counted and reported in one line.
LOG_LINES_PER_SECOND = 20
#: Bytes in one control-socket request line (JSON), the newline excluded.
MAX_CONTROL_LINE = 64 * 1024
#: Control-socket clients served at once.
MAX_CONTROL_CLIENTS = 16
#: Reply bytes queued for one control-socket client that does not read them.
MAX_CONTROL_PENDING = 1 << 20
#: vsock: the receive buffer one connection advertises (buf_alloc, VIRTIO 1.3, 5.10.6.3).
VSOCK_BUF_ALLOC = 256 * 1024
#: vsock: connections one device or driver keeps at once.
VSOCK_MAX_CONNECTIONS = 128
#: vsock: RST packets for no connection queued while the peer posts no receive buffers.
VSOCK_MAX_PENDING_RST = 256
#: ``serve vsock``: host clients still sending their ``CONNECT <port>`` line.
VSOCK_MAX_HANDSHAKES = 64
#: ``serve vsock``: the longest ``CONNECT <port>\n`` line.
VSOCK_HANDSHAKE_LINE = 64


class PeerLog:
    """A logger wrapper that lets one peer produce at most ``rate`` lines per second.

    Lines over the budget are dropped and counted; the first line of the next second says how
    many were suppressed.  One instance per peer (a vhost-user connection, a device's guest):
    a flooding peer then silences only itself.  ``clock`` is injectable for tests."""

    def __init__(self, logger: logging.Logger, rate: int = LOG_LINES_PER_SECOND, *,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.rate = rate
        self._clock = clock
        self._window = -1.0
        self._lines = 0
        self.suppressed = 0  # lines dropped in the current window

    def log(self, level: int, msg: str, *args) -> bool:
        """Log one line unless the budget of this second is spent; whether it was logged."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        if now - self._window >= 1.0:
            if self.suppressed:
                self.logger.log(max(level, logging.WARNING), "%d more log lines suppressed (more "
                                "than %d a second from one peer)", self.suppressed, self.rate)
            self._window, self._lines, self.suppressed = now, 0, 0
        if self._lines >= self.rate:
            self.suppressed += 1
            return False
        self._lines += 1
        self.logger.log(level, msg, *args)
        return True

    def debug(self, msg: str, *args) -> bool:
        return self.log(logging.DEBUG, msg, *args)

    def info(self, msg: str, *args) -> bool:
        return self.log(logging.INFO, msg, *args)

    def warning(self, msg: str, *args) -> bool:
        return self.log(logging.WARNING, msg, *args)

    def error(self, msg: str, *args) -> bool:
        return self.log(logging.ERROR, msg, *args)


__all__ = ["MAX_CHAIN_SEGMENTS", "MAX_CHAIN_BYTES", "MAX_MEM_SLOTS", "MAX_FDS_PER_MESSAGE",
           "MAX_PENDING_CONNECTIONS", "LOG_LINES_PER_SECOND", "MAX_CONTROL_LINE",
           "MAX_CONTROL_CLIENTS", "MAX_CONTROL_PENDING", "VSOCK_BUF_ALLOC", "VSOCK_MAX_CONNECTIONS",
           "VSOCK_MAX_PENDING_RST", "VSOCK_MAX_HANDSHAKES", "VSOCK_HANDSHAKE_LINE", "PeerLog"]
