"""vhost-user protocol numbers (QEMU docs/interop/vhost-user.rst) — data only.

The message types, protocol feature bits and header flags come from ``pyvirtio.spec.vhost_user``
(the one table of numbers); this module adds the limits pyvirtio's connections enforce and keeps
the short names the vhost-user package uses.  All numbers on the wire are in the host's native
byte order (vhost-user.rst, "Message Specification").
"""

from __future__ import annotations

from ..limits import MAX_FDS_PER_MESSAGE
from ..spec import vhost_user as _spec
from enum import IntEnum

from ..spec.vhost_user import BackendReq, FrontendReq, HeaderFlag, ProtocolFeature

VERSION = _spec.VERSION
VERSION_MASK = _spec.VERSION_MASK
KNOWN_FLAGS = int(VERSION_MASK | HeaderFlag.REPLY | HeaderFlag.NEED_REPLY)  # a plain int: ~ must see every bit

#: The virtio feature bit that says the back-end speaks protocol features (bit 30, "UNUSED").
VHOST_USER_F_PROTOCOL_FEATURES = _spec.VHOST_USER_F_PROTOCOL_FEATURES
#: vhost feature: the front-end wants dirty-page logging (needs LOG_SHMFD; pyvirtio offers neither).
VHOST_F_LOG_ALL = _spec.VHOST_F_LOG_ALL

#: SET_VRING_KICK/CALL/ERR u64 payload: bits 0-7 the ring index, bit 8 "no fd: poll".
VRING_IDX_MASK = _spec.VRING_IDX_MASK
VRING_NOFD_MASK = _spec.VRING_NOFD_MASK

#: SET_VRING_ADDR flags: log used-ring writes.
VHOST_VRING_F_LOG = _spec.VRING_ADDR_F_LOG

#: SET_CONFIG / GET_CONFIG flags.
CONFIG_FLAG_WRITABLE = _spec.ConfigFlag.WRITABLE
CONFIG_FLAG_MIGRATION = _spec.ConfigFlag.MIGRATION

#: SET_MEM_TABLE carries at most this many regions (and fds).
MEMORY_BASELINE_NREGIONS = _spec.VHOST_MEMORY_BASELINE_NREGIONS
#: Largest config space access a front-end may ask for (libvhost-user's limit).
MAX_CONFIG_SIZE = _spec.VHOST_USER_MAX_CONFIG_SIZE
#: Largest payload pyvirtio accepts; a header announcing more is a framing error.
MAX_PAYLOAD_SIZE = 4096
#: Most fds one message may carry (SET_MEM_TABLE's baseline; the number lives in pyvirtio.limits).
MAX_FDS = MAX_FDS_PER_MESSAGE

#: The protocol features both of pyvirtio's sides implement: a back-end offers them, a front-end
#: asks for them when offered.
CORE_PROTOCOL_FEATURES = sum(1 << f for f in (
    ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG, ProtocolFeature.RESET_DEVICE,
    ProtocolFeature.CONFIGURE_MEM_SLOTS, ProtocolFeature.STATUS))
#: What a pyvirtio back-end offers (and the transport asks for): the core set and the back-end
#: request channel (BACKEND_REQ), which needs an I/O shell reading a second socket.
DEFAULT_PROTOCOL_FEATURES = CORE_PROTOCOL_FEATURES | 1 << ProtocolFeature.BACKEND_REQ


def request_name(request: int, table: type[IntEnum] = FrontendReq, unknown: str = "request {}") -> str:
    """``request``'s name in ``table`` (front-end requests by default), or ``unknown`` with its
    number for a code the table does not know."""
    try:
        return table(request).name
    except ValueError:
        return unknown.format(request)


__all__ = ["BackendReq", "FrontendReq", "HeaderFlag", "ProtocolFeature", "VERSION", "VERSION_MASK",
           "KNOWN_FLAGS", "VHOST_USER_F_PROTOCOL_FEATURES", "VHOST_F_LOG_ALL", "VRING_IDX_MASK",
           "VRING_NOFD_MASK", "VHOST_VRING_F_LOG", "CONFIG_FLAG_WRITABLE", "CONFIG_FLAG_MIGRATION",
           "MEMORY_BASELINE_NREGIONS", "MAX_CONFIG_SIZE", "MAX_PAYLOAD_SIZE", "MAX_FDS",
           "CORE_PROTOCOL_FEATURES", "DEFAULT_PROTOCOL_FEATURES", "request_name"]
