"""The virtio-net header of a transmitted packet (5.1.6.2): what the device checks before it
passes the frame on.

Only two fields ask anything of the device: ``flags`` (NEEDS_CSUM: the device — or a back-end
that takes the header, ``vnet_hdr`` — completes the checksum at ``csum_start + csum_offset``) and
``gso_type`` (the device segments the frame).  The driver may use each only with the matching
feature (5.1.6.2.1: without VIRTIO_NET_F_CSUM, ``flags`` is zero; without HOST_TSO4/TSO6/UFO/USO,
``gso_type`` is GSO_NONE); a header asking for more than was negotiated is the driver's fault and
its frame is dropped.  Flag bits the device does not know are ignored (5.1.6.2.2), and so are
``hdr_len``, ``gso_size`` and the checksum fields when the offload is not asked for.

:func:`all_plain` checks a batch of headers at C speed: when every frame's ``flags`` and
``gso_type`` are zero — what a driver without offloads sends — nothing more needs reading.
"""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING, Sequence

from ..spec import net as spec

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

F = spec.NetFeature
_NEEDS_CSUM = spec.NetHdrFlag.NEEDS_CSUM
_ECN = spec.NET_HDR_GSO_ECN
#: gso_type -> the feature that lets the driver ask for it (5.1.6.2.1)
_GSO_FEATURE = {spec.NetGsoType.TCPV4: F.HOST_TSO4, spec.NetGsoType.TCPV6: F.HOST_TSO6,
                spec.NetGsoType.UDP: F.HOST_UFO, spec.NetGsoType.UDP_L4: F.HOST_USO}
_FLAGS, _GSO_TYPE = itemgetter(0), itemgetter(1)


def all_plain(views: Sequence[memoryview]) -> bool:
    """Whether every buffer (each starting with its header) has ``flags`` and ``gso_type`` 0."""
    return not any(map(_FLAGS, views)) and not any(map(_GSO_TYPE, views))


def header_error(header: Buffer, frame_len: int, features: int) -> str | None:
    """Why the header of a ``frame_len``-byte frame (header not counted) asks for what the
    ``features`` the driver negotiated do not allow; None when it is fine."""
    flags, gso_type, _hdr_len, _gso_size, csum_start, csum_offset, _ = spec.NET_HDR.unpack_from(header)
    if flags & _NEEDS_CSUM:
        if not features >> F.CSUM & 1:
            return "NEEDS_CSUM without VIRTIO_NET_F_CSUM (5.1.6.2.1)"
        if csum_start + csum_offset + 2 > frame_len:
            return f"checksum at {csum_start}+{csum_offset} is past the end of a {frame_len}-byte frame"
    gso = gso_type & ~_ECN
    if gso:
        feature = _GSO_FEATURE.get(gso)
        if feature is None or not features >> feature & 1:
            return f"gso_type {gso_type:#x} was not negotiated (5.1.6.2.1)"
        if gso_type & _ECN and not features >> F.HOST_ECN & 1:
            return "GSO with ECN without VIRTIO_NET_F_HOST_ECN (5.1.6.2.1)"
    elif gso_type & _ECN:
        return "ECN on a frame without GSO"
    return None
