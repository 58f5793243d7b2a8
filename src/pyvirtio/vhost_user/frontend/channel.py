"""The front-end's end of the back-end request channel, sans I/O (vhost-user.rst, "Back-end
communication").

With ``VHOST_USER_PROTOCOL_F_BACKEND_REQ`` negotiated the front-end makes a UNIX stream socket
pair and hands one end to the back-end (SET_BACKEND_REQ_FD); the back-end then sends requests of
its own on it.  A :class:`FrontendChannel` is fed what the other end delivers —
``receive(data, fds)`` — and returns what happened (:class:`ConfigChanged`,
:class:`RequestRefused`) and the answers to write (:class:`ChannelReply`).  It never touches a
socket.

The back-end is not trusted here either; each message is checked before it is acted on:

* the header: version 1 and a payload of at most MAX_BACKEND_PAYLOAD bytes (else the stream cannot be
  followed: :class:`~.frontend_errors.BackendChannelLost` is raised and the shell closes this
  channel — only this channel: the main connection goes on), no reserved flag bits, no REPLY bit
  (the front-end asks nothing on this channel, so nothing can answer it);
* no fds: BACKEND_SEND_FD is never negotiated, and no request pyvirtio takes carries one (fds
  that came anyway are closed at once);
* the request: ``CONFIG_CHANGE_MSG`` (payload empty, CONFIG negotiated: the front-end answers it
  by reading the config space with GET_CONFIG) is the one pyvirtio acts on.  IOTLB_MSG,
  VRING_HOST_NOTIFIER_MSG, VRING_CALL/VRING_ERR (INBAND_NOTIFICATIONS), the shared-object and
  shared-memory requests need protocol features pyvirtio never negotiates; anything else is not
  a request at all.

A request that fails is refused with one log line (rate-limited: a flooding back-end silences
only itself) and, when it asks for an answer (NEED_REPLY, REPLY_ACK negotiated), a u64 1; an
accepted one gets a u64 0.  Config changes are coalesced: any number of CONFIG_CHANGE_MSG in one
``receive`` is one :class:`ConfigChanged` (one re-read tells the driver everything).  Answers
come first in the output: a back-end that waits for its REPLY_ACK (libvhost-user does) must get
it before the front-end turns to the main channel to read the config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from ...limits import PeerLog
from ...spec.vhost_user import BACKEND_REQUEST_PAYLOAD_SIZE
from ..fdio import close_fds
from ..errors import FramingError
from .errors import BackendChannelLost, BackendRequestRefused
from ..protocol import KNOWN_FLAGS, MAX_PAYLOAD_SIZE, BackendReq, HeaderFlag, ProtocolFeature, request_name
from ..wire import U64, Framer, Message, encode_reply

log = logging.getLogger("pyvirtio.vhost_user.frontend.connection")

PF = ProtocolFeature

#: The back-end requests pyvirtio's front-end acts on, with the protocol feature each needs.
HANDLED: dict[BackendReq, ProtocolFeature] = {BackendReq.CONFIG_CHANGE_MSG: PF.CONFIG}
#: A header announcing a larger payload cannot be followed (the main channel's limit: an unknown
#: request with a payload up to this is refused on its own, and the channel goes on).
MAX_BACKEND_PAYLOAD = MAX_PAYLOAD_SIZE


# --- outputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigChanged:
    """The back-end's config space changed: read it again and tell the driver."""


@dataclass(frozen=True)
class RequestRefused:
    """A back-end request that was refused, and why."""

    request: int
    error: BackendRequestRefused


@dataclass(frozen=True)
class ChannelReply:
    """Bytes (one REPLY_ACK) to write back on the channel."""

    data: bytes


ChannelOutput = ConfigChanged | RequestRefused | ChannelReply


# --- the channel -------------------------------------------------------------------------------


class FrontendChannel:
    """The front-end's end of one back-end request channel; ``protocol_features`` are the ones
    negotiated on the main connection."""

    def __init__(self, protocol_features: int, *, name: str = "vhost-user"):
        self.name = name
        self.protocol_features = protocol_features
        self._framer = Framer(max_payload=MAX_BACKEND_PAYLOAD)
        self.log = PeerLog(log)
        self.closed = False
        self.requests = 0  # back-end requests received (statistics)
        self.refused = 0
        self.config_changes = 0

    def has_protocol_feature(self, bit: ProtocolFeature) -> bool:
        return bool(self.protocol_features & (1 << bit))

    def receive(self, data: bytes, fds: Sequence[int] = ()) -> list[ChannelOutput]:
        """Take bytes (and fds) from the channel; handle every message they complete.  Raises
        BackendChannelLost when the stream cannot be followed (the channel is then closed)."""
        if self.closed:
            close_fds(fds)
            raise BackendChannelLost(f"{self.name}: back-end request channel is closed")
        self._framer.push(data, list(fds))
        replies: list[ChannelOutput] = []
        events: list[ChannelOutput] = []
        while True:
            try:
                msg = self._framer.next_message()
            except FramingError as exc:
                self.close()
                raise BackendChannelLost(f"{self.name}: back-end request channel: {exc}") from None
            if msg is None:
                break
            self._handle(msg, replies, events)
        changed = [e for e in events if isinstance(e, ConfigChanged)]
        refused = [e for e in events if not isinstance(e, ConfigChanged)]
        return replies + refused + changed[:1]

    def _handle(self, msg: Message, replies: list[ChannelOutput], events: list[ChannelOutput]) -> None:
        self.requests += 1
        name = request_name(msg.request, BackendReq, "back-end request {}")
        try:
            self._check(msg)
        except BackendRequestRefused as exc:
            self.refused += 1
            self.log.warning("%s: back-end request %s refused: %s", self.name, name, exc)
            events.append(RequestRefused(msg.request, exc))
            self._answer(msg, 1, replies)
            return
        finally:
            close_fds(msg.fds)
        self.config_changes += 1
        log.debug("%s: %s from the back-end", self.name, name)
        self._answer(msg, 0, replies)
        events.append(ConfigChanged())

    def _check(self, msg: Message) -> None:
        if msg.flags & ~KNOWN_FLAGS:
            raise BackendRequestRefused(f"reserved header flag bits {msg.flags & ~KNOWN_FLAGS:#x}")
        if msg.flags & HeaderFlag.REPLY:
            raise BackendRequestRefused("a reply, but the front-end asks nothing on this channel")
        if msg.fds:
            raise BackendRequestRefused(f"{len(msg.fds)} fds where none belong (closed; "
                                        "BACKEND_SEND_FD is not negotiated)")
        if msg.request not in BackendReq._value2member_map_:
            raise BackendRequestRefused("not a back-end request vhost-user defines")
        request = BackendReq(msg.request)
        gate = HANDLED.get(request)
        if gate is None:
            raise BackendRequestRefused("pyvirtio's front-end does not take it (its protocol "
                                        "feature is never negotiated)")
        if not self.has_protocol_feature(gate):
            raise BackendRequestRefused(f"needs protocol feature {gate.name}, not negotiated")
        size = BACKEND_REQUEST_PAYLOAD_SIZE[request]
        if len(msg.payload) != size:
            raise BackendRequestRefused(f"payload is {len(msg.payload)} bytes, expected {size}")

    def _answer(self, msg: Message, value: int, replies: list[ChannelOutput]) -> None:
        if not msg.need_reply:
            return
        if not self.has_protocol_feature(PF.REPLY_ACK):
            self.log.warning("%s: %s asks for an answer (NEED_REPLY) without REPLY_ACK "
                             "negotiated; none sent", self.name, request_name(msg.request, BackendReq, "back-end request {}"))
            return
        replies.append(ChannelReply(encode_reply(msg.request, U64(value).pack())))

    def close(self) -> None:
        self.closed = True
        close_fds(self._framer.take_all_fds())


__all__ = ["FrontendChannel", "ConfigChanged", "RequestRefused", "ChannelReply", "ChannelOutput",
           "HANDLED", "MAX_BACKEND_PAYLOAD"]
