"""Fault rules (pyvirtio.faults): the syntax, the matcher, the rule set, and the engine's
notification hook (irq-drop, irq-delay, irq-spurious, needs-reset) over the loopback transport."""

import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from pyvirtio.devices.rng import RngDevice
from pyvirtio.drivers.rng import RngDriver
from pyvirtio.errors import UsageError
from pyvirtio.faults import KINDS, OPS, FaultRuleError, FaultSet, parse_rule
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec.ids import DeviceType
from pyvirtio.spec.status import DeviceStatus

EXAMPLES = ["ioerr:sectors=2048-4095", "ioerr:ops=read,prob=0.5,after=100", "latency:ms=20",
            "latency:ms=5-50", "latency:mean_ms=10,dist=exp", "torn:keep=4", "flusherr",
            "drop:rate=0.5", "dup:rate=0.1", "reorder:rate=0.1", "corrupt:rate=0.01", "delay:ms=10",
            "flap:period_ms=500", "stall:ms=100", "irq-drop:rate=0.5", "irq-delay:ms=10",
            "irq-spurious:every_ms=100", "needs-reset:after=3", "ioerr:queue=1,ops=read,write,count=2"]


# --- syntax ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", EXAMPLES)
def test_every_documented_example_parses_and_describes_itself(text):
    assert parse_rule(text).describe() == text


def test_equivalent_spellings_have_one_canonical_text():
    assert parse_rule("IOERR: sectors = 7 , prob=1").describe() == "ioerr:sectors=7"
    assert parse_rule("drop:prob=0.5").describe() == "drop:rate=0.5"
    assert parse_rule("ioerr:rate=0.25").describe() == "ioerr:prob=0.25"
    assert parse_rule("short:bytes=1").describe() == "short"
    assert parse_rule("latency:ms=5-5,dist=uniform").describe() == "latency:ms=5-5"
    assert parse_rule("latency:mean-ms=3").describe() == "latency:mean_ms=3,dist=exp"
    assert parse_rule("ioerr:ops=write,read").describe() == "ioerr:ops=read,write"


@pytest.mark.parametrize("text, words", [
    ("ioer", ["unknown fault kind 'ioer'", "ioerr", "needs-reset"]),
    ("ioerr:sector=1", ["unknown key 'sector'", "sectors", "ops"]),
    ("ioerr:sectors=9-3", ["sectors='9-3'", "ends before it starts"]),
    ("ioerr:ops=reed", ["ops='reed'", "read, write, flush, discard, write-zeroes, get-id"]),
    ("torn:ops=read", ["unknown key 'ops'"]),
    ("drop:rate=1.5", ["rate='1.5'", "probability"]),
    ("latency", ["ms=N", "mean_ms=M"]),
    ("latency:ms=1,mean_ms=2", ["not both"]),
    ("latency:ms=1-3,dist=fixed", ["dist=fixed"]),
    ("flap", ["period_ms= is required"]),
    ("flap:period_ms=0", ["more than 0"]),
    ("ioerr:count=0", ["count= must be at least 1"]),
    ("ioerr:after=-1", ["after='-1'", "whole number"]),
    ("ioerr:prob=0.5,prob=0.2", ["prob given twice"]),
    ("ioerr:,", ["is not key=value"]),
    ("drop:dir=up", ["dir='up'", "tx, rx, both"]),
    ("latency:ms=nan", ["ms='nan'"]),
])
def test_a_bad_rule_names_the_bad_part_and_what_is_valid(text, words):
    with pytest.raises(FaultRuleError) as err:
        parse_rule(text)
    assert isinstance(err.value, UsageError)
    for word in words:
        assert word in str(err.value)


def _value(key):
    ints = st.integers(0, 10**6)
    ms = st.floats(0, 1e4, allow_nan=False, allow_infinity=False)
    return {
        "queue": ints.map(str), "after": ints.map(str), "count": st.integers(1, 10**6).map(str),
        "seed": ints.map(str), "prob": st.floats(0, 1).map(repr), "keep": ints.map(str),
        "sectors": st.tuples(ints, ints).map(lambda t: f"{min(t)}-{max(t)}"),
        "ops": st.sets(st.sampled_from(OPS), min_size=1).map(",".join),
        "dir": st.sampled_from(["tx", "rx", "both"]), "bytes": st.integers(1, 10**6).map(str),
        "period_ms": st.floats(0.001, 1e4).map(repr), "every_ms": st.floats(0.001, 1e4).map(repr),
        "ms": st.one_of(ms.map(repr), st.tuples(ms, ms).map(lambda t: f"{min(t)!r}-{max(t)!r}")),
        "mean_ms": ms.map(repr), "dist": st.just("exp"),
    }[key]


@st.composite
def rule_texts(draw):
    kind = draw(st.sampled_from(sorted(KINDS)))
    spec = KINDS[kind]
    keys = [k for k in spec.keys if k not in ("ms", "mean_ms", "dist")]
    chosen = draw(st.lists(st.sampled_from(keys), unique=True)) if keys else []
    for req in spec.required:
        if req in keys and req not in chosen:
            chosen.append(req)
    parts = [f"{k}={draw(_value(k))}" for k in chosen]
    if "ms" in spec.keys and ("delay" in spec.required or draw(st.booleans())):
        parts.append(draw(st.one_of(_value("ms").map(lambda v: f"ms={v}"),
                                    _value("mean_ms").map(lambda v: f"mean_ms={v},dist=exp"))))
    parts = draw(st.permutations(parts))
    return kind + (":" + ",".join(parts) if parts else "")


@settings(max_examples=300, deadline=None)
@given(rule_texts())
def test_describe_parses_back_to_the_same_rule(text):
    rule = parse_rule(text)
    again = parse_rule(rule.describe())
    assert again.describe() == rule.describe()
    assert again.settings() == rule.settings()


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=60),
                 st.builds(lambda k, b: f"{k}:{b}", st.sampled_from(sorted(KINDS)),
                           st.text(alphabet="abcdeimnoprstqwy_-=,.0123456789 ", max_size=40))))
def test_random_text_raises_nothing_but_fault_rule_error(text):
    try:
        rule = parse_rule(text)
    except FaultRuleError:
        return
    assert parse_rule(rule.describe()).describe() == rule.describe()


# --- matching ---------------------------------------------------------------------------------------


def test_sectors_match_requests_that_overlap_the_range():
    rule = parse_rule("ioerr:sectors=100-199")
    assert rule.matches(op="read", sectors=(100, 1)) and rule.matches(op="read", sectors=(199, 8))
    assert rule.matches(op="write", sectors=(96, 8)) and rule.matches(op="read", sectors=(0, 1000))
    assert not rule.matches(op="read", sectors=(92, 8)) and not rule.matches(op="read", sectors=(200, 8))
    assert not rule.matches(op="flush", sectors=None)


def test_ops_queue_and_direction():
    rule = parse_rule("ioerr:ops=read,queue=1")
    assert rule.matches(queue=1, op="read") and not rule.matches(queue=0, op="read")
    assert not rule.matches(queue=1, op="write")
    assert parse_rule("torn").matches(op="write") and not parse_rule("torn").matches(op="read")
    assert parse_rule("flusherr").matches(op="flush") and not parse_rule("flusherr").matches(op="read")
    assert parse_rule("drop:dir=rx").matches(dir="rx") and not parse_rule("drop:dir=rx").matches(dir="tx")
    assert parse_rule("drop").matches(dir="tx")


def test_after_and_count():
    rule = parse_rule("ioerr:after=3,count=2")
    assert [rule.trigger() for _ in range(8)] == [False] * 3 + [True] * 2 + [False] * 3
    assert (rule.seen, rule.fired) == (8, 2) and rule.spent


def test_probability_is_seeded_and_repeats():
    a = [parse_rule("drop:rate=0.3,seed=7").trigger() for _ in range(1)]
    rule1, rule2 = parse_rule("drop:rate=0.3,seed=7"), parse_rule("drop:rate=0.3,seed=7")
    one = [rule1.trigger() for _ in range(2000)]
    assert one == [rule2.trigger() for _ in range(2000)]
    assert 0.25 < sum(one) / 2000 < 0.35
    other = parse_rule("drop:rate=0.3,seed=8")
    assert [other.trigger() for _ in range(2000)] != one
    assert a  # one draw is a list of one


def test_delays():
    assert parse_rule("latency:ms=20").sample_delay() == 0.02
    uniform = parse_rule("latency:ms=5-50")
    samples = [uniform.sample_delay() for _ in range(500)]
    assert 0.005 <= min(samples) and max(samples) <= 0.05 and max(samples) - min(samples) > 0.03
    exp = parse_rule("latency:mean_ms=10")
    mean = sum(exp.sample_delay() for _ in range(4000)) / 4000
    assert 0.009 < mean < 0.011


# --- the rule set -------------------------------------------------------------------------------------


def test_fault_set_ids_list_remove_clear_and_listeners():
    changes = []
    faults = FaultSet(DeviceType.BLOCK)
    faults.listeners.append(lambda: changes.append(len(faults.rules)))
    a = faults.add("ioerr:sectors=1")
    b = faults.add(parse_rule("irq-drop"))
    assert (a.id, b.id) == (1, 2) and faults.list() == [a, b] and faults.irq == (b,)
    assert faults.remove(1) is a and faults.list() == [b]
    with pytest.raises(FaultRuleError, match="no fault rule #9"):
        faults.remove(9)
    assert faults.clear() == 1 and faults.list() == [] and faults.irq == ()
    assert changes == [1, 2, 1, 0]
    assert faults.add("latency:ms=1").id == 3  # ids are never reused
    assert faults.stats() == [{"id": 3, "rule": "latency:ms=1", "kind": "latency", "seen": 0, "fired": 0}]


def test_a_rule_for_another_device_type_is_refused():
    faults = RngDevice().faults
    with pytest.raises(FaultRuleError, match="a blk fault, and this is a rng device; kinds for it:"):
        faults.add("ioerr")
    faults.add("short:bytes=2")
    faults.add("needs-reset")  # any device
    assert len(faults.list()) == 2


def test_firing_is_safe_from_many_threads():
    faults = FaultSet(DeviceType.BLOCK)
    rule = faults.add("ioerr:count=1000")
    hits = []

    def worker():
        hits.append(sum(bool(faults.firing(frozenset({"ioerr"}), op="read")) for _ in range(500)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(hits) == 1000 and rule.fired == 1000 and rule.seen == 2000


# --- notifications: the engine's hook, any device ------------------------------------------------


@pytest.fixture
def rng():
    dev = RngDevice()
    t = LoopbackTransport(dev, memory_size=1 << 20)
    drv = RngDriver.probe(t)
    got = []
    t.set_interrupt_handler(lambda info: got.append((time.monotonic(), info.queue)))
    yield dev, drv, got
    t.close()


def _wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    return predicate()


def test_irq_drop_drops_exactly_count_notifications(rng):
    dev, drv, got = rng
    rule = dev.faults.add("irq-drop:after=1,count=2")
    for _ in range(5):
        assert len(drv.read(16)) == 16  # the driver finds its buffers without the interrupt
    assert len(got) == 3 and rule.fired == 2
    assert dev.queues[0].stats.interrupts == 3


def test_irq_delay_sends_the_notification_late(rng):
    dev, drv, got = rng
    dev.faults.add("irq-delay:ms=80")
    start = time.monotonic()
    drv.read(16)
    assert _wait_for(lambda: got)
    assert got[0][0] - start >= 0.08 and got[0][1] == 0


def test_irq_spurious_notifies_while_the_rule_stands(rng):
    dev, drv, got = rng
    dev.faults.add("irq-spurious:every_ms=20")
    time.sleep(0.3)
    dev.faults.clear()
    n = len(got)
    assert 8 <= n <= 16, n
    time.sleep(0.1)
    assert len(got) - n <= 1  # one tick may have been on its way
    assert all(q == 0 for _, q in got)


def test_irq_spurious_count_limits_the_ticks(rng):
    dev, drv, got = rng
    rule = dev.faults.add("irq-spurious:every_ms=10,count=3")
    time.sleep(0.2)
    assert len(got) == 3 and rule.fired == 3


def test_needs_reset_at_the_chosen_notification(rng):
    dev, drv, got = rng
    dev.faults.add("needs-reset:after=2")
    drv.read(16)
    drv.read(16)
    assert not dev.status & DeviceStatus.DEVICE_NEEDS_RESET
    drv.read(16)  # its notification is the third: the device enters NEEDS_RESET there
    assert dev.status & DeviceStatus.DEVICE_NEEDS_RESET
    assert any(q is None for _, q in got)  # a config change interrupt told the driver
    assert drv.transport.get_status() & DeviceStatus.DEVICE_NEEDS_RESET


# --- pyvirtio serve --fault ---------------------------------------------------------------------


@pytest.mark.parametrize("rule, words", [
    ("ioerr:sector=1", ["--fault=ioerr:sector=1", "unknown key 'sector'", "sectors"]),
    ("drop:rate=0.5", ["--fault=drop:rate=0.5", "a net fault", "blk device", "ioerr"]),
    ("bogus", ["--fault=bogus", "unknown fault kind", "latency"]),
])
def test_serve_refuses_a_bad_fault_rule_at_start(tmp_path, capsys, rule, words):
    from pyvirtio import cli
    image = tmp_path / "d.img"
    image.write_bytes(bytes(1 << 20))
    try:
        code = cli.main(["serve", "blk", f"--socket-path={tmp_path / 's'}", f"--blk-file={image}",
                         "--fault=latency:ms=1", f"--fault={rule}"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    for word in words:
        assert word in err
    assert not (tmp_path / "s").exists()  # refused before the socket was made


def test_serve_fault_rules_reach_the_device(tmp_path):
    from pyvirtio.commands import serve
    image = tmp_path / "d.img"
    image.write_bytes(bytes(1 << 20))
    args = type("Args", (), {"backend": "blk", "fault": ["ioerr:sectors=8-15", "irq-drop:rate=0.5"]})()
    rules = serve._fault_rules(args)
    assert [r.describe() for r in rules] == ["ioerr:sectors=8-15", "irq-drop:rate=0.5"]
