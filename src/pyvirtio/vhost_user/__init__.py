"""vhost-user: serve pyvirtio devices to a VMM (QEMU) over a UNIX socket.

Layers, each testable on its own:

* ``protocol`` — message numbers, protocol feature bits, limits (data only);
* ``wire`` — the header and payload structs, symmetric pack/unpack, and message framing;
* ``backend`` — :class:`BackendConnection`, the sans-I/O protocol core: bytes and fds in,
  replies and rejections out; memory table, vrings, feature negotiation, REPLY_ACK;
* ``server`` — the I/O shell: sockets with fd passing, eventfds, one event loop for many
  devices, a worker thread per vring, reconnect;
* ``testing`` — a minimal front-end for tests.

    from pyvirtio.devices.rng import RngDevice
    from pyvirtio.vhost_user import VhostUserServer
    server = VhostUserServer()
    server.add(RngDevice(), socket_path="/tmp/rng.sock")
    server.serve_forever()
"""

from .backend import DEFAULT_PROTOCOL_FEATURES, BackendConnection, Rejected, Reply
from .protocol import FrontendReq, ProtocolFeature
from .server import VhostUserServer
from .transport import VhostUserTransport

__all__ = ["BackendConnection", "DEFAULT_PROTOCOL_FEATURES", "FrontendReq", "ProtocolFeature",
           "Rejected", "Reply", "VhostUserServer", "VhostUserTransport"]
