"""``describe``: a queue's ring as both sides see it (what ``pyvirtio ctl PATH ring N`` shows),
split and packed — the device's positions, the driver's, notification suppression, and for
packed rings each descriptor's flags read as a state; a diagnostic that only reads."""

from __future__ import annotations

from pyvirtio.memory import GuestMemory
from pyvirtio.spec import ring
from pyvirtio.virtq import SplitDeviceQueue
from pyvirtio.virtq.packed_device import PackedDeviceQueue, flags_state
from pyvirtio.virtq.packed_driver import PackedDriverQueue, PackedRingLayout
from pyvirtio.virtq.split_driver import SplitDriverQueue, SplitRingLayout

DATA = 0x40000
AV, US = ring.VIRTQ_DESC_F_AVAIL, ring.VIRTQ_DESC_F_USED


def pair(layout, size=8, event_idx=False):
    """A driver and a device queue over one ring of ``layout`` ("split" or "packed")."""
    mem = GuestMemory.anonymous(1 << 20)
    split = layout == "split"
    lay = (SplitRingLayout if split else PackedRingLayout).contiguous(0x1000, size)
    drv = (SplitDriverQueue if split else PackedDriverQueue)(lay, event_idx=event_idx)
    drv.setup(mem)
    dev = (SplitDeviceQueue if split else PackedDeviceQueue)(size)
    dev.set_addresses(lay.desc_table, lay.avail_ring, lay.used_ring)
    dev.set_features(event_idx, False)
    dev.activate(mem)
    return mem, drv, dev


def test_split_shows_both_sides_indices_what_waits_and_the_suppression():
    mem, drv, dev = pair("split")
    heads = [drv.add(mem, [(DATA + 64 * i, 16)], [], token=i) for i in range(3)]
    chain = dev.pop_descriptor_chain(mem)
    dev.disable_notification(mem)
    d = dev.describe(mem)
    assert (d["layout"], d["size"], d["next_avail"], d["next_used"], d["in_flight"]) == ("split", 8, 1, 0, 1)
    assert d["driver"]["avail_idx"] == 3 and d["driver"]["waiting"] == 2
    assert d["driver"]["heads"] == heads[1:] and d["driver"]["interrupts"] == "on"
    assert d["device"] == {"used_idx": 0, "kicks": "off"}
    dev.add_used(mem, chain.head_index, 0)
    dev.enable_notification(mem)
    d = dev.describe(mem, window=1)
    assert d["device"] == {"used_idx": 1, "kicks": "on"} and d["driver"]["heads"] == heads[1:2]
    assert d["in_flight"] == 0


def test_split_with_event_idx_shows_the_event_indices():
    mem, drv, dev = pair("split", event_idx=True)
    drv.add(mem, [(DATA, 16)], [], token=0)
    dev.enable_notification(mem)
    d = dev.describe(mem)
    assert d["event_idx"] and d["device"]["kicks"] == "avail_event 0"
    assert d["driver"]["interrupts"].startswith("used_event ")


def test_packed_shows_positions_laps_ids_in_flight_and_each_descriptor_state():
    mem, drv, dev = pair("packed")
    for i in range(3):
        drv.add(mem, [(DATA + 64 * i, 16)], [], token=i)
    a = dev.pop_descriptor_chain(mem)
    dev.pop_descriptor_chain(mem)
    dev.add_used(mem, a.head_index, 0)
    d = dev.describe(mem, window=2)
    assert (d["layout"], d["next_avail"], d["avail_wrap"], d["next_used"], d["used_wrap"]) == ("packed", 2, 1, 1, 1)
    assert d["in_flight"] == 1 and d["in_flight_ids"] == [1]
    states = {x["pos"]: x["state"] for x in d["descriptors"]}
    assert states[0] == "used w1" and states[1] == "avail w1" and states[2] == "avail w1"
    assert [x["pos"] for x in d["descriptors"]] == [7, 0, 1, 2, 3, 4]  # next_used - 2 .. next_avail + 2
    assert d["next_avail_ready"] is True
    assert d["driver_event"] in ("enable", "disable") and d["device_event"] == "enable"


def test_packed_shows_a_descriptor_lost_between_the_sides():
    """What the stall against DPDK looked like: the device waits at next_avail for lap 0, and
    the flags word there says "used" — the driver's AVAIL bit was overwritten."""
    mem, drv, dev = pair("packed", size=4)
    for lap in range(2):  # two laps: the device now expects wrap 1 at position 0
        for i in range(4):
            drv.add(mem, [(DATA, 16)], [], token=i)
        for _ in range(4):
            dev.add_used(mem, dev.pop_descriptor_chain(mem).head_index, 0)
        assert len(drv.get_bufs(mem)) == 4
    drv.add(mem, [(DATA, 16)], [], token=9)  # available at position 0, lap wrap 1 ...
    view = mem.view(0x1000, 64).cast("H")
    view[7] = AV | US  # ... and then its flags overwritten with a used word of that lap
    d = dev.describe(mem)
    assert d["next_avail"] == 0 and d["avail_wrap"] == 1 and d["next_avail_ready"] is False
    assert next(x for x in d["descriptors"] if x["pos"] == 0)["state"] == "used w1"
    assert not dev.broken


def test_describe_never_breaks_the_queue_and_says_when_the_ring_is_unreadable():
    mem = GuestMemory.anonymous(1 << 16)
    for dev in (SplitDeviceQueue(8), PackedDeviceQueue(8)):
        d = dev.describe(mem)
        assert d["ready"] is False and "driver" not in d and "descriptors" not in d
        dev.set_addresses(0x1000, 0x2000, 0x3000)
        dev.activate(mem)
        dev.set_addresses(1 << 40, 1 << 40, 1 << 40)  # moved outside guest memory under it
        d = dev.describe(mem)
        assert "unreadable" in d and not dev.broken


def test_flags_state_reads_every_flag():
    assert flags_state(AV) == "avail w1" and flags_state(US) == "avail w0"
    assert flags_state(AV | US) == "used w1" and flags_state(0) == "used w0"
    assert flags_state(AV | ring.VIRTQ_DESC_F_NEXT | ring.VIRTQ_DESC_F_WRITE) == "avail w1 NEXT WRITE"
    assert flags_state(US | ring.VIRTQ_DESC_F_INDIRECT | 0x100) == "avail w0 INDIRECT +0x100"
