"""The front-end's I/O shell: a UNIX socket to a vhost-user back-end, with fd passing.

:class:`VhostUserClient` connects (or takes a connected socket), writes each request the
sans-I/O :class:`~.frontend.FrontendConnection` builds — the whole message in one ``sendmsg``
with its fds — and, when the request is answered, reads until the core has the answer.  It turns
the operating system's ways of failing into the core's typed errors:

* no socket file, not a socket, nobody listening → :class:`BackendUnreachable` (at connect);
* end of file, ``ECONNRESET``, ``EPIPE`` → :class:`BackendHungUp`;
* no answer within ``timeout`` seconds → :class:`ReplyTimeout`.

After any of them the connection is broken (the core refuses further calls).  Each method below is
the core's request of the same name plus the round trip; :meth:`request` runs any
:class:`~.frontend.Outgoing` (e.g. one from :meth:`FrontendConnection.raw`).

The back-end request channel (:meth:`open_backend_channel`, BACKEND_REQ negotiated): our end of
the socket pair is read by :meth:`service_channel` — by whoever polls it (the transport's
``wait_for_interrupt``) and also *while this client waits for any answer on the main channel*.
That is how QEMU avoids the classic deadlock (its ``vhost_user_read`` watches the back-end
channel too): a back-end such as libvhost-user sends CONFIG_CHANGE_MSG with NEED_REPLY and waits
for the REPLY_ACK before it reads its main socket again; were we only waiting for our own answer
there, both would wait until the timeout.  Reads and answers on the channel never block; config
changes are counted for the caller (:meth:`take_config_changes`), who tells the driver outside
the request in progress.  A channel that cannot be kept in step is closed with a log line; the
main connection goes on.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import stat
import time
from typing import Any, Sequence

from ..fdio import ancillary, close_fds, fds_of
from .connection import DEFAULT_FRONTEND_PROTOCOL_FEATURES, Expect, FrontendConnection, Outgoing
from .channel import ChannelReply, ConfigChanged, FrontendChannel
from .errors import (BackendChannelLost, BackendHungUp, BackendUnreachable, ReplyTimeout,
                              RequestNacked)
from ..protocol import MAX_FDS, ProtocolFeature
from ..wire import MemoryRegion

DEFAULT_TIMEOUT = 5.0
_RECV_SIZE = 64 * 1024
_CMSG_SPACE = socket.CMSG_SPACE(4 * MAX_FDS * 4)
_HANGUP_ERRNOS = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ESHUTDOWN)
#: Reads of the back-end channel per service_channel call (a flooding back-end cannot hold the
#: front-end there: the rest waits for the next call).
_CHANNEL_READS = 16

log = logging.getLogger("pyvirtio.vhost_user.frontend.connection")


def connect_unix(path: str, timeout: float = DEFAULT_TIMEOUT) -> socket.socket:
    """Connect to a back-end's socket, or raise BackendUnreachable with a one-line reason."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BackendUnreachable(f"{path}: no such socket (is the back-end running?)") from None
    except OSError as exc:
        raise BackendUnreachable(f"{path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise BackendUnreachable(f"{path}: not a UNIX socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except ConnectionRefusedError:
        sock.close()
        raise BackendUnreachable(f"{path}: connection refused (no back-end listening)") from None
    except socket.timeout:
        sock.close()
        raise BackendUnreachable(f"{path}: connect timed out") from None
    except OSError as exc:
        sock.close()
        raise BackendUnreachable(f"{path}: {exc.strerror or exc}") from None
    sock.setblocking(True)
    return sock


class VhostUserClient:
    """A connected vhost-user front-end (the shell around :class:`FrontendConnection`)."""

    def __init__(self, sock: socket.socket, *, name: str = "vhost-user",
                 timeout: float = DEFAULT_TIMEOUT,
                 protocol_features: int = DEFAULT_FRONTEND_PROTOCOL_FEATURES,
                 reply_ack: bool = True):
        self.sock = sock
        self.name = name
        self.timeout = timeout
        self.conn = FrontendConnection(name=name, protocol_features=protocol_features,
                                       reply_ack=reply_ack)
        #: Our end of the back-end request channel and its core (open_backend_channel).
        self.channel_sock: socket.socket | None = None
        self.channel: FrontendChannel | None = None
        self._config_changes = 0  # CONFIG_CHANGE_MSGs not yet taken by the caller

    @classmethod
    def connect(cls, path: str, **kw) -> "VhostUserClient":
        timeout = kw.get("timeout", DEFAULT_TIMEOUT)
        return cls(connect_unix(path, timeout), name=kw.pop("name", path), **kw)

    # --- the round trip ------------------------------------------------------------------------

    def request(self, out: Outgoing, timeout: float | None = None) -> Any:
        """Write ``out``; if it is answered, wait for and return the answer's value."""
        self._write(out)
        if out.expect is Expect.NONE:
            return None
        return self.wait_result(timeout)

    def wait_result(self, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            done = self.conn.next_result()
            if done is not None:
                return done.value
            self._read_some(deadline)

    def _write(self, out: Outgoing) -> None:
        anc = ancillary(out.fds)
        view = memoryview(out.data)
        try:
            while view:
                n = self.sock.sendmsg([view], anc)
                view, anc = view[n:], []
        except OSError as exc:
            self._hung_up(f"the back-end hung up ({out.name} could not be sent: "
                          f"{exc.strerror or exc})")

    def _read_some(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or not self._wait_readable(deadline):
            self.conn.fail(ReplyTimeout(f"{self.name}: no answer to {self._waiting()} within "
                                        f"{self.timeout if left <= 0 else left:.1f}s"))
        try:
            data, anc, _flags, _ = self.sock.recvmsg(_RECV_SIZE, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return
            self._hung_up(f"the back-end hung up ({exc.strerror or exc})")
        fds = fds_of(anc)
        if not data:
            close_fds(fds)
            self._hung_up(f"the back-end hung up while {self._waiting()} waited for an answer"
                          if self.conn.awaiting else "the back-end hung up")
        self.conn.receive(data, fds)

    def _wait_readable(self, deadline: float) -> bool:
        """Wait until the main socket has something (True) or the deadline passes, serving the
        back-end channel meanwhile (see the module docstring: no deadlock with a back-end that
        waits for our REPLY_ACK)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.channel_sock is None:
                return _readable(self.sock, left)
            poller = select.poll()
            poller.register(self.sock, select.POLLIN | select.POLLPRI)
            poller.register(self.channel_sock, select.POLLIN)
            ready = {fd for fd, _ in poller.poll(max(1, int(left * 1000)))}
            if self.channel_sock is not None and self.channel_sock.fileno() in ready:
                self.service_channel()
            if self.sock.fileno() in ready:
                return True

    # --- the back-end request channel ----------------------------------------------------------

    def open_backend_channel(self) -> bool:
        """Make a socket pair and hand one end to the back-end (SET_BACKEND_REQ_FD); False when
        BACKEND_REQ is not negotiated or the back-end refused the request (logged)."""
        if not self.conn.has_protocol_feature(ProtocolFeature.BACKEND_REQ):
            return False
        self.close_channel()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.request(self.conn.set_backend_req_fd(theirs.fileno()))
        except RequestNacked as exc:
            ours.close()
            log.warning("%s: no back-end request channel: %s", self.name, exc)
            return False
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the back-end has its own copy now
        ours.setblocking(False)
        self.channel_sock = ours
        self.channel = FrontendChannel(self.conn.protocol_features, name=self.name)
        return True

    def channel_fileno(self) -> int:
        """Our end of the back-end request channel (-1: none)."""
        return self.channel_sock.fileno() if self.channel_sock is not None else -1

    def service_channel(self) -> None:
        """Read what the back-end sent on its channel (never waits), answer it, and count the
        config changes for :meth:`take_config_changes`.  A channel that cannot be kept in step
        (end of file, a bad header, answers the back-end does not read) is closed."""
        sock, core = self.channel_sock, self.channel
        if sock is None or core is None:
            return
        try:
            for _ in range(_CHANNEL_READS):
                try:
                    data, anc, _flags, _ = sock.recvmsg(_RECV_SIZE, _CMSG_SPACE,
                                                        socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    raise BackendChannelLost(f"{self.name}: back-end request channel: "
                                             f"{exc.strerror or exc}") from None
                fds = fds_of(anc)
                if not data:
                    close_fds(fds)
                    raise BackendChannelLost(f"{self.name}: the back-end closed its request channel")
                for out in core.receive(data, fds):
                    if isinstance(out, ChannelReply):
                        self._channel_send(sock, out.data)
                    elif isinstance(out, ConfigChanged):
                        self._config_changes += 1
        except BackendChannelLost as exc:
            log.warning("%s; channel closed (the connection goes on, without config-change "
                        "notifications)", exc)
            self.close_channel()

    def _channel_send(self, sock: socket.socket, data: bytes) -> None:
        try:
            n = sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            raise BackendChannelLost(f"{self.name}: back-end request channel: "
                                     f"{exc.strerror or exc}") from None
        if n != len(data):
            raise BackendChannelLost(f"{self.name}: the back-end does not read the answers on "
                                     "its request channel")

    def take_config_changes(self) -> int:
        """How many config changes the back-end announced since the last call."""
        n, self._config_changes = self._config_changes, 0
        return n

    def close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.channel_sock is not None:
            self.channel_sock.close()
            self.channel_sock = None

    def _waiting(self) -> str:
        return self.conn._pending[0].name if self.conn._pending else "nothing"

    def _hung_up(self, why: str):
        self.conn.fail(BackendHungUp(f"{self.name}: {why}"))

    def check_alive(self) -> None:
        """Raise BackendHungUp if the back-end closed the socket (or sent something unasked)."""
        if self.conn.error is not None:
            self.conn._check_open()
        if _readable(self.sock, 0):
            self._read_some(time.monotonic() + 0.001)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.conn.close()
        self.close_channel()
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "VhostUserClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- one method per request ----------------------------------------------------------------

    def get_features(self) -> int:
        return self.request(self.conn.get_features())

    def set_features(self, features: int) -> None:
        self.request(self.conn.set_features(features))

    def get_protocol_features(self) -> int:
        return self.request(self.conn.get_protocol_features())

    def set_protocol_features(self, features: int | None = None) -> None:
        self.request(self.conn.set_protocol_features(features))

    def set_owner(self) -> None:
        self.request(self.conn.set_owner())

    def get_queue_num(self) -> int:
        return self.request(self.conn.get_queue_num())

    def reset_device(self) -> None:
        self.request(self.conn.reset_device())

    def set_mem_table(self, regions: Sequence[MemoryRegion], fds: Sequence[int]) -> None:
        self.request(self.conn.set_mem_table(regions, fds))

    def get_max_mem_slots(self) -> int:
        return self.request(self.conn.get_max_mem_slots())

    def add_mem_reg(self, region: MemoryRegion, fd: int) -> None:
        self.request(self.conn.add_mem_reg(region, fd))

    def rem_mem_reg(self, region: MemoryRegion) -> None:
        self.request(self.conn.rem_mem_reg(region))

    def set_vring_num(self, index: int, num: int) -> None:
        self.request(self.conn.set_vring_num(index, num))

    def set_vring_base(self, index: int, base: int) -> None:
        self.request(self.conn.set_vring_base(index, base))

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int) -> None:
        self.request(self.conn.set_vring_addr(index, desc, used, avail))

    def get_vring_base(self, index: int) -> int:
        return self.request(self.conn.get_vring_base(index))

    def set_vring_kick(self, index: int, fd: int | None) -> None:
        self.request(self.conn.set_vring_kick(index, fd))

    def set_vring_call(self, index: int, fd: int | None) -> None:
        self.request(self.conn.set_vring_call(index, fd))

    def set_vring_err(self, index: int, fd: int | None) -> None:
        self.request(self.conn.set_vring_err(index, fd))

    def set_vring_enable(self, index: int, enable: bool) -> None:
        self.request(self.conn.set_vring_enable(index, enable))

    def get_config(self, offset: int, size: int, flags: int = 0) -> bytes:
        return self.request(self.conn.get_config(offset, size, flags))

    def set_config(self, offset: int, data: bytes, flags: int = 0) -> None:
        self.request(self.conn.set_config(offset, data, flags))

    def set_status(self, status: int) -> None:
        self.request(self.conn.set_status(status))

    def get_status(self) -> int:
        return self.request(self.conn.get_status())

    # --- the usual opening ---------------------------------------------------------------------

    def handshake(self, *, owner: bool = True) -> None:
        """GET_FEATURES, GET/SET_PROTOCOL_FEATURES (if offered), SET_OWNER, and the counts that
        come with the negotiated protocol features (GET_QUEUE_NUM, GET_MAX_MEM_SLOTS)."""
        self.get_features()
        if self.conn.offers_protocol_features:
            self.get_protocol_features()
            self.set_protocol_features()
        if owner:
            self.set_owner()
        if self.conn.has_protocol_feature(ProtocolFeature.MQ):
            self.get_queue_num()
        if self.conn.has_protocol_feature(ProtocolFeature.CONFIGURE_MEM_SLOTS):
            self.get_max_mem_slots()


def _readable(sock: socket.socket, timeout: float) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(max(0, int(timeout * 1000))))


__all__ = ["VhostUserClient", "connect_unix", "DEFAULT_TIMEOUT"]
