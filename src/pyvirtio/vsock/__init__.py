"""vsock (VIRTIO 1.3, 5.10): the sans-I/O connection core, the hybrid host side, and a host API.

* ``packet`` — the 44-byte header: parse (with every check) and build;
* ``core`` — :class:`VsockCore`, the connection state machine and credit accounting for either
  side (the device plays the host, the driver the guest);
* ``hybrid`` — the UNIX-socket host side of ``pyvirtio serve vsock`` (``CONNECT <port>``);
* ``client`` — the host program's API: :func:`connect` to a guest port, :func:`listen` for
  guest connections, and their asyncio forms :func:`open_connection` and :func:`start_server`.
"""

from .client import (VsockRefused, connect, connect_port, listen, listen_path, open_connection,
                     start_server)
from .core import VsockCore
from .packet import VsockPacketError

__all__ = ["VsockCore", "VsockPacketError", "VsockRefused", "connect", "connect_port", "listen",
           "listen_path", "open_connection", "start_server"]
