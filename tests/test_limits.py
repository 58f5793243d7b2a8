"""Issue 12, class 3: the peer-controlled sizes of :mod:`pyvirtio.limits`, enforced on the rings.

A chain may hold at most MAX_CHAIN_SEGMENTS descriptors and buffers; an indirect table longer
than that is refused from its length alone, before it is mapped or walked — so one descriptor
costs neither memory nor time.  Also the rate-limited peer log.
"""

from __future__ import annotations

import logging
import os
import time

import pytest

from pyvirtio.errors import DriverFault, QueueBroken
from pyvirtio.limits import LOG_LINES_PER_SECOND, MAX_CHAIN_SEGMENTS, PeerLog
from pyvirtio.memory import GuestMemory
from pyvirtio.spec import ring
from pyvirtio.testing import MockSplitDriver, make_device_queue
from pyvirtio.testing.mock_driver import F_INDIRECT, F_NEXT
from pyvirtio.virtq.packed_device import PackedDeviceQueue
from pyvirtio.virtq.packed_driver import PackedRingLayout

MiB = 1 << 20


def _split(size=8, mem_size=32 * MiB):
    mock = MockSplitDriver(size, regions=((0, mem_size),))
    return mock, make_device_queue(mock, indirect=True)


def _split_indirect(mock, entries: int, *, loop: bool = False) -> None:
    """A ring descriptor pointing at an indirect table of ``entries`` 1-byte buffers."""
    table = mock.alloc(16 * entries)
    buf = mock.alloc(16)
    raw = bytearray(16 * entries)
    for i in range(entries):
        nxt = (i + 1) % entries if loop else i + 1
        flags = F_NEXT if loop or i + 1 < entries else 0
        ring.VIRTQ_DESC.pack_into(raw, 16 * i, buf, 1, flags, nxt & 0xFFFF)
    mock.write(table, bytes(raw))
    mock.write_desc(0, table, 16 * entries, F_INDIRECT)
    mock.add_head(0)


def test_a_chain_of_exactly_max_segments_is_served():
    mock, q = _split()
    _split_indirect(mock, MAX_CHAIN_SEGMENTS)
    chain = q.pop_descriptor_chain(mock.mem)
    assert chain.descriptors == MAX_CHAIN_SEGMENTS and chain.readable_len == MAX_CHAIN_SEGMENTS


@pytest.mark.parametrize("entries", [MAX_CHAIN_SEGMENTS + 1, 65535])
def test_split_indirect_table_over_the_limit_is_refused_before_the_walk(entries):
    mock, q = _split()
    _split_indirect(mock, entries)
    started = time.monotonic()
    with pytest.raises(DriverFault, match=str(MAX_CHAIN_SEGMENTS)):
        q.pop_descriptor_chain(mock.mem)
    assert time.monotonic() - started < 0.5
    assert q.broken and q.next_avail == 0
    with pytest.raises(QueueBroken):
        q.pop_descriptor_chain(mock.mem)


def test_split_looping_16mib_indirect_table_costs_nothing():
    """A 16 MiB table (1 Mi entries, each linked to the next, the last back to the first)."""
    mock, q = _split(mem_size=20 * MiB)
    table = mock.alloc(16 * MiB)
    mock.write_desc(0, table, 16 * MiB, F_INDIRECT)
    mock.add_head(0)
    started = time.monotonic()
    with pytest.raises(DriverFault):
        q.pop_descriptor_chain(mock.mem)
    assert time.monotonic() - started < 0.5


def test_split_direct_chain_over_the_limit_in_a_big_queue():
    size = 2 * MAX_CHAIN_SEGMENTS
    mock = MockSplitDriver(size, regions=((0, 4 * MiB),))
    q = make_device_queue(mock)
    buf = mock.alloc(16)
    mock.add_chain([(buf, 1, 0)] * (MAX_CHAIN_SEGMENTS + 1))
    with pytest.raises(DriverFault, match="more than 1024 descriptors"):
        q.pop_descriptor_chain(mock.mem)


def test_split_chain_spread_over_regions_counts_buffers_not_descriptors():
    """Descriptors that each cross a region boundary map to two buffers each: the buffer count
    (what readv/writev takes) is what is capped."""
    regions = [(i * 0x1000, 0x1000) for i in range(1, 2 * MAX_CHAIN_SEGMENTS)]
    mock = MockSplitDriver(8, regions=[(0, 0x1000 * 64)] + [(gpa + 63 * 0x1000, n) for gpa, n in regions])
    q = make_device_queue(mock, indirect=True)
    entries = MAX_CHAIN_SEGMENTS // 2 + 1
    table = mock.alloc(16 * entries)
    raw = bytearray(16 * entries)
    for i in range(entries):  # 16 bytes straddling the end of region i+1
        addr = (64 + i) * 0x1000 - 8
        ring.VIRTQ_DESC.pack_into(raw, 16 * i, addr, 16, F_NEXT if i + 1 < entries else 0, i + 1)
    mock.write(table, bytes(raw))
    mock.write_desc(0, table, 16 * entries, F_INDIRECT)
    mock.add_head(0)
    with pytest.raises(DriverFault, match="buffers"):
        q.pop_descriptor_chain(mock.mem)


def test_split_direct_chain_counts_every_buffer_however_the_walk_found_it():
    """Buffers that cross regions (two views each) and then buffers in one region (one view each,
    sliced without a lookup): fewer descriptors than the cap, more buffers — refused."""
    regions = [(0, 0x1000 * 64)] + [((64 + i) * 0x1000, 0x1000) for i in range(128)]
    mock = MockSplitDriver(2 * MAX_CHAIN_SEGMENTS, regions=regions)
    q = make_device_queue(mock)
    buf = mock.alloc(16)
    crossing = [((65 + i) * 0x1000 - 8, 16, 0) for i in range(100)]  # 200 buffers
    mock.add_chain(crossing + [(buf, 1, 0)] * (MAX_CHAIN_SEGMENTS - 200 + 1))
    with pytest.raises(DriverFault, match="buffers"):
        q.pop_descriptor_chain(mock.mem)
    assert q.broken


# --- packed -------------------------------------------------------------------------------------


def _packed(entries: int):
    mem = GuestMemory.anonymous(4 * MiB)
    lay = PackedRingLayout.contiguous(0x1000, 8)
    dev = PackedDeviceQueue(8)
    dev.set_addresses(lay.desc_table, lay.avail_ring, lay.used_ring)
    dev.set_features(False, True)
    dev.activate(mem)
    table, buf = 0x100000, 0x10000
    raw = bytearray(16 * entries)
    for i in range(entries):
        ring.PVIRTQ_DESC.pack_into(raw, 16 * i, buf, 1, 0, 0)
    mem.write(table, bytes(raw))
    ring.PVIRTQ_DESC.pack_into(mem.view(lay.desc_table, 16), 0, table, 16 * entries, 0,
                               ring.VIRTQ_DESC_F_AVAIL | ring.VIRTQ_DESC_F_INDIRECT)
    return mem, dev


def test_packed_indirect_at_the_limit_is_served():
    mem, dev = _packed(MAX_CHAIN_SEGMENTS)
    assert dev.pop_descriptor_chain(mem).descriptors == MAX_CHAIN_SEGMENTS


@pytest.mark.parametrize("entries", [MAX_CHAIN_SEGMENTS + 1, 65535])
def test_packed_indirect_over_the_limit_is_refused_before_the_walk(entries):
    mem, dev = _packed(entries)
    started = time.monotonic()
    with pytest.raises(DriverFault, match=str(MAX_CHAIN_SEGMENTS)):
        dev.pop_descriptor_chain(mem)
    assert time.monotonic() - started < 0.5 and dev.broken


# --- the rate-limited peer log --------------------------------------------------------------------


def test_peer_log_caps_lines_per_second_and_reports_the_rest(caplog):
    now = [100.0]
    plog = PeerLog(logging.getLogger("pyvirtio.test.limits"), clock=lambda: now[0])
    with caplog.at_level(logging.INFO, "pyvirtio.test.limits"):
        for i in range(1000):
            plog.warning("bad thing %d", i)
        assert len(caplog.records) == LOG_LINES_PER_SECOND
        now[0] += 1.0
        plog.warning("after a second")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[-2] == (f"{1000 - LOG_LINES_PER_SECOND} more log lines suppressed (more than "
                            f"{LOG_LINES_PER_SECOND} a second from one peer)")
    assert messages[-1] == "after a second"


# --- blk: the advertised seg_max is enforced -------------------------------------------------------


def test_blk_request_with_more_data_segments_than_seg_max_gets_ioerr(tmp_path):
    """5.2.4: seg_max is the most data segments in a request; a chain with more gets IOERR in its
    status byte (the request fails, the queue goes on) and nothing reaches the image."""
    from pyvirtio.devices.blk import BlkDevice
    from pyvirtio.spec import blk as spec
    from pyvirtio.virtq.chain import DescriptorChain

    path = tmp_path / "disk.img"
    path.write_bytes(bytes(1 << 20))
    dev = BlkDevice(str(path), queue_max_size=8)
    assert dev.seg_max == 6
    header = bytearray(16)
    spec.BLK_REQ_HEADER.pack_into(header, 0, spec.BlkReqType.OUT, 0, 0)
    data = [memoryview(bytearray(b"x" * 512)) for _ in range(dev.seg_max + 1)]
    status = memoryview(bytearray(1))
    chain = DescriptorChain(0, [memoryview(header)] + data, [status], 16 + 512 * len(data), 1,
                            2 + len(data))
    assert dev.handle_chain(0, chain) == 1
    assert status[0] == spec.BlkStatus.IOERR
    assert path.read_bytes() == bytes(1 << 20)
    dev.close()


# --- class 6: memory the front-end could take away ----------------------------------------------


def _memfd(size=1 << 16, flags=os.MFD_ALLOW_SEALING):
    fd = os.memfd_create("guest", flags)
    os.ftruncate(fd, size)
    return fd


def test_a_mapped_memfd_cannot_be_shrunk_by_the_front_end():
    """Issue 12, class 6: a memfd without F_SEAL_SHRINK gets the seal when it is mapped, so the
    front-end's ftruncate fails instead of the daemon dying of SIGBUS at the next access."""
    from pyvirtio.memory import release_region
    from pyvirtio.vhost_user.backend.memmap import map_region
    from pyvirtio.vhost_user.wire import MemoryRegion
    fd = _memfd()
    theirs = os.dup(fd)  # the front-end keeps its own copy
    region = map_region(fd, MemoryRegion(0, 1 << 16, 1 << 40, 0))
    with pytest.raises(PermissionError):
        os.ftruncate(theirs, 0)
    region.buf[-1] = 1  # still backed
    os.ftruncate(theirs, 1 << 17)  # growing stays allowed (QEMU seals that too; harmless)
    release_region(region)
    os.close(theirs)


def test_a_memfd_that_cannot_be_sealed_is_served_with_a_warning(caplog):
    """DPDK's --no-huge memory is a memfd without MFD_ALLOW_SEALING: refusing it would refuse a
    real front-end, so it is taken like a tmpfs/hugetlbfs file (no seals), with one warning."""
    from pyvirtio.memory import release_region
    from pyvirtio.vhost_user.backend.memmap import map_region
    from pyvirtio.vhost_user.wire import MemoryRegion
    import fcntl
    unsealable = _memfd(flags=0)  # no MFD_ALLOW_SEALING: F_SEAL_SEAL is set from the start
    sealed_open = _memfd()
    fcntl.fcntl(sealed_open, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL)
    for fd in (unsealable, sealed_open):
        caplog.clear()
        with caplog.at_level("WARNING", logger="pyvirtio.vhost_user.backend.memmap"):
            region = map_region(fd, MemoryRegion(0, 1 << 16, 1 << 40, 0))
        assert "cannot be sealed" in caplog.text
        region.buf[0] = 1
        release_region(region)


def test_qemus_sealed_memfd_is_taken_as_it_is():
    """QEMU's memory-backend-memfd (seal=on): F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL."""
    import fcntl
    from pyvirtio.memory import release_region
    from pyvirtio.vhost_user.backend.memmap import map_region
    from pyvirtio.vhost_user.wire import MemoryRegion
    fd = _memfd()
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    release_region(map_region(fd, MemoryRegion(0, 1 << 16, 1 << 40, 0)))


def test_a_front_end_sending_bad_messages_cannot_flood_the_log(caplog):
    """Each rejected message is one log line, but one front-end gets LOG_LINES_PER_SECOND."""
    from pyvirtio.devices.rng import RngDevice
    from pyvirtio.vhost_user.backend.connection import BackendConnection
    from pyvirtio.vhost_user.testing import TestFrontend
    from pyvirtio.vhost_user.wire import encode
    conn = BackendConnection(RngDevice(), name="flood")
    fe = TestFrontend.pair(conn)
    with caplog.at_level(logging.INFO, "pyvirtio.vhost_user"):
        for _ in range(2000):
            fe.ch.send(encode(200, b""))  # an unknown request, no reply wanted
    rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) <= LOG_LINES_PER_SECOND * 2  # at most two one-second windows
    fe.close()


# --- one place for each number ------------------------------------------------------------------


def test_vhost_user_takes_its_limits_from_pyvirtio_limits():
    """Changing a number in pyvirtio.limits changes what vhost-user enforces (GET_MAX_MEM_SLOTS,
    fds per message) — no second copy of it."""
    import subprocess
    import sys
    from pyvirtio.limits import MAX_FDS_PER_MESSAGE
    from pyvirtio.vhost_user.protocol import MEMORY_BASELINE_NREGIONS
    assert MAX_FDS_PER_MESSAGE >= MEMORY_BASELINE_NREGIONS  # SET_MEM_TABLE fits one message
    code = ("import pyvirtio.limits as L; L.MAX_MEM_SLOTS = 3; L.MAX_FDS_PER_MESSAGE = 9\n"
            "from pyvirtio.vhost_user import protocol\n"
            "from pyvirtio.vhost_user.backend import connection as backend\n"
            "assert (backend.DEFAULT_MAX_MEM_SLOTS, protocol.MAX_FDS) == (3, 9), "
            "(backend.DEFAULT_MAX_MEM_SLOTS, protocol.MAX_FDS)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_a_guest_repeating_a_bad_chain_cannot_flood_the_log(tmp_path, caplog):
    """Per-chain warnings a guest can cause in a loop go through the device's PeerLog."""
    from pyvirtio.devices.blk import BlkDevice
    from pyvirtio.virtq.chain import DescriptorChain
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(1 << 16))
    dev = BlkDevice(str(path))
    with caplog.at_level(logging.WARNING, "pyvirtio.devices.blk"):
        for head in range(2000):  # no request header
            dev.handle_chain(0, DescriptorChain(head, [memoryview(bytearray(4))], [], 4, 0, 1))
    dev.close()
    lines = [r for r in caplog.records if "no request header" in r.getMessage()]
    assert 0 < len(lines) <= 2 * LOG_LINES_PER_SECOND


def test_a_guest_repeating_bad_console_messages_cannot_flood_the_log(caplog):
    from pyvirtio.devices.console import ConsoleDevice
    from pyvirtio.drivers.console import ConsoleDriver
    from pyvirtio.loopback import LoopbackTransport
    from pyvirtio.spec import console as cspec
    dev = ConsoleDevice()
    t = LoopbackTransport(dev)
    drv = ConsoleDriver.probe(t)
    ctrlq = drv.queue(cspec.CONTROL_TRANSMITQ)
    with caplog.at_level(logging.WARNING, "pyvirtio.devices.console"):
        for _ in range(300):  # too short to be a control message
            ctrlq.wait(ctrlq.submit([b"\x01"], []), timeout=5)
    assert dev.stats["control_errors"] == 300
    lines = [r for r in caplog.records if "bad control message" in r.getMessage()]
    assert 0 < len(lines) <= 2 * LOG_LINES_PER_SECOND
    drv.remove()
    t.close()
    dev.close()


def test_a_guest_breaking_its_ring_again_and_again_cannot_flood_the_log(caplog, monkeypatch):
    """A guest that breaks a ring, has it restarted, and breaks it again: each break is one
    line, through the connection's PeerLog."""
    from pyvirtio.devices.rng import RngDevice
    from pyvirtio.errors import DriverFault
    from pyvirtio.vhost_user.backend.connection import BackendConnection
    from pyvirtio.vhost_user.testing import TestFrontend
    dev = RngDevice()
    conn = BackendConnection(dev, name="breaker")
    fe = TestFrontend.pair(conn)
    fe.start(queues=1, size=16)

    def broken(mem, queue):
        raise DriverFault("descriptor loops")

    monkeypatch.setattr(dev, "process_queue", broken)
    conn.log._clock = lambda: 0.0  # one second that never ends
    with caplog.at_level(logging.ERROR, "pyvirtio.vhost_user"):
        for _ in range(3 * LOG_LINES_PER_SECOND):
            notify, fault = conn.process_ring(0)
            assert fault and not notify
    lines = [r for r in caplog.records if "broken by the driver" in r.getMessage()]
    assert len(lines) == LOG_LINES_PER_SECOND
    assert conn.log.suppressed == 2 * LOG_LINES_PER_SECOND
    fe.close()
