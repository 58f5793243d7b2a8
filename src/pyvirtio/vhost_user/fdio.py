"""File descriptors across a UNIX socket (SCM_RIGHTS), and closing the ones nobody keeps.

Every vhost-user message may carry fds.  The rules are the same on both sides and in every tool
(server, front-end, proxy, fuzzers), so they live here once:

* fds arrive close-on-exec (``MSG_CMSG_CLOEXEC``), a truncated set (``MSG_CTRUNC``) is reported;
* an fd sent goes with the first byte of its message (:func:`send_all` passes it once);
* an fd nobody keeps is closed at once, and a list of fds is overwritten with -1 as it is closed,
  so a reused fd number can never be closed by mistake later (:func:`close_fds`).
"""

from __future__ import annotations

import array
import os
import socket
from typing import Iterable, MutableSequence


def close_fds(fds: Iterable[int]) -> None:
    """Close every fd of ``fds`` that is not -1, ignoring errors; a list is set to -1 as it goes."""
    for i, fd in enumerate(fds):
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
        if isinstance(fds, MutableSequence):
            fds[i] = -1


def fds_of(ancdata) -> list[int]:
    """The SCM_RIGHTS fds of ``recvmsg``'s ancillary data (a partial int at the end is ignored)."""
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[:len(payload) - len(payload) % arr.itemsize])
            fds.extend(arr)
    return fds


def ancillary(fds: Iterable[int]) -> list[tuple[int, int, array.array]]:
    """``sendmsg``'s ancillary data passing ``fds`` (none for no fds)."""
    fds = list(fds)
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []


def recv_with_fds(sock: socket.socket, want: int, max_fds: int, flags: int = 0) -> tuple[bytes, list[int], bool]:
    """One ``recvmsg`` of up to ``want`` bytes (at least 1) and up to ``max_fds`` SCM_RIGHTS fds
    (close-on-exec); returns (data, fds, whether the kernel cut fds off: MSG_CTRUNC)."""
    data, ancdata, msg_flags, _ = sock.recvmsg(max(want, 1), socket.CMSG_SPACE(max_fds * 4),
                                               socket.MSG_CMSG_CLOEXEC | flags)
    return data, fds_of(ancdata), bool(msg_flags & socket.MSG_CTRUNC)


def send_all(sock: socket.socket, data: bytes, fds: Iterable[int] = ()) -> None:
    """Send all of ``data`` (a blocking socket), ``fds`` with its first byte."""
    anc = ancillary(fds)
    view = memoryview(data)
    while view:
        n = sock.sendmsg([view], anc)
        view, anc = view[n:], []


__all__ = ["ancillary", "close_fds", "fds_of", "recv_with_fds", "send_all"]
