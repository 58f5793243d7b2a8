"""Fault injection for the network device (issue 16; rules: :mod:`pyvirtio.faults`).

While the device has a rule, every frame takes the general path (the transmit batch fast path
and the zero-copy receive are skipped), so each frame is seen once, as a copy, by
:class:`NetFaults`: ``drop`` loses it (counted as dropped), ``corrupt`` flips one byte past
the Ethernet header, ``dup`` delivers it twice, ``reorder`` keeps it until the next frame of the
same direction has gone, ``delay`` holds it in a :class:`~pyvirtio.timerfd.DueQueue` whose
timerfd the device returns from ``host_fds``.  ``dir=tx`` is the guest's transmit (to the
back-end), ``dir=rx`` its receive.  ``flap`` takes the link down and up every ``period_ms``
(the driver sees STATUS change with a config interrupt, as for ``set_link``).

Owned by the device's one worker, like the rest of the device: no lock.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Union

from ..faults import NET_FRAME_KINDS, FaultRule
from ..memory import GuestMemory
from ..net.frame import ETH_HLEN
from ..timerfd import DueQueue

if TYPE_CHECKING:
    from .net_rxpath import ReceivePath
    from .net import NetDevice

#: A held frame: ("tx", pair, bytes as the back-end takes them) or ("rx", header, frame).
Held = tuple[str, Union[int, bytes], bytes]
_FLAP = frozenset({"flap"})


class NetFaults:
    def __init__(self, device: "NetDevice"):
        self.dev = device
        self.due: DueQueue[Union[Held, FaultRule]] = DueQueue()
        self.link_down = False  # a flap rule has the link down now
        self._flapping: set[int] = set()  # ids of the flap rules scheduled
        self._reordered: dict[str, Held | None] = {"tx": None, "rx": None}

    # --- transmit -------------------------------------------------------------------------------

    def tx(self, data: bytes, pair: int, skip: int) -> bool:
        """One transmitted frame (``data`` as the back-end takes it, Ethernet at ``skip``-less
        offset ``12 - skip``); False if the back-end refused it (the chain is kept and retried)."""
        fired = self.dev.faults.firing(NET_FRAME_KINDS, pair, dir="tx")
        kinds = {r.kind for r in fired}
        stats = self.dev.stats
        if "drop" in kinds:
            stats["tx_dropped"] += 1
            return True
        if "corrupt" in kinds:
            data = _corrupt(data, 12 - skip, _rule(fired, "corrupt"))
        if "delay" in kinds:
            self.due.push(time.monotonic() + _delay(fired), ("tx", pair, data))
            return True
        if "reorder" in kinds and self._reordered["tx"] is None:
            self._reordered["tx"] = ("tx", pair, data)
            return True
        if not self._send(data):
            return False
        if "dup" in kinds:
            self._send(data)
        held, self._reordered["tx"] = self._reordered["tx"], None
        if held is not None:
            self._send(held[2])
        return True

    def _send(self, data: bytes) -> bool:
        if not self.dev.backend.send([memoryview(data)]):
            return False
        self.dev.stats["tx_packets"] += 1
        self.dev.stats["tx_bytes"] += len(data)
        return True

    # --- receive --------------------------------------------------------------------------------

    def rx(self, mem: GuestMemory | None, rx: "ReceivePath", header: bytes, frame: bytes) -> bool:
        """One received frame on its way to the guest; False once there are no buffers left."""
        pair = rx._steer(frame)
        fired = self.dev.faults.firing(NET_FRAME_KINDS, pair, dir="rx")
        kinds = {r.kind for r in fired}
        if "drop" in kinds:
            self.dev.stats["rx_dropped"] += 1
            return True
        if "corrupt" in kinds:
            frame = _corrupt(frame, 0, _rule(fired, "corrupt"))
        if "delay" in kinds:
            self.due.push(time.monotonic() + _delay(fired), ("rx", header, frame))
            return True
        if "reorder" in kinds and self._reordered["rx"] is None:
            self._reordered["rx"] = ("rx", header, frame)
            return True
        more = rx.deliver(mem, header, frame)
        if "dup" in kinds:
            more = rx.deliver(mem, header, frame) and more
        held, self._reordered["rx"] = self._reordered["rx"], None
        if held is not None:
            more = rx.deliver(mem, bytes(held[1]), held[2]) and more
        return more

    # --- timers: delayed frames, link flaps -----------------------------------------------------

    def service(self, mem: GuestMemory | None) -> None:
        """From the worker's ``host_ready``: start or stop flapping as the rules say, deliver
        the frames now due, flip the link if a flap is due."""
        now = time.monotonic()
        flaps = [r for r in self.dev.faults.rules if r.kind == "flap"]
        for rule in flaps:
            if rule.id not in self._flapping:
                self._flapping.add(rule.id)
                self.due.push(now + rule.period_ms / 1000.0, rule)
        if not flaps and self.link_down:
            self._set_link_down(False)  # the rule is gone: the cable is back
        live = {r.id for r in flaps}
        self._flapping &= live
        if not self.due:
            return
        for item in self.due.pop_due(now):
            if isinstance(item, FaultRule):
                if item.id in live and item.trigger():
                    self.dev.faults.fired(item, what=" (link %s)" % ("up" if self.link_down else "down"))
                    self._set_link_down(not self.link_down)
                if item.id in live and not item.spent:
                    self.due.push(now + item.period_ms / 1000.0, item)
                else:
                    self._flapping.discard(item.id)
                    if self.link_down:
                        self._set_link_down(False)
            elif item[0] == "tx":
                if not self._send(item[2]):
                    self.dev.stats["tx_dropped"] += 1
            else:
                self.dev.rx.deliver(mem, bytes(item[1]), item[2])

    def _set_link_down(self, down: bool) -> None:
        before = self.dev.link_up
        self.link_down = down
        if before != self.dev.link_up:
            self.dev._link_changed()

    def fds(self) -> list[tuple[int, int]]:
        import select
        return [(self.due.fd, select.POLLIN)] if self.due.fd >= 0 else []

    def reset(self) -> None:
        self._reordered = {"tx": None, "rx": None}
        for item in self.due.pop_all():
            if isinstance(item, FaultRule):
                self._flapping.discard(item.id)

    def close(self) -> None:
        self.due.close()


def _rule(fired: list[FaultRule], kind: str) -> FaultRule:
    return next(r for r in fired if r.kind == kind)


def _delay(fired: list[FaultRule]) -> float:
    return max(r.sample_delay() for r in fired if r.kind == "delay")


def _corrupt(data: bytes, start: int, rule: FaultRule) -> bytes:
    """Flip every bit of one byte after the Ethernet header (the checksum of what it carries
    no longer matches)."""
    first = start + ETH_HLEN
    if len(data) <= first:
        return data
    at = first + int(rule.random() * (len(data) - first))
    out = bytearray(data)
    out[at] ^= 0xFF
    return bytes(out)


__all__ = ["NetFaults"]
