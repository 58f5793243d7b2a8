"""The vsock packet header (VIRTIO 1.3, 5.10.6): one symmetric codec, and its checks.

:func:`parse_header` takes the 44 header bytes and the payload length the chain carries and
returns a :class:`~pyvirtio.spec.vsock.VsockHdr`, or raises :class:`VsockPacketError` — never
anything untyped — for a packet no peer may send: a short header, an unknown op or type, a
``len`` that is not the payload's length, a payload on anything but RW, a payload larger than
:data:`MAX_PKT_PAYLOAD`, ports or CIDs past 32 bits.  :func:`build_header` is its inverse.
"""

from __future__ import annotations

from ..errors import Scope, VirtioError
from ..spec.vsock import VSOCK_HDR, VSOCK_HDR_SIZE, VsockHdr, VsockOp, VsockType

#: The largest payload of one packet: Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE (64 KiB); a guest
#: never sends more in one packet, and a device never needs to.
MAX_PKT_PAYLOAD = 64 * 1024
_U32 = 0xFFFFFFFF
_OPS = frozenset(int(op) for op in VsockOp if op != VsockOp.INVALID)
_TYPES = frozenset(int(t) for t in VsockType)


class VsockPacketError(VirtioError):
    """A packet from the peer breaks 5.10.6: it is dropped (and counted); the connection it
    names, if any, is reset.  Only this packet is lost."""

    scope = Scope.REQUEST


def parse_header(raw: bytes | memoryview, payload_len: int) -> VsockHdr:
    """The header of a packet whose payload (what follows the header) is ``payload_len`` bytes."""
    if len(raw) < VSOCK_HDR_SIZE:
        raise VsockPacketError(f"packet of {len(raw)} bytes is shorter than the "
                               f"{VSOCK_HDR_SIZE}-byte header (5.10.6)")
    hdr = VsockHdr(*VSOCK_HDR.unpack_from(raw))
    if hdr.op not in _OPS:
        raise VsockPacketError(f"unknown op {hdr.op} (5.10.6)")
    if hdr.type not in _TYPES:
        raise VsockPacketError(f"unknown socket type {hdr.type} (5.10.6.2)")
    if hdr.len != payload_len:
        raise VsockPacketError(f"{VsockOp(hdr.op).name}: len {hdr.len} but {payload_len} payload "
                               "bytes follow the header")
    if hdr.len and hdr.op != VsockOp.RW:
        raise VsockPacketError(f"{VsockOp(hdr.op).name} carries {hdr.len} payload bytes (only RW may)")
    if hdr.len > MAX_PKT_PAYLOAD:
        raise VsockPacketError(f"RW of {hdr.len} bytes is larger than {MAX_PKT_PAYLOAD}")
    if hdr.src_cid > _U32 or hdr.dst_cid > _U32:
        raise VsockPacketError(f"CID {max(hdr.src_cid, hdr.dst_cid):#x} does not fit 32 bits "
                               "(5.10.4: the upper bits are reserved)")
    return hdr


def build_header(*, src_cid: int, dst_cid: int, src_port: int, dst_port: int, op: int,
                 length: int = 0, type: int = VsockType.STREAM, flags: int = 0,
                 buf_alloc: int = 0, fwd_cnt: int = 0) -> bytes:
    """The 44 header bytes (5.10.6), every field little-endian."""
    return VSOCK_HDR.pack(src_cid, dst_cid, src_port, dst_port, length, type, op, flags,
                          buf_alloc & _U32, fwd_cnt & _U32)


__all__ = ["MAX_PKT_PAYLOAD", "VsockPacketError", "build_header", "parse_header"]
