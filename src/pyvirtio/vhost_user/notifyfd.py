"""Kick, call and err fds must be eventfds (SET_VRING_KICK/CALL/ERR).

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

from .errors import BadNotifyFd

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


__all__ = ["check_notify_fd", "is_eventfd"]
