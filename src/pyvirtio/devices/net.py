"""Network device (VIRTIO 1.3, 5.1): receive/transmit queue pairs, a control queue, and a host
back-end (``pyvirtio.net``: TAP, switch, stream socket, null).

Sans-I/O, and one queue group: every queue pair, the control queue and the back-end are served
by one worker of the engine (``pyvirtio.engine``), so the device takes no lock and never blocks.
It is driven through three doors:

* :meth:`NetDevice.process_queue` — the driver kicked a queue (transmit: send its frames;
  receive: new buffers; control: run commands);
* :meth:`NetDevice.host_ready` — a back-end fd the device asked for (:meth:`NetDevice.host_fds`)
  fired, or the worker was woken: read frames into the guest's receive buffers (``os.readv``
  straight into guest memory for a TAP), resume a blocked transmit;
* the host API, callable from any thread, which runs in the worker and waits for it:
  :meth:`NetDevice.host_frames` (frames handed in by the host program: tests, a bridge),
  :meth:`NetDevice.set_link` / :meth:`NetDevice.announce` (link state, migration announce) and
  :meth:`NetDevice.serve_backend` (serve a back-end without an fd, as if it had fired).

Both entry points return the queues to notify; the worker sends the notifications.  Receive
completions for *other* queues (a receive kick placed backlogged frames for another pair; frames
pushed by the host) wait in ``_notify_later`` until the next ``host_ready``, which the device
asks for by waking its worker.

Back-pressure: when the driver has no receive buffers the device stops reading from the back-end
(``host_fds`` no longer asks for reads), so frames wait in the kernel, the TCP window or the switch
inbox; frames handed in by ``host_frames`` wait in a bounded backlog.  Frames are dropped (and
counted) only when the source cannot wait, when the link is down, or when the filter rejects them.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

from ..device import VirtioDevice
from ..errors import DriverFault, GuestMemoryError, QueueBroken, Scope, UsageError
from ..memory import GuestMemory
from ..spec import net as spec
from ..spec.ids import DeviceType
from ..virtq import DescriptorChain, DeviceQueue, vector
from . import net_ctrl as ctrl, net_txhdr as txhdr
from ..net.backend import MAX_FRAME, NetBackend, Views, fit_iov
from ..net.frame import ETH_HLEN, mac_bytes, random_mac
from ..net.null import NullBackend
from .net_rxpath import ReceivePath
from .net_steer import FlowTable
from .net_faults import NetFaults

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
#: How long a host API call waits for the device's worker before it gives up.
HOST_CALL_TIMEOUT = 10.0

T = TypeVar("T")


class NetFrameError(DriverFault):
    """A transmitted frame the driver built wrong (shorter than its header, too long); the frame
    is dropped and the queue goes on."""

    scope = Scope.REQUEST


def _noop() -> None:
    pass


class NetDevice(VirtioDevice):
    """A virtio-net device in front of a :class:`~pyvirtio.net.backend.NetBackend`."""

    device_type = DeviceType.NET
    #: Transmit chains (held ones resent first), receive buffers (a frame takes the oldest spare
    #: buffers; a bad one goes back behind them) and control commands all complete in ring order.
    completes_in_order = True

    def __init__(self, backend: NetBackend | None = None, *, mac=None, mtu: int | None = None,
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
        #: Frames and link flaps of fault rules (pyvirtio.faults), used while rules exist.
        self.net_faults = NetFaults(self)
        self.default_mac = mac_bytes(mac) if mac is not None else random_mac()
        self.mac = self.default_mac
        self.admin_link = link_up
        self.filter = ctrl.RxFilter()
        self.flows = FlowTable()
        self.stats = dict.fromkeys(("rx_packets", "rx_bytes", "rx_filtered", "rx_dropped", "rx_errors",
                                    "tx_packets", "tx_bytes", "tx_dropped", "tx_errors", "ctrl_ok",
                                    "ctrl_err"), 0)
        self.rx = ReceivePath(self, backlog_frames, backlog_bytes)
        #: Per pair, popped transmit chains the back-end refused (sent first when it has room).
        self.tx_held: list[deque[DescriptorChain]] = [deque() for _ in range(queue_pairs)]
        #: The guest memory the worker handed in last (host API calls place frames into it).
        self.mem: GuestMemory | None = None
        self.last_error: Exception | None = None
        #: Called with the new state whenever the link the driver sees goes up or down.
        self.link_listeners: list[Callable[[bool], None]] = []
        self._notify_later: set[int] = set()  # queues the next host_ready returns
        self._serving: int | None = None  # the thread running the device's code now
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
        self.live = False  # a transport has started running the queues
        self.mem = None
        self.flows.clear()
        self.rx.reset()
        self.tx_held = [deque() for _ in range(self.max_pairs)]
        self._notify_later = set()

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
        self.rx.new_placers()
        self.mrg = self.has_feature(F.MRG_RXBUF)
        self.layout_pairs = self.max_pairs if self.has_feature(F.MQ) else 1
        self.filter.enabled = self.has_feature(F.CTRL_RX)
        self.set_guest_offloads(features & ctrl.GUEST_OFFLOADS)

    def on_reset(self) -> None:
        self._init_state()
        self.net_faults.reset()

    @property
    def link_up(self) -> bool:
        """The link the driver sees: up unless the host took it down or the back-end lost its peer."""
        return self.admin_link and self._backend_link and not self.net_faults.link_down

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

    # --- host API: from any thread, run in the device's worker ---------------------------------

    def set_link(self, up: bool) -> None:
        """Take the link up or down; the driver sees STATUS change with a config interrupt."""
        self._in_worker(lambda: self._set_admin_link(up))

    def _set_admin_link(self, up: bool) -> None:
        before = self.link_up
        self.admin_link = bool(up)
        if before != self.link_up:
            self._link_changed()

    def _link_changed(self) -> None:
        """Tell the driver (STATUS, config interrupt) and the listeners (a vhost-user transport
        shows the link to QEMU by its connection: see ``pyvirtio.net.vhost_link``)."""
        self._status_changed()
        up = self.link_up
        for listener in list(self.link_listeners):
            listener(up)

    def announce(self) -> bool:
        """Ask the driver to announce itself (after a migration); False without GUEST_ANNOUNCE."""
        return self._in_worker(self._announce)

    def _announce(self) -> bool:
        if not self.has_feature(F.GUEST_ANNOUNCE):
            return False
        self.announce_pending = True
        self._status_changed()
        return True

    def host_frames(self, frames: Iterable[bytes], *, can_wait: bool = True,
                    with_header: bool = False) -> int:
        """Frames arriving from the host side (plain Ethernet, or with a 12-byte header if
        ``with_header``).  Returns how many were taken (placed or backlogged).  When the backlog
        is full the rest is refused — or dropped and counted if the source ``can_wait`` not."""
        frames = list(frames)
        return self._in_worker(lambda: self._host_frames(frames, can_wait, with_header))

    def _host_frames(self, frames: list[bytes], can_wait: bool, with_header: bool) -> int:
        taken, mem = 0, self.mem
        with self._guard():
            for raw in frames:
                if not self.rx.host_frame(mem, raw, with_header, can_wait):
                    break
                taken += 1
            self._notify_soon(self.rx.pump(mem, budget=0))
        return taken

    def serve_backend(self) -> None:
        """Serve the back-end now, as if its fd had fired (for a back-end without an fd, such
        as :class:`~pyvirtio.net.mock.MockBackend`)."""
        self._in_worker(lambda: self._notify_soon(self._serve_host(self.mem)))

    def _in_worker(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` where the device's code runs — in its worker, through ``host_call`` — and
        wait for its result; inline when this thread is already running the device's code (a
        link listener that sets the link, a call without an engine)."""
        if self._serving == threading.get_ident():
            return fn()
        result: list[T] = []
        error: list[BaseException] = []
        done = threading.Event()

        def run() -> None:
            try:
                with self._running():
                    result.append(fn())
            except BaseException as exc:  # handed to the caller's thread
                error.append(exc)
            finally:
                done.set()

        self.host_call(run, 0)
        if not done.wait(HOST_CALL_TIMEOUT):
            raise TimeoutError(f"net: the device's worker did not run a host call within "
                               f"{HOST_CALL_TIMEOUT:.0f} s")
        if error:
            raise error[0]
        return result[0]

    @contextmanager
    def _running(self) -> Iterator[None]:
        """Mark this thread as the one running the device's code (for :meth:`_in_worker`)."""
        before, self._serving = self._serving, threading.get_ident()
        try:
            yield
        finally:
            self._serving = before

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """A driver's mistake met by host-side work puts the device in DEVICE_NEEDS_RESET."""
        try:
            yield
        except (DriverFault, GuestMemoryError, QueueBroken) as exc:
            self.needs_reset(exc)

    def _notify_soon(self, queues: set[int]) -> None:
        """Queues to notify from the worker's next ``host_ready`` (woken for it)."""
        if queues - self._notify_later:
            self._notify_later |= queues
            self.host_call(_noop, 0)  # a call wakes the worker, whose turn runs host_ready

    # --- control queue targets (ctrl.CtrlTarget) ----------------------------------------------

    def set_mac_from_driver(self, mac: bytes) -> None:
        """The driver set a new MAC address (control queue): the config space shows it first
        (5.1.6.5.2.1)."""
        self.mac = mac  # 5.1.6.5.2.1: config space updated before the command is used
        self.config_generation = (self.config_generation + 1) & 0xFF

    def ack_announce(self) -> None:
        """The driver announced itself: clear VIRTIO_NET_S_ANNOUNCE (5.1.6.5.4.2)."""
        self.announce_pending = False  # 5.1.6.5.4.2: cleared before the buffer is used
        self.config_generation = (self.config_generation + 1) & 0xFF

    def set_active_pairs(self, pairs: int) -> None:
        """The driver chose how many queue pairs to use (5.1.6.5.6); refused unless every queue of
        them is set up."""
        if not all(self.queues[i].ready for i in range(2 * pairs)):
            raise ctrl.CtrlRejected(f"MQ VQ_PAIRS_SET {pairs}: not every queue of those pairs is set up "
                                    "(5.1.6.5.6.1)")
        self.active_pairs = pairs
        self.flows.clear()

    def set_guest_offloads(self, offloads: int) -> None:
        """The driver changed which receive offloads the device may use (5.1.6.5.7)."""
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

    def process_queue(self, mem: GuestMemory, queue: DeviceQueue) -> bool:
        """Serve a kicked queue; whether to notify it.  A receive kick may also complete
        backlogged frames of other pairs: those are notified from the next ``host_ready``."""
        self.mem, self.live = mem, True
        with self._running():
            role, pair = self.queue_role(queue.index)
            if role == "tx":
                return self._tx_run(mem, pair)
            if role == "rx":
                notify = self.rx.pump(mem)
                self._notify_soon(notify - {queue.index})
                return queue.index in notify
            if role == "ctrl":
                return queue.drain(mem, self._ctrl_chain)
            return False

    def _ctrl_chain(self, chain: DescriptorChain) -> int:
        if chain.writable_len < 1:
            self._count_error("ctrl_err", DriverFault("control command without room for the ack"))
            return 0
        ack: int = spec.NetCtrlAck.ERR
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
        self.guest_log.debug("net: %s", exc)

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
        # not emptied: kicks stay off, and host_fds asks for room in the back-end
        return queue.needs_notification(mem)

    def _tx_resend(self, pair: int, done: list[tuple[int, int]]) -> bool:
        """Offer the held frames again, in order; False if the back-end is still full."""
        held = self.tx_held[pair]
        while held:
            if not self._tx_one(held[0], pair):
                return False
            done.append((held.popleft().head_index, 0))
        return True

    def _tx_batch(self, mem: GuestMemory, queue: DeviceQueue, pair: int,
                  done: list[tuple[int, int]]) -> bool:
        """Send every chain the driver made available; False when the back-end is full (the
        chain it refused waits in ``tx_held``).  Chains of one descriptor — what Linux and DPDK
        send — go through the batch fast path (``vector.pop_readable`` with numpy, else
        ``pop_direct``; split and packed rings: every descriptor checked and its buffer
        translated as the general path does); the general path takes a chain only when the batch
        path leaves it (another shape, a buffer across regions, or one to fault on), not a chain
        that arrived after a batch was taken."""
        while True:
            if self.link_up and self.active_pairs == 1 and not self.faults.rules and vector.ENABLED:
                batch = vector.pop_readable(queue, mem, TX_BATCH)
                if batch is not None:
                    if done:  # keep the used ring in the order the chains came
                        queue.add_used_batch(mem, done)
                        done.clear()
                    count = len(batch.heads)
                    taken = self._tx_arrays(batch, pair)
                    vector.add_used(queue, mem, batch.heads[:taken] if taken < count else batch.heads)
                    if taken < count:
                        return False
                    if not queue.has_available(mem):  # the ring emptied (the usual end of a pass)
                        return True
                    continue  # the general path only for what the next batch will not take
            elif self.link_up and self.active_pairs == 1 and not self.faults.rules:
                heads, lengths, views = queue.pop_direct(mem, TX_BATCH)
                if heads:
                    if done:  # keep the used ring in the order the chains came
                        queue.add_used_batch(mem, done)
                        done.clear()
                    taken = self._tx_direct(heads, lengths, views, pair)
                    queue.add_used_heads(mem, heads[:taken] if taken < len(heads) else heads)
                    if taken < len(heads):
                        return False
                    continue  # the general path only for what the next batch will not take
            chain = queue.pop_descriptor_chain(mem)
            if chain is None:
                return True
            if not self._tx_one(chain, pair):
                self.tx_held[pair].append(chain)
                return False
            done.append((chain.head_index, 0))

    def _tx_arrays(self, batch: vector.ReadableBatch, pair: int) -> int:
        """:meth:`_tx_direct` for a batch popped as arrays (:mod:`pyvirtio.virtq.vector`): frames
        of sane lengths whose headers all ask for no offload (``flags`` and ``gso_type``, read
        for the batch with one gather) go to the back-end in one call without a view each;
        otherwise the batch takes the per-frame path with its checks and error counts."""
        lengths = batch.lengths
        shortest, longest = batch.bounds()
        if HDR + ETH_HLEN <= shortest and longest <= HDR + MAX_FRAME \
                and not vector.any_u16(batch.region, batch.offsets):
            skip = 0 if self.backend.vnet_hdr else HDR
            taken = self.backend.send_readable(batch, skip)
            count = len(lengths)
            self.stats["tx_packets"] += taken
            self.stats["tx_bytes"] += (batch.total if taken == count else int(lengths[:taken].sum())) - HDR * taken
            if taken < count:
                self._tx_hold(batch.heads[taken:].tolist(), lengths[taken:].tolist(), batch.views(taken), pair)
            return taken
        return self._tx_direct(batch.heads.tolist(), lengths.tolist(), batch.views(), pair)

    def _tx_direct(self, heads: list[int], lengths: list[int], views: list[memoryview], pair: int) -> int:
        """Frames that are one buffer each (header included).  Returns how many were taken;
        the back-end refused the rest, which wait in ``tx_held``.  A batch of frames of sane
        lengths whose headers ask for no offload (``txhdr.all_plain``) goes to the back-end in
        one call; otherwise frame by frame, each header checked."""
        skip = 0 if self.backend.vnet_hdr else HDR
        if HDR + ETH_HLEN <= min(lengths) and max(lengths) <= HDR + MAX_FRAME and txhdr.all_plain(views):
            taken = self.backend.send_batch(views, skip)
            self.stats["tx_packets"] += taken
            self.stats["tx_bytes"] += (sum(lengths) if taken == len(heads) else sum(lengths[:taken])) - HDR * taken
            if taken < len(heads):
                self._tx_hold(heads[taken:], lengths[taken:], views[taken:], pair)
            return taken
        send = self.backend.send
        packets = nbytes = 0
        try:
            for i, (head, length) in enumerate(zip(heads, lengths)):
                if not HDR + ETH_HLEN <= length <= HDR + MAX_FRAME:
                    self._count_error("tx_errors", NetFrameError(f"transmit chain {head}: {length} bytes"))
                elif (error := txhdr.header_error(views[i], length - HDR, self.driver_features)) is not None:
                    self._count_error("tx_errors", NetFrameError(f"transmit chain {head}: {error}"))
                elif not send([views[i][skip:]]):
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
        error = txhdr.header_error(chain.read(0, HDR), length, self.driver_features)
        if error is not None:
            self._count_error("tx_errors", NetFrameError(f"transmit chain {chain.head_index}: {error}"))
            return True
        if self.active_pairs > 1:
            self.flows.learn(chain.readable_views(HDR, min(length, 64)), pair)
        if self.faults.rules:  # a copy of the frame through the rules (pyvirtio.devices.net_faults)
            skip = 0 if self.backend.vnet_hdr else HDR
            return self.net_faults.tx(b"".join(_frame_views(chain, skip)), pair, skip)
        if not self.backend.send(_frame_views(chain, 0 if self.backend.vnet_hdr else HDR)):
            return False
        self.stats["tx_packets"] += 1
        self.stats["tx_bytes"] += length
        return True

    # --- the back-end's door (the engine's worker) -----------------------------------------------

    @property
    def wants_rx(self) -> bool:
        """Whether the back-end should be watched for frames now."""
        return self.rx.wants_frames(self.mem)

    @property
    def tx_waiting(self) -> bool:
        """Whether transmitted frames wait for the back-end to take them."""
        return any(self.tx_held)

    def host_fds(self, group: int) -> list[tuple[int, int]]:
        """The back-end's fds: readable while the guest has receive buffers, writable while a
        transmit waits for room."""
        fds = self.backend.poll_fds(self.wants_rx, self.tx_waiting)
        if self.faults.rules or self.net_faults.due:  # delayed frames, link flaps
            fds = fds + self.net_faults.fds()
        return fds

    def host_ready(self, mem: GuestMemory, group: int, events: list[tuple[int, int]]) -> set[int]:
        """A back-end fd fired (or the worker was woken): serve the back-end, read frames,
        resume held transmits; returns the queues to notify (with those left for later)."""
        self.mem = mem
        with self._running():
            if self.faults.rules or self.net_faults.due or self.net_faults.link_down:
                with self._guard():
                    self.net_faults.service(mem)
            notify = self._serve_host(mem)
        notify |= self._notify_later
        self._notify_later = set()
        return notify

    def _serve_host(self, mem: GuestMemory | None) -> set[int]:
        self.backend.service()
        if self._sync_backend_link():  # a peer accepted just now: up before its frames are read
            self._link_changed()
        notify: set[int] = set()
        if mem is not None:
            with self._guard():
                notify |= self.rx.pump(mem)
                for pair, held in enumerate(self.tx_held):
                    if held and self._tx_run(mem, pair):
                        notify.add(2 * pair + 1)
        if self._sync_backend_link():  # reading may have found the peer gone
            self._link_changed()
        return notify

    def _sync_backend_link(self) -> bool:
        up = self.backend.link_up
        if up == self._backend_link:
            return False
        before = self.link_up
        self._backend_link = up
        return before != self.link_up

    def quiesce(self, mem: GuestMemory | None, index: int | None = None,
                timeout: float = 30.0) -> bool:
        """Nothing of the device's is in flight on the host; before the memory changes (all
        queues) forget the memory the host API would place frames into."""
        if index is None:
            self.mem = None
        return True

    def close(self) -> None:
        """Close the back-end (in the worker, which may be using it)."""
        try:
            self._in_worker(self.backend.close)
        except TimeoutError:
            log.error("net: the device's worker is stuck; closing %s from this thread",
                      self.backend.describe())
            self.backend.close()
        self.net_faults.close()


def _frame_views(chain: DescriptorChain, skip: int) -> Views:
    """The chain's device-readable views from byte ``skip`` on (0: header included), never more
    than one system call takes."""
    views = chain.readable
    if not skip:
        return fit_iov(views)
    if len(views) == 1:
        return [views[0][skip:]]
    return fit_iov(chain.readable_views(skip))
