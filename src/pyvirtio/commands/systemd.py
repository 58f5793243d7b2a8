"""systemd's two protocols a service speaks, without libsystemd: socket activation (sd_listen_fds(3):
``LISTEN_PID``, ``LISTEN_FDS``, ``LISTEN_FDNAMES``; the sockets start at fd 3) and readiness
notification (sd_notify(3): one datagram such as ``READY=1`` to the ``AF_UNIX`` socket named by
``NOTIFY_SOCKET``, ``@`` meaning the abstract namespace).  Outside systemd both do nothing.
"""

from __future__ import annotations

import os
import socket

from ..errors import CliUsageError

#: sd_listen_fds(3): the first passed file descriptor.
SD_LISTEN_FDS_START = 3


def listen_fd(name: str, environ=os.environ) -> int | None:
    """The socket systemd passed us (the one named ``name`` when there are several), or None when
    we were not socket-activated.  The variables are removed (as ``sd_listen_fds(1)``), so a
    child process does not take them for its own."""
    pid, count = environ.get("LISTEN_PID"), environ.get("LISTEN_FDS")
    if pid is None or count is None:
        return None
    names = environ.get("LISTEN_FDNAMES", "")
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(var, None)
    if not pid.isdigit() or int(pid) != os.getpid():
        return None  # meant for another process (our parent's, passed down by mistake)
    if not count.isdigit() or int(count) < 1:
        raise CliUsageError(f"LISTEN_FDS={count!r}: systemd passed no socket")
    n = int(count)
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n))
    for fd in fds:
        os.set_inheritable(fd, False)
    if n == 1:
        return fds[0]
    labels = names.split(":") if names else []
    if name in labels:
        return fds[labels.index(name)]
    raise CliUsageError(f"systemd passed {n} sockets and none is named {name!r} "
                        f"(LISTEN_FDNAMES={names!r}; set FileDescriptorName={name} in the .socket unit)")


def notify(state: str, environ=os.environ) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; whether there was anyone to tell."""
    address = environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError:
            return False  # systemd went away: nothing to tell, and no reason to stop serving
    return True
