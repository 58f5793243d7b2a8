"""One vring as the vhost-user back-end sees it: its queue, its fds, and its two state bits.

vhost-user.rst, "Ring states": started/stopped and enabled/disabled are independent.  A ring
starts stopped (and disabled); it starts when it gets its kick fd (SET_VRING_KICK, or the NOFD
bit for polling) and stops on GET_VRING_BASE.  With VHOST_USER_F_PROTOCOL_FEATURES negotiated it
is enabled only by SET_VRING_ENABLE; without it, it is enabled from the start.

The queue object itself belongs to the device (``device.queues[index]``): negotiating
VIRTIO_F_RING_PACKED replaces it with a packed one, and a device reset turns it back into a
split one.  A Vring therefore never holds the queue; :attr:`Vring.queue` looks it up each time,
and what the front-end told us about the ring (size, addresses, base) is kept here, so it can be
applied to whichever queue object the device has when the ring starts.

pyvirtio processes a ring only when it is started, enabled, mapped (its addresses translate in
the current memory table) and not broken.  A started but disabled ring is left alone ("process
without side effects" cannot be honoured by a disk: a write *is* its side effect); kicks that
arrive meanwhile are not lost, because the shell drains every active ring after each change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from ..fdio import close_fds
from ..wire import VringAddr

if TYPE_CHECKING:
    from ...device import VirtioDevice
    from ...virtq import DeviceQueue


@dataclass(eq=False)
class Vring:
    index: int
    device: "VirtioDevice"
    num: int | None = None  # SET_VRING_NUM (None: the queue's maximum)
    addr: VringAddr | None = None  # front-end (user) addresses as sent by SET_VRING_ADDR
    base: int = 0  # SET_VRING_BASE: split: the next avail index; packed: both positions + wraps
    kick_fd: int = -1
    call_fd: int = -1
    err_fd: int = -1
    polling: bool = False  # SET_VRING_KICK with NOFD: no kick fd, the back-end polls
    started: bool = False
    enabled: bool = False
    mapped: bool = False  # the addresses translate in the current memory table
    fault: str | None = field(default=None)  # why the ring stopped being processed
    chains: int = 0  # descriptor chains processed on this connection (statistics)
    notify_once: bool = False  # signal the call fd after the next drain (inflight recovery)

    @property
    def queue(self) -> DeviceQueue:
        """The device's queue object for this ring (the device owns it; see the module doc)."""
        return self.device.queues[self.index]

    @property
    def active(self) -> bool:
        """Whether the back-end may process the ring now."""
        return self.started and self.enabled and self.mapped and not self.queue.broken

    def set_fd(self, kind: str, fd: int) -> None:
        """Replace the kick/call/err fd (closing the old one; fd numbers are forgotten at once)."""
        attr = f"{kind}_fd"
        old = getattr(self, attr)
        setattr(self, attr, fd)
        if old != fd:
            close_fds((old,))

    def close_fds(self) -> None:
        for kind in ("kick", "call", "err"):
            self.set_fd(kind, -1)

    def reset(self) -> None:
        """Back to the state of a fresh connection (fds closed, queue reset)."""
        self.close_fds()
        self.queue.reset()
        self.addr = self.num = None
        self.base = 0
        self.polling = self.started = self.enabled = self.mapped = self.notify_once = False
        self.fault = None

    def describe(self) -> str:
        state = ("started" if self.started else "stopped") + ("/enabled" if self.enabled else "/disabled")
        return f"vring {self.index} ({state})"
