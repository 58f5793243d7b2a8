"""The input device and driver (VIRTIO 1.3, 5.8): evdev numbers against the kernel's header, the
config space against the spec's rules (hypothesis), injection and status over loopback, the PCI
and MMIO models and vhost-user, a hostile driver, scripts, the control socket and the
``pyvirtio serve input`` daemon.  QEMU's own virtio-keyboard/tablet under our driver, and QEMU's
vhost-user-input refusal under TCG, are in ``test_input_qemu.py``."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirtio.devices.input import MAX_REPORT_EVENTS, InputDevice, split_reports, pack_events
from pyvirtio.devices.input_config import KINDS, AbsInfo, InputProfile, bitmap, config_space, profile
from pyvirtio.devices.input_script import Script, ScriptError, parse_event, parse_key, parse_script, text_events
from pyvirtio.drivers.input import InputDriver, bits
from pyvirtio.errors import UsageError
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec import evdev
from pyvirtio.spec.evdev import Abs, EventType, Led, Rel, Syn
from pyvirtio.spec.input import INPUT_ABSINFO, INPUT_CONFIG, INPUT_DEVIDS, INPUT_EVENT, InputConfigSelect
from pyvirtio.spec.status import DeviceStatus
from pyvirtio.spec.features import Feature
from pyvirtio.testing import MockSplitDriver, make_device_queue

S = InputConfigSelect
SYN = (EventType.SYN, Syn.REPORT, 0)
KEY_A = evdev.KEYS["KEY_A"]
HEADER = "/usr/include/linux/input-event-codes.h"


def tap(code):
    return [(EventType.KEY, code, 1), SYN, (EventType.KEY, code, 0), SYN]


# --- evdev numbers -------------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists(HEADER), reason="no linux-libc-dev")
def test_evdev_numbers_match_the_kernel_header():
    text = open(HEADER).read() + open(os.path.join(os.path.dirname(HEADER), "input.h")).read()
    defines = {m.group(1): int(m.group(2), 0) for m in
               re.finditer(r"^#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", text, re.M)}
    checked = 0
    for prefix, enum in (("EV_", EventType), ("SYN_", evdev.Syn), ("REL_", Rel), ("ABS_", Abs),
                         ("MSC_", evdev.Msc), ("LED_", Led), ("SND_", evdev.Snd), ("REP_", evdev.Rep),
                         ("INPUT_PROP_", evdev.InputProp)):
        for m in enum:
            assert defines[prefix + m.name] == m.value, prefix + m.name
            checked += 1
    for table in (evdev.KEYS, evdev.BUTTONS):
        for name, code in table.items():
            assert defines[name] == code, name
            checked += 1
    maxes = {"SYN": EventType.SYN, "KEY": EventType.KEY, "REL": EventType.REL, "ABS": EventType.ABS,
             "MSC": EventType.MSC, "SW": EventType.SW, "LED": EventType.LED, "SND": EventType.SND,
             "REP": EventType.REP, "FF": EventType.FF}
    for name, etype in maxes.items():
        assert defines[f"{name}_MAX"] >= evdev.CODE_MAX[etype], name  # newer kernels add codes
    assert defines["EV_MAX"] == evdev.EV_MAX and defines["INPUT_PROP_MAX"] == evdev.INPUT_PROP_MAX
    assert checked > 400


# --- the config space (5.8.4, 5.8.5.2) -------------------------------------------------------------

codes = st.frozensets(st.integers(0, 0x2FF), max_size=40)
axes = st.dictionaries(st.integers(0, 0x3F), st.tuples(st.integers(-(1 << 31), 0), st.integers(0, (1 << 31) - 1),
                                                       st.integers(0, 100), st.integers(0, 100), st.integers(0, 100)),
                       max_size=8)
text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40).filter(
    lambda s: len(s.encode()) <= 128)


@st.composite
def profiles(draw):
    events = {t: draw(st.frozensets(st.integers(0, evdev.CODE_MAX.get(t, 0x3FF)), max_size=30))
              for t in draw(st.sets(st.sampled_from([1, 2, 4, 5, 0x11, 0x12, 0x14, 0x15, 0x1F]), max_size=5))}
    events = {t: c for t, c in events.items() if c}
    info = {a: AbsInfo(*v) for a, v in draw(axes).items()}
    if info:
        events[EventType.ABS] = frozenset(info)
    props = draw(st.frozensets(st.integers(0, evdev.INPUT_PROP_MAX), max_size=5))
    ids = draw(st.tuples(*[st.integers(0, 0xFFFF)] * 4))
    return InputProfile("custom", draw(text), draw(text), ids, props, events, info).check()


@settings(max_examples=300, deadline=None)
@given(profiles(), st.integers(0, 255), st.integers(0, 255))
def test_every_select_follows_the_spec(p, select, subsel):
    raw = config_space(p, select, subsel)
    assert len(raw) == INPUT_CONFIG.size == 136
    sel, sub, size, u = INPUT_CONFIG.unpack(raw)
    assert (sel, sub) == (select, subsel)
    assert size <= 128 and u[size:] == bytes(128 - size)  # nothing past size
    data = u[:size]
    if select in (S.ID_NAME, S.ID_SERIAL, S.ID_DEVIDS, S.PROP_BITS) and subsel:
        assert size == 0  # subsel is zero for these (5.8.4); anything else is unsupported
    elif select == S.ID_NAME:
        assert data == p.name.encode() and b"\0" not in data  # no NUL terminator
    elif select == S.ID_SERIAL:
        assert data == p.serial.encode()
    elif select == S.ID_DEVIDS:
        assert INPUT_DEVIDS.unpack(data) == p.devids
    elif select == S.PROP_BITS:
        assert bits(data) == p.props and (not data or data[-1])
    elif select == S.EV_BITS:
        want = p.events.get(subsel, frozenset())
        assert bits(data) == want  # size 0 exactly when the type is not supported
        assert (size == 0) == (not want) and (not data or data[-1])  # no trailing zero bytes
    elif select == S.ABS_INFO:
        if subsel in p.abs_info:
            assert INPUT_ABSINFO.unpack(data) == tuple(p.abs_info[subsel])
        else:
            assert size == 0
    else:
        assert size == 0  # UNSET and undefined selects


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 140), st.binary(min_size=1, max_size=8)), max_size=10))
def test_any_config_write_is_taken_or_ignored_never_raises(writes):
    dev = InputDevice(profile("tablet"))
    for offset, data in writes:
        dev.write_config(offset, data)
    raw = dev.read_config(0, 136)
    assert raw == config_space(dev.profile, dev.select, dev.subsel)
    stray = sum(1 for off, d in writes if off + len(d) > 2)
    assert dev.stats["config_writes_ignored"] == stray


def test_bad_profiles_are_refused():
    p = profile("keyboard")
    for bad in (dict(name="x" * 129), dict(serial="a\0b"), dict(devids=(1, 2, 3, 0x10000)),
                dict(events={0x20: frozenset({1})}), dict(events={EventType.REL: frozenset({0x10})}),
                dict(events={EventType.ABS: frozenset({0})}),
                dict(events={EventType.ABS: frozenset({0})}, abs_info={0: AbsInfo(5, 1)})):
        with pytest.raises(UsageError):
            InputProfile(**{**p.__dict__, **bad}).check()
    with pytest.raises(UsageError):
        profile("joystick")
    assert bitmap({0, 9}) == b"\x01\x02" and bitmap(()) == b""


@pytest.mark.parametrize("kind", KINDS)
def test_our_driver_reads_every_answer(kind):
    p = profile(kind, name=f"n-{kind}", serial="s/1")
    dev = InputDevice(p)
    t = LoopbackTransport(dev)
    try:
        drv = InputDriver.probe(t)
        info = drv.info
        assert (info.name, info.serial, tuple(info.devids)) == (p.name, p.serial, p.devids)
        assert info.props == p.props and info.events == dict(p.events)
        assert info.abs_info == dict(p.abs_info)
        drv.remove()
    finally:
        t.close()


# --- events over loopback --------------------------------------------------------------------------

@contextlib.contextmanager
def loopback(kind="keyboard", **kw):
    dev = InputDevice(profile(kind), **kw)
    t = LoopbackTransport(dev)
    drv = InputDriver.probe(t)
    try:
        yield dev, drv
    finally:
        drv.remove()
        t.close()


def test_key_presses_and_leds_over_loopback():
    with loopback() as (dev, drv):
        seen = []
        dev.on_status.append(seen.append)
        assert drv.read_events(timeout=0) == []  # non-blocking: nothing yet
        dev.key(KEY_A)
        dev.inject([(EventType.KEY, evdev.KEYS["KEY_B"], 1)])  # a SYN_REPORT is appended
        got = [tuple(e) for e in drv.read_events(max_events=6, timeout=5)]
        assert got == tap(KEY_A) + [(EventType.KEY, evdev.KEYS["KEY_B"], 1), SYN]
        drv.set_led(Led.CAPSL, True)
        drv.set_led(Led.NUML, True)
        drv.set_led(Led.CAPSL, False)
        assert drv.flush_status()
        assert dev.leds == {Led.CAPSL: False, Led.NUML: True}
        assert [tuple(e) for e in seen] == [(0x11, 1, 1), (0x11, 0, 1), (0x11, 1, 0)]
        assert dev.stats["status_events"] == 3 and list(dev.recent_status) == seen


def test_reports_stream_and_blocking_read_wakes_on_injection():
    with loopback("mouse") as (dev, drv):
        threading.Timer(0.3, lambda: dev.inject([(EventType.REL, Rel.X, -7), (EventType.REL, Rel.Y, 3)])).start()
        t0 = time.monotonic()
        report = drv.read_report(timeout=10)
        assert time.monotonic() - t0 >= 0.25
        assert [tuple(e) for e in report] == [(2, 0, -7), (2, 1, 3), SYN]
        for i in range(200):  # more than the ring: buffers are re-posted as they are read
            dev.inject([(EventType.REL, Rel.X, i)])
        got = [e.value for e in drv.events(timeout=2) if e.type == EventType.REL]
        assert got == list(range(200))


def test_a_report_is_delivered_whole_or_not_at_all():
    """5.8.6.2: no sequence is split — with fewer free buffers than events, the report waits."""
    mock, dev, mem, status = bare_device()
    for _ in range(2):
        mock.add_request(in_lens=[8])
    dev.inject([(EventType.REL, Rel.X, 1), (EventType.REL, Rel.Y, 2)])  # 3 events with the SYN
    dev.host_ready(mem, 0, [])
    assert mock.used_idx == 0 and dev.pending_events == 3
    mock.add_request(in_lens=[8])
    dev.queue_notify(mem, 0)
    assert mock.used_idx == 3 and dev.pending_events == 0
    got = [INPUT_EVENT.unpack(mock.read(mock.read_desc(head)[0], 8)) for head, _ in mock.used_elems(0)]
    assert got == [(2, 0, 1), (2, 1, 2), SYN]


def test_a_guest_that_takes_nothing_cannot_grow_memory():
    with loopback(max_pending=100) as (dev, drv):
        for i in range(5000):  # nobody reads: 64 buffers fill, then the inbox, then old reports go
            dev.inject([(EventType.KEY, KEY_A, 1), (EventType.KEY, KEY_A, 0)])  # 3 events a report
        time.sleep(0.2)
        assert dev.pending_events <= 100
        s = dev.stats
        assert s["events_injected"] == 15000
        assert s["dropped_events"] % 3 == 0 and s["dropped_reports"] == s["dropped_events"] // 3
        events = drv.read_events(timeout=1)
        events += list(drv.events(timeout=1))
        assert len(events) + s["dropped_events"] == 15000  # every event: delivered or counted
        assert len(events) % 3 == 0 and all(tuple(events[i + 2]) == SYN for i in range(0, len(events), 3))


def test_injection_from_many_threads_keeps_reports_whole():
    with loopback("tablet", max_pending=4096) as (dev, drv):
        def worker(n):
            for i in range(300):
                dev.inject([(EventType.ABS, Abs.X, n), (EventType.ABS, Abs.Y, i)])
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for th in threads:
            th.start()
        events = []
        while any(th.is_alive() for th in threads) or len(events) < 3600:
            got = drv.read_events(timeout=2)
            if not got:
                break
            events += got
        for th in threads:
            th.join()
        assert len(events) == 3600 and dev.stats["dropped_events"] == 0
        last = {}
        for i in range(0, 3600, 3):
            x, y, syn = events[i:i + 3]
            assert (x.code, y.code, tuple(syn)) == (Abs.X, Abs.Y, SYN)
            assert y.value == last.get(x.value, -1) + 1  # each thread's reports in order
            last[x.value] = y.value


def test_inject_refuses_what_cannot_be_sent():
    dev = InputDevice()
    for bad in ([(1, 2)], [(1, 0x10000, 0)], [(1, 2, 1 << 32)], [("a", 1, 1)]):
        with pytest.raises(UsageError):
            dev.inject(bad)
    with pytest.raises(UsageError):
        dev.inject([(EventType.REL, Rel.X, 1)] * MAX_REPORT_EVENTS)  # + SYN: one too many
    with pytest.raises(UsageError):
        InputDevice(max_pending=10)
    assert dev.inject([]) == 0
    assert [len(r) for r in split_reports(pack_events([(2, 0, 1), SYN, (2, 1, 1)]))] == [2, 2]
    assert [len(r) for r in split_reports(pack_events([(2, 0, 1)]), sync=False)] == [1]
    assert INPUT_EVENT.unpack(pack_events([(2, 0, 0xFFFFFFFF)])[0]) == (2, 0, -1)


# --- every transport ------------------------------------------------------------------------------

@contextlib.contextmanager
def on_pci(dev):
    from pyvirtio.pci import scan_pci
    from pyvirtio.platform.machine import InProcessMachine
    with InProcessMachine(ram_size=4 << 20) as machine:
        machine.add_pci(dev)
        (t,) = scan_pci(machine).transports
        yield t


@contextlib.contextmanager
def on_mmio(dev):
    from pyvirtio.mmio import discover_mmio, parse_kernel_cmdline
    from pyvirtio.platform.machine import InProcessMachine
    with InProcessMachine(ram_size=4 << 20) as machine:
        machine.add_mmio(dev)
        (t,) = discover_mmio(machine, parse_kernel_cmdline(machine.kernel_cmdline())).transports
        yield t


@contextlib.contextmanager
def on_vhost_user(dev, tmp_path, packed=False):
    from pyvirtio.bench.peers import InProcessBackend
    from pyvirtio.vhost_user.frontend.transport import VhostUserTransport
    if packed:
        dev.offer_packed_ring()
    sock = str(tmp_path / "input.sock")
    with InProcessBackend(dev, sock):
        t = VhostUserTransport(sock, device_type=18, memory_size=4 << 20)
        try:
            yield t
        finally:
            t.close()


def on_virtio_msg(dev, tmp_path):
    from pyvirtio.virtio_msg.local import device_transport
    return device_transport(dev, "socket", str(tmp_path / "input-vmsg.sock"), memory_size=4 << 20)


TRANSPORTS = {"pci": lambda dev, tmp: on_pci(dev), "mmio": lambda dev, tmp: on_mmio(dev),
              "vhost-user": on_vhost_user, "vhost-user-packed": lambda d, t: on_vhost_user(d, t, packed=True),
              "virtio-msg": on_virtio_msg}


@pytest.mark.parametrize("where", list(TRANSPORTS))
@pytest.mark.parametrize("kind", ["keyboard", "tablet"])
def test_events_and_status_on_every_transport(where, kind, tmp_path):
    dev = InputDevice(profile(kind, serial="T-1"))
    with TRANSPORTS[where](dev, tmp_path) as t:
        drv = InputDriver.probe(t)
        assert drv.info.name == f"pyvirtio {kind}" and drv.info.serial == "T-1"
        assert drv.info.abs_info == dict(dev.profile.abs_info)
        if kind == "keyboard":
            dev.key(KEY_A)
            assert [tuple(e) for e in drv.read_events(max_events=4, timeout=5)] == tap(KEY_A)
            drv.set_led(Led.SCROLLL, True)
            assert drv.flush_status() and dev.leds == {Led.SCROLLL: True}
        else:
            for x in range(100):
                dev.inject([(EventType.ABS, Abs.X, x), (EventType.ABS, Abs.Y, 2 * x)])
            events = list(drv.events(timeout=2))
            assert [tuple(e) for e in events] == [ev for x in range(100)
                                                  for ev in ((3, 0, x), (3, 1, 2 * x), SYN)]
        drv.remove()
    dev.close()


def test_events_injected_before_the_guest_arrive_once_it_runs(tmp_path):
    dev = InputDevice()
    dev.key(KEY_A)
    with on_vhost_user(dev, tmp_path) as t:
        drv = InputDriver.probe(t)
        assert [tuple(e) for e in drv.read_events(max_events=4, timeout=5)] == tap(KEY_A)
        drv.remove()


# --- a hostile driver ------------------------------------------------------------------------------

def bare_device(kind="keyboard"):
    """The device at DRIVER_OK with both queues on hand-written rings in one memory."""
    mock = MockSplitDriver(size=16, regions=((0, 1 << 20),))
    smock = MockSplitDriver(size=16, mem=mock.mem, ring_addr=0x80000, data_addr=0x90000)
    dev = InputDevice(profile(kind))
    dev.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER)
    dev.set_driver_features(1 << Feature.VERSION_1)
    dev.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK)
    dev.queues[0] = make_device_queue(mock, index=0)
    dev.queues[1] = make_device_queue(smock, index=1)
    dev.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK
                   | DeviceStatus.DRIVER_OK)
    return mock, dev, mock.mem, smock


def test_tiny_and_read_only_event_buffers_come_back_unused():
    mock, dev, mem, _ = bare_device()
    tiny = mock.add_request(in_lens=[4])
    ro = mock.add_request(out=[bytes(8)])
    good = [mock.add_request(in_lens=[8]) for _ in range(2)]
    dev.inject([(EventType.KEY, KEY_A, 1)])
    dev.host_ready(mem, 0, [])
    used = dict(mock.used_elems(0))
    assert used[tiny.head] == 0 and used[ro.head] == 0
    assert used[good[0].head] == 8 and used[good[1].head] == 8
    assert dev.stats["bad_event_buffers"] == 2 and not dev.queues[0].broken
    assert dev.driver_ok  # the device goes on


def test_missing_event_buffers_leave_the_inbox_bounded():
    mock, dev, mem, _ = bare_device()
    dev.max_pending = 64
    for i in range(1000):
        dev.inject([(EventType.KEY, KEY_A, i & 1)])
        dev.host_ready(mem, 0, [])
    assert dev.pending_events <= 64 and dev.stats["dropped_events"] == 2000 - dev.pending_events
    for _ in range(16):
        mock.add_request(in_lens=[8])
    dev.queue_notify(mem, 0)
    assert mock.used_idx == 16  # the newest reports that fit


def test_a_status_queue_flooded_with_garbage(caplog):
    mock, dev, mem, smock = bare_device()
    rnd = __import__("random").Random(7)
    caplog.set_level(logging.WARNING, logger="pyvirtio.devices.input")
    sent = 0
    for _round in range(200):
        for _ in range(16):
            kind = rnd.randrange(4)
            if kind == 0:
                smock.add_request(out=[rnd.randbytes(rnd.randrange(0, 8))])  # too short
            elif kind == 1:
                smock.add_request(in_lens=[8])  # nothing readable
            elif kind == 2:
                smock.add_request(out=[rnd.randbytes(8)])  # garbage type/code
            else:
                smock.add_request(out=[INPUT_EVENT.pack(EventType.LED, Led.CAPSL, rnd.randrange(2))])
            sent += 1
        dev.queue_notify(mem, 1)
    assert smock.used_idx == sent & 0xFFFF  # every buffer returned
    s = dev.stats
    assert s["status_events"] + s["bad_status"] == sent and s["bad_status"] > sent // 2
    assert len(dev.recent_status) <= 64 and not dev.queues[1].broken and dev.driver_ok
    lines = [r for r in caplog.records if "status buffer dropped" in r.getMessage()]
    assert len(lines) <= 2 * 50  # rate-limited (limits.LOG_LINES_PER_SECOND a second)


def test_status_events_the_device_never_offered_are_refused():
    mock, dev, mem, smock = bare_device("mouse")  # no LEDs
    smock.add_request(out=[INPUT_EVENT.pack(EventType.LED, Led.CAPSL, 1)])
    smock.add_request(out=[INPUT_EVENT.pack(EventType.REP, 0, 250)])  # EV_REP: always taken
    smock.add_request(out=[INPUT_EVENT.pack(EventType.KEY, KEY_A, 1)])  # not a status type
    dev.queue_notify(mem, 1)
    assert dev.stats["bad_status"] == 2 and dev.stats["status_events"] == 1 and dev.leds == {}


def test_a_broken_ring_marks_the_device_not_the_process():
    mock, dev, mem, _ = bare_device()
    mock.add_chain([(0xFFFFFFF0, 8, 2)])  # a buffer outside guest memory
    dev.key(KEY_A)
    dev.queue_notify(mem, 0)
    assert dev.status & DeviceStatus.DEVICE_NEEDS_RESET


def test_a_status_callback_that_fails_is_logged_and_the_rest_run(caplog):
    mock, dev, mem, smock = bare_device()
    seen = []
    dev.on_status += [lambda e: 1 / 0, seen.append]
    smock.add_request(out=[INPUT_EVENT.pack(EventType.LED, Led.NUML, 1)])
    with caplog.at_level(logging.ERROR):
        dev.queue_notify(mem, 1)
    assert len(seen) == 1 and "status callback failed" in caplog.text


# --- names and scripts -----------------------------------------------------------------------------

def test_names_and_numbers():
    assert parse_key("KEY_A") == parse_key("a") == parse_key("key_a") == parse_key(30) == parse_key("30") == 30
    assert parse_key("BTN_LEFT") == parse_key("btn_left") == 0x110
    assert parse_event("EV_REL", "REL_X", "-5") == (2, 0, -5) == parse_event("rel", "x", -5)
    assert parse_event(3, "MT_SLOT", "0x2") == (3, 0x2F, 2)
    for bad in (("EV_NOPE", 0, 0), ("EV_KEY", "KEY_NOPE", 1), ("EV_KEY", "a", "x"), ("EV_KEY", -1, 0)):
        with pytest.raises(ScriptError):
            parse_event(*bad)


def test_scripts():
    steps = list(parse_script([
        "# a comment", "key a", "press KEY_LEFTSHIFT", "release leftshift", "move 3 -4", "abs 10 20",
        "wheel -1", "event EV_REL REL_X 1", "event EV_REL REL_Y 2", "sync", "sleep 0.5",
        "text A#b", "event EV_KEY KEY_C 1"]))
    events = [e for s in steps for e in s.events]
    assert events[:4] == tap(KEY_A)
    assert (2, 0, 3) in events and (3, 1, 20) in events and (2, 8, -1) in events
    assert [s.sleep for s in steps if s.sleep] == [0.5]
    assert events[-2:] == [(1, evdev.KEYS["KEY_C"], 1), SYN]  # a trailing raw event gets its SYN
    assert text_events("A") == ([(1, 42, 1), SYN] + tap(30) + [(1, 42, 0), SYN])
    assert len(text_events("A#b")) == 8 + 8 + 4  # shifted: press shift, tap, release shift
    for bad in ("jump 1", "key", "move 1", "sleep -1", "sleep forever", "text é"):
        with pytest.raises(ScriptError, match="line 1"):
            list(parse_script([bad]))
    assert Script().parse_line("   ") is None


# --- the control socket and the daemon ------------------------------------------------------------

def test_control_commands_in_process():
    from pyvirtio.control import ControlTarget, Dispatcher, build_commands
    with loopback() as (dev, drv):
        d = Dispatcher(build_commands(ControlTarget(dev)))

        def call(cmd, **args):
            return json.loads(d.handle_line(json.dumps({"cmd": cmd, "args": args}).encode()))

        assert call("key", key="a")["result"]["queued"] == 4
        r = call("input.send", events=[["EV_REL", "REL_X", 5], [1, 31, 1]], sync=False)
        assert r["ok"] and r["result"]["queued"] == 2
        got = [tuple(e) for e in drv.read_events(timeout=5)]
        got += [tuple(e) for e in drv.events(timeout=0.5)]
        assert got == tap(KEY_A) + [(2, 0, 5), (1, 31, 1)]
        for bad in (dict(key="nope"), dict(key="a", action="hold")):
            assert call("key", **bad)["error"]["type"] == "bad-argument"
        for bad in ([["EV_KEY", "a"]], [[True, 1, 1]], [], [["EV_REL", "REL_X", 1]] * 70):
            assert call("input.send", events=bad)["error"]["type"] == "bad-argument", bad
        drv.set_led(Led.CAPSL, True)
        drv.flush_status()
        stats = call("stats")["result"]
        assert stats["input"]["leds"] == {"1": True} and stats["device"]["status_events"] == 1
    from pyvirtio.devices.rng import RngDevice
    d = Dispatcher(build_commands(ControlTarget(RngDevice())))
    r = json.loads(d.handle_line(b'{"cmd": "key", "args": {"key": "a"}}'))
    assert r["error"]["type"] == "unsupported"


def test_ctl_words():
    from pyvirtio.commands.ctl import to_request
    from pyvirtio.errors import CliUsageError
    assert to_request(["key", "a"]) == ("key", {"key": "a"})
    assert to_request(["key", "30", "press"]) == ("key", {"key": 30, "action": "press"})
    assert to_request(["event", "EV_REL", "REL_X", "-5", "2", "1", "3", "--no-sync"]) == \
        ("input.send", {"events": [["EV_REL", "REL_X", -5], [2, 1, 3]], "sync": False})
    for bad in (["event", "EV_REL", "REL_X"], ["key"], ["key", "a", "hold"]):
        with pytest.raises(CliUsageError):
            to_request(bad)


class Daemon:
    def __init__(self, tmp_path, *args, stdin=None):
        self.sock, self.control = str(tmp_path / "in.sock"), str(tmp_path / "in.ctl")
        self.log = open(tmp_path / "daemon.log", "w+")  # closed with the test's tmp_path
        self.proc = subprocess.Popen([sys.executable, "-m", "pyvirtio.cli", "-v", "serve", "input",
                                      f"--socket-path={self.sock}", f"--control={self.control}", *args],
                                     stdin=stdin, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 20
        while not (os.path.exists(self.sock) and os.path.exists(self.control)):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()
            time.sleep(0.05)

    def output(self):
        self.log.seek(0)
        return self.log.read()

    def ctl(self, *words):
        return subprocess.run([sys.executable, "-m", "pyvirtio.cli", "ctl", "--json", self.control, *words],
                              capture_output=True, text=True, timeout=30)

    def close(self):
        self.proc.terminate()
        assert self.proc.wait(20) == 0, self.output()


def test_serve_input_daemon_with_ctl_and_a_script_on_stdin(tmp_path):
    from pyvirtio.vhost_user.frontend.transport import VhostUserTransport
    d = Daemon(tmp_path, "--kind=keyboard", "--name=ctl kbd", "--events=-", stdin=subprocess.PIPE)
    try:
        t = VhostUserTransport(d.sock, device_type=18, memory_size=4 << 20)
        drv = InputDriver.probe(t)
        assert drv.info.name == "ctl kbd"
        r = d.ctl("key", "KEY_A")
        assert r.returncode == 0 and json.loads(r.stdout)["result"]["queued"] == 4
        assert [tuple(e) for e in drv.read_events(max_events=4, timeout=10)] == tap(KEY_A)
        d.proc.stdin.write("nonsense here\ntext b\n")
        d.proc.stdin.flush()
        assert [tuple(e) for e in drv.read_events(max_events=4, timeout=10)] == tap(evdev.KEYS["KEY_B"])
        drv.set_led(Led.NUML, True)
        assert drv.flush_status()
        stats = json.loads(d.ctl("stats").stdout)["result"]
        assert stats["input"]["leds"] == {"0": True} and stats["input"]["recent_status"] == [[17, 0, 1]]
        r = d.ctl("link", "up")
        assert r.returncode == 1 and "not a network device" in r.stderr
        drv.remove()
        t.close()
    finally:
        d.close()
    assert "line 1: unknown command 'nonsense'" in d.output()


def test_serve_input_events_file_and_its_errors(tmp_path):
    from pyvirtio.vhost_user.frontend.transport import VhostUserTransport
    bad = tmp_path / "bad.txt"
    bad.write_text("key a\nfly away\n")
    r = subprocess.run([sys.executable, "-m", "pyvirtio.cli", "serve", "input", f"--socket-path={tmp_path}/x.sock",
                        f"--events={bad}"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "line 2: unknown command 'fly'" in r.stderr
    good = tmp_path / "good.txt"
    good.write_text("abs 100 200\nsleep 0.1\nbutton BTN_LEFT\n")
    d = Daemon(tmp_path, "--kind=tablet", f"--events={good}")
    try:
        t = VhostUserTransport(d.sock, device_type=18, memory_size=4 << 20)
        drv = InputDriver.probe(t)
        got = [tuple(e) for e in drv.read_events(max_events=7, timeout=10)]
        got += [tuple(e) for e in drv.events(timeout=1)]
        assert got == [(3, 0, 100), (3, 1, 200), SYN] + tap(0x110)
        drv.remove()
        t.close()
    finally:
        d.close()
