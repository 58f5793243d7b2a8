"""vhost-user: serve pyvirtio devices to a VMM (QEMU) over a UNIX socket, and drive any
vhost-user back-end from pyvirtio's drivers.

Layers, each testable on its own:

* ``protocol`` — message numbers, protocol feature bits, the feature sets, limits (data only);
* ``wire`` — the header and payload structs, symmetric pack/unpack, and message framing;
* ``fdio`` — fds across the socket (SCM_RIGHTS) and closing the ones nobody keeps;
* ``errors`` — what a peer's message can break (shared by both sides);
* ``backend`` — the device side: :class:`BackendConnection` (``backend.connection``), the
  sans-I/O protocol core (bytes and fds in, replies and rejections out; the rules as a table),
  with its ``vring``, ``memmap`` (memory table), ``inflight`` and ``notifyfd`` parts, and
  :class:`VhostUserServer` (``backend.server``), the I/O shell: sockets with fd passing,
  eventfds, one event loop for many devices, a worker per queue group, reconnect;
* ``frontend`` — the driver side: :class:`FrontendConnection` (``frontend.connection``, sans-I/O)
  and the back-end request ``channel``, :class:`VhostUserClient` (``frontend.client``, its I/O
  shell), :class:`VhostUserTransport` (``frontend.transport``, the ``DriverTransport`` every
  driver runs on) and ``identify`` (what a back-end is);
* ``testing`` — :class:`TestFrontend`, the real front-end driven step by step for tests;
* ``tools`` — programs that test other implementations: a recording proxy, a fuzzer of
  back-ends and a hostile back-end for front-ends.

    from pyvirtio.devices.rng import RngDevice
    from pyvirtio.vhost_user import VhostUserServer
    server = VhostUserServer()
    server.add(RngDevice(), socket_path="/tmp/rng.sock")
    server.serve_forever()
"""

from .backend.connection import BackendConnection, Rejected, Reply
from .backend.server import Endpoint, Session, VhostUserServer
from .frontend.client import VhostUserClient
from .frontend.connection import FrontendConnection
from .frontend.transport import VhostUserTransport, open_transport
from .protocol import DEFAULT_PROTOCOL_FEATURES, FrontendReq, ProtocolFeature

__all__ = ["BackendConnection", "DEFAULT_PROTOCOL_FEATURES", "Endpoint", "FrontendConnection",
           "FrontendReq", "ProtocolFeature", "Rejected", "Reply", "Session", "VhostUserClient",
           "VhostUserServer", "VhostUserTransport", "open_transport"]
