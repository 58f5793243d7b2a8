"""The transmit fast path: ``SplitDeviceQueue.pop_direct`` (one-descriptor chains in a batch,
no DescriptorChain, every descriptor checked and its buffer translated) and the vectorised
``add_used_batch``/``add_used_heads``, on their own and under NetDevice (header checks, the null
back-end's copy, ``pyvirtio serve net --null`` refusing a wild buffer)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from pyvirtio.devices.net import NetDevice
from pyvirtio.drivers.net import NetDriver
from pyvirtio.errors import DriverFault, QueueBroken, UsageError
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.memory import GuestMemory
from pyvirtio.net.frame import frame_seq, mac_bytes, numbered_frame
from pyvirtio.net.mock import MockBackend
from pyvirtio.net.null import NullBackend
from pyvirtio.spec.features import Feature
from pyvirtio.spec.ids import DeviceType
from pyvirtio.spec.status import DeviceStatus as S
from pyvirtio.vhost_user.frontend.transport import VhostUserTransport
from pyvirtio.virtq import SplitDeviceQueue, SplitDriverQueue, SplitRingLayout

SIZE = 8
RING = 0x1000
BUFS = 0x4000


@pytest.fixture
def rings():
    mem = GuestMemory.anonymous(1 << 20)
    layout = SplitRingLayout.contiguous(RING, SIZE)
    drv = SplitDriverQueue(layout)
    drv.setup(mem)
    dev = SplitDeviceQueue(SIZE)
    dev.set_addresses(layout.desc_table, layout.avail_ring, layout.used_ring)
    dev.activate(mem)
    return mem, drv, dev


def add_frames(mem, drv, count, start=0):
    for i in range(count):
        addr = BUFS + ((start + i) % 64) * 256
        data = bytes([start + i]) * (20 + i)
        mem.write(addr, data)
        drv.add(mem, [(addr, len(data))], [], ("f", start + i))


def test_single_descriptor_chains_come_in_one_batch(rings):
    mem, drv, dev = rings
    add_frames(mem, drv, 5)
    heads, lengths, views = dev.pop_direct(mem, 64)
    assert len(heads) == 5 and lengths == [20, 21, 22, 23, 24]
    assert [bytes(v) for v in views] == [bytes([i]) * (20 + i) for i in range(5)]
    assert dev.pop_direct(mem, 64) == ([], [], [])
    dev.add_used_batch(mem, [(h, 0) for h in heads])
    assert [t for t, _ in drv.get_bufs(mem)] == [("f", i) for i in range(5)]


def test_batches_wrap_around_the_ring_many_times(rings):
    mem, drv, dev = rings
    seen = 0
    for round_ in range(40):
        n = 1 + round_ % SIZE
        add_frames(mem, drv, n, start=seen)
        heads, lengths, views = dev.pop_direct(mem, 3 + round_ % 5)
        while heads:
            assert [bytes(v)[0] for v in views] == [(seen + i) & 0xFF for i in range(len(heads))]
            dev.add_used_batch(mem, [(h, 0) for h in heads])
            seen += len(heads)
            heads, lengths, views = dev.pop_direct(mem, 3)
        got = drv.get_bufs(mem)
        assert [tok for tok, _ in got] == [("f", i) for i in range(seen - n, seen)]
    assert dev.next_avail == seen & 0xFFFF and dev.next_used == seen & 0xFFFF


def test_a_chained_or_indirect_chain_ends_the_batch(rings):
    mem, drv, dev = rings
    add_frames(mem, drv, 2)
    drv.add(mem, [(BUFS, 10), (BUFS + 100, 10)], [], "chained")
    add_frames(mem, drv, 2, start=10)
    heads, _, _ = dev.pop_direct(mem, 64)
    assert len(heads) == 2
    chain = dev.pop_descriptor_chain(mem)
    assert chain.readable_len == 20
    heads2, lengths, _ = dev.pop_direct(mem, 64)
    assert lengths == [20, 21]


def test_a_head_out_of_range_breaks_the_queue(rings):
    mem, drv, dev = rings
    add_frames(mem, drv, 1)
    mem.store16(drv.layout.avail_ring + 4, SIZE + 3)  # the ring entry points past the table
    with pytest.raises(DriverFault):
        dev.pop_direct(mem, 64)
    with pytest.raises(QueueBroken):
        dev.pop_direct(mem, 64)


def test_a_buffer_outside_memory_breaks_the_queue(rings):
    mem, drv, dev = rings
    add_frames(mem, drv, 2)
    drv.add(mem, [(1 << 40, 64)], [], "wild")  # every buffer is translated: none passes unread
    with pytest.raises(DriverFault, match="descriptor buffer"):
        dev.pop_direct(mem, 64)
    assert dev.broken and dev.next_avail == 0  # nothing of the batch was taken
    with pytest.raises(QueueBroken):
        dev.pop_direct(mem, 64)


def test_a_buffer_running_past_memory_breaks_the_queue(rings):
    mem, drv, dev = rings
    drv.add(mem, [((1 << 20) - 10, 64)], [], "tail")  # starts inside, ends outside
    with pytest.raises(DriverFault):
        dev.pop_direct(mem, 64)
    assert dev.broken


def test_a_buffer_across_two_regions_goes_to_the_general_path():
    mem = GuestMemory.from_buffers((0, bytearray(0x8000)), (0x8000, bytearray(0x8000)))
    layout = SplitRingLayout.contiguous(RING, SIZE)
    drv = SplitDriverQueue(layout)
    drv.setup(mem)
    dev = SplitDeviceQueue(SIZE)
    dev.set_addresses(layout.desc_table, layout.avail_ring, layout.used_ring)
    dev.activate(mem)
    add_frames(mem, drv, 1)
    mem.write(0x8000 - 8, bytes(range(16)))
    drv.add(mem, [(0x8000 - 8, 16)], [], "across")  # valid: mapped, but not one view
    add_frames(mem, drv, 1, start=1)
    heads, lengths, views = dev.pop_direct(mem, 64)
    assert lengths == [20] and not dev.broken
    assert dev.pop_direct(mem, 64) == ([], [], [])  # the next one still is not a direct chain
    chain = dev.pop_descriptor_chain(mem)
    assert chain.read(0, 16) == bytes(range(16))
    assert bytes(dev.pop_direct(mem, 64)[2][0]) == bytes([1]) * 20


def test_a_writable_or_flagged_descriptor_is_not_direct(rings):
    mem, drv, dev = rings
    drv.add(mem, [], [(BUFS, 64)], "rx-like")
    assert dev.pop_direct(mem, 64) == ([], [], [])
    chain = dev.pop_descriptor_chain(mem)
    assert chain.writable_len == 64


def test_in_order_returns_a_batch_with_one_used_entry():
    mem = GuestMemory.anonymous(1 << 20)
    layout = SplitRingLayout.contiguous(RING, SIZE)
    drv = SplitDriverQueue(layout, in_order=True)
    drv.setup(mem)
    dev = SplitDeviceQueue(SIZE)
    dev.in_order = True
    dev.set_addresses(layout.desc_table, layout.avail_ring, layout.used_ring)
    dev.activate(mem)
    seen = 0
    for round_ in range(7):  # 7 x 5 chains through a ring of 8: both rings wrap
        add_frames(mem, drv, 5, start=seen)
        heads, _, _ = dev.pop_direct(mem, 64)
        used_slot = dev.next_used & (SIZE - 1)
        dev.add_used_heads(mem, heads)
        assert mem.load32(layout.used_ring + 4 + 8 * used_slot) == heads[-1]  # one entry: the last
        assert dev.next_used == (seen + 5) & 0xFFFF
        assert [t for t, _ in drv.get_bufs(mem)] == [("f", seen + i) for i in range(5)]
        seen += 5


def test_add_used_batch_checks_before_it_writes(rings):
    mem, drv, dev = rings
    add_frames(mem, drv, 3)
    heads, _, _ = dev.pop_direct(mem, 64)
    for bad in ([(heads[0], -1)], [(SIZE, 0)], [(heads[0], 1 << 32)], [(heads[0],)]):
        with pytest.raises(UsageError):
            dev.add_used_batch(mem, bad)
    assert dev.next_used == 0 and mem.load16(drv.layout.used_ring + 2) == 0
    dev.add_used_batch(mem, [(h, 0) for h in heads])
    assert [t for t, _ in drv.get_bufs(mem)] == [("f", 0), ("f", 1), ("f", 2)]


def test_add_used_heads_wraps_and_checks(rings):
    mem, drv, dev = rings
    for round_ in range(6):  # 6 x 5 chains through a ring of 8: the used ring wraps
        add_frames(mem, drv, 5, start=round_ * 5)
        heads, _, _ = dev.pop_direct(mem, 64)
        dev.add_used_heads(mem, heads)
        assert [t for t, _ in drv.get_bufs(mem)] == [("f", round_ * 5 + i) for i in range(5)]
    for bad in ([SIZE], [-1], ["x"]):
        with pytest.raises(UsageError):
            dev.add_used_heads(mem, bad)
    with pytest.raises(UsageError):
        dev.add_used_heads(mem, [0], length=-5)
    dev.add_used_heads(mem, [])
    assert dev.next_used == 30


# --- under the device ---------------------------------------------------------------------------

MAC, PEER = mac_bytes("52:54:00:00:05:01"), mac_bytes("52:54:00:00:05:02")


@pytest.fixture(params=["vector", "pure"])
def tx_path(request, monkeypatch):
    """Each device test runs on the vectorised batch (numpy) and on the pure one."""
    from pyvirtio.virtq import vector
    if request.param == "vector" and not vector.ENABLED:
        pytest.skip("the vectorised path is off here (numpy not installed, or PYVIRTIO_PURE=1)")
    monkeypatch.setattr(vector, "ENABLED", request.param == "vector")
    return request.param


def transmit(backend, chains: list[list[bytes]]) -> NetDevice:
    """A NetDevice on ``backend``, driven in-process: the driver makes every chain (its
    device-readable buffers) available on the transmit queue, kicks once and waits for them
    all to come back.  Returns the device."""
    dev = NetDevice(backend, mac=MAC)
    t = LoopbackTransport(dev)
    try:
        txq = NetDriver.probe(t).queues[1]
        pendings = [txq.submit(chain, [], kick=False) for chain in chains]
        txq.kick()
        for p in pendings:
            txq.wait(p)
        return dev
    finally:
        t.close()


def test_device_mixes_fast_and_general_chains_in_order(tx_path):
    backend = MockBackend()
    frames = [numbered_frame(PEER, MAC, i, 80) for i in range(30)]
    transmit(backend, [[bytes(12) + frame] if i % 3 else [bytes(12), frame[:30], frame[30:]]
                       for i, frame in enumerate(frames)])
    assert [frame_seq(f)[0] for f in backend.sent] == list(range(30))


def test_device_refuses_a_wild_fast_path_buffer_with_needs_reset(tx_path):
    dev = NetDevice(MockBackend(), mac=MAC)
    t = LoopbackTransport(dev)
    try:
        drv = NetDriver.probe(t)
        txq = drv.queues[1]
        txq.vq.add(t.memory, [(1 << 40, 100)], [], "wild")
        txq.kick()
        assert dev.status & S.DEVICE_NEEDS_RESET
    finally:
        t.close()


def test_device_drops_frames_whose_header_asks_for_unnegotiated_offloads(tx_path):
    backend = MockBackend()
    csum = bytes([1, 0]) + bytes(10)  # NEEDS_CSUM without VIRTIO_NET_F_CSUM
    gso = bytes([0, 1]) + bytes(10)  # GSO_TCPV4 without HOST_TSO4
    frames = [numbered_frame(PEER, MAC, i, 80) for i in range(4)]
    dev = transmit(backend, [[hdr + f] for hdr, f in zip((bytes(12), csum, gso, bytes(12)), frames)]
                   + [[csum, frames[0]]])  # the general path checks it too
    assert [frame_seq(f)[0] for f in backend.sent] == [0, 3]
    assert dev.stats["tx_errors"] == 3 and dev.stats["tx_packets"] == 2
    assert "NEEDS_CSUM" in str(dev.last_error)
    assert not dev.status & S.DEVICE_NEEDS_RESET  # the driver's frames, not its ring


@pytest.mark.parametrize("hdr, what", [(bytes([1, 0]) + bytes(10), "NEEDS_CSUM"),
                                       (bytes([0, 1]) + bytes(10), "gso_type"),
                                       (bytes([0, 0x80]) + bytes(10), "ECN")])
def test_one_offload_header_in_a_batch_of_plain_frames_is_dropped(tx_path, hdr, what):
    """Each header field the batch looks at (flags, byte 0; gso_type, byte 1), alone in a batch
    of plain frames of one length: that frame dropped and counted, the others sent."""
    backend = MockBackend()
    frames = [numbered_frame(PEER, MAC, i, 80) for i in range(5)]
    dev = transmit(backend, [[(hdr if i == 2 else bytes(12)) + f] for i, f in enumerate(frames)])
    assert [frame_seq(f)[0] for f in backend.sent] == [0, 1, 3, 4]
    assert dev.stats["tx_errors"] == 1 and what in str(dev.last_error)


def test_null_backend_copies_every_frame_out_of_guest_memory(tx_path):
    backend = NullBackend()
    dev = NetDevice(backend, mac=MAC)
    t = LoopbackTransport(dev)
    try:
        drv = NetDriver.probe(t)
        txq = drv.queues[1]
        frames = [numbered_frame(PEER, MAC, i, 60 + i) for i in range(20)]
        pendings = [txq.submit([bytes(12) + f], [], kick=False) for f in frames]
        txq.kick()
        for p in pendings:
            txq.wait(p)
        assert backend.frames == b"".join(frames)  # one batch, headers left out
        assert backend.stats["tx_frames"] == 20 == dev.stats["tx_packets"]
        assert dev.stats["tx_bytes"] == sum(map(len, frames))
        p = txq.submit([bytes(12), frames[3][:20], frames[3][20:]], [], kick=True)  # general path
        txq.wait(p)
        assert backend.frames == frames[3] and backend.stats["tx_frames"] == 21
    finally:
        t.close()


@pytest.mark.parametrize("ring", ["split", "packed"])
def test_serve_net_null_flags_a_transmit_descriptor_outside_guest_memory(tmp_path, ring):
    """The daemon, as the benchmark runs it, over vhost-user: frames go through; then a
    descriptor at 1 << 40 breaks the transmit ring (the back-end signals the ring's error fd:
    DEVICE_NEEDS_RESET for the driver) and the daemon names the bad buffer."""
    sock = str(tmp_path / "net.sock")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pyvirtio.cli", "-v", "serve", "net", "--null",
                                 f"--socket-path={sock}"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    t = None
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        t = VhostUserTransport(sock, device_type=DeviceType.NET, split_only=ring == "split")
        drv = NetDriver.probe(t)
        assert bool(drv.negotiated >> Feature.RING_PACKED & 1) == (ring == "packed")
        txq = drv.queues[1]
        for i in range(3):
            txq.wait(txq.submit([bytes(12) + numbered_frame(PEER, MAC, i, 80)], [], kick=True))
        assert not t.get_status() & S.DEVICE_NEEDS_RESET
        txq.vq.add(t.memory, [(1 << 40, 100)], [], "wild")
        txq.kick()
        deadline = time.monotonic() + 10
        while not t.get_status() & S.DEVICE_NEEDS_RESET and time.monotonic() < deadline:
            t.wait_for_interrupt(0.1)
        assert t.get_status() & S.DEVICE_NEEDS_RESET
        deadline = time.monotonic() + 10
        while "descriptor buffer" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"{1 << 40:#x}" in log.read_text() or "0x10000000000" in log.read_text(), log.read_text()[-2000:]
    finally:
        if t is not None:
            t.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
