"""Errors of the vhost-user front-end (the driver side of the socket).

Everything a back-end can get wrong is a :class:`BackendError`, a
:class:`~pyvirtio.errors.PeerProtocolError` (through the back-end engineer's
:class:`~pyvirtio.vhost_user.errors.VhostUserError`, so ``except VhostUserError`` catches both
directions).  ``scope`` says what is lost:

* ``Scope.CONNECTION`` — the stream can no longer be trusted (a reply of the wrong type, a short
  reply, a hang-up, no answer at all).  The connection refuses every later call
  (:class:`FrontendBroken`); the caller reconnects.
* ``Scope.REQUEST`` — the back-end refused one request in an orderly way (a non-zero REPLY_ACK,
  GET_CONFIG's empty error reply).  The connection goes on.

Misuse of the front-end API by its caller (asking for a protocol feature that was not
negotiated, configuring a ring that was never sized) is a :class:`FrontendUsageError`, a
:class:`~pyvirtio.errors.UsageError`: our bug, not the peer's.  Failing to reach a back-end at all
(no socket file, nobody listening) is a :class:`BackendUnreachable`, a
:class:`~pyvirtio.errors.TransportError`.
"""

from __future__ import annotations

from ...errors import PeerDisconnected, Scope, TransportError, UsageError
from ..errors import VhostUserError


class BackendError(VhostUserError):
    """The back-end broke the vhost-user protocol; the connection is lost."""

    scope = Scope.CONNECTION


class BadReplyHeader(BackendError):
    """A reply header with a wrong version, the REPLY bit missing, or reserved bits set."""


class WrongReplyType(BackendError):
    """A reply whose request number is not the one the front-end waits for."""


class UnsolicitedReply(BackendError):
    """A message arrived while no reply was outstanding."""


class BadReplySize(BackendError):
    """A reply payload shorter or longer than its request's reply type."""


class UnexpectedFds(BackendError):
    """A reply carried file descriptors where none may come (they are closed at once)."""


class BadReplyValue(BackendError):
    """A reply whose value cannot be right (the wrong ring index, zero queues …)."""


class ReplyTimeout(BackendError):
    """The back-end did not answer a request that needs a reply in time (it hangs)."""


class BackendHungUp(BackendError, PeerDisconnected):
    """The back-end closed the connection (or reset it)."""


class ReconnectFailed(BackendHungUp):
    """The back-end went away and none answered at its socket path again within the reconnect
    timeout (a transport made with ``reconnect=True`` gives up)."""


class FrontendBroken(BackendError):
    """A call on a connection that an earlier fatal error (or a close) ended."""


class RequestNacked(BackendError):
    """REPLY_ACK: the back-end answered a request with a non-zero u64 (it refused it)."""

    scope = Scope.REQUEST

    def __init__(self, request_name: str, value: int):
        self.request_name = request_name
        self.value = value
        super().__init__(f"back-end refused {request_name} (REPLY_ACK value {value})")


class ConfigReadFailed(BackendError):
    """GET_CONFIG answered with an empty payload: the back-end's way to say "error"."""

    scope = Scope.REQUEST


class BackendRequestRefused(BackendError):
    """A request on the back-end request channel that breaks a rule (an unknown or unsupported
    request, a feature not negotiated, a wrong payload size, fds where none belong): refused
    with a log line, and a non-zero REPLY_ACK when one was asked for.  The connection goes on."""

    scope = Scope.REQUEST


class BackendChannelLost(BackendError):
    """The back-end request channel can no longer be kept in step (a header it cannot recover
    from, end of file, a back-end that does not read our answers): that channel is closed; the
    main connection goes on, without config-change notifications."""

    scope = Scope.REQUEST


class FrontendUsageError(UsageError):
    """The caller asked the front-end for something its state does not allow."""


class BackendUnreachable(TransportError):
    """No back-end at the socket path: no such file, not a socket, or connection refused."""


__all__ = ["BackendError", "BadReplyHeader", "WrongReplyType", "UnsolicitedReply", "BadReplySize",
           "UnexpectedFds", "BadReplyValue", "ReplyTimeout", "BackendHungUp", "ReconnectFailed",
           "FrontendBroken",
           "RequestNacked", "ConfigReadFailed", "FrontendUsageError", "BackendUnreachable",
           "BackendRequestRefused", "BackendChannelLost"]
