"""The vhost-user fuzzer's core: cases are reproducible from their seed and survive a replay
file, the oracle tells a crash, a hang and each kind of protocol violation from a back-end that
merely refuses, and the minimiser keeps only the steps a failure needs."""

from __future__ import annotations

import random

import pytest

from pyvirtio.vhost_user.tools.fuzz import (Case, CaseError, Finding, Outcome, Reply, Step, TargetInfo,
                                      generate, judge, minimise, prefix, ring_attack)
from pyvirtio.vhost_user.protocol import FrontendReq as R
from pyvirtio.vhost_user.protocol import HeaderFlag

INFO = TargetInfo(features=(1 << 32) | (1 << 30) | (1 << 34), protocol_features=(1 << 3) | (1 << 5) | 1,
                  queues=2)
REPLY = 1 | HeaderFlag.REPLY


def test_cases_are_reproducible_from_their_seed_and_start_with_a_cut_of_the_valid_prefix():
    base = prefix(INFO)
    for n in range(200):
        a, b = generate(random.Random(f"7:{n}"), INFO), generate(random.Random(f"7:{n}"), INFO)
        assert [s.to_json() for s in a] == [s.to_json() for s in b]
        cut = next((i for i, (x, y) in enumerate(zip(a, base)) if x.to_json() != y.to_json()),
                   min(len(a), len(base)))
        assert 1 <= len(a) - cut <= 8  # a cut of the prefix, then 1 to 8 fuzzed steps


def test_prefix_takes_only_safe_features_and_sets_up_ring_zero_with_its_fds():
    steps = prefix(INFO)
    names = [s.name() for s in steps]
    assert names[:5] == ["GET_FEATURES", "GET_PROTOCOL_FEATURES", "SET_PROTOCOL_FEATURES", "SET_OWNER", "SET_FEATURES"]
    assert int.from_bytes(steps[2].payload, "little") == (1 << 3) | 1  # BACKEND_REQ not taken
    assert not int.from_bytes(steps[4].payload, "little") & (1 << 34)  # split rings only
    fds = {s.name(): s.fds for s in steps if s.fds}
    assert fds == {"SET_MEM_TABLE": ("memory",), "SET_VRING_CALL": ("call",), "SET_VRING_KICK": ("kick",)}
    assert names[-1] == "SET_VRING_ENABLE"


def test_generation_reaches_out_of_range_rings_bad_flags_fds_and_chain_attacks():
    steps = [s for n in range(400) for s in generate(random.Random(n), INFO)]
    ring_requests = [s for s in steps if s.request == R.SET_VRING_NUM and len(s.payload) == 8]
    assert any(int.from_bytes(s.payload[:4], "little") >= 0x10000 for s in ring_requests)
    assert any(s.flags & HeaderFlag.REPLY for s in steps)
    assert any(len(s.fds) > 1 for s in steps)
    assert any(s.op == "ring" for s in steps)


def test_a_case_survives_its_replay_file():
    steps = generate(random.Random(3), INFO) + [ring_attack(random.Random(4))]
    case = Case(steps, seed=3, number=9, finding=Finding("crash", "the target died on signal 11", 4))
    back = Case.from_json(case.to_json())
    assert [s.to_json() for s in back.steps] == [s.to_json() for s in steps]
    assert (back.seed, back.number, back.finding) == (3, 9, case.finding)


@pytest.mark.parametrize("text,why", [
    ("nope", "not JSON"), ('{"format": "other"}', "not a pyvirtio"),
    ('{"format": "pyvirtio-vhost-user-fuzz-case", "steps": [{"op": "send"}]}', "malformed"),
    ('{"format": "pyvirtio-vhost-user-fuzz-case", "steps": [{"op": "send", "request": 1, "flags": 1,'
     ' "payload": "", "fds": ["a-socket"]}]}', "unknown")])
def test_a_bad_replay_file_is_refused(text, why):
    with pytest.raises(CaseError, match=why):
        Case.from_json(text)


def send(request, payload=b"", flags=1, mutated=False):
    return Step(request=int(request), payload=payload, flags=flags, mutated=mutated)


def test_judge_crash_hang_and_refusal():
    steps = [send(R.GET_FEATURES), send(R.SET_VRING_NUM, bytes(8))]
    assert judge(steps, Outcome(sent=2, exit_status=-11)).detail == "the target died on signal 11"
    assert judge(steps, Outcome(sent=2, closed=True, reconnect_refused="Connection refused")).kind == "crash"
    assert judge(steps, Outcome(sent=2)).kind == "hang"  # open, probe unanswered
    ok = Outcome(replies=[Reply(R.GET_FEATURES, REPLY, 8)], sent=2, probe_answered=True)
    assert judge(steps, ok) is None
    refused = Outcome(sent=1, closed=True)  # it hung up on us and accepts new connections
    assert judge(steps, refused) is None


@pytest.mark.parametrize("steps,replies,kind", [
    ([send(R.SET_VRING_NUM, bytes(8))], [Reply(R.SET_VRING_NUM, REPLY, 8)], "reply where none is allowed"),
    ([send(R.GET_VRING_BASE, bytes(8))], [Reply(R.GET_VRING_BASE, REPLY, 12)], "wrong reply size"),
    ([send(R.SET_OWNER, flags=1 | HeaderFlag.NEED_REPLY)], [Reply(R.SET_OWNER, REPLY, 4)], "wrong reply size"),
    ([send(R.GET_QUEUE_NUM)], [Reply(R.GET_QUEUE_NUM, 1, 8)], "reply flags"),
    ([send(R.GET_INFLIGHT_FD, bytes(25), mutated=True)], [Reply(R.GET_INFLIGHT_FD, REPLY, 25)], "wrong reply size"),
])
def test_judge_names_each_violation(steps, replies, kind):
    out = Outcome(replies=replies + [Reply(R.GET_FEATURES, REPLY, 8)], sent=len(steps), probe_answered=True)
    finding = judge(steps, out)
    assert finding.kind == "violation" and finding.detail.startswith(kind), finding


@pytest.mark.parametrize("steps,replies", [
    ([send(R.GET_CONFIG, bytes(12) + bytes(0))], [Reply(R.GET_CONFIG, REPLY, 0)]),  # an error
    ([send(R.GET_CONFIG, b"\0" * 4 + (4).to_bytes(4, "little") + bytes(8))], [Reply(R.GET_CONFIG, REPLY, 16)]),
    ([send(R.SET_VRING_NUM, bytes(8), flags=1 | HeaderFlag.NEED_REPLY)], [Reply(R.SET_VRING_NUM, REPLY, 8)]),
    ([send(R.GET_VRING_BASE, bytes(3), mutated=True)], [Reply(R.GET_VRING_BASE, REPLY, 0)]),
    ([send(R.GET_FEATURES), send(R.GET_FEATURES)], [Reply(R.GET_FEATURES, REPLY, 8)]),  # one refused
])
def test_judge_accepts_what_the_protocol_allows(steps, replies):
    out = Outcome(replies=replies + [Reply(R.GET_FEATURES, REPLY, 8)], sent=len(steps), probe_answered=True)
    assert judge(steps, out) is None


def test_minimise_keeps_only_the_steps_the_failure_needs():
    steps = [send(n) for n in range(1, 30)]
    runs = []

    def fails(candidate):
        runs.append(len(candidate))
        requests = {s.request for s in candidate}
        return {4, 17} <= requests

    best = minimise(steps, fails)
    assert [s.request for s in best] == [4, 17] and len(runs) <= 64
    assert minimise(steps, lambda c: c[-1].request == 29) == steps[-1:]  # the last one alone


def test_minimise_stops_at_its_budget():
    steps = [send(n) for n in range(1, 100)]
    calls = []
    best = minimise(steps, lambda c: calls.append(1) or {50, 99} <= {s.request for s in c}, budget=10)
    assert len(calls) == 10 and best[-1].request == 99 and 50 in {s.request for s in best}


def test_findings_of_the_same_kind_match_for_the_minimiser():
    crash = Finding("crash", "the target died on signal 11")
    assert crash.same_as(Finding("crash", "the connection died and a new one was refused: x"))
    wrong = Finding("violation", "wrong reply size: GET_VRING_BASE answered with 12 bytes, not 8")
    assert wrong.same_as(Finding("violation", "wrong reply size: anything"))
    assert not wrong.same_as(Finding("violation", "reply where none is allowed: request 8"))
    assert not crash.same_as(None)

