"""Listening UNIX sockets made safely, and the peer's credentials.

:func:`bind_unix` never touches another program's live socket or a file that is not a socket
(a path in use raises :class:`SocketInUse`; only a *stale* socket, one nobody listens on, is
replaced), and never exposes the socket with looser permissions than asked: it binds in a private
directory (mode 0700) next to the path, sets the mode there, and only then gives it its name with
link(2) — which fails rather than replace a file that appeared meanwhile.  :func:`unlink_if_ours`
removes the path at shutdown only if it is still the socket we made.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import tempfile

from .errors import UsageError
from .limits import MAX_PENDING_CONNECTIONS

#: Default permissions of a socket pyvirtio creates (``--socket-mode``): the owner only.
DEFAULT_SOCKET_MODE = 0o600
_UCRED = struct.Struct("iII")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }


class SocketInUse(UsageError):
    """The socket path has a live listener (or is not a socket)."""


def _clear_stale(path: str) -> None:
    """Remove ``path`` if it is a socket nobody listens on; raise SocketInUse if it is live or
    not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        try:
            os.unlink(path)  # stale: the program that made it is gone
        except FileNotFoundError:
            pass
    except OSError as exc:
        raise SocketInUse(f"{path}: {exc.strerror}") from None
    else:
        raise SocketInUse(f"{path} is in use: another program is listening on it")
    finally:
        probe.close()


def bind_unix(path: str, backlog: int = MAX_PENDING_CONNECTIONS, *,
              mode: int = DEFAULT_SOCKET_MODE) -> socket.socket:
    """A listening socket at ``path`` with permissions ``mode``, created without a race."""
    _clear_stale(path)
    private = tempfile.mkdtemp(prefix=".pyvirtio-", dir=os.path.dirname(os.path.abspath(path)))
    tmp = os.path.join(private, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(tmp)
        os.chmod(tmp, mode)
        sock.listen(backlog)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise SocketInUse(f"{path} appeared while the socket was being made") from None
    except BaseException:
        sock.close()
        raise
    finally:
        for undo in (lambda: os.unlink(tmp), lambda: os.rmdir(private)):
            try:
                undo()
            except OSError:
                pass
    return sock


def inode_of(path: str) -> int:
    """The inode at ``path`` (record it after :func:`bind_unix` for :func:`unlink_if_ours`)."""
    try:
        return os.lstat(path).st_ino
    except OSError:
        return -1


def unlink_if_ours(path: str, inode: int) -> None:
    """Remove ``path`` if it is still the socket we made (the inode recorded at bind time)."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    if stat.S_ISSOCK(st.st_mode) and st.st_ino == inode:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def peer_credentials(sock: socket.socket) -> tuple[int, int, int] | None:
    """``(pid, uid, gid)`` of the process at the other end of a UNIX socket (SO_PEERCRED)."""
    try:
        return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return None


__all__ = ["bind_unix", "inode_of", "unlink_if_ours", "peer_credentials", "SocketInUse", "DEFAULT_SOCKET_MODE"]
