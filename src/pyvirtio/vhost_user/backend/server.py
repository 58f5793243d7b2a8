"""The vhost-user daemon: the I/O shell around :class:`~.backend.BackendConnection`.

One thread runs a ``selectors`` loop over every listening socket and every front-end connection,
for any number of devices (an :class:`Endpoint` each).  The rings are served by the engine
(:mod:`pyvirtio.engine`): one worker thread per queue group of the device (blk: one per queue;
net and console: one for the device and its back-end), each polling its group's kick eventfds,
the host fds the device asks for (a TAP, io_uring completions) and a wake fd — so a slow disk
request on one queue never holds up another queue or another device, and a kick reaches the
drain in one thread hop.

Locking: a control message may change a ring (GET_VRING_BASE stops it, SET_MEM_TABLE replaces the
memory under it), so the loop holds every group of that connection still (their worker locks, in
order) while the core handles the message; a worker holds its own lock for one turn.  Workers
derive the fds to watch from the rings' state (never tracked on the side) and are woken after
each batch of messages to re-derive them and serve once, so a kick that came while a ring was
disabled is not lost.

When a front-end hangs up the rings are stopped (workers joined), the memory is unmapped, every fd
is closed, the device is reset, and the endpoint accepts the next front-end — a rebooting guest or
a restarted QEMU finds the daemon waiting.

Client mode (``add(..., connect=True)``, ``pyvirtio serve --connect``): for front-ends that listen
(DPDK virtio-user ``server=1``, QEMU ``-chardev socket,server=on``) the daemon connects to the
socket instead, and when the front-end goes away (or is not there yet) connects again, with a
back-off from CONNECT_RETRY_MIN to CONNECT_RETRY_MAX seconds between attempts.

Config changes (a blk resize, a net link change, a console size; ``device.config_changed()`` or
``device.needs_reset()`` from a queue worker, the control socket's thread or the loop) go to the
front-end as CONFIG_CHANGE_MSG on the back-end request channel (SET_BACKEND_REQ_FD; see
:mod:`.backend`).  Writes to the channel hold :attr:`Session.channel_lock` and never wait: a
message that finds the channel full is dropped with a log line (the front-end does not read
it), one cut in the middle gets CHANNEL_SEND_TIMEOUT seconds to go out, else the channel is
closed; no reply is ever asked for, so no thread waits for the front-end's main loop.
"""

from __future__ import annotations

import logging
import os
import select
import selectors
import socket
import stat
import threading
import time
from typing import Callable

from ...device import VirtioDevice
from ...engine import POLL_INTERVAL, GroupWorker, hold, stop_all
from ...errors import TransportError, UsageError
from ...interrupt import Interrupt
from .connection import BackendConnection, Reply
from ..errors import ConnectionFatal
from ..fdio import ancillary, close_fds, recv_with_fds
from ..protocol import MAX_FDS
from ...signals import StopSignals
from ...sockets import DEFAULT_SOCKET_MODE, SocketInUse, bind_unix, inode_of, peer_credentials, unlink_if_ours

log = logging.getLogger("pyvirtio.vhost_user")

#: fds accepted in one recvmsg; more are cut by the kernel (MSG_CTRUNC) and the message refused.
_CMSG_FDS = 4 * MAX_FDS
_SEND_TIMEOUT = 5.0
#: How long the rest of a back-end request that went out in part may take (the channel is closed
#: after that: its stream would be cut in the middle of a message).
CHANNEL_SEND_TIMEOUT = 0.5
#: Client mode: the first retry after a failed connect or a hang-up, and the longest back-off.
CONNECT_RETRY_MIN = 0.05
CONNECT_RETRY_MAX = 2.0


# --- listening sockets -------------------------------------------------------------------------


def inherited_socket(fd: int) -> socket.socket:
    """The socket passed as ``--fd`` (listening, or already connected to a front-end)."""
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise UsageError(f"--fd={fd}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"--fd={fd} is not a socket")
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise UsageError(f"--fd={fd} is not a UNIX stream socket")
    return sock


def is_listening(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


# --- one connection ----------------------------------------------------------------------------


class Session:
    """One front-end connection: the socket, the protocol core, and one
    :class:`~pyvirtio.engine.GroupWorker` per queue group of the device (this class is their
    :class:`~pyvirtio.engine.QueueHost`)."""

    def __init__(self, endpoint: "Endpoint", sock: socket.socket):
        self.endpoint = endpoint
        self.sock = sock
        self.name = endpoint.name
        self.conn = BackendConnection(endpoint.device, name=endpoint.name, **endpoint.options)
        #: QueueHost.host_fds: the connection's own (asked after every turn: no call between)
        self.host_fds: Callable[[int], list[tuple[int, int]]] = self.conn.host_fds
        # Innermost lock: guards the call fds while a notification is written, against handle()
        # replacing or closing them.
        self.signal_lock = threading.Lock()
        device = endpoint.device
        idle = getattr(device, "idle_interval", None)
        counters = [q.stats for q in device.queues]
        self.workers = [GroupWorker(self, g, queues, name=f"{self.name}-g{g}", idle_interval=idle,
                                    counters=counters, device=device, poll_max=endpoint.poll_max)
                        for g, queues in enumerate(device.queue_groups())]
        device.interrupt = self._interrupt
        device.notify_queue = self._notify_counted
        device.status_elsewhere = True  # the front-end keeps the driver's status (device.py)
        # Guards the back-end request channel: writes from any thread, replacing and closing it
        # on the control path (inside the worker locks and signal_lock when both are held).
        self.channel_lock = threading.Lock()
        device.host_call = self._host_call
        for w in self.workers:
            w.start()

    def _host_call(self, fn, group: int = 0) -> None:
        if 0 <= group < len(self.workers) and self.workers[group].running:
            self.workers[group].call_soon(fn)
        else:
            fn()

    # --- QueueHost: what the workers ask -------------------------------------------------------

    def kick_fd(self, index: int) -> int:
        ring = self.conn.vrings[index]
        return ring.kick_fd if ring.started else -1

    def polling(self, index: int) -> bool:
        ring = self.conn.vrings[index]
        return ring.polling and ring.active

    def process(self, index: int) -> bool:
        notify, fault = self.conn.process_ring(index)
        if fault:
            with self.signal_lock:
                _signal(self.conn.vrings[index].err_fd)
        return notify

    def host_ready(self, group: int, events: list[tuple[int, int]]) -> set[int]:
        return self.conn.host_ready(group, events)

    def notify(self, index: int) -> None:
        with self.signal_lock:
            _signal(self.conn.vrings[index].call_fd)

    def serve_kick(self, index: int, fd: int) -> int:
        """The worker's usual turn, a kick on ``fd`` (:meth:`GroupWorker._serve_kick
        <pyvirtio.engine.GroupWorker._serve_kick>`), in one call: -1 if ``fd`` is no longer
        queue ``index``'s kick fd (replaced since the poll), else :meth:`process` and, if the
        device asks, :meth:`notify`'s step (written out: on every request's path), and the
        notifications sent (0 or 1)."""
        ring = self.conn.vrings[index]
        if not ring.started or ring.kick_fd != fd:
            return -1
        if not self.process(index):
            return 0
        with self.signal_lock:
            _signal(self.conn.vrings[index].call_fd)
        return 1

    def _notify_counted(self, index: int) -> None:
        """A used-buffer notification a device sends in the middle of a turn (counted as the
        turn's own are).  :meth:`notify`'s step taken directly: it is on every request's path."""
        ring = self.conn.vrings[index]
        ring.device.queues[index].stats.interrupts += 1
        with self.signal_lock:
            _signal(ring.call_fd)

    def _interrupt(self, info: Interrupt) -> None:
        """Device-initiated notification from outside a turn (any thread): used buffers on a
        ring, or a config change (CONFIG_CHANGE_MSG on the back-end request channel)."""
        if info.queue is None:
            self.send_config_change()
            return
        self.notify(info.queue)

    def send_config_change(self) -> bool:
        """Tell the front-end that the config space changed; False if it could not be told (no
        channel or no CONFIG negotiated, the channel full or gone).  Never blocks for long."""
        with self.channel_lock:
            data = self.conn.config_change_message()
            if data is None:
                log.info("%s: config change not sent (%s)", self.name,
                         "the front-end is gone" if self.conn.closed else
                         "the front-end set up no back-end request channel, or lacks CONFIG")
                return False
            return self._send_backend(data, "CONFIG_CHANGE_MSG")

    def _send_backend(self, data: bytes, what: str) -> bool:
        """Write one back-end request (with channel_lock held) without waiting on the front-end."""
        fd = self.conn.backend_fd
        view = memoryview(data)
        deadline = None
        while view:
            try:
                n = _send_nowait(fd, view)
            except OSError as exc:
                log.info("%s: back-end request channel closed by the front-end (%s); %s not "
                         "sent", self.name, exc.strerror or exc, what)
                self.conn.drop_backend_channel()
                return False
            if n == 0 and len(view) == len(data):  # nothing went out: drop this one message
                self.conn.log.warning("%s: the front-end does not read its back-end request "
                                      "channel (full); %s dropped", self.name, what)
                return False
            view = view[n:]
            if not view:
                log.debug("%s: %s sent", self.name, what)
                return True
            deadline = deadline or time.monotonic() + CHANNEL_SEND_TIMEOUT
            left = deadline - time.monotonic()
            if left <= 0 or not _writable(fd, left):
                log.error("%s: %s cut in the middle (the front-end stopped reading its back-end "
                          "request channel); channel closed", self.name, what)
                self.conn.drop_backend_channel()
                return False
        return True  # nothing to send

    # --- the control path ------------------------------------------------------------------------

    def handle(self, data: bytes, fds: list[int]) -> list[Reply]:
        """Run the core on one chunk with every queue group held still."""
        with hold(self.workers), self.signal_lock, self.channel_lock:
            outputs = self.conn.receive(data, fds)
        return [o for o in outputs if isinstance(o, Reply)]

    def drain_active(self) -> None:
        """After control messages: every worker re-derives what it watches and serves its queues."""
        for worker in self.workers:
            worker.wake()

    def close(self) -> None:
        if not stop_all(self.workers):
            log.error("%s: a queue worker did not stop; closing the connection anyway", self.name)
        with hold(w for w in self.workers if not w.running), self.channel_lock:
            self.conn.close()
        self.sock.close()


_WRITABLE: dict[int, "select.poll"] = {}


def _signal(fd: int) -> None:
    """Write a call/err eventfd without ever blocking.  Only eventfds are accepted
    (:mod:`.notifyfd`) and made non-blocking, but the front-end shares the open file description
    and may clear O_NONBLOCK again; an eventfd write then blocks only when the counter is at its
    maximum — poll(2) says whether it is (a notification the front-end made impossible is
    dropped: the front-end stopped listening on purpose)."""
    if fd >= 0:
        writable = _WRITABLE.get(fd)
        if writable is None:  # one poll object per fd number (poll(2) looks the number up anew)
            writable = _WRITABLE[fd] = select.poll()
            writable.register(fd, select.POLLOUT)
        if not writable.poll(0):
            return
        try:
            os.eventfd_write(fd, 1)
        except OSError as exc:
            log.debug("notification fd %d: %s", fd, exc)


# --- one device --------------------------------------------------------------------------------


class Endpoint:
    """A device served on one listening socket, one inherited connected socket, or (client mode,
    ``connect_to``) the front-end's listening socket, connected to again whenever it is gone."""

    def __init__(self, device: VirtioDevice, sock: socket.socket | None, *, name: str,
                 path: str | None = None, options: dict | None = None, connect_to: str | None = None,
                 poll_max: float = 0.0):
        self.device = device
        self.name = name
        self.path = path  # a socket file we created (unlinked at shutdown if still ours)
        self.inode = inode_of(path) if path else -1
        self.options = options or {}
        #: The queue workers' adaptive polling, in seconds (GroupWorker ``poll_max``; 0: none).
        self.poll_max = poll_max
        self.session: Session | None = None
        self.connections = 0  # front-ends served so far
        self.listening = False  # the listener is registered with the loop
        self.connect_to = connect_to  # client mode: the front-end's socket
        self.retry_at = 0.0  # client mode: when to try connecting next (monotonic)
        self.retry_delay = CONNECT_RETRY_MIN
        self.waiting_logged = False  # "waiting for the front-end" said once per absence
        self.listener: socket.socket | None = None
        self._connected: socket.socket | None = None
        if sock is None:  # client mode
            pass
        elif is_listening(sock):
            self.listener = sock
            sock.setblocking(False)
        else:
            self.listener = None
            self._connected = sock  # --fd handed us a connected socket: serve it once

    @property
    def done(self) -> bool:
        return (self.connect_to is None and self.listener is None and self.session is None
                and self._connected is None)


# --- the loop ----------------------------------------------------------------------------------


class VhostUserServer:
    """Serve any number of devices, each on its own socket, from one event loop."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.endpoints: list[Endpoint] = []
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.selector.register(self._wake_fd, selectors.EVENT_READ, ("wake", None))
        self._signals: StopSignals | None = None
        self._stopping = False
        self._closed = False
        self.running = threading.Event()

    # set-up

    def add(self, device: VirtioDevice, *, socket_path: str | None = None,
            sock: socket.socket | None = None, name: str | None = None,
            socket_mode: int = DEFAULT_SOCKET_MODE, connect: bool = False, poll_max: float = 0.0,
            **options) -> Endpoint:
        """Serve ``device`` on ``socket_path`` (created with permissions ``socket_mode``, without
        a race; a stale socket is replaced, a live one refused) or on an already made ``sock``;
        with ``connect``, connect to the front-end listening on ``socket_path`` (again after
        every hang-up).  ``poll_max``: the queue workers' adaptive polling, in seconds (see
        :class:`~pyvirtio.engine.GroupWorker`; 0, the default here: none — a device served to a
        driver in this same interpreter must not spin).  ``options`` go to BackendConnection
        (protocol_features …)."""
        if (socket_path is None) == (sock is None):
            raise UsageError("give exactly one of socket_path and sock")
        if connect:
            if socket_path is None:
                raise UsageError("client mode connects to a socket_path")
            ep = Endpoint(device, None, name=name or socket_path, options=options,
                          connect_to=socket_path, poll_max=poll_max)
            self.endpoints.append(ep)
            self._connect(ep)
            return ep
        path = None
        if sock is None:
            assert socket_path is not None  # exactly one of the two, checked above
            sock = bind_unix(socket_path, mode=socket_mode)
            path = socket_path
        ep = Endpoint(device, sock, name=name or socket_path or f"fd{sock.fileno()}", path=path,
                      options=options, poll_max=poll_max)
        self.endpoints.append(ep)
        if ep.listener is not None:
            self._listen(ep, True)
        elif ep._connected is not None:
            self._open_session(ep, ep._connected)
            ep._connected = None
        return ep

    # other fds served by the loop (the control socket, pyvirtio.control)

    def watch(self, fileobj, callback: Callable[[int], None],
              events: int = selectors.EVENT_READ) -> None:
        """Call ``callback(mask)`` in the loop's thread whenever ``fileobj`` is ready for
        ``events``; watching it again changes the events.  From the loop's thread (or before
        :meth:`serve_forever`).  A callback that raises is logged and unwatched."""
        try:
            self.selector.modify(fileobj, events, ("watch", (fileobj, callback)))
        except KeyError:
            self.selector.register(fileobj, events, ("watch", (fileobj, callback)))

    def unwatch(self, fileobj) -> None:
        """Stop watching ``fileobj`` (not watched, or the loop closed: nothing happens)."""
        if not self._closed:
            try:
                self.selector.unregister(fileobj)
            except (KeyError, ValueError):
                pass

    def _watched(self, entry, mask: int) -> None:
        fileobj, callback = entry
        try:
            callback(mask)
        except Exception:  # a bug of ours: that fd goes, the devices keep being served
            log.exception("watched fd %r: callback failed; no longer watched", fileobj)
            self.unwatch(fileobj)

    # control from other threads and signal handlers

    def shutdown(self) -> None:
        """Ask the loop to end (safe from any thread and from a signal handler)."""
        self._stopping = True
        if self._wake_fd >= 0:
            try:
                os.eventfd_write(self._wake_fd, 1)
            except OSError:
                pass

    def install_signal_handlers(self) -> None:
        """End cleanly (socket files removed) on SIGTERM and SIGINT (vhost-user.rst: "must end
        ... on SIGTERM"), and on SIGHUP: a closed terminal or a reload must not leave the file."""
        if self._signals is None:
            self._signals = StopSignals(self._signalled)
            self.selector.register(self._signals, selectors.EVENT_READ, ("signal", self._signals))

    def _signalled(self) -> None:
        log.info("signal: shutting down")
        self.shutdown()

    # the loop

    def serve_forever(self) -> None:
        self.running.set()
        try:
            while not self._stopping and not all(ep.done for ep in self.endpoints):
                for key, mask in self.selector.select(self._connect_due()):
                    kind, obj = key.data
                    if kind == "wake":
                        _drain_eventfd(self._wake_fd)
                    elif kind == "signal":  # its handler has run: _stopping is set
                        obj.drain()
                    elif kind == "listen":
                        self._accept(obj)
                    elif kind == "conn":
                        self._readable(obj)
                    elif kind == "watch":
                        self._watched(obj, mask)
        finally:
            self.close()

    def close(self) -> None:
        """Stop every session, close the listeners, remove the socket files (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        for ep in self.endpoints:
            if ep.session is not None:
                self._end_session(ep.session, "daemon shutting down")
            if ep.listener is not None:
                self._listen(ep, False)
                ep.listener.close()
                ep.listener = None
            if ep.path:
                unlink_if_ours(ep.path, ep.inode)
                ep.path = None
        if self._signals is not None:
            self.selector.unregister(self._signals)
            self._signals.close()
            self._signals = None
        if self._wake_fd >= 0:
            self.selector.unregister(self._wake_fd)
            os.close(self._wake_fd)
            self._wake_fd = -1
        self.selector.close()
        self.running.clear()

    def _connect_due(self) -> float | None:
        """Client mode: connect the endpoints whose retry time came; seconds until the next one
        (None: nothing to wait for)."""
        now, wait = time.monotonic(), None
        for ep in self.endpoints:
            if ep.connect_to is None or ep.session is not None or self._stopping:
                continue
            if ep.retry_at <= now:
                self._connect(ep)
            if ep.session is None:
                left = max(0.0, ep.retry_at - now)
                wait = left if wait is None else min(wait, left)
        return wait

    def _connect(self, ep: Endpoint) -> None:
        """One connect attempt to a listening front-end; on failure, the next one is scheduled
        (the delay doubles up to CONNECT_RETRY_MAX)."""
        assert ep.connect_to is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)  # a full backlog is EAGAIN, not a wait
            sock.connect(ep.connect_to)
        except OSError as exc:
            sock.close()
            if not ep.waiting_logged:
                log.info("%s: no front-end listening yet (%s); connecting again until one is",
                         ep.name, exc.strerror or exc)
                ep.waiting_logged = True
            ep.retry_at = time.monotonic() + ep.retry_delay
            ep.retry_delay = min(ep.retry_delay * 2, CONNECT_RETRY_MAX)
            return
        ep.waiting_logged = False
        ep.retry_delay = CONNECT_RETRY_MIN
        self._open_session(ep, sock)

    def _accept(self, ep: Endpoint) -> None:
        if ep.listener is None:  # closed meanwhile
            return
        try:
            sock, _ = ep.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self._open_session(ep, sock)

    def new_session(self, ep: Endpoint, sock: socket.socket) -> Session:
        """The session serving a new front-end (a subclass may serve it differently:
        :mod:`.hostile` lies to front-ends on purpose)."""
        return Session(ep, sock)

    def _open_session(self, ep: Endpoint, sock: socket.socket) -> None:
        sock.setblocking(False)
        ep.session = self.new_session(ep, sock)
        ep.connections += 1
        cred = peer_credentials(sock)
        log.info("%s: front-end connected (%s)", ep.name,
                 "pid %d, uid %d, gid %d" % cred if cred else "peer credentials unknown")
        self._listen(ep, False)  # one front-end at a time; the next waits in the backlog
        self.selector.register(sock, selectors.EVENT_READ, ("conn", ep.session))

    def _end_session(self, session: Session, why: str) -> None:
        ep = session.endpoint
        served = ", ".join(f"ring {r.index}: {r.chains}" for r in session.conn.vrings)
        log.info("%s: front-end gone (%s); rings stopped, memory unmapped; requests served: %s",
                 ep.name, why, served)
        self.selector.unregister(session.sock)
        session.close()
        ep.session = None
        if not self._stopping:
            self._listen(ep, True)
            if ep.connect_to is not None:  # client mode: the front-end may come back
                ep.retry_at = time.monotonic() + ep.retry_delay

    def _listen(self, ep: Endpoint, on: bool) -> None:
        if ep.listener is None or ep.listening == on:
            return
        if on:
            self.selector.register(ep.listener, selectors.EVENT_READ, ("listen", ep))
        else:
            self.selector.unregister(ep.listener)
        ep.listening = on

    def _readable(self, session: Session) -> None:
        for _ in range(64):  # a busy front-end cannot starve the other devices
            try:
                data, fds, truncated = _recv(session.sock, session.conn.want())
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._end_session(session, exc.strerror or str(exc))
                return
            if not data:
                close_fds(fds)
                pending = session.conn.pending_bytes
                self._end_session(session, "hung up" + (
                    f" in the middle of a message ({pending} bytes of it arrived)" if pending else ""))
                return
            if truncated:
                log.warning("%s: a message carried more than %d fds; the kernel dropped the "
                            "rest", session.name, _CMSG_FDS)
            if not self._process(session, data, fds):
                return

    def _process(self, session: Session, data: bytes, fds: list[int]) -> bool:
        try:
            replies = session.handle(data, fds)
            for reply in replies:
                try:
                    _send(session.sock, reply)
                finally:
                    close_fds(reply.fds)  # a reply's fds are ours once sent (GET_INFLIGHT_FD)
        except ConnectionFatal as exc:
            self._end_session(session, f"protocol error: {exc}")
            return False
        except (OSError, TransportError) as exc:
            self._end_session(session, f"cannot reply: {getattr(exc, 'strerror', None) or exc}")
            return False
        except Exception:  # a bug of ours: drop this front-end, keep serving the others
            log.exception("%s: internal error while handling a message", session.name)
            self._end_session(session, "internal error")
            return False
        for ring in session.conn.vrings:
            for fd in (ring.call_fd, ring.err_fd):  # a full pipe must not block a worker
                if fd >= 0:
                    _nonblocking(fd)
            if ring.kick_fd >= 0:
                _nonblocking(ring.kick_fd)
        session.drain_active()
        return True


# --- socket helpers ----------------------------------------------------------------------------


def _recv(sock: socket.socket, want: int) -> tuple[bytes, list[int], bool]:
    return recv_with_fds(sock, want, _CMSG_FDS)


def _send(sock: socket.socket, reply: Reply) -> None:
    anc = ancillary(reply.fds)
    view = memoryview(reply.data)
    while view:
        try:
            n = sock.sendmsg([view], anc)
        except (BlockingIOError, InterruptedError):
            _, writable, _ = select.select([], [sock], [], _SEND_TIMEOUT)
            if not writable:
                raise TransportError("the front-end does not read its replies") from None
            continue
        view, anc = view[n:], []


def _send_nowait(fd: int, data: memoryview) -> int:
    """Send what the socket takes now (0 if it is full); MSG_DONTWAIT whatever the file's flags
    (the front-end made the socket and may hold our end's file description too)."""
    sock = socket.socket(fileno=fd)
    try:
        return sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
    except (BlockingIOError, InterruptedError):
        return 0
    finally:
        sock.detach()


def _writable(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def _nonblocking(fd: int) -> None:
    try:
        os.set_blocking(fd, False)
    except OSError:
        pass


def _drain_eventfd(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except (BlockingIOError, OSError):
        pass


__all__ = ["VhostUserServer", "Endpoint", "Session", "bind_unix",
           "inherited_socket", "is_listening", "SocketInUse", "POLL_INTERVAL"]
