"""``--switch=NAME``: an L2 learning switch inside the daemon.

Every device whose back-end names the same switch gets a :class:`SwitchPort`.  The switch learns
which port each source MAC lives behind, sends a unicast frame to that port only, and floods
broadcast, multicast and unknown destinations to every other port.

Each port has a bounded inbox and two eventfds for the device's worker to watch: ``rx_event`` is readable while
the inbox holds frames, ``tx_event`` fires when a port this one was blocked on has room again.
Back-pressure: a unicast frame to a port whose inbox is full is refused (``send`` returns False)
and the sender retries when that inbox has drained to half — no frame is lost while the receiving
guest is slow.  A flood cannot wait on every port, so a full inbox drops its copy (counted in
that port's ``stats["dropped"]``).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque

from ..errors import UsageError
from .backend import READ, NetBackend, Views, copy_into, join_views
from .frame import ETH_HLEN, is_multicast

DEFAULT_INBOX = 256
MAC_AGEING_SECONDS = 300.0
MAX_MACS = 4096

_registry: dict[str, "Switch"] = {}
_registry_lock = threading.Lock()


def get_switch(name: str) -> "Switch":
    """The process-wide switch called ``name`` (created on first use)."""
    with _registry_lock:
        switch = _registry.get(name)
        if switch is None:
            switch = _registry[name] = Switch(name)
        return switch


def _forget(switch: "Switch") -> None:
    with _registry_lock:
        if _registry.get(switch.name) is switch:
            del _registry[switch.name]


def _signal(fd: int) -> None:
    if fd < 0:
        return
    try:
        os.eventfd_write(fd, 1)
    except OSError:
        pass  # closed meanwhile, or the counter is saturated (it is readable anyway)


def _clear(fd: int) -> None:
    if fd < 0:
        return
    try:
        os.eventfd_read(fd)
    except (BlockingIOError, OSError):
        pass


class Switch:
    """A learning switch: a MAC table and a set of ports, guarded by one lock."""

    def __init__(self, name: str, *, inbox_frames: int = DEFAULT_INBOX,
                 ageing: float = MAC_AGEING_SECONDS, clock=time.monotonic):
        self.name = name
        self.inbox_frames = inbox_frames
        self.ageing = ageing
        self.clock = clock
        self.lock = threading.Lock()
        self.ports: list[SwitchPort] = []
        self.macs: dict[bytes, tuple[SwitchPort, float]] = {}
        self.stats = {"forwarded": 0, "flooded": 0}

    def port(self, inbox_frames: int | None = None) -> "SwitchPort":
        port = SwitchPort(self, inbox_frames or self.inbox_frames)
        with self.lock:
            self.ports.append(port)
        return port

    def _remove(self, port: "SwitchPort") -> bool:
        """Called with the lock held; returns whether the switch has no port left."""
        if port in self.ports:
            self.ports.remove(port)
        self.macs = {mac: entry for mac, entry in self.macs.items() if entry[0] is not port}
        for other in self.ports:
            other.waiters.discard(port)
        return not self.ports

    # --- forwarding (called with the frame already copied out of guest memory) -------------------

    def forward(self, src: "SwitchPort", frame: bytes) -> bool:
        """Deliver ``frame`` from ``src``; False if a unicast destination's inbox is full."""
        if len(frame) < ETH_HLEN:
            src.stats["tx_dropped"] += 1
            return True
        dst_mac, src_mac = frame[:6], frame[6:12]
        with self.lock:
            now = self.clock()
            if not is_multicast(src_mac):
                self._learn(src_mac, src, now)
            dest = None if is_multicast(dst_mac) else self._lookup(dst_mac, now)
            if dest is src:
                return True  # the destination is behind the sender's own port: filter it
            if dest is not None:
                return self._unicast(src, dest, frame)
            self.stats["flooded"] += 1
            for port in self.ports:
                if port is not src:
                    port._enqueue(frame)
            return True

    def _learn(self, mac: bytes, port: "SwitchPort", now: float) -> None:
        if mac not in self.macs and len(self.macs) >= MAX_MACS:
            self.macs.pop(next(iter(self.macs)))  # oldest learnt first
        self.macs[mac] = (port, now)

    def _lookup(self, mac: bytes, now: float) -> "SwitchPort" | None:
        entry = self.macs.get(mac)
        if entry is None:
            return None
        if now - entry[1] > self.ageing:
            del self.macs[mac]
            return None
        return entry[0]

    def _unicast(self, src: "SwitchPort", dest: "SwitchPort", frame: bytes) -> bool:
        if len(dest.inbox) >= dest.inbox_frames:
            dest.waiters.add(src)
            return False
        dest._enqueue(frame)
        self.stats["forwarded"] += 1
        return True


class SwitchPort(NetBackend):
    """One device's connection to a :class:`Switch`."""

    kind = "switch"

    def __init__(self, switch: Switch, inbox_frames: int = DEFAULT_INBOX):
        super().__init__()
        if inbox_frames < 1:
            raise UsageError("a switch port inbox holds at least one frame")
        self.switch = switch
        self.inbox_frames = inbox_frames
        self.inbox: deque[bytes] = deque()
        self.waiters: set[SwitchPort] = set()  # ports blocked on this port's inbox
        self.rx_event = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.tx_event = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.stats.update(dropped=0)

    def describe(self) -> str:
        return f"switch:{self.switch.name}"

    def poll_fds(self, read: bool, write: bool) -> list[tuple[int, int]]:
        if self.closed:
            return []
        fds = []
        if read:
            fds.append((self.rx_event, READ))
        if write:
            fds.append((self.tx_event, READ))
        return fds

    def service(self) -> None:
        with self.switch.lock:
            _clear(self.tx_event)  # the device retries its blocked frame right after this

    def _enqueue(self, frame: bytes) -> None:
        """Called with the switch lock held."""
        if self.closed:
            return
        if len(self.inbox) >= self.inbox_frames:
            self.stats["dropped"] += 1
            return
        self.inbox.append(frame)
        if len(self.inbox) == 1:
            _signal(self.rx_event)

    def recv_into(self, views: Views) -> int | None:
        with self.switch.lock:
            if not self.inbox:
                return None
            frame = self.inbox.popleft()
            if not self.inbox:
                _clear(self.rx_event)
            self._wake_waiters()
        self.stats["rx_frames"] += 1
        copy_into(views, frame)
        return len(frame)

    def _wake_waiters(self) -> None:
        """Called with the switch lock held (so no waiter closes its eventfd meanwhile)."""
        if self.waiters and len(self.inbox) <= self.inbox_frames // 2:
            for port in self.waiters:
                _signal(port.tx_event)
            self.waiters.clear()

    def send(self, views: Views) -> bool:
        if self.closed:
            return True
        taken = self.switch.forward(self, join_views(views))
        if taken:
            self.stats["tx_frames"] += 1
        return taken

    def close(self) -> None:
        with self.switch.lock:
            if self.closed:
                return
            self.closed = True
            empty = self.switch._remove(self)
            self.inbox.clear()
            for port in self.waiters:
                _signal(port.tx_event)
            self.waiters.clear()
            fds, self.rx_event, self.tx_event = (self.rx_event, self.tx_event), -1, -1
            for fd in fds:  # closed under the lock: nobody signals a reused fd number
                os.close(fd)
        if empty:
            _forget(self.switch)
