"""virtio-msg, device side I/O shell: a :class:`~.bus.DeviceBus` served on a UNIX socket and/or
in process.

One thread per connected driver reads whole messages from its :mod:`channel <.channel>` and
feeds its :class:`~.bus.BusSession`; replies and device events go back through the channel
(sends are serialised by the channel).  A driver that hangs up — or sends a stream without
framing — ends its session: claims released, memory unmapped, the thread gone.  One accept
thread per listening socket.
"""

from __future__ import annotations

import logging
import socket
import threading

from ..errors import PeerDisconnected, VirtioError
from ..sockets import bind_unix, inode_of, unlink_if_ours
from ..vhost_user.fdio import close_fds
from .bus import BusSession, DeviceBus
from .channel import Channel, SocketChannel, queue_pair
from .protocol import MalformedMessage, Message, encode

log = logging.getLogger(__name__)

#: Drivers connected at once; more are refused (closed at accept).
MAX_CONNECTIONS = 64


class BusServer:
    """Serves one DeviceBus to drivers over sockets and in-process channels."""

    def __init__(self, bus: DeviceBus | None = None):
        self.bus = bus if bus is not None else DeviceBus()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._channels: list[Channel] = []
        self._listeners: list[socket.socket] = []
        self._stopped = threading.Event()
        self._count = 0
        self._paths: list[tuple[str, int]] = []  # socket files we made, removed on close

    # --- drivers ----------------------------------------------------------------------------------

    def serve_channel(self, channel: Channel, name: str) -> BusSession:
        """Serve one connected driver on ``channel`` in a thread of its own."""
        max_size = self.bus.max_message_size

        def send(msg: Message) -> None:
            channel.send(encode(msg, max_size))

        session = self.bus.connect(send, name)
        thread = threading.Thread(target=self._serve, args=(channel, session), name=f"vmsg-{name}",
                                  daemon=True)
        with self._lock:
            self._channels.append(channel)
            self._threads.append(thread)
        thread.start()
        return session

    def _serve(self, channel: Channel, session: BusSession) -> None:
        try:
            while not self._stopped.is_set():
                data, fds = channel.recv()
                try:
                    session.receive(data, fds)
                except Exception:  # a bug of ours: log it, keep serving the others
                    close_fds(fds)
                    log.exception("%s: message handling failed", session.name)
        except PeerDisconnected:
            log.info("%s: driver disconnected", session.name)
        except MalformedMessage as exc:
            log.warning("%s: dropping the connection: %s", session.name, exc)
        except (OSError, VirtioError) as exc:
            log.warning("%s: connection failed: %s", session.name, exc)
        finally:
            session.close()
            channel.close()
            with self._lock:
                if channel in self._channels:
                    self._channels.remove(channel)
                me = threading.current_thread()
                if me in self._threads:
                    self._threads.remove(me)

    def connect_in_process(self, name: str | None = None) -> Channel:
        """A driver end of an in-process queue pair whose device end this server serves."""
        driver, device = queue_pair()
        with self._lock:
            self._count += 1
            n = self._count
        self.serve_channel(device, name or f"queue-{n}")
        return driver

    # --- sockets ----------------------------------------------------------------------------------

    def listen(self, path: str, mode: int = 0o600) -> socket.socket:
        """Accept drivers on the UNIX socket ``path`` (an accept thread)."""
        sock = bind_unix(path, mode=mode)
        with self._lock:
            self._paths.append((path, inode_of(path)))
        return self.listen_on(sock)

    def listen_on(self, sock: socket.socket) -> socket.socket:
        """Accept drivers on an already listening socket."""
        thread = threading.Thread(target=self._accept, args=(sock,), name="vmsg-accept", daemon=True)
        with self._lock:
            self._listeners.append(sock)
            self._threads.append(thread)
        thread.start()
        return sock

    def _accept(self, sock: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                break
            with self._lock:
                busy = len(self._channels) >= MAX_CONNECTIONS
                self._count += 1
                n = self._count
            if busy:
                log.warning("virtio-msg: connection refused: %d drivers connected", MAX_CONNECTIONS)
                conn.close()
                continue
            self.serve_channel(SocketChannel(conn, self.bus.max_message_size), f"conn-{n}")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`shutdown` (True) or ``timeout``."""
        return self._stopped.wait(timeout)

    def shutdown(self) -> None:
        """Stop accepting and serving (from any thread; not from a signal handler: the wait it
        interrupts may hold the lock this takes)."""
        self._stopped.set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop, hang up on every driver (their sessions end), join the threads, close the bus."""
        self._stopped.set()
        with self._lock:
            listeners, self._listeners = self._listeners, []
            channels = list(self._channels)
            paths, self._paths = self._paths, []
        for path, inode in paths:
            unlink_if_ours(path, inode)
        for sock in listeners:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for channel in channels:
            channel.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
        self.bus.close()

    @property
    def threads(self) -> int:
        """Live threads this server runs (for leak checks)."""
        with self._lock:
            return sum(t.is_alive() for t in self._threads)


__all__ = ["BusServer", "MAX_CONNECTIONS"]
