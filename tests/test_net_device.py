"""Network device and driver over loopback: features, config, frames both ways, MRG_RXBUF,
filtering through the control queue, link and announce, multiqueue, backlog."""

import pytest

from pyvirtio.devices.net import NetDevice
from pyvirtio.drivers.net import NetDriver, NetHdr
from pyvirtio.errors import RequestError, UsageError
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.net.frame import BROADCAST, frame_seq, ipv4_udp, mac_bytes, numbered_frame
from pyvirtio.net.mock import MockBackend
from pyvirtio.spec import net as spec
from pyvirtio.spec.status import DeviceStatus as S
from pyvirtio.conformance.device_model import check_device

F = spec.NetFeature
MAC = mac_bytes("52:54:00:00:00:01")
PEER = mac_bytes("52:54:00:00:00:99")
OTHER = mac_bytes("52:54:00:00:00:77")
MCAST = mac_bytes("01:00:5e:00:00:fb")


@pytest.fixture
def probe():
    transports = []

    def _probe(backend=None, *, device=None, **driver_kw):
        dev = NetDevice(backend if backend is not None else MockBackend(), mac=MAC, **(device or {}))
        t = LoopbackTransport(dev)
        transports.append(t)
        return dev, NetDriver.probe(t, **driver_kw)

    yield _probe
    for t in transports:
        t.close()


def frames_to(dst, count, size=100, src=PEER):
    return [numbered_frame(dst, src, i, size) for i in range(count)]


def test_conformance():
    assert len(check_device(NetDevice)) >= 9
    check_device(lambda: NetDevice(queue_pairs=4, mtu=9000, queue_size=64))


def test_config_space_reaches_the_driver(probe):
    dev, drv = probe(device=dict(mtu=1400, queue_pairs=2))
    assert drv.mac == MAC and drv.mtu == 1400 and drv.link_up
    assert drv.config["max_virtqueue_pairs"] == 2 and drv.pairs == 2
    assert drv.has_feature(F.MRG_RXBUF) and drv.has_feature(F.CTRL_VQ) and drv.has_feature(F.MQ)
    assert dev.active_pairs == 2  # the driver enabled both pairs with VQ_PAIRS_SET
    assert len(dev.config_bytes()) == spec.NET_CONFIG_SIZE


def test_offloads_are_offered_only_when_the_backend_takes_them():
    assert not NetDevice(MockBackend()).device_features & ((1 << F.CSUM) | (1 << F.GUEST_CSUM))
    capable = MockBackend(vnet_hdr=True, offload_features=(1 << F.CSUM) | (1 << F.HOST_TSO4) | (1 << F.GUEST_CSUM))
    feats = NetDevice(capable).device_features
    assert feats & (1 << F.CSUM) and feats & (1 << F.HOST_TSO4) and feats & (1 << F.CTRL_GUEST_OFFLOADS)
    assert not feats & (1 << F.HOST_TSO6)
    assert not NetDevice(capable, offloads=False).device_features & (1 << F.CSUM)


def test_features_without_their_requirements_are_refused():
    dev = NetDevice(MockBackend(vnet_hdr=True, offload_features=(1 << F.CSUM) | (1 << F.HOST_TSO4)))
    dev.set_status(S.ACKNOWLEDGE | S.DRIVER)
    dev.set_driver_features((1 << 32) | (1 << F.HOST_TSO4))  # TSO4 without CSUM (5.1.3.1)
    dev.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
    assert not dev.status & S.FEATURES_OK


def test_frames_both_ways(probe):
    backend = MockBackend()
    dev, drv = probe(backend)
    sent = frames_to(PEER, 5, 300, src=MAC)
    for frame in sent:
        drv.send(frame)
    assert backend.sent == sent
    assert dev.host_frames(frames_to(MAC, 5)) == 5
    got = drv.recv_all()
    assert [frame_seq(f)[0] for f in got] == list(range(5))
    assert dev.stats["tx_packets"] == 5 and dev.stats["rx_packets"] == 5


def test_backend_frames_go_straight_into_guest_buffers(probe):
    backend = MockBackend()
    dev, drv = probe(backend)
    backend.incoming.extend(frames_to(MAC, 20, 1000))
    dev.serve_backend()
    assert [frame_seq(f)[0] for f in drv.recv_all()] == list(range(20))
    assert not backend.incoming


@pytest.mark.parametrize("size", [60, 1514])
def test_mrg_rxbuf_spreads_big_frames_over_buffers(probe, size):
    dev, drv = probe(rx_buffer_size=256, rx_buffers=32)
    assert drv.mrg
    frames = frames_to(MAC, 10, size)
    assert dev.host_frames(frames) == 10
    got = [drv.recv_with_header(1.0) for _ in range(10)]
    assert [f for _, f in got] == frames
    assert all(hdr.num_buffers == -(-(size + 12) // 256) for hdr, _ in got)


def test_mrg_rxbuf_with_frames_from_a_backend(probe):
    backend = MockBackend()
    dev, drv = probe(backend, rx_buffer_size=128, rx_buffers=64)
    backend.incoming.extend(frames_to(MAC, 30, 1514))
    dev.serve_backend()
    assert [frame_seq(f)[0] for f in drv.recv_all()] == list(range(30))


def test_without_mrg_a_frame_must_fit_one_buffer(probe):
    dev, drv = probe(mrg_rxbuf=False, rx_buffer_size=512)
    assert not drv.mrg
    big, small = numbered_frame(MAC, PEER, 1, 1000), numbered_frame(MAC, PEER, 2, 400)
    dev.host_frames([big, small])
    assert drv.recv_all() == [small]
    assert dev.stats["rx_dropped"] == 1


def test_unicast_to_another_mac_is_dropped_unless_promiscuous(probe):
    dev, drv = probe()
    dev.host_frames([numbered_frame(OTHER, PEER, 1)])
    assert drv.recv(0.1) is None and dev.stats["rx_filtered"] == 1
    drv.set_promisc(True)
    dev.host_frames([numbered_frame(OTHER, PEER, 2)])
    assert frame_seq(drv.recv(1.0)) == (2, 0)
    drv.set_promisc(False)
    dev.host_frames([numbered_frame(OTHER, PEER, 3), numbered_frame(BROADCAST, PEER, 4)])
    assert [frame_seq(f)[0] for f in drv.recv_all()] == [4]


def test_multicast_needs_allmulti_or_the_table(probe):
    dev, drv = probe()
    dev.host_frames([numbered_frame(MCAST, PEER, 1)])
    assert drv.recv(0.1) is None
    drv.set_allmulti(True)
    dev.host_frames([numbered_frame(MCAST, PEER, 2)])
    assert frame_seq(drv.recv(1.0))[0] == 2
    drv.set_allmulti(False)
    drv.set_mac_table(unicast=[OTHER], multicast=[MCAST])
    dev.host_frames([numbered_frame(MCAST, PEER, 3), numbered_frame(OTHER, PEER, 4),
                     numbered_frame(mac_bytes("01:00:5e:00:00:01"), PEER, 5)])
    assert [frame_seq(f)[0] for f in drv.recv_all()] == [3, 4]
    drv.set_nomulti(True)
    dev.host_frames([numbered_frame(MCAST, PEER, 6), numbered_frame(BROADCAST, PEER, 7)])
    assert [frame_seq(f)[0] for f in drv.recv_all()] == [7]
    drv.set_nobcast(True)
    dev.host_frames([numbered_frame(BROADCAST, PEER, 8)])
    assert drv.recv(0.1) is None


def test_set_mac_moves_the_filter_and_the_config(probe):
    dev, drv = probe()
    drv.set_mac(OTHER)
    assert drv.refresh_config()["mac"] == OTHER
    dev.host_frames([numbered_frame(MAC, PEER, 1), numbered_frame(OTHER, PEER, 2)])
    assert [frame_seq(f)[0] for f in drv.recv_all()] == [2]
    with pytest.raises(RequestError):
        drv.set_mac(MCAST)  # not a unicast address: ERR


def test_reset_restores_the_default_mac_and_filter(probe):
    dev, drv = probe()
    drv.set_mac(OTHER)
    drv.set_promisc(True)
    drv.remove()
    assert dev.mac == MAC and not dev.filter.promisc and not dev.filter.unicast


def test_link_down_and_up_are_config_interrupts(probe):
    dev, drv = probe()
    seen = []
    drv.on_link.append(seen.append)
    before = drv.config_changes
    dev.set_link(False)
    assert seen == [False] and not drv.link_up and drv.config_changes == before + 1
    assert not drv.refresh_config()["status"] & spec.NetStatus.LINK_UP
    drv.send(numbered_frame(PEER, MAC, 1))
    dev.host_frames([numbered_frame(MAC, PEER, 2)])
    assert dev.stats["tx_dropped"] == 1 and dev.backend.sent == [] and drv.recv(0.1) is None
    dev.set_link(True)
    assert seen == [False, True] and drv.link_up
    drv.send(numbered_frame(PEER, MAC, 3))
    assert len(dev.backend.sent) == 1


def test_backend_losing_its_peer_takes_the_link_down(probe):
    backend = MockBackend()
    dev, drv = probe(backend)
    backend.set_peer(False)
    dev.serve_backend()
    assert not drv.link_up
    backend.set_peer(True)
    dev.serve_backend()
    assert drv.link_up


def test_announce_is_requested_and_acked(probe):
    dev, drv = probe()
    asked = []
    drv.on_announce.append(lambda: asked.append(True))
    assert dev.announce()
    assert asked and drv.announce_requested
    drv.ack_announce()
    assert not drv.refresh_config()["status"] & spec.NetStatus.ANNOUNCE and not dev.announce_pending


def test_multiqueue_steers_a_flow_back_to_its_transmit_pair(probe):
    backend = MockBackend()
    dev, drv = probe(backend, device=dict(queue_pairs=3))
    assert drv.pairs == 3 and dev.active_pairs == 3
    out = ipv4_udp(PEER, MAC, "10.0.0.1", "10.0.0.2", 4000, 53, b"question")
    drv.send(out, pair=2)
    answer = ipv4_udp(MAC, PEER, "10.0.0.2", "10.0.0.1", 53, 4000, b"answer")
    used_before = [p.queue.next_used for p in dev.rx.placers]
    backend.incoming.append(answer)
    dev.serve_backend()
    assert [p.queue.next_used - u for p, u in zip(dev.rx.placers, used_before)] == [0, 0, 1]
    assert drv.recv(1.0) == answer
    drv.set_queue_pairs(1)
    backend.incoming.append(answer)
    dev.serve_backend()
    assert dev.rx.placers[0].queue.next_used == used_before[0] + 1
    with pytest.raises(UsageError):
        drv.set_queue_pairs(4)
    ack = drv.ctrl_raw(spec.NetCtrlClass.MQ, spec.NetCtrlMq.VQ_PAIRS_SET, [spec.NET_CTRL_MQ_PAIRS_SET.pack(4)])
    assert ack == spec.NetCtrlAck.ERR


def test_driver_limited_to_fewer_pairs_finds_the_control_queue(probe):
    dev, drv = probe(device=dict(queue_pairs=4), max_pairs=2)
    assert drv.pairs == 2 and drv.ctrlq.index == 8
    drv.set_promisc(True)
    assert dev.filter.promisc


def test_pushed_frames_wait_in_a_bounded_backlog(probe):
    dev, drv = probe(device=dict(backlog_frames=10), rx_buffers=4)
    frames = frames_to(MAC, 30)
    taken = dev.host_frames(frames)
    assert taken == 14  # 4 in buffers, 10 in the backlog, the rest refused (the source can wait)
    assert len(dev.rx.backlog) == 10 and not dev.wants_rx
    got = []
    while len(got) < taken:
        got.append(drv.recv(1.0))
    assert [frame_seq(f)[0] for f in got] == list(range(14))
    assert dev.host_frames(frames[14:]) == 14  # the reposted buffers, and the backlog again
    assert dev.stats["rx_dropped"] == 0
    assert dev.host_frames(frames_to(MAC, 20), can_wait=False) == 20  # taken, but all dropped:
    assert dev.stats["rx_dropped"] == 20  # this source cannot wait, and there is no room
    assert len(dev.rx.backlog) == 10 and dev.rx.backlog_bytes == 10 * 100
    assert [frame_seq(f)[0] for f in drv.recv_all()] == list(range(14, 28))


def test_guest_headers_pass_to_a_vnet_backend(probe):
    backend = MockBackend(vnet_hdr=True, offload_features=(1 << F.CSUM) | (1 << F.GUEST_CSUM))
    dev, drv = probe(backend, offloads=True)
    assert drv.has_feature(F.CSUM) and drv.has_feature(F.GUEST_CSUM)
    assert backend.offloads_set and backend.offloads_set[-1] & (1 << F.GUEST_CSUM)
    hdr = NetHdr(flags=spec.NetHdrFlag.NEEDS_CSUM, csum_start=34, csum_offset=16)
    frame = numbered_frame(PEER, MAC, 1, 200)
    drv.send(frame, header=hdr)
    assert backend.sent == [hdr.pack() + frame]
    rx_hdr = NetHdr(flags=spec.NetHdrFlag.DATA_VALID)
    backend.incoming.append(rx_hdr.pack() + numbered_frame(MAC, PEER, 2, 200))
    dev.serve_backend()
    got_hdr, got = drv.recv_with_header(1.0)
    assert got_hdr.flags == spec.NetHdrFlag.DATA_VALID and frame_seq(got) == (2, 0)


def test_header_flags_are_cleared_for_a_guest_without_checksum_offload(probe):
    backend = MockBackend(vnet_hdr=True, offload_features=(1 << F.CSUM) | (1 << F.GUEST_CSUM))
    dev, drv = probe(backend)  # the driver declines offloads
    backend.incoming.append(NetHdr(flags=spec.NetHdrFlag.DATA_VALID).pack() + numbered_frame(MAC, PEER, 1))
    backend.incoming.append(NetHdr(gso_type=spec.NetGsoType.TCPV4, gso_size=1448).pack()
                            + numbered_frame(MAC, PEER, 2))
    dev.serve_backend()
    hdr, frame = drv.recv_with_header(1.0)
    assert hdr.flags == 0 and frame_seq(frame) == (1, 0)  # 5.1.6.4.2: flags zero without GUEST_CSUM
    assert drv.recv(0.1) is None and dev.stats["rx_errors"] == 1  # GSO it cannot take: dropped


def test_transmit_back_pressure_keeps_frames(probe):
    backend = MockBackend()
    dev, drv = probe(backend)
    backend.blocked = True
    drv.send_batch(frames_to(PEER, 5, src=MAC))
    assert dev.tx_waiting and backend.sent == []
    backend.blocked = False
    dev.serve_backend()
    assert [frame_seq(f)[0] for f in backend.sent] == list(range(5)) and not dev.tx_waiting
    drv.flush()


def test_packed_rings_carry_the_same_traffic():
    backend = MockBackend()
    dev = NetDevice(backend, mac=MAC)
    dev.offer_packed_ring()
    t = LoopbackTransport(dev)
    try:
        drv = NetDriver.probe(t, rx_buffer_size=256, rx_buffers=64)
        assert drv.has_feature(32 + 2)  # VIRTIO_F_RING_PACKED (34)
        big = frames_to(MAC, 40, 1514)
        backend.incoming.extend(big)
        dev.serve_backend()
        assert drv.recv_all() == big  # zero-copy into merged buffers, then the copy path
        drv.send_batch(frames_to(PEER, 300, 64, src=MAC))
        assert len(backend.sent) == 300
        drv.set_promisc(True)
        assert dev.filter.promisc
    finally:
        t.close()


def test_a_removed_driver_refuses_politely(probe):
    dev, drv = probe()
    drv.remove()
    with pytest.raises(UsageError):
        drv.send(numbered_frame(PEER, MAC, 1))
    with pytest.raises(UsageError):
        drv.recv(0.1)


def test_a_backend_that_cannot_wait_is_drained_and_drops_are_counted(probe):
    backend = MockBackend(can_wait=False)
    dev, drv = probe(backend, rx_buffers=4)
    backend.incoming.extend(frames_to(MAC, 20))
    dev.serve_backend()
    assert not backend.incoming  # nothing left waiting in a back-end that cannot hold frames
    assert dev.stats["rx_dropped"] == 16 and dev.wants_rx
    assert [frame_seq(f)[0] for f in drv.recv_all()] == [0, 1, 2, 3]


def test_a_backend_that_can_wait_keeps_its_frames(probe):
    backend = MockBackend()
    dev, drv = probe(backend, rx_buffers=4)
    backend.incoming.extend(frames_to(MAC, 20))
    dev.serve_backend()
    assert len(backend.incoming) == 16 and dev.rx.starved and not dev.wants_rx
    got = []
    while len(got) < 20:
        frame = drv.recv(1.0)  # reposting the buffers kicks the device, which reads on
        assert frame is not None
        got.append(frame_seq(frame)[0])
    assert got == list(range(20)) and dev.stats["rx_dropped"] == 0


def test_frames_for_another_pair_are_signalled_from_the_worker(probe):
    import threading
    import time

    dev, drv = probe(device=dict(queue_pairs=3), rx_buffers=2)
    t = drv.transport
    seen, orig = [], t._handler
    t.set_interrupt_handler(lambda info: (seen.append((info.queue, threading.current_thread().name)),
                                          orig(info)))
    worker = t.engine.name + "-g0"  # the engine's worker of the device's one group
    candidates = [numbered_frame(MAC, mac_bytes(f"52:54:00:00:09:{i:02x}"), i) for i in range(64)]
    to0 = [f for f in candidates if dev.flows.lookup(f, 3) == 0]
    to2 = [f for f in candidates if dev.flows.lookup(f, 3) == 2]
    assert dev.host_frames(to0[:3] + to2[:2]) == 5  # pair 0 has 2 buffers: 1 + 2 wait
    assert len(dev.rx.backlog) == 3
    got = drv.recv_all(0.5)  # collecting reposts pair 0's buffers and kicks it
    assert sorted(got) == sorted(to0[:3] + to2[:2]) and not dev.rx.backlog
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and not any(q == 4 for q, _ in seen):
        time.sleep(0.01)
    assert (worker in {name for q, name in seen if q == 4})
