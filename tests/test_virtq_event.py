"""vring_need_event against a brute-force model over the u16 wrap (VIRTIO 1.3, 2.7.10)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirtio.virtq import vring_need_event
from pyvirtio.virtq.event import vring_need_event as direct

EXAMPLES = int(os.environ.get("PYVIRTIO_HYPOTHESIS_EXAMPLES", "300"))
u16 = st.integers(0, 0xFFFF)


def passed(old: int, new: int) -> set[int]:
    """Brute force: walk the index from ``old`` to ``new`` one step at a time (mod 2**16) and
    collect every value it held before the step — the events it crossed."""
    out, idx = set(), old
    while idx != new:
        out.add(idx)
        idx = (idx + 1) & 0xFFFF
    return out


def test_reexported():
    assert vring_need_event is direct


# (old, new) pairs around every interesting point of the circle; events are checked exhaustively.
PAIRS = [(0, 0), (0, 1), (0, 0xFFFF), (5, 5), (0xFFFF, 0), (0xFFF0, 0x10), (0x7FFF, 0x8001),
         (0x8000, 0x7FFF), (1, 0), (0x1234, 0x1235), (0x1234, 0x9234), (0xFFFE, 0xFFFF),
         (0xC000, 0x4000), (100, 99)]


@pytest.mark.parametrize("old,new", PAIRS)
def test_exhaustive_events_for_sampled_moves(old, new):
    crossed = passed(old, new)
    mismatches = [e for e in range(0x10000) if vring_need_event(e, new, old) != (e in crossed)]
    assert mismatches == []


def test_examples_from_the_spec_text():
    # "the device ... MUST send a notification if used idx moved from old to new past used_event"
    assert vring_need_event(0, 1, 0)  # first buffer of a fresh ring, event 0
    assert not vring_need_event(1, 1, 0)  # event 1 is reached only when idx goes past 1
    assert vring_need_event(1, 2, 0)
    assert vring_need_event(0xFFFF, 0, 0xFFFF)  # across the wrap
    assert vring_need_event(0xFFFF, 3, 0xFFF0)
    assert not vring_need_event(3, 3, 0xFFF0)
    assert not vring_need_event(7, 7, 7)  # nothing moved, nothing crossed


def brute_need_event(event: int, new: int, old: int) -> bool:
    """Walk the shorter way: the indices crossed going old->new, or the complement of the ones
    a walk new->old crosses."""
    step = (new - old) & 0xFFFF
    if step <= 0x8000:
        return event in passed(old, new)
    return event not in passed(new, old)


steps = st.one_of(st.integers(0, 300), st.integers(0xFF00, 0xFFFF), st.integers(0, 0xFFFF))


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(old=u16, step=steps, event=u16)
def test_matches_brute_force(old, step, event):
    new = (old + step) & 0xFFFF
    assert vring_need_event(event, new, old) == brute_need_event(event, new, old)


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(old=u16, step=steps, delta=st.integers(-3, 3))
def test_matches_brute_force_next_to_the_ends(old, step, delta):
    """Events just before, at and just after old and new are where off-by-ones live."""
    new = (old + step) & 0xFFFF
    for event in ((old + delta) & 0xFFFF, (new + delta) & 0xFFFF):
        assert vring_need_event(event, new, old) == brute_need_event(event, new, old)


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(old=u16, new=u16, event=u16, shift=u16)
def test_invariant_under_rotation_of_the_circle(old, new, event, shift):
    """Only distances matter: adding the same constant to all three indices changes nothing."""
    rot = lambda v: (v + shift) & 0xFFFF  # noqa: E731
    assert vring_need_event(event, new, old) == vring_need_event(rot(event), rot(new), rot(old))


@given(old=u16, a=st.integers(0, 0x7FFF), b=st.integers(0, 0x7FFF), event=u16)
@settings(max_examples=EXAMPLES * 2, deadline=None)
def test_two_moves_cross_exactly_when_one_move_does(old, a, b, event):
    """Moving old->mid->new crosses the event iff one of the parts does, and never both."""
    mid, new = (old + a) & 0xFFFF, (old + a + b) & 0xFFFF
    if a + b > 0xFFFF:
        return
    whole = vring_need_event(event, new, old)
    first, second = vring_need_event(event, mid, old), vring_need_event(event, new, mid)
    assert whole == (first or second)
    assert not (first and second)
