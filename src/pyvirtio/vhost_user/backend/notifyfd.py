"""Kick, call and err fds must be eventfds (SET_VRING_KICK/CALL/ERR); the back-end request
channel must be a UNIX stream socket (SET_BACKEND_REQ_FD).

The vhost-user spec says these are eventfds, and QEMU and DPDK only ever send eventfds.  Anything
else would hand the front-end control over the daemon: a pipe or socket can reach end of file (a
kick fd that is always readable), fill up (a call fd whose write blocks), and the O_NONBLOCK flag
pyvirtio sets lives in the open file description the front-end shares and may clear again.  An
eventfd has none of the first two failure modes, and a write to one can only block when its
counter is at its maximum, which the I/O shell checks with poll(2) before writing
(``server._signal``).  So the back-end refuses any other kind of fd with
:class:`~.errors.BadNotifyFd` when it arrives.
"""

from __future__ import annotations

import os

import socket
import stat

from ..errors import BadChannelFd, BadNotifyFd

_EVENTFD = "anon_inode:[eventfd]"


def is_eventfd(fd: int) -> bool:
    """Whether ``fd`` is an eventfd (Linux: its /proc/self/fd link names the anon inode)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == _EVENTFD
    except OSError:
        return False


def check_notify_fd(fd: int, what: str) -> None:
    """Raise BadNotifyFd unless ``fd`` is an eventfd."""
    if not is_eventfd(fd):
        try:
            kind = os.readlink(f"/proc/self/fd/{fd}")
        except OSError as exc:
            kind = exc.strerror or "unknown"
        raise BadNotifyFd(f"{what} fd is not an eventfd ({kind})")


def check_channel_fd(fd: int, what: str) -> None:
    """Raise BadChannelFd unless ``fd`` is a UNIX stream socket (what QEMU and libvhost-user
    make with ``socketpair(AF_UNIX, SOCK_STREAM)``): a datagram socket would cut messages, a
    pipe or a file could not be written to without blocking on the front-end's terms."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise BadChannelFd(f"{what} fd: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise BadChannelFd(f"{what} fd is not a socket")
    sock = socket.socket(fileno=fd)
    try:
        family, kind = sock.family, sock.type
    finally:
        sock.detach()
    if family != socket.AF_UNIX or kind != socket.SOCK_STREAM:
        raise BadChannelFd(f"{what} fd is a {getattr(family, 'name', family)} "
                           f"{getattr(kind, 'name', kind)} socket, not a UNIX stream socket")


__all__ = ["check_notify_fd", "check_channel_fd", "is_eventfd"]
