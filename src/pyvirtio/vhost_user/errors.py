"""Errors of the vhost-user transport.

Everything a front-end can get wrong is a :class:`~pyvirtio.errors.PeerProtocolError`.  Two
kinds, told apart by ``scope``:

* :class:`MessageRejected` (``Scope.REQUEST``): one message broke a rule, but the byte stream is
  still in step.  The back-end drops the message (closing its fds), logs one line, answers a
  NACK if REPLY_ACK asked for one, and goes on.
* :class:`ConnectionFatal` (``Scope.CONNECTION``): the stream can no longer be trusted (a bad
  version, a size past any limit) or the front-end would wait forever for an answer that cannot
  be given.  The connection is broken; the shell drops it and listens again.
"""

from __future__ import annotations

from ..errors import PeerProtocolError, Scope


class VhostUserError(PeerProtocolError):
    """Root of the vhost-user peer errors."""


class ConnectionFatal(VhostUserError):
    """The connection cannot go on: framing lost, or a reply that cannot be given."""

    scope = Scope.CONNECTION


class FramingError(ConnectionFatal):
    """A header the stream cannot recover from (wrong version, payload size past the limit)."""


class ReplyImpossible(ConnectionFatal):
    """A request that must be answered with a body failed; the front-end would wait forever."""


class ConnectionBroken(ConnectionFatal):
    """Input fed to a connection that an earlier fatal error (or a close) ended."""


class MessageRejected(VhostUserError):
    """One message broke a rule; it is dropped and the connection goes on."""

    scope = Scope.REQUEST


class BadFlags(MessageRejected):
    """Reserved header flag bits set, or REPLY set on a request."""


class UnknownRequest(MessageRejected):
    """A request number the protocol does not define."""


class UnsupportedRequest(MessageRejected):
    """A defined request pyvirtio does not implement (its protocol feature is never offered)."""


class BadPayloadSize(MessageRejected):
    """The payload size does not fit the request."""


class BadFdCount(MessageRejected):
    """The message carries more or fewer fds than its request (and its NOFD bit) allow."""


class NotNegotiated(MessageRejected):
    """The request needs a (protocol) feature that was not negotiated."""


class InvalidValue(MessageRejected):
    """A field is out of range: a ring index, a queue size, a feature bit not offered …"""


class BadRingAddress(InvalidValue):
    """A ring address that no memory region maps, or a misaligned ring."""


class BadMemoryRegion(InvalidValue):
    """A memory region that cannot be mapped (overlap, size, fd type, offset past the file)."""


class BadNotifyFd(InvalidValue):
    """A kick, call or err fd that is not an eventfd (a pipe, a socket, a file …): its blocking
    mode and end-of-file would be the front-end's to control."""


class BadChannelFd(InvalidValue):
    """A SET_BACKEND_REQ_FD fd that is not a connected UNIX stream socket: the back-end request
    channel must carry whole messages in order, both ways, and be the front-end's to read."""


class WrongState(MessageRejected):
    """A request that is not allowed in the ring's or device's current state."""

