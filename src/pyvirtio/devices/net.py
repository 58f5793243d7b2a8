"""Network device (VIRTIO 1.3, 5.1): receive/transmit queue pairs, a control queue, and a host
back-end (``pyvirtio.net``: TAP, switch, stream socket, null).

Sans-I/O.  The device is driven through four doors and never blocks:

* ``queue_notify(mem, i)`` — the driver kicked queue ``i`` (transmit: send its frames; receive:
  new buffers; control: run commands);
* :meth:`NetDevice.backend_ready` — the host loop saw the back-end's fd fire: read frames into the
  guest's receive buffers (``os.readv`` straight into guest memory for a TAP), resume a blocked
  transmit;
* :meth:`NetDevice.host_frames` — frames handed in by the host program (tests, a bridge);
* :meth:`NetDevice.set_link` / :meth:`NetDevice.announce` — link state and migration announce.

Back-pressure: when the driver has no receive buffers the device stops reading from the back-end
(``poll_fds`` no longer asks for reads), so frames wait in the kernel, the TCP window or the switch
inbox; frames handed in by ``host_frames`` wait in a bounded backlog.  Frames are dropped (and
counted) only when the source cannot wait, when the link is down, or when the filter rejects them.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable, Iterable, Optional

from ..device import VirtioDevice
from ..errors import DriverFault, GuestMemoryError, QueueBroken, Scope, UsageError
from ..interrupt import Interrupt
from ..memory import GuestMemory
from ..spec import net as spec
from ..spec.ids import DeviceType
from ..virtq import DescriptorChain, SplitDeviceQueue
from ..net import ctrl
from ..net.backend import MAX_FRAME, NetBackend
from ..net.frame import ETH_HLEN, mac_bytes, random_mac
from ..net.null import NullBackend
from ..net.rx import RxPlacer
from ..net.rxpath import ReceivePath
from ..net.steer import FlowTable

log = logging.getLogger(__name__)

F = spec.NetFeature
HDR = spec.NET_HDR_SIZE
BASE_FEATURES = sum(1 << f for f in (F.MAC, F.STATUS, F.MRG_RXBUF, F.CTRL_VQ, F.CTRL_RX,
                                     F.CTRL_RX_EXTRA, F.CTRL_MAC_ADDR, F.GUEST_ANNOUNCE))
OFFLOAD_FEATURES = sum(1 << f for f in (F.CSUM, F.GUEST_CSUM, F.GUEST_TSO4, F.GUEST_TSO6, F.GUEST_ECN,
                                        F.GUEST_UFO, F.HOST_TSO4, F.HOST_TSO6, F.HOST_ECN, F.HOST_UFO))
#: Largest frame a guest with receive segmentation offload takes (5.1.6.3): 14 + 40 + 65535.
GSO_FRAME = 65589
#: Transmit chains popped per fast-path batch.
TX_BATCH = 256


class NetFrameError(DriverFault):
    """A transmitted frame the driver built wrong (shorter than its header, too long); the frame
    is dropped and the queue goes on."""

    scope = Scope.REQUEST


def _noop() -> None:
    pass


class NetDevice(ReceivePath, VirtioDevice):
    """A virtio-net device in front of a :class:`~pyvirtio.net.backend.NetBackend`."""

    device_type = DeviceType.NET

    def __init__(self, backend: Optional[NetBackend] = None, *, mac=None, mtu: Optional[int] = None,
                 queue_pairs: int = 1, queue_size: int = 256, link_up: bool = True,
                 offloads: bool = True, backlog_frames: int = 256, backlog_bytes: int = 4 << 20):
        if not 1 <= queue_pairs <= 64:
            raise UsageError(f"queue_pairs {queue_pairs} is not in 1..64")
        if mtu is not None and not 68 <= mtu <= 65535:
            raise UsageError(f"mtu {mtu} is not in 68..65535 (5.1.4.1)")
        self.backend = backend if backend is not None else NullBackend()
        self.max_pairs = queue_pairs
        self.num_queues = 2 * queue_pairs + 1
        self.queue_max_size = queue_size
        self.mtu = mtu
        self.device_specific_features = self._offer(offloads)
        super().__init__()
        self.lock = threading.RLock()  # TODO(engine): goes when this device runs on one group worker
        self.default_mac = mac_bytes(mac) if mac is not None else random_mac()
        self.mac = self.default_mac
        self.admin_link = link_up
        self.filter = ctrl.RxFilter()
        self.rx: list[RxPlacer] = []
        self.flows = FlowTable()
        self.backlog: deque[tuple[bytes, bytes]] = deque()  # (header, frame) waiting for buffers
        self.backlog_limit = (backlog_frames, backlog_bytes)
        self.backlog_bytes = 0
        #: Per pair, popped transmit chains the back-end refused (sent first when it has room).
        self.tx_held: list[deque[DescriptorChain]] = [deque() for _ in range(queue_pairs)]
        self.mem: Optional[GuestMemory] = None
        #: Set by a host loop: called when what ``poll_fds`` returns may have changed.
        self.wakeup: Callable[[], None] = _noop
        self.last_error: Optional[Exception] = None
        self.closed = False
        self._irq_later: set[int] = set()  # notifications the host loop's thread sends
        #: Called with the new state whenever the link the driver sees goes up or down.
        self.link_listeners: list[Callable[[bool], None]] = []
        self.stats = dict.fromkeys(("rx_packets", "rx_bytes", "rx_filtered", "rx_dropped", "rx_errors",
                                    "tx_packets", "tx_bytes", "tx_dropped", "tx_errors", "ctrl_ok",
                                    "ctrl_err"), 0)
        self._scratch = memoryview(bytearray(HDR + MAX_FRAME))
        self._backend_link = self.backend.link_up
        self._init_state()

    def _offer(self, offloads: bool) -> int:
        mask = BASE_FEATURES
        if self.max_pairs > 1:
            mask |= 1 << F.MQ
        if self.mtu is not None:
            mask |= 1 << F.MTU
        if offloads and self.backend.vnet_hdr:
            mask |= self.backend.offload_features & OFFLOAD_FEATURES
            if mask & ctrl.GUEST_OFFLOADS:
                mask |= 1 << F.CTRL_GUEST_OFFLOADS
        return mask

    def _init_state(self) -> None:
        """Per-driver state, as after reset (5.1.6.5.2: an empty MAC table)."""
        self.mac = self.default_mac
        self.announce_pending = False
        self.filter.reset()
        self.active_pairs = 1
        self.layout_pairs = 1
        self.mrg = False
        self.guest_offloads = 0
        self.max_rx_frame = (self.mtu or 1500) + ETH_HLEN + 4
        self.rx_starved = False
        self.live = False  # a transport has started running the queues
        self.mem = None
        self.flows.clear()
        self._new_placers()
        self.tx_held = [deque() for _ in range(self.max_pairs)]
        self._drop_backlog()

    def _new_placers(self) -> None:
        """One RxPlacer per receive queue (the queue objects change when a packed ring is
        negotiated, and back at reset)."""
        self.rx = [RxPlacer(self.queues[2 * i]) for i in range(self.max_pairs)]

    # --- features and config (5.1.3, 5.1.4) ----------------------------------------------------

    def features_acceptable(self, features: int) -> bool:
        """Refuse offloads without the checksum offload they need (5.1.3.1).  Features that
        need CTRL_VQ are let through without it: vhost-user front-ends (QEMU, DPDK) keep the
        control queue to themselves and pass on only the data-path features."""
        if not super().features_acceptable(features):
            return False
        for bit, alternatives in spec.FEATURE_REQUIRES.items():
            if any(F.CTRL_VQ in alt for alt in alternatives):
                continue
            if features >> bit & 1 and not any(all(features >> r & 1 for r in alt) for alt in alternatives):
                return False
        return True

    def on_features(self, features: int) -> None:
        self._new_placers()
        self.mrg = self.has_feature(F.MRG_RXBUF)
        self.layout_pairs = self.max_pairs if self.has_feature(F.MQ) else 1
        self.filter.enabled = self.has_feature(F.CTRL_RX)
        self.set_guest_offloads(features & ctrl.GUEST_OFFLOADS)

    def reset(self) -> None:
        """Device reset, under the lock: the host loop's thread may be filling the rings."""
        with self.lock:
            super().reset()

    def on_reset(self) -> None:
        self._init_state()
        self.wakeup()

    def on_driver_ok(self) -> None:
        self.wakeup()

    @property
    def link_up(self) -> bool:
        """The link the driver sees: up unless the host took it down or the back-end lost its peer."""
        return self.admin_link and self._backend_link

    def config_bytes(self) -> bytes:
        status = (spec.NetStatus.LINK_UP if self.link_up else 0) | \
                 (spec.NetStatus.ANNOUNCE if self.announce_pending else 0)
        return spec.NET_CONFIG.pack(self.mac, int(status), self.max_pairs, self.mtu or 0,
                                    spec.NET_SPEED_UNKNOWN, spec.NET_DUPLEX_UNKNOWN, 0, 0, 0, 0)

    def _status_changed(self) -> None:
        if self.has_feature(F.STATUS):
            self.config_changed()  # 2.5.1: new generation, and a config interrupt once running
        else:
            self.config_generation = (self.config_generation + 1) & 0xFF

    # --- host API: link, announce, memory ------------------------------------------------------

    def set_link(self, up: bool) -> None:
        """Take the link up or down; the driver sees STATUS change with a config interrupt."""
        with self.lock:
            before = self.link_up
            self.admin_link = bool(up)
            changed = before != self.link_up
        if changed:
            self._link_changed()

    def _link_changed(self) -> None:
        """Tell the driver (STATUS, config interrupt) and the listeners (a vhost-user transport
        shows the link to QEMU by its connection: see ``pyvirtio.net.vhost_link``)."""
        self._status_changed()
        self.wakeup()
        up = self.link_up
        for listener in list(self.link_listeners):
            listener(up)

    def announce(self) -> bool:
        """Ask the driver to announce itself (after a migration); False without GUEST_ANNOUNCE."""
        if not self.has_feature(F.GUEST_ANNOUNCE):
            return False
        with self.lock:
            self.announce_pending = True
        self._status_changed()
        return True

    def set_memory(self, mem: Optional[GuestMemory]) -> None:
        """The guest memory host-side events write into (the transport calls this when its
        memory table changes; every queue kick also refreshes it)."""
        self.mem = mem
        self.wakeup()

    # --- control queue targets (ctrl.CtrlTarget) ----------------------------------------------

    def set_mac_from_driver(self, mac: bytes) -> None:
        self.mac = mac  # 5.1.6.5.2.1: config space updated before the command is used
        self.config_generation = (self.config_generation + 1) & 0xFF

    def ack_announce(self) -> None:
        self.announce_pending = False  # 5.1.6.5.4.2: cleared before the buffer is used
        self.config_generation = (self.config_generation + 1) & 0xFF

    def set_active_pairs(self, pairs: int) -> None:
        if not all(self.queues[i].ready for i in range(2 * pairs)):
            raise ctrl.CtrlRejected(f"MQ VQ_PAIRS_SET {pairs}: not every queue of those pairs is set up "
                                    "(5.1.6.5.6.1)")
        self.active_pairs = pairs
        self.flows.clear()

    def set_guest_offloads(self, offloads: int) -> None:
        self.guest_offloads = offloads
        gso = offloads & ~(1 << F.GUEST_CSUM)
        self.max_rx_frame = GSO_FRAME + 4 if gso else (self.mtu or 1500) + ETH_HLEN + 4
        self.backend.set_offloads(self.driver_features & ~ctrl.GUEST_OFFLOADS | offloads)

    # --- queues --------------------------------------------------------------------------------

    def queue_role(self, index: int) -> tuple[str, int]:
        """``("rx"|"tx", pair)``, ``("ctrl", 0)`` or ``("none", 0)`` under the negotiated layout
        (5.1.2: the control queue follows the last pair in use, 2N)."""
        n = self.layout_pairs
        if index < 2 * n:
            return ("rx" if index % 2 == 0 else "tx"), index // 2
        if index == 2 * n and self.has_feature(F.CTRL_VQ):
            return "ctrl", 0
        return "none", 0

    def process_queue(self, mem: GuestMemory, queue: SplitDeviceQueue) -> bool:
        """Serve a kicked queue.  Transports call it from their own threads (vhost-user: one
        per ring, holding that ring's lock) without the device lock, so it takes the lock.
        Notifications for *other* queues (frames for another pair) are not sent from here — a
        transport may take their ring locks in the interrupt callback, and another ring's thread
        may hold one while it waits for the device lock — but from the host loop's thread."""
        deferred = False
        with self.lock:
            self.mem, self.live = mem, True
            notify, others = self._process(mem, queue)
            if others and self.wakeup is not _noop:
                self._irq_later |= others
                deferred = True
        if deferred:
            self.wakeup()
        elif others:
            self._interrupt(others)  # no host loop: in-process transports take no ring locks
        return notify

    def _process(self, mem: GuestMemory, queue: SplitDeviceQueue) -> tuple[bool, set[int]]:
        role, pair = self.queue_role(queue.index)
        if role == "tx":
            return self._tx_run(mem, pair), set()
        if role == "rx":
            notify = self._rx_pump(mem)  # backlogged frames may also go to other pairs
            return queue.index in notify, notify - {queue.index}
        if role == "ctrl":
            return queue.drain(mem, self._ctrl_chain), set()
        return False, set()

    def _ctrl_chain(self, chain: DescriptorChain) -> int:
        if chain.writable_len < 1:
            self._count_error("ctrl_err", DriverFault("control command without room for the ack"))
            return 0
        ack = spec.NetCtrlAck.ERR
        try:
            if chain.readable_len < spec.NET_CTRL_HDR_SIZE:
                raise ctrl.CtrlRejected(f"control command of {chain.readable_len} bytes has no class/command")
            if chain.readable_len > spec.NET_CTRL_HDR_SIZE + ctrl.CTRL_DATA_MAX:
                raise ctrl.CtrlRejected(f"control command of {chain.readable_len} bytes is too long")
            cls, command = spec.NET_CTRL_HDR.unpack(chain.read(0, spec.NET_CTRL_HDR_SIZE))
            ack = ctrl.execute(self, cls, command, chain.read(spec.NET_CTRL_HDR_SIZE))
            self.stats["ctrl_ok"] += 1
        except ctrl.CtrlRejected as exc:
            self._count_error("ctrl_err", exc)
        chain.write(bytes((ack,)), offset=0)
        return 1

    def _count_error(self, counter: str, exc: Exception) -> None:
        self.stats[counter] += 1
        self.last_error = exc
        log.debug("net: %s", exc)

    # --- transmit (5.1.6.2) --------------------------------------------------------------------

    def _tx_run(self, mem: GuestMemory, pair: int) -> bool:
        """Send what the driver queued on transmitq ``pair`` until the ring is empty or the
        back-end is full; returns whether the driver wants a used-buffer notification."""
        queue = self.queues[2 * pair + 1]
        done: list[tuple[int, int]] = []
        emptied = self._tx_resend(pair, done)
        while emptied:
            queue.disable_notification(mem)
            emptied = self._tx_batch(mem, queue, pair, done)
            if done:
                queue.add_used_batch(mem, done)  # one used-index update per batch
                done = []
            if emptied and not queue.enable_notification(mem):
                break
        if done:
            queue.add_used_batch(mem, done)
        if not emptied:
            self.wakeup()  # kicks stay off until the back-end has room
        return queue.needs_notification(mem)

    def _tx_resend(self, pair: int, done: list[tuple[int, int]]) -> bool:
        """Offer the held frames again, in order; False if the back-end is still full."""
        held = self.tx_held[pair]
        while held:
            if not self._tx_one(held[0], pair):
                return False
            done.append((held.popleft().head_index, 0))
        return True

    def _tx_batch(self, mem: GuestMemory, queue: SplitDeviceQueue, pair: int,
                  done: list[tuple[int, int]]) -> bool:
        """Send every chain the driver made available; False when the back-end is full (the
        chain it refused waits in ``tx_held``).  Chains of one descriptor — what Linux and DPDK
        send — go through the batch fast path; any other shape through the general one."""
        direct = getattr(queue, "pop_direct", None)  # split rings have it
        while True:
            if direct is not None and self.link_up and self.active_pairs == 1:
                heads, lengths, views = direct(mem, TX_BATCH, views=not self.backend.sink)
                if heads:
                    if done:  # keep the used ring in the order the chains came
                        queue.add_used_batch(mem, done)
                        done.clear()
                    taken = self._tx_direct(heads, lengths, views, pair)
                    queue.add_used_heads(mem, heads[:taken] if taken < len(heads) else heads)
                    if taken < len(heads):
                        return False
                if len(heads) == TX_BATCH:
                    continue
            chain = queue.pop_descriptor_chain(mem)
            if chain is None:
                return True
            if not self._tx_one(chain, pair):
                self.tx_held[pair].append(chain)
                return False
            done.append((chain.head_index, 0))

    def _tx_direct(self, heads: list[int], lengths: list[int], views: Optional[list[memoryview]],
                   pair: int) -> int:
        """Frames that are one buffer each (header included).  Returns how many were taken;
        the back-end refused the rest, which wait in ``tx_held``."""
        if views is None and HDR + ETH_HLEN <= min(lengths) and max(lengths) <= HDR + MAX_FRAME:
            self.stats["tx_packets"] += len(heads)  # a sink: count them, all at once
            self.stats["tx_bytes"] += sum(lengths) - HDR * len(heads)
            return len(heads)
        send, skip = self.backend.send, 0 if self.backend.vnet_hdr else HDR
        packets = nbytes = 0
        try:
            for i, (head, length) in enumerate(zip(heads, lengths)):
                if not HDR + ETH_HLEN <= length <= HDR + MAX_FRAME:
                    self._count_error("tx_errors", NetFrameError(f"transmit chain {head}: {length} bytes"))
                elif views is not None and not send([views[i][skip:]]):
                    self._tx_hold(heads[i:], lengths[i:], views[i:], pair)
                    return i
                else:
                    packets += 1
                    nbytes += length - HDR
            return len(heads)
        finally:
            self.stats["tx_packets"] += packets
            self.stats["tx_bytes"] += nbytes

    def _tx_hold(self, heads: list[int], lengths: list[int], views: list[memoryview], pair: int) -> None:
        """Keep popped frames the back-end did not take (as chains, for the general path)."""
        self.tx_held[pair].extend(DescriptorChain(head, [view], [], length, 0)
                                  for head, length, view in zip(heads, lengths, views))

    def _tx_one(self, chain: DescriptorChain, pair: int) -> bool:
        """One frame to the back-end; False if the back-end would block (the frame is kept)."""
        length = chain.readable_len - HDR
        if length < ETH_HLEN or length > MAX_FRAME:
            what = "shorter than its header" if length < 0 else f"a frame of {length} bytes"
            self._count_error("tx_errors", NetFrameError(f"transmit chain {chain.head_index}: {what}"))
            return True
        if not self.link_up:
            self.stats["tx_dropped"] += 1
            return True
        if self.active_pairs > 1:
            self.flows.learn(chain.readable_views(HDR, min(length, 64)), pair)
        if not self.backend.sink and not self.backend.send(_frame_views(chain, 0 if self.backend.vnet_hdr else HDR)):
            return False
        self.stats["tx_packets"] += 1
        self.stats["tx_bytes"] += length
        return True

    # --- the host loop's door --------------------------------------------------------------------

    @property
    def wants_rx(self) -> bool:
        """Whether a host loop should watch the back-end for frames now."""
        return self._rx_ready(self.mem) and not self.rx_starved and not self.backlog

    @property
    def wants_service(self) -> bool:
        """Whether the host loop should call ``backend_ready`` even if no fd fired."""
        return bool(self._irq_later)

    @property
    def tx_waiting(self) -> bool:
        return any(self.tx_held)

    def poll_fds(self) -> list[tuple[int, int]]:
        return self.backend.poll_fds(self.wants_rx, self.tx_waiting)

    def backend_ready(self) -> None:
        """A watched back-end fd fired: service the back-end, read frames, resume transmits."""
        notify: set[int] = set()
        with self.lock:
            notify, self._irq_later = self._irq_later, set()
            self.backend.service()
            mem = self.mem
            if self._rx_ready(mem):
                try:
                    notify |= self._rx_pump(mem)
                    for pair, held in enumerate(self.tx_held):
                        if held and self._tx_run(mem, pair):
                            notify.add(2 * pair + 1)
                except (DriverFault, GuestMemoryError, QueueBroken) as exc:
                    self.needs_reset(exc)
            link_changed = self._sync_backend_link()  # reading may have found the peer gone
        self._interrupt(notify)
        if link_changed:
            self._link_changed()

    def _sync_backend_link(self) -> bool:
        up = self.backend.link_up
        if up == self._backend_link:
            return False
        before = self.link_up
        self._backend_link = up
        return before != self.link_up

    def _interrupt(self, queues: Iterable[int]) -> None:
        for index in sorted(queues):
            self.interrupt(Interrupt(index))

    def close(self) -> None:
        """Close the back-end; a host loop forgets the device on its next iteration."""
        self.closed = True
        self.backend.close()
        self.wakeup()


def _frame_views(chain: DescriptorChain, skip: int) -> list[memoryview]:
    """The chain's device-readable views from byte ``skip`` on (0: header included)."""
    if not skip:
        return chain.readable
    views = chain.readable
    if len(views) == 1:
        return [views[0][skip:]]
    return chain.readable_views(skip)
