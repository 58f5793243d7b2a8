"""Host endpoints of console ports: where a port's bytes go on the host side.

A :class:`~pyvirtio.devices.console.ConsoleDevice` bridges each port to one :class:`HostEndpoint`
through four non-blocking calls, so the device core never waits and never buffers:

* ``read_into(views)`` — move waiting host bytes straight into guest receive buffers; returns
  the count, ``None`` when nothing is waiting, ``0`` when the host side hung up;
* ``write_from(views)`` — hand guest bytes to the host; returns how many it took (``0`` when it
  is full: the device keeps the rest in the guest's ring and tries again when told);
* ``accept()`` — a listening endpoint takes a waiting client (True if it now has one);
* ``read_fd`` / ``write_fd`` — the fds the device's engine worker watches (``-1``: none).

Endpoints without fds (:class:`MemoryEndpoint`) call :attr:`HostEndpoint.waker` when their host
side acts (the device makes it wake its worker).  Here: a connected socket (``socketpair`` or a connected
UNIX socket), a listening or connecting UNIX socket, a pty, stdio, a pair of fds, and an in-memory
pipe for tests.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import threading
import tty
from typing import Callable, Sequence

from ..errors import UsageError

Views = Sequence[memoryview]
#: errnos that mean "the host side is gone" rather than "try later".
_HANGUP = (errno.EPIPE, errno.ECONNRESET, errno.EIO, errno.ENOTCONN, errno.ESHUTDOWN)


def _noop() -> None:
    pass


class HostEndpoint:
    """Base of every endpoint (see the module doc for the contract)."""

    #: A host peer is there (a client connected, the pty is open ...).
    connected: bool = True
    #: Called (from any thread) when the host side made progress possible on an fd-less endpoint.
    waker: Callable[[], None] = staticmethod(_noop)

    @property
    def read_fd(self) -> int:
        return -1

    @property
    def write_fd(self) -> int:
        return -1

    @property
    def listening(self) -> bool:
        """Waiting for a client: the worker watches :attr:`read_fd` and then calls :meth:`accept`."""
        return False

    def accept(self) -> bool:
        return self.connected

    def read_into(self, views: Views) -> int | None:
        raise NotImplementedError

    def write_from(self, views: Views) -> int:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__

    def close(self) -> None:
        self.connected = False


class NullEndpoint(HostEndpoint):
    """Swallows output, never has input (a console nobody listens to)."""

    def read_into(self, views: Views) -> int | None:
        return None

    def write_from(self, views: Views) -> int:
        return sum(len(v) for v in views)


class FdEndpoint(HostEndpoint):
    """A readable fd and a writable fd (the same one for a tty or a pipe pair), non-blocking."""

    def __init__(self, rfd: int, wfd: int, *, owned: bool = True, name: str = "fd"):
        self._rfd, self._wfd, self._owned, self.name = rfd, wfd, owned, name
        self.input_done = False  # EOF on a separate input fd: output goes on (stdin < /dev/null)
        self._saved_flags = {fd: os.get_blocking(fd) for fd in {rfd, wfd} if fd >= 0}
        for fd in self._saved_flags:
            os.set_blocking(fd, False)

    @property
    def read_fd(self) -> int:
        return self._rfd if self.connected and not self.input_done else -1

    @property
    def write_fd(self) -> int:
        return self._wfd if self.connected else -1

    def read_into(self, views: Views) -> int | None:
        if self._rfd < 0 or not self.connected:
            return 0
        if self.input_done:
            return None
        try:
            n = os.readv(self._rfd, views)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            return self._failed(exc, 0)
        if n == 0 and self._rfd != self._wfd:
            self.input_done = True
            return None
        if n == 0:
            self.connected = False
        return n

    def write_from(self, views: Views) -> int:
        if self._wfd < 0 or not self.connected:
            return 0
        try:
            return os.writev(self._wfd, views)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            return self._failed(exc, 0)

    def _failed(self, exc: OSError, result: int) -> int:
        if exc.errno not in _HANGUP:
            raise exc
        self.connected = False
        return result

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        self.connected = False
        for fd, blocking in self._saved_flags.items():
            try:
                os.set_blocking(fd, blocking)
            except OSError:
                pass
        if self._owned:
            for fd in {self._rfd, self._wfd}:
                if fd >= 0:
                    os.close(fd)
        self._rfd = self._wfd = -1  # forget at once (a reused fd number is never hit)


class StdioEndpoint(FdEndpoint):
    """The daemon's stdin and stdout (flags restored on close; the fds stay open)."""

    def __init__(self, stdin: int = 0, stdout: int = 1):
        super().__init__(stdin, stdout, owned=False, name="stdio")


class PtyEndpoint(FdEndpoint):
    """A new pseudo-terminal: the device holds the master, a host program opens :attr:`path`.

    The slave side is kept open (and raw) so writes never fail with EIO while no program has it."""

    def __init__(self, raw: bool = True):
        master, slave = os.openpty()
        if raw:
            tty.setraw(slave)
        self.slave_fd = slave
        self.path = os.ttyname(slave)
        super().__init__(master, master, name=f"pty:{self.path}")

    def close(self) -> None:
        super().close()
        if self.slave_fd >= 0:
            os.close(self.slave_fd)
            self.slave_fd = -1


class SocketEndpoint(HostEndpoint):
    """A connected stream socket (a ``socketpair`` end, an accepted or connected UNIX socket)."""

    def __init__(self, sock: socket.socket | None, name: str = "socket"):
        self.sock = sock
        self.name = name
        self.connected = sock is not None
        if sock is not None:
            sock.setblocking(False)

    @property
    def read_fd(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    write_fd = read_fd

    def read_into(self, views: Views) -> int | None:
        if self.sock is None:
            return 0
        try:
            n = self.sock.recvmsg_into(views)[0]
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            return self._failed(exc, 0)
        if n == 0:
            self._hangup()
        return n

    def write_from(self, views: Views) -> int:
        if self.sock is None:
            return 0
        try:
            return self.sock.sendmsg(views)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            return self._failed(exc, 0)

    def _failed(self, exc: OSError, result: int) -> int:
        if exc.errno not in _HANGUP:
            raise exc
        self._hangup()
        return result

    def _hangup(self) -> None:
        self.connected = False
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        self._hangup()


class UnixConnectEndpoint(SocketEndpoint):
    """Connect to a UNIX socket another program listens on."""

    def __init__(self, path: str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        super().__init__(sock, name=f"unix-connect:{path}")


class UnixListenEndpoint(SocketEndpoint):
    """Listen on a UNIX socket; one client at a time.  When it hangs up, wait for the next."""

    def __init__(self, path: str):
        self.path = path
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(path)
            listener.listen(1)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self.listener: socket.socket | None = listener  # None once closed
        super().__init__(None, name=f"unix-listen:{path}")

    @property
    def listening(self) -> bool:
        return self.sock is None and self.listener is not None

    @property
    def read_fd(self) -> int:
        if self.sock is not None:
            return self.sock.fileno()
        return self.listener.fileno() if self.listener is not None else -1

    @property
    def write_fd(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def accept(self) -> bool:
        if self.sock is not None:
            return True
        if self.listener is None:
            return False
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        conn.setblocking(False)
        self.sock, self.connected = conn, True
        return True

    def close(self) -> None:
        self._hangup()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.path)
            except OSError:
                pass


class MemoryEndpoint(HostEndpoint):
    """An in-memory pipe with bounded buffers both ways (for tests and embedding).

    The host side calls :meth:`feed` (bytes for the guest) and :meth:`take` (bytes from the
    guest); each buffer holds at most ``capacity`` bytes, so a slow side applies back-pressure
    instead of growing memory."""

    def __init__(self, capacity: int = 64 * 1024):
        if capacity <= 0:
            raise UsageError("capacity must be positive")
        self.capacity = capacity
        self._to_guest = bytearray()
        self._from_guest = bytearray()
        self._eof = False
        self._lock = threading.Lock()
        self.high_water = 0  # the most the guest-to-host buffer ever held

    # --- host side ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> int:
        """Queue bytes for the guest; returns how many fit (the rest: feed again later)."""
        with self._lock:
            n = min(len(data), self.capacity - len(self._to_guest))
            self._to_guest += data[:n]
        if n:
            self.waker()
        return n

    def take(self, n: int = -1) -> bytes:
        """Bytes the guest wrote (up to ``n``; all with -1)."""
        with self._lock:
            n = len(self._from_guest) if n < 0 else min(n, len(self._from_guest))
            out = bytes(self._from_guest[:n])
            del self._from_guest[:n]
        if out:
            self.waker()
        return out

    def hangup(self) -> None:
        """The host side closes: the guest reads what is queued, then sees the port closed."""
        with self._lock:
            self._eof = True
        self.waker()

    @property
    def pending_to_guest(self) -> int:
        return len(self._to_guest)

    @property
    def pending_from_guest(self) -> int:
        return len(self._from_guest)

    # --- device side ----------------------------------------------------------------------------

    def read_into(self, views: Views) -> int | None:
        with self._lock:
            if not self._to_guest:
                if self._eof:
                    self.connected = False
                    return 0
                return None
            n = _copy_out(self._to_guest, views)
            del self._to_guest[:n]
            return n

    def write_from(self, views: Views) -> int:
        with self._lock:
            if self._eof:
                return sum(len(v) for v in views)  # the host is gone: nobody will read it
            room = self.capacity - len(self._from_guest)
            n = 0
            for v in views:
                take = min(room - n, len(v))
                self._from_guest += v[:take]
                n += take
                if n == room:
                    break
            self.high_water = max(self.high_water, len(self._from_guest))
            return n


def _copy_out(src: bytearray, views: Views) -> int:
    pos = 0
    for v in views:
        take = min(len(v), len(src) - pos)
        v[:take] = src[pos:pos + take]
        pos += take
        if pos == len(src):
            break
    return pos


def open_endpoint(kind: str, path: str | None, what: str) -> HostEndpoint:
    """The host side of a port; a pty's path is announced on stderr."""
    try:
        if kind in ("listen", "connect"):
            if not path:
                raise UsageError(f"{what}: a socket path is required")
            return UnixListenEndpoint(path) if kind == "listen" else UnixConnectEndpoint(path)
        if kind == "stdio":
            return StdioEndpoint()
        if kind == "none":
            return NullEndpoint()
    except OSError as exc:
        raise UsageError(f"{what}: {path}: {exc.strerror or exc}") from None
    ep = PtyEndpoint()
    print(f"pyvirtio serve console: {what} is {ep.path}", file=sys.stderr, flush=True)
    return ep
