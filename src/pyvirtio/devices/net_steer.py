"""Receive steering with several queue pairs (VIRTIO 1.3, 5.1.6.5.6, "automatic receive steering").

A flow is the unordered pair of its endpoints (IP addresses and TCP/UDP ports, or MAC addresses
for anything that is not IP), so a frame and its answer have the same key.  When the driver sends
a frame of a flow on transmitq X, later frames of that flow go to receiveq X (the spec's SHOULD);
a flow never seen goes to a queue chosen by a hash of its key.
"""

from __future__ import annotations

import zlib

MAX_FLOWS = 4096
_TCP_UDP = (6, 17)


def flow_key(frame) -> bytes:
    """A key equal for both directions of a flow."""
    frame = bytes(frame[:64])
    ethertype = frame[12:14]
    if ethertype == b"\x08\x00" and len(frame) >= 34:
        ihl = (frame[14] & 0x0F) * 4
        proto, src, dst, ports_at = frame[23], frame[26:30], frame[30:34], 14 + ihl
    elif ethertype == b"\x86\xdd" and len(frame) >= 54:
        proto, src, dst, ports_at = frame[20], frame[22:38], frame[38:54], 54
    else:
        a, b = frame[0:6], frame[6:12]
        return min(a, b) + max(a, b)
    if proto in _TCP_UDP and len(frame) >= ports_at + 4:
        src += frame[ports_at:ports_at + 2]
        dst += frame[ports_at + 2:ports_at + 4]
    return bytes((proto,)) + min(src, dst) + max(src, dst)


class FlowTable:
    """Which transmit queue each flow was last sent on."""

    def __init__(self) -> None:
        self.flows: dict[bytes, int] = {}

    def clear(self) -> None:
        self.flows.clear()

    def learn(self, views, pair: int) -> None:
        frame = b"".join(views) if isinstance(views, list) else views
        if len(self.flows) >= MAX_FLOWS:
            self.flows.clear()
        self.flows[flow_key(frame)] = pair

    def lookup(self, frame, pairs: int) -> int:
        key = flow_key(frame)
        pair = self.flows.get(key)
        if pair is not None and pair < pairs:
            return pair
        return zlib.crc32(key) % pairs
