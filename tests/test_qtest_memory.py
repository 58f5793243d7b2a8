"""The shadowed QEMU guest memory, against a fake QEMU whose RAM a device-side queue uses directly.

The fake runs the "device" between every two qtest requests, as QEMU's main loop may: the tests
check that the device never sees an avail index before the chain it covers, that the driver's
unpublished writes survive an acquire, that device writes are never clobbered by a publish, and
that the event-index kick decision reads a fresh avail_event.  Packed rings, where the device
writes in the descriptor ring itself, get the same checks."""

import struct

from pyvirtio.memory import GuestMemory
from pyvirtio.qtest.memory import QtestMemory
from pyvirtio.virtq import (PackedDeviceQueue, PackedDriverQueue, PackedRingLayout, SplitDeviceQueue,
                            SplitDriverQueue, SplitRingLayout)

BASE, SIZE = 0x100_0000, 1 << 20


class FakeQemu:
    """The bits of QtestClient that QtestMemory uses, over a bytearray; ``between`` runs after
    every request."""

    def __init__(self):
        self.ram = bytearray(SIZE)
        self.log = []
        self.between = lambda: None

    def read_bytes(self, addr, n):
        self.between()
        return bytes(self.ram[addr - BASE:addr - BASE + n])

    def write_commands(self, addr, data):
        return (addr, bytes(data))

    def pipeline(self, commands):
        for addr, data in commands:
            self.ram[addr - BASE:addr - BASE + len(data)] = data
            self.log.append((addr, len(data)))
            self.between()
        return [None] * len(commands)


def make(event_idx=False, size=8):
    qemu = FakeQemu()
    mem = QtestMemory(qemu, BASE, SIZE)
    ring = BASE + 0x1000
    mem.fresh(ring, SplitRingLayout.bytes_needed(size))
    layout = SplitRingLayout.contiguous(ring, size)
    drv = SplitDriverQueue(layout, event_idx=event_idx)
    drv.setup(mem)
    mem.add_ring(layout)
    mem.publish()
    dev_mem = GuestMemory.from_buffers((BASE, qemu.ram))
    dev = SplitDeviceQueue(size)
    dev.set_features(event_idx, False)
    dev.set_addresses(layout.desc_table, layout.avail_ring, layout.used_ring)
    dev.activate(dev_mem)
    return qemu, mem, drv, dev, dev_mem, layout


def buffer(mem, addr, data):
    mem.fresh(addr, len(data))
    mem.write(addr, data)
    return addr, len(data)


def test_device_never_sees_an_index_before_its_chain():
    qemu, mem, drv, dev, dev_mem, layout = make()
    seen, bad = [], []

    def device_polls():  # like an asynchronous device: pops whenever something is available
        while (chain := dev.pop_descriptor_chain(dev_mem)) is not None:
            data = chain.read()
            (n,) = struct.unpack_from("<I", data)
            if data[4:] != bytes([n & 0xFF]) * n:
                bad.append(n)
            seen.append(n)
            dev.add_used(dev_mem, chain.head_index, 0)

    qemu.between = device_polls
    for n in range(1, 40, 2):
        for m in (n, n + 1):  # two chains per kick: ring entries that are not next to the index
            payload = struct.pack("<I", m) + bytes([m & 0xFF]) * m
            drv.add(mem, [buffer(mem, BASE + 0x10000 + 0x100 * m, payload)], [], m)
        drv.kick_prepare(mem)  # publishes: descriptors and ring entries first, then the avail index
        drv.get_bufs(mem)
    assert seen == list(range(1, 41)) and not bad
    # the avail idx write is the last write of every publish that carries one
    idx_addr = layout.avail_ring + 2
    idx_writes = [i for i, (a, n) in enumerate(qemu.log) if a <= idx_addr < a + n]
    assert idx_writes


def test_publish_writes_only_changed_bytes_and_never_clobbers_device_writes():
    qemu, mem, drv, dev, dev_mem, layout = make()
    addr, n = buffer(mem, BASE + 0x20000, bytes(64))
    mem.publish()
    qemu.ram[addr - BASE + 10] = 0xAA  # the device wrote a byte the driver did not touch
    mem.write(addr + 20, b"\x01\x02")
    qemu.log.clear()
    mem.publish()
    assert qemu.log == [(addr + 20, 2)]
    assert qemu.ram[addr - BASE + 10] == 0xAA


def test_fresh_allocations_are_published_whole():
    qemu, mem, *_ = make()
    addr = BASE + 0x30000
    qemu.ram[addr - BASE:addr - BASE + 4] = b"\xff\xff\xff\xff"  # an earlier owner's bytes in QEMU
    mem.fresh(addr, 4)
    mem.write(addr, b"\x00\xff\x00\xff")  # some bytes equal what the shadow held before
    mem.publish()
    assert qemu.ram[addr - BASE:addr - BASE + 4] == b"\x00\xff\x00\xff"
    assert mem.read(addr, 4) == b"\x00\xff\x00\xff"


def test_acquire_keeps_unpublished_driver_writes_and_takes_device_writes():
    qemu, mem, *_ = make()
    addr, n = buffer(mem, BASE + 0x40000, bytes(16))
    mem.publish()
    mem.write(addr, b"DRV")  # not yet published
    qemu.ram[addr - BASE + 8:addr - BASE + 11] = b"DEV"
    assert mem.read(addr, 16) == b"DRV" + bytes(5) + b"DEV" + bytes(5)
    mem.publish()
    assert bytes(qemu.ram[addr - BASE:addr - BASE + 16]) == b"DRV" + bytes(5) + b"DEV" + bytes(5)


def test_used_ring_is_fresh_at_every_ring_operation():
    qemu, mem, drv, dev, dev_mem, layout = make()
    addr, n = buffer(mem, BASE + 0x50000, bytes(32))
    drv.add(mem, [], [(addr, n)], "tok")
    assert drv.kick_prepare(mem)
    chain = dev.pop_descriptor_chain(dev_mem)  # the device works behind the driver's back
    chain.write(b"hello")
    dev.add_used(dev_mem, chain.head_index, 5)
    assert drv.has_used(mem)
    assert drv.get_buf(mem) == ("tok", 5)
    assert mem.read(addr, 5) == b"hello"


def test_event_idx_kick_decision_reads_a_fresh_avail_event():
    """The lost-kick case: the device consumed a chain asynchronously and moved avail_event; a
    stale shadow would make kick_prepare skip the kick the device now waits for."""
    qemu, mem, drv, dev, dev_mem, layout = make(event_idx=True)
    a = buffer(mem, BASE + 0x60000, b"a" * 8)
    drv.add(mem, [a], [], 1)
    assert drv.kick_prepare(mem)
    assert dev.pop_descriptor_chain(dev_mem) is not None  # popped after the kick...
    dev.enable_notification(dev_mem)  # ...and asks for the next kick at avail idx 1
    b = buffer(mem, BASE + 0x60100, b"b" * 8)
    drv.add(mem, [b], [], 2)
    assert drv.kick_prepare(mem), "kick_prepare must see the avail_event the device just wrote"


def test_generation_changes_on_every_read():
    _, mem, *_ = make()
    assert mem.generation != mem.generation


# --- packed rings ---------------------------------------------------------------------------------

def make_packed(event_idx=False, size=8):
    qemu = FakeQemu()
    mem = QtestMemory(qemu, BASE, SIZE)
    ring = BASE + 0x1000
    mem.fresh(ring, PackedRingLayout.bytes_needed(size))
    layout = PackedRingLayout.contiguous(ring, size)
    drv = PackedDriverQueue(layout, event_idx=event_idx)
    drv.setup(mem)
    mem.add_ring(layout)
    mem.publish()
    dev_mem = GuestMemory.from_buffers((BASE, qemu.ram))
    dev = PackedDeviceQueue(size)
    dev.set_features(event_idx, False)
    dev.set_addresses(layout.desc_table, layout.avail_ring, layout.used_ring)
    dev.activate(dev_mem)
    return qemu, mem, drv, dev, dev_mem, layout


def test_packed_device_never_sees_half_a_chain():
    """Chains of three descriptors on a ring of 8 wrap around its end; a device that pops between
    every two qtest writes must only ever find whole chains (a later descriptor still showing
    last lap's flags would be a DriverFault in PackedDeviceQueue)."""
    qemu, mem, drv, dev, dev_mem, layout = make_packed(size=8)
    seen, bad = [], []

    def device_polls():
        while (chain := dev.pop_descriptor_chain(dev_mem)) is not None:
            data = chain.read()
            (n,) = struct.unpack_from("<I", data)
            if data[4:] != bytes([n & 0xFF]) * (2 * n):
                bad.append(n)
            seen.append(n)
            dev.add_used(dev_mem, chain.head_index, 0)

    qemu.between = device_polls
    for n in range(1, 41):
        header = buffer(mem, BASE + 0x10000 + 0x400 * (n % 8), struct.pack("<I", n))
        halves = [buffer(mem, BASE + 0x10100 + 0x400 * (n % 8) + 0x100 * i, bytes([n & 0xFF]) * n)
                  for i in range(2)]
        drv.add(mem, [header, *halves], [], n)
        if n % 2 == 0:  # two chains per kick: six changed flags fields in one publish
            drv.kick_prepare(mem)
            drv.get_bufs(mem)
    assert seen == list(range(1, 41)) and not bad
    assert drv.avail_wrap == 0 and not dev.broken  # went round the ring (40 * 3 = 120 descriptors)


def test_packed_head_flags_are_written_last():
    """A publish writes the flags fields after everything else, backwards from the last
    descriptor made available, so a chain's head is its last write — also for a chain that runs
    over the end of the ring (positions 6, 7, 0: written 0, 7, 6)."""
    qemu, mem, drv, dev, dev_mem, layout = make_packed(size=8)
    a, b = buffer(mem, BASE + 0x20000, b"x" * 8), buffer(mem, BASE + 0x20100, b"y" * 8)
    desc_end = layout.desc_table + 16 * layout.size
    for slots in ([1, 0], [3, 2], [5, 4], [0, 7, 6]):
        drv.add(mem, [a] * (len(slots) - 1), [b], "t")
        qemu.log.clear()
        drv.kick_prepare(mem)  # publishes the chain
        flags = [(addr - layout.desc_table) // 16 for addr, n in qemu.log
                 if layout.desc_table <= addr < desc_end and (addr - layout.desc_table) % 16 == 14]
        assert flags == slots
        assert [(addr - layout.desc_table) // 16 for addr, _ in qemu.log[-len(slots):]] == slots
        chain = dev.pop_descriptor_chain(dev_mem)
        dev.add_used(dev_mem, chain.head_index, 0)
        assert drv.get_bufs(mem) == [("t", 0)]


def test_packed_used_elements_written_in_place_are_acquired_in_any_order():
    qemu, mem, drv, dev, dev_mem, layout = make_packed(size=8)
    bufs = [buffer(mem, BASE + 0x30000 + 0x100 * i, bytes(16)) for i in range(3)]
    for i, buf in enumerate(bufs):
        drv.add(mem, [], [buf], f"tok{i}")
    assert drv.kick_prepare(mem)
    chains = [dev.pop_descriptor_chain(dev_mem) for _ in range(3)]
    for chain, word in zip(reversed(chains), (b"third", b"second", b"first")):  # out of order
        chain.write(word)
        dev.add_used(dev_mem, chain.head_index, len(word))
    assert drv.get_bufs(mem) == [("tok2", 5), ("tok1", 6), ("tok0", 5)]
    assert mem.read(bufs[0][0], 5) == b"first" and mem.read(bufs[2][0], 5) == b"third"


def test_packed_kick_decision_reads_a_fresh_device_area():
    """The device's event suppression area is written by the device: kick_prepare must see the
    offset it asked for after the chain was published (2.8.10)."""
    qemu, mem, drv, dev, dev_mem, layout = make_packed(event_idx=True)
    a = buffer(mem, BASE + 0x40000, b"a" * 8)
    drv.add(mem, [a], [], 1)
    assert drv.kick_prepare(mem)
    assert dev.pop_descriptor_chain(dev_mem) is not None
    dev.enable_notification(dev_mem)  # asks for a kick at position 1
    b = buffer(mem, BASE + 0x40100, b"b" * 8)
    drv.add(mem, [b], [], 2)
    assert drv.kick_prepare(mem), "kick_prepare must see the event offset the device just wrote"
    dev.disable_notification(dev_mem)
    drv.add(mem, [a], [], 3)
    assert not drv.kick_prepare(mem), "...and that the device turned kicks off"


def test_packed_ring_parts_are_read_in_one_request():
    qemu, mem, drv, dev, dev_mem, layout = make_packed(size=8)
    before = mem.stats["acquires"]
    drv.has_used(mem)  # binds the descriptor ring, the driver area and the device area
    assert mem.stats["acquires"] - before == 1


def test_qtest_memory_offers_no_translation_window():
    """A device walking a table over QtestMemory must go through views(), which fetches the bytes
    from QEMU first: so it gets no window to slice on its own (GuestMemory.window)."""
    mem = QtestMemory(FakeQemu(), BASE, SIZE)
    mem.views(BASE, 16)
    assert mem.window() is None
    plain = GuestMemory.anonymous(0x4000)
    plain.views(0x100, 16)
    gpa, size, buf, address = plain.window()
    assert (gpa, size) == (0, 0x4000) and len(buf) >= size
    import ctypes
    assert address == ctypes.addressof(ctypes.c_char.from_buffer(buf))
