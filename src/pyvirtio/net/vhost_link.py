"""Link state over vhost-user, shown the only way a vhost-user-net front-end can see it.

QEMU keeps a vhost-user network device's config space (and its STATUS bit) to itself: a
back-end's config interrupt goes nowhere.  What QEMU does watch is the connection: when the
back-end's socket closes it takes the guest's link down, and when its reconnecting chardev
(``-chardev socket,...,reconnect=N``) gets through again it brings the link back up.

So :class:`VhostLinkControl` turns ``NetDevice.set_link(False)`` into "hang up, and hide the
socket file" (QEMU's reconnect attempts then find nothing), and ``set_link(True)`` into "show
the socket file again".  Renaming the file leaves the server's listening socket untouched, so
this works from any thread without reaching into the server's loop.
"""

from __future__ import annotations

import logging
import os
import socket

from ..errors import UsageError

log = logging.getLogger(__name__)


class VhostLinkControl:
    """Mirror a device's link onto a vhost-user endpoint (``VhostUserServer.add``'s result)."""

    def __init__(self, device, endpoint):
        if not endpoint.path:
            raise UsageError("link control needs an endpoint the server listens on by path")
        self.device = device
        self.endpoint = endpoint
        self.path = endpoint.path
        self.hidden = f"{self.path}.link-down"
        device.link_listeners.append(self._changed)
        if not device.link_up:
            self._changed(False)

    def _changed(self, up: bool) -> None:
        if up:
            _rename(self.hidden, self.path)
            log.info("%s: link up: the front-end may connect again", self.path)
            return
        _rename(self.path, self.hidden)
        session = self.endpoint.session
        if session is not None:
            try:
                session.sock.shutdown(socket.SHUT_RDWR)  # the server sees the hang-up and resets
            except OSError:
                pass
        log.info("%s: link down: front-end disconnected, socket hidden", self.path)

    def close(self) -> None:
        """Stop mirroring; the socket file is back at its path (for the server to remove)."""
        if self._changed in self.device.link_listeners:
            self.device.link_listeners.remove(self._changed)
        _rename(self.hidden, self.path)


def _rename(src: str, dst: str) -> None:
    try:
        os.rename(src, dst)
    except FileNotFoundError:
        pass
