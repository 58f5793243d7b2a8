"""The hostile back-end (issue 17, item 2) against pyvirtio's own front-end: every lie ends in a
typed error (or a broken queue, or the request completing anyway) within a bound — never a hang,
never an untyped exception; the rule syntax; the runner's classification; the command with a
front-end program it starts, its replay file and --replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.drivers import BlkDriver, RngDriver
from pyvirtio.errors import DeviceFault, FeatureNegotiationError, VirtioError
from pyvirtio.spec.ids import DeviceType
from pyvirtio.vhost_user.frontend.errors import (BackendHungUp, BadReplyHeader, BadReplySize, ReconnectFailed,
                                                 BadReplyValue, ReplyTimeout, RequestNacked,
                                                 WrongReplyType)
from pyvirtio.vhost_user.tools.hostile import (KINDS, HostilePlan, HostileRuleError, HostileServer,
                                         parse_rule, parse_rules)
from pyvirtio.vhost_user.tools.hostile_runner import classify
from pyvirtio.vhost_user.frontend.transport import VhostUserTransport

pytestmark = pytest.mark.timeout(120)
BOUND = 10.0  # seconds any one lie may take to end in an error (reply timeout 1 s, request 3 s)


# --- the rule syntax ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "short", "long:bytes=3,req=GET_CONFIG", "no-reply:req=GET_VRING_BASE,after=2,count=1",
    "config:at=0,bytes=8,value=max", "used-id:queue=1,value=7,rate=0.5,seed=9",
    "inflight-fd:fd=socket", "delay:ms=250", "irq-spurious:irqs=4", "vring-base:index=3"])
def test_rules_parse_and_describe_back(text):
    rule = parse_rule(text)
    assert parse_rule(rule.describe()) == rule


def test_every_kind_parses_bare():
    for kind in KINDS:
        assert parse_rule(kind).kind == kind
    assert [r.kind for r in parse_rules("short; used-len ;no-reply")] == ["short", "used-len", "no-reply"]


@pytest.mark.parametrize("text, words", [
    ("nope", "valid: short"), ("short:foo=1", "key of bytes"), ("features:req=GET_CONFIG", "GET_FEATURES only"),
    ("short:count=0", "at least 1"), ("short:rate=2", "probability"), ("short:req=NOT_A_REQ", "request name"),
    ("used-id:queue=300", "more than 255"), ("inflight-fd:fd=tty", "pipe, devnull"), ("", "no rule"),
    ("short:after=1,after=2", "twice")])
def test_bad_rules_say_what_is_wrong(text, words):
    with pytest.raises(HostileRuleError, match=words):
        parse_rules(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_text_is_a_rule_or_a_hostile_rule_error(text):
    try:
        parse_rules(text)
    except HostileRuleError:
        pass


def test_after_count_and_seeded_rate_repeat_exactly():
    def fired(seed):
        plan = HostilePlan(parse_rules("short:after=2,count=3; long:rate=0.5"), seed)
        return [[i for i, _ in plan.select(lambda r: True)] for _ in range(20)]
    first = fired(7)
    assert sum(0 in f for f in first) == 3 and all(0 not in f for f in first[:2])
    assert 3 <= sum(1 in f for f in first) <= 17
    assert fired(7) == first and fired(8) != first


# --- against pyvirtio's front-end -----------------------------------------------------------------


def _device(kind, tmp_path, packed):
    if kind == "blk":
        img = tmp_path / "disk.img"
        with open(img, "wb") as f:
            f.truncate(1 << 20)
        dev = BlkDevice(str(img))
    else:
        dev = RngDevice()
    if packed:
        dev.offer_packed_ring()
    return dev


def _exercise(path, kind, packed, reconnect):
    """Our front-end as a guest would use it: probe the driver, three requests, remove."""
    t = VhostUserTransport(path, timeout=1.0, split_only=not packed, reconnect=reconnect,
                           reconnect_timeout=1.0,
                           device_type=DeviceType.BLOCK if kind == "blk" else DeviceType.ENTROPY)
    try:
        drv = (BlkDriver if kind == "blk" else RngDriver).probe(t)
        for _ in range(3):
            if kind == "blk":
                drv.wait(drv.submit_read(0, 4096), timeout=3)
            else:
                drv.requestq.call([], [16], timeout=3)
        needs_reset = drv.device_needs_reset
        drv.remove()
        return needs_reset
    finally:
        t.close()


#: (device, packed, rule, what our front-end must end in: an error class, or None: it goes on).
CASES = [
    ("rng", False, "short", BadReplySize),
    ("rng", False, "long", BadReplySize),
    ("rng", False, "wrong-code", WrongReplyType),
    ("rng", False, "no-reply-flag", BadReplyHeader),
    ("rng", False, "extra-reply", WrongReplyType),
    ("rng", False, "no-reply", ReplyTimeout),
    ("rng", False, "hang-up:req=SET_VRING_KICK", BackendHungUp),
    ("rng", False, "delay:ms=100,count=3", None),
    ("blk", False, "features", FeatureNegotiationError),
    ("rng", False, "protocol-features", None),
    ("rng", False, "queue-num", BadReplyValue),
    ("blk", False, "queue-num:value=0xffff", ReconnectFailed),
    ("rng", False, "mem-slots", None),
    ("blk", False, "config:at=0,bytes=8,value=max", None),
    ("blk", False, "config:at=34,bytes=2,value=0", None),
    ("blk", False, "config", None),
    ("blk", False, "short:req=GET_CONFIG", BadReplySize),
    ("blk", False, "vring-base", BadReplyValue),
    ("blk", True, "vring-base", BadReplyValue),
    ("blk", False, "no-reply:req=GET_VRING_BASE", ReplyTimeout),
    ("blk", False, "inflight-size", RequestNacked),
    ("blk", False, "inflight-fd", RequestNacked),
    ("blk", False, "inflight-fd:fd=socket", RequestNacked),
    ("blk", False, "used-id", DeviceFault),
    ("blk", False, "used-not-head", DeviceFault),
    ("blk", False, "used-len", DeviceFault),
    ("blk", False, "used-idx-jump", DeviceFault),
    ("blk", False, "irq-spurious:irqs=5", None),
    ("rng", True, "used-id", DeviceFault),
    ("rng", True, "used-not-head", DeviceFault),
    ("rng", True, "used-len", DeviceFault),
    ("blk", True, "wrap-flip:count=1", DeviceFault),
]


@pytest.mark.parametrize("kind, packed, text, error", CASES, ids=[f"{c[0]}-{'packed-' if c[1] else ''}{c[2]}" for c in CASES])
def test_our_frontend_refuses_every_lie_with_a_typed_error(tmp_path, kind, packed, text, error):
    plan = HostilePlan(parse_rules(text), seed=1)
    server = HostileServer(plan)
    path = str(tmp_path / "hostile.sock")
    device = _device(kind, tmp_path, packed)
    server.add(device, socket_path=path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    start = time.monotonic()
    try:
        if error is None:
            _exercise(path, kind, packed, reconnect=kind == "blk")
        else:
            with pytest.raises(error):
                _exercise(path, kind, packed, reconnect=kind == "blk")
    except VirtioError:
        raise
    finally:
        server.shutdown()
        thread.join(10)
        if hasattr(device, "close"):
            device.close()
    assert time.monotonic() - start < BOUND
    assert plan.fired, "the rule never fired"
    assert not thread.is_alive()


# --- the runner's classification ----------------------------------------------------------------


def _plan_after(fire: bool, requests_after: int = 0, closed_by=None):
    plan = HostilePlan(parse_rules("short"), 1)
    conn = plan.open_connection()
    if fire:
        plan.record(plan.rules[0], "lie", conn)
        plan.seen(conn, ["GET_FEATURES"] * requests_after)
    if closed_by:
        plan.close_connection(conn, closed_by)
    return plan


@pytest.mark.parametrize("plan, returncode, stopped, started, kind", [
    (_plan_after(True), -11, False, True, "crashed"),
    (_plan_after(True), -6, False, True, "aborted"),
    (_plan_after(False), -11, False, True, "crashed"),
    (_plan_after(False), 0, False, True, "not-triggered"),
    (_plan_after(True), 1, False, True, "exited-with-error"),
    (_plan_after(True), 0, False, True, "exited"),
    (_plan_after(True, 0, "front-end"), 0, True, True, "disconnected"),
    (_plan_after(True, 5), 0, True, True, "carried-on"),
    (_plan_after(True), 0, True, True, "hung"),
    (_plan_after(True), None, False, False, "stalled"),
])
def test_classify(plan, returncode, stopped, started, kind):
    outcome = classify(plan, returncode, stopped, started, "qemu: vhost error: Invalid reply\nbye\n")
    assert outcome.kind == kind
    assert outcome.finding == (kind in ("crashed", "aborted", "hung"))
    assert outcome.errors == ["qemu: vhost error: Invalid reply"]


# --- the command ----------------------------------------------------------------------------------

#: A front-end program: pyvirtio's transport and rng driver; the exception's class on stderr.
FRONTEND = ("import sys; from pyvirtio.vhost_user.frontend.transport import VhostUserTransport as T; "
            "from pyvirtio.drivers import RngDriver as D; t = T(sys.argv[1], timeout=1, device_type=4); "
            "d = D.probe(t); d.requestq.call([], [16], timeout=2); print('read ok')")
#: A front-end that dies of SIGABRT as soon as it reads a reply (QEMU's assert, in small).
ABORTS = ("import os, signal, socket, struct, sys; s = socket.socket(socket.AF_UNIX); "
          "s.connect(sys.argv[1]); s.sendall(struct.pack('=III', 1, 1, 0)); s.recv(64); "
          "os.kill(os.getpid(), signal.SIGABRT)")


def _fuzz_frontend(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "pyvirtio.cli", "fuzz-frontend",
                           f"--socket-path={tmp_path / 'h.sock'}", f"--out={tmp_path / 'out'}",
                           "--seed=3", *args], capture_output=True, text=True, timeout=90)


def test_command_records_what_our_frontend_did(tmp_path):
    cmd = f"{sys.executable} -c \"{FRONTEND}\" {{socket}}"
    out = _fuzz_frontend(tmp_path, "--device=rng", "--time=20", f"--qemu-cmd={cmd}",
                         "--rule=used-len", "--rule=delay:ms=50,count=2")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "EXITED-WITH-ERROR" in lines[1] and "DeviceFault" in lines[1], out.stdout
    assert "EXITED: exit status 0" in lines[2], out.stdout
    records = [json.loads(line) for line in open(tmp_path / "out" / "outcomes.jsonl")]
    assert [r["outcome"]["kind"] for r in records] == ["exited-with-error", "exited"]
    assert records[0]["rules"] == ["used-len"] and records[0]["fired"][0]["detail"].startswith("ring 0")
    assert "read ok" in (tmp_path / "out" / "frontend-2.log").read_text()


def test_command_saves_a_finding_and_replays_it(tmp_path):
    cmd = f"{sys.executable} -c \"{ABORTS}\" {{socket}}"
    out = _fuzz_frontend(tmp_path, "--device=rng", "--time=20", f"--qemu-cmd={cmd}",
                         "--rule=features:value=0x1234")
    assert out.returncode == 1 and "ABORTED" in out.stdout, out.stdout + out.stderr
    saved = [p for p in os.listdir(tmp_path / "out") if p.startswith("aborted-")]
    assert len(saved) == 1
    case = json.loads((tmp_path / "out" / saved[0]).read_text())
    assert case["rules"] == ["features:value=0x1234"] and case["seed"] == 3
    assert case["outcome"]["signal"] == "SIGABRT"
    again = _fuzz_frontend(tmp_path, f"--replay={tmp_path / 'out' / saved[0]}", f"--qemu-cmd={cmd}")
    assert again.returncode == 1 and "ABORTED" in again.stdout, again.stdout + again.stderr


def test_command_usage_errors(tmp_path):
    out = _fuzz_frontend(tmp_path, "--rule=nope")
    assert out.returncode == 2 and "unknown hostile rule 'nope'" in out.stderr
    out = _fuzz_frontend(tmp_path)
    assert out.returncode == 2 and "--rule" in out.stderr
