"""Fault injection: rules that make a device fail on purpose (issue 16).

A rule is a kind and settings, written ``KIND[:key=value,key=value...]`` — the same text for
``pyvirtio serve --fault=RULE``, ``pyvirtio ctl PATH fault add`` and :func:`parse_rule`::

    ioerr:sectors=2048-4095          latency:ms=5-50          drop:rate=0.5,dir=rx
    ioerr:ops=read,write,prob=0.5    latency:mean_ms=10,dist=exp    irq-spurious:every_ms=100

A value that is a list (``ops``) takes several comma-separated words; a word without ``=``
continues the list before it.  Every device has a :class:`FaultSet` (``device.faults``); the
device asks it on its slow path whether a rule fires for a request, a frame or a notification.

The rule table (README, "Fault injection", is the same table):

==============  ======  =================================================================
kind            device  what happens when it fires (keys besides the common ones)
==============  ======  =================================================================
ioerr           blk     the request ends with IOERR, nothing done (``sectors``, ``ops``)
unsupp          blk     the request ends with UNSUPP, nothing done (``sectors``, ``ops``)
latency         blk     the request completes no sooner than the delay after it arrived,
                        other requests go on meanwhile (delay keys, ``sectors``, ``ops``)
torn            blk     a write: only its first ``keep`` sectors reach the image, then IOERR
                        (``keep``, ``sectors``)
flusherr        blk     a flush ends with IOERR and does not flush
drop            net     the frame is lost (``dir``)
dup             net     the frame is delivered twice (``dir``)
reorder         net     the frame is delivered after the next one (``dir``)
corrupt         net     one byte of the frame's payload is flipped (``dir``)
delay           net     the frame is delivered after the delay (delay keys, ``dir``)
flap            net     the link goes down and up every ``period_ms``
short           rng     the request gets at most ``bytes`` bytes (default 1)
stall           rng     the queue is not served for the delay (delay keys)
irq-drop        any     a used-buffer notification is not sent
irq-delay       any     a used-buffer notification is sent after the delay (delay keys)
irq-spurious    any     a used-buffer notification every ``every_ms``, with nothing new
needs-reset     any     at a used-buffer notification the device enters DEVICE_NEEDS_RESET
==============  ======  =================================================================

Keys:

==============  =====================================================================
key             meaning
==============  =====================================================================
queue=N         only queue N (net: queue pair N for frames)
prob=P, rate=P  fire with probability P (0..1; the same key, two names)
after=N         let the first N matching events pass
count=N         fire at most N times
seed=N          the rule's random generator (default 1: runs repeat exactly)
sectors=A-B     blk: requests overlapping sectors A..B (or one sector N)
ops=OP,...      blk: read, write, flush, discard, write-zeroes, get-id
ms=N, ms=A-B    delay keys: N ms, or uniform between A and B ms
mean_ms=M       delay keys: exponential with mean M ms (``dist=exp``, implied)
dist=D          delay keys: fixed, uniform or exp (checked against the other keys)
keep=K          torn: sectors written before the error (default 0)
dir=D           net: tx (guest to back-end), rx (back-end to guest) or both (default)
period_ms=N     flap: time between link changes
bytes=N         short: bytes served per request at most
every_ms=N      irq-spurious: time between spurious notifications
==============  =====================================================================

Sans-I/O: nothing here reads a clock or touches a device; callers pass ``now`` where time
matters.  Randomness is a :class:`random.Random` per rule, seeded, so a run repeats exactly.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

from .errors import UsageError, VirtioError
from .limits import PeerLog
from .spec.ids import DeviceType

log = logging.getLogger(__name__)

#: blk operations a rule can name (``ops=``).
OPS = ("read", "write", "flush", "discard", "write-zeroes", "get-id")
DIRECTIONS = ("tx", "rx", "both")
DISTRIBUTIONS = ("fixed", "uniform", "exp")
#: The random generator's seed when a rule gives none.
DEFAULT_SEED = 1


class FaultRuleError(UsageError):
    """A fault rule that does not parse, or does not fit the device it is given to."""


class InjectedFault(VirtioError):
    """What a device that enters DEVICE_NEEDS_RESET because of a rule is told."""


@dataclass(frozen=True)
class Delay:
    """How long a delayed thing waits: fixed, uniform in [low, high], or exponential."""

    low_ms: float
    high_ms: float
    dist: str = "fixed"

    def sample(self, rng: random.Random) -> float:
        """One delay in seconds."""
        if self.dist == "exp":
            return rng.expovariate(1.0 / self.low_ms) / 1000.0 if self.low_ms > 0 else 0.0
        if self.dist == "uniform":
            return rng.uniform(self.low_ms, self.high_ms) / 1000.0
        return self.low_ms / 1000.0

    def describe(self) -> str:
        if self.dist == "exp":
            return f"mean_ms={_num(self.low_ms)},dist=exp"
        if self.dist == "uniform":
            return f"ms={_num(self.low_ms)}-{_num(self.high_ms)}"
        return f"ms={_num(self.low_ms)}"


@dataclass(frozen=True)
class Kind:
    device: int | None  # a DeviceType, or None for any device
    keys: tuple[str, ...]
    required: tuple[str, ...] = ()
    prob_word: str = "prob"
    #: blk operations the kind applies to when the rule names none (None: every operation).
    ops: frozenset[str] | None = None


_COMMON = ("queue", "prob", "after", "count", "seed")
_DELAY = ("ms", "mean_ms", "dist")
_BLK, _NET, _RNG = int(DeviceType.BLOCK), int(DeviceType.NET), int(DeviceType.ENTROPY)

KINDS: dict[str, Kind] = {
    "ioerr": Kind(_BLK, _COMMON + ("sectors", "ops")),
    "unsupp": Kind(_BLK, _COMMON + ("sectors", "ops")),
    "latency": Kind(_BLK, _COMMON + ("sectors", "ops") + _DELAY, ("delay",)),
    "torn": Kind(_BLK, _COMMON + ("sectors", "keep"), ops=frozenset({"write"})),
    "flusherr": Kind(_BLK, _COMMON, ops=frozenset({"flush"})),
    "drop": Kind(_NET, _COMMON + ("dir",), prob_word="rate"),
    "dup": Kind(_NET, _COMMON + ("dir",), prob_word="rate"),
    "reorder": Kind(_NET, _COMMON + ("dir",), prob_word="rate"),
    "corrupt": Kind(_NET, _COMMON + ("dir",), prob_word="rate"),
    "delay": Kind(_NET, _COMMON + ("dir",) + _DELAY, ("delay",), prob_word="rate"),
    "flap": Kind(_NET, ("period_ms", "count", "seed"), ("period_ms",)),
    "short": Kind(_RNG, _COMMON + ("bytes",)),
    "stall": Kind(_RNG, _COMMON + _DELAY, ("delay",)),
    "irq-drop": Kind(None, _COMMON, prob_word="rate"),
    "irq-delay": Kind(None, _COMMON + _DELAY, ("delay",)),
    "irq-spurious": Kind(None, ("queue", "every_ms", "count", "seed"), ("every_ms",)),
    "needs-reset": Kind(None, _COMMON),
}
BLK_KINDS = frozenset(k for k, v in KINDS.items() if v.device == _BLK)
NET_KINDS = frozenset(k for k, v in KINDS.items() if v.device == _NET)
NET_FRAME_KINDS = NET_KINDS - {"flap"}
RNG_KINDS = frozenset(k for k, v in KINDS.items() if v.device == _RNG)
IRQ_KINDS = frozenset(k for k, v in KINDS.items() if v.device is None)
_DEVICE_NAMES = {_BLK: "blk", _NET: "net", _RNG: "rng"}


class FaultRule:
    """One rule: what it matches, what it does, and how often it fired.

    :meth:`trigger` (after a match) applies ``after``, ``count`` and the probability, under the
    rule's own lock, so workers of several queues may share a rule."""

    def __init__(self, kind: str, *, queue: int | None = None, prob: float = 1.0, after: int = 0,
                 count: int | None = None, seed: int | None = None,
                 sectors: tuple[int, int] | None = None, ops: frozenset[str] | None = None,
                 delay: Delay | None = None, keep: int = 0, dir: str = "both",
                 period_ms: float = 0.0, bytes: int = 1, every_ms: float = 0.0):
        self.kind = kind
        self.queue, self.prob, self.after, self.count, self.seed = queue, prob, after, count, seed
        self.sectors, self.ops, self.delay, self.keep, self.dir = sectors, ops, delay, keep, dir
        self.period_ms, self.bytes, self.every_ms = period_ms, bytes, every_ms
        self.id = 0  # given by FaultSet.add
        self.seen = 0  # matching events
        self.fired = 0
        self.rng = random.Random(DEFAULT_SEED if seed is None else seed)
        self._lock = threading.Lock()
        kind_ops = KINDS[kind].ops
        self._ops = ops if ops is not None else kind_ops

    # --- matching -------------------------------------------------------------------------------

    def matches(self, queue: int | None = None, op: str | None = None,
                sectors: tuple[int, int] | None = None, dir: str | None = None) -> bool:
        """Whether an event fits the rule: its queue, blk operation, sectors (first, count;
        a rule with ``sectors`` never matches a request without any) and net direction."""
        if self.queue is not None and queue is not None and queue != self.queue:
            return False
        if self._ops is not None and op is not None and op not in self._ops:
            return False
        if self.sectors is not None:
            if sectors is None or sectors[1] <= 0:
                return False
            first, n = sectors
            if first > self.sectors[1] or first + n - 1 < self.sectors[0]:
                return False
        return not (dir is not None and self.dir != "both" and dir != self.dir)

    def trigger(self) -> bool:
        """A matching event: whether the rule fires for it (``after``, ``count``, ``prob``)."""
        with self._lock:
            self.seen += 1
            if self.seen <= self.after or (self.count is not None and self.fired >= self.count):
                return False
            if self.prob < 1.0 and self.rng.random() >= self.prob:
                return False
            self.fired += 1
            return True

    @property
    def spent(self) -> bool:
        """Fired ``count`` times: it never fires again."""
        return self.count is not None and self.fired >= self.count

    def sample_delay(self) -> float:
        """A delay in seconds from the rule's ``ms``/``mean_ms`` (0 without one)."""
        if self.delay is None:
            return 0.0
        with self._lock:
            return self.delay.sample(self.rng)

    def random(self) -> float:
        with self._lock:
            return self.rng.random()

    # --- text -----------------------------------------------------------------------------------

    def settings(self) -> dict[str, str]:
        """The keys that differ from their defaults, as text, in the table's order."""
        k = KINDS[self.kind]
        out: dict[str, str] = {}
        if self.queue is not None:
            out["queue"] = str(self.queue)
        if "sectors" in k.keys and self.sectors is not None:
            lo, hi = self.sectors
            out["sectors"] = str(lo) if lo == hi else f"{lo}-{hi}"
        if "ops" in k.keys and self.ops is not None:
            out["ops"] = ",".join(op for op in OPS if op in self.ops)
        if self.delay is not None:
            out["delay"] = self.delay.describe()
        if "keep" in k.keys and self.keep:
            out["keep"] = str(self.keep)
        if "dir" in k.keys and self.dir != "both":
            out["dir"] = self.dir
        if "period_ms" in k.keys:
            out["period_ms"] = _num(self.period_ms)
        if "bytes" in k.keys and self.bytes != 1:
            out["bytes"] = str(self.bytes)
        if "every_ms" in k.keys:
            out["every_ms"] = _num(self.every_ms)
        if self.prob != 1.0:
            out[k.prob_word] = _num(self.prob)
        if self.after:
            out["after"] = str(self.after)
        if self.count is not None:
            out["count"] = str(self.count)
        if self.seed is not None:
            out["seed"] = str(self.seed)
        return out

    def describe(self) -> str:
        """The rule's canonical text (what :func:`parse_rule` reads back to the same rule)."""
        settings = self.settings()
        parts = [v if k == "delay" else f"{k}={v}" for k, v in settings.items()]
        return self.kind + (":" + ",".join(parts) if parts else "")

    def as_dict(self) -> dict:
        """For ``fault list`` and ``stats``: id, text, how often it matched and fired."""
        return {"id": self.id, "rule": self.describe(), "kind": self.kind, "seen": self.seen,
                "fired": self.fired}

    def __repr__(self) -> str:
        return f"<FaultRule #{self.id} {self.describe()} fired={self.fired}>"


# --- parsing ------------------------------------------------------------------------------------


def _num(x: float) -> str:
    s = repr(float(x))
    return s[:-2] if s.endswith(".0") else s


def _nonneg_int(kind: str, key: str, text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = -1
    if value < 0:
        raise FaultRuleError(f"{kind}: {key}={text!r} is not a whole number >= 0")
    return value


def _nonneg_float(kind: str, key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise FaultRuleError(f"{kind}: {key}={text!r} is not a number >= 0")
    return value


def _range(kind: str, key: str, text: str, number: Callable[[str, str, str], float]) -> tuple[float, float]:
    # The separator is a "-" that does not belong to an exponent ("1e-3-2e-3").
    cut = next((i for i in range(1, len(text)) if text[i] == "-" and text[i - 1] not in "eE"), -1)
    lo_text, sep, hi_text = (text[:cut], "-", text[cut + 1:]) if cut > 0 else (text, "", "")
    lo = number(kind, key, lo_text)
    hi = number(kind, key, hi_text) if sep else lo
    if hi < lo:
        raise FaultRuleError(f"{kind}: {key}={text!r}: the range ends before it starts")
    return lo, hi


def _prob(kind: str, key: str, text: str) -> float:
    value = _nonneg_float(kind, key, text)
    if value > 1:
        raise FaultRuleError(f"{kind}: {key}={text!r} is not a probability (0..1)")
    return value


def _choice(kind: str, key: str, text: str, valid: Iterable[str]) -> str:
    valid = tuple(valid)
    if text not in valid:
        raise FaultRuleError(f"{kind}: {key}={text!r} is not one of {', '.join(valid)}")
    return text


def _split(kind: str, body: str) -> dict[str, str]:
    """``key=value,key=value``; a word without ``=`` continues the value before it (a list)."""
    values: dict[str, str] = {}
    last: str | None = None
    for word in body.split(","):
        word = word.strip()
        key, eq, value = word.partition("=")
        key = key.strip().replace("-", "_") if eq else key
        if not eq:
            if last is None or not word:
                raise FaultRuleError(f"{kind}: {word!r} is not key=value (keys of {kind}: "
                                     f"{_key_list(kind)})")
            values[last] += "," + word
            continue
        if key == "rate":
            key = "prob"
        if key in values:
            raise FaultRuleError(f"{kind}: {key} given twice")
        values[key], last = value.strip(), key
    return values


def _key_list(kind: str) -> str:
    words = []
    for key in KINDS[kind].keys:
        words.append(KINDS[kind].prob_word if key == "prob" else key)
    return ", ".join(words)


def _delay(kind: str, values: dict[str, str]) -> Delay | None:
    ms, mean, dist = values.pop("ms", None), values.pop("mean_ms", None), values.pop("dist", None)
    if dist is not None:
        _choice(kind, "dist", dist, DISTRIBUTIONS)
    if ms is None and mean is None:
        if "delay" in KINDS[kind].required:
            raise FaultRuleError(f"{kind}: give ms=N, ms=A-B (uniform) or mean_ms=M (exponential)")
        return None
    if ms is not None and mean is not None:
        raise FaultRuleError(f"{kind}: give ms= or mean_ms=, not both")
    if mean is not None:
        if dist not in (None, "exp"):
            raise FaultRuleError(f"{kind}: mean_ms= goes with dist=exp, not dist={dist}")
        m = _nonneg_float(kind, "mean_ms", mean)
        return Delay(m, m, "exp")
    assert ms is not None
    lo, hi = _range(kind, "ms", ms, _nonneg_float)
    if dist == "exp":
        raise FaultRuleError(f"{kind}: dist=exp takes mean_ms=M, not ms=")
    if dist == "fixed" and lo != hi:
        raise FaultRuleError(f"{kind}: dist=fixed takes one value, ms=N")
    return Delay(lo, hi, "uniform" if lo != hi or dist == "uniform" else "fixed")


def parse_rule(text: str) -> FaultRule:
    """Read ``KIND[:key=value,...]`` into a :class:`FaultRule`; :class:`FaultRuleError` names
    the part that is wrong and what would be valid."""
    if not isinstance(text, str):
        raise FaultRuleError(f"a fault rule is text, not {type(text).__name__}")
    kind, _, body = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise FaultRuleError(f"unknown fault kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    spec = KINDS[kind]
    values = _split(kind, body) if body.strip() else {}
    delay = _delay(kind, values) if "ms" in spec.keys else None
    for key in values:
        if key not in spec.keys:
            raise FaultRuleError(f"{kind}: unknown key {key!r}; keys of {kind}: {_key_list(kind)}")
    for key in spec.required:
        if key != "delay" and key not in values:
            raise FaultRuleError(f"{kind}: {key}= is required")
    kw: dict = {"delay": delay}
    for key, text_value in values.items():
        kw[key] = _PARSERS[key](kind, spec.prob_word if key == "prob" else key, text_value)
    if kw.get("period_ms", 1) <= 0 or kw.get("every_ms", 1) <= 0:
        raise FaultRuleError(f"{kind}: the period must be more than 0 ms")
    if kw.get("bytes", 1) < 1 and kind == "short":
        raise FaultRuleError("short: bytes= must be at least 1 (0 bytes is a stall)")
    return FaultRule(kind, **kw)


def _ops(kind: str, key: str, text: str) -> frozenset[str]:
    words = [w.strip() for w in text.split(",")]
    allowed = KINDS[kind].ops or OPS
    for w in words:
        _choice(kind, key, w, allowed)
    return frozenset(words)


def _sectors(kind: str, key: str, text: str) -> tuple[int, int]:
    lo, hi = _range(kind, key, text, _nonneg_int)
    return int(lo), int(hi)


def _count(kind: str, key: str, text: str) -> int:
    value = _nonneg_int(kind, key, text)
    if value < 1:
        raise FaultRuleError(f"{kind}: count= must be at least 1")
    return value


_PARSERS: dict[str, Callable[[str, str, str], object]] = {
    "queue": _nonneg_int, "prob": _prob, "after": _nonneg_int, "count": _count,
    "seed": _nonneg_int, "sectors": _sectors, "ops": _ops, "keep": _nonneg_int,
    "dir": lambda kind, key, text: _choice(kind, key, text, DIRECTIONS),
    "period_ms": _nonneg_float, "bytes": _nonneg_int, "every_ms": _nonneg_float,
}


# --- a device's rules ---------------------------------------------------------------------------

_Rules = list[FaultRule]  # FaultSet.list shadows the builtin inside the class
_Dicts = list[dict]


class FaultSet:
    """The rules of one device, safe to change from any thread while its workers read them.

    The rule tuples are replaced whole (copy on write), so a worker reads them without a lock;
    an empty set costs the hot path one attribute test (``if faults.rules:``).  Listeners are
    called after every change (the device wakes its workers: timers may start or stop)."""

    def __init__(self, device_type: int | None = None, *, name: str = "device"):
        self.device_type = device_type
        self.name = name
        #: Every rule, in the order added.
        self.rules: tuple[FaultRule, ...] = ()
        #: The rules of the notification kinds (the engine's hook looks only at these).
        self.irq: tuple[FaultRule, ...] = ()
        self.listeners: list[Callable[[], None]] = []
        self.log = PeerLog(log)
        self._lock = threading.Lock()
        self._next_id = 1

    def add(self, rule: FaultRule | str) -> FaultRule:
        """Add a rule (or its text); it gets an ``id``.  A rule for another device type is
        refused with :class:`FaultRuleError`."""
        if isinstance(rule, str):
            rule = parse_rule(rule)
        want = KINDS[rule.kind].device
        if want is not None and self.device_type is not None and want != self.device_type:
            have = _DEVICE_NAMES.get(int(self.device_type), f"device type {int(self.device_type)}")
            valid = sorted(k for k, v in KINDS.items() if v.device in (None, self.device_type))
            raise FaultRuleError(f"{rule.kind}: a {_DEVICE_NAMES[want]} fault, and this is a {have} "
                                 f"device; kinds for it: {', '.join(valid)}")
        with self._lock:
            rule.id = self._next_id
            self._next_id += 1
            self._set(self.rules + (rule,))
        log.info("%s: fault rule #%d added: %s", self.name, rule.id, rule.describe())
        self._changed()
        return rule

    def list(self) -> _Rules:
        return list(self.rules)

    def get(self, rule_id: int) -> FaultRule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    def remove(self, rule_id: int) -> FaultRule:
        """Remove rule ``rule_id``; :class:`FaultRuleError` if there is none."""
        with self._lock:
            rule = self.get(rule_id)
            if rule is None:
                have = ", ".join(f"#{r.id}" for r in self.rules) or "none"
                raise FaultRuleError(f"no fault rule #{rule_id} (rules: {have})")
            self._set(tuple(r for r in self.rules if r is not rule))
        self._changed()
        return rule

    def clear(self) -> int:
        """Remove every rule; how many there were."""
        with self._lock:
            n = len(self.rules)
            self._set(())
        if n:
            self._changed()
        return n

    def _set(self, rules: tuple[FaultRule, ...]) -> None:
        self.irq = tuple(r for r in rules if r.kind in IRQ_KINDS)
        self.rules = rules

    def _changed(self) -> None:
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:  # a listener's bug must not undo the change
                log.exception("%s: fault listener failed", self.name)

    def stats(self) -> "_Dicts":
        return [r.as_dict() for r in self.rules]

    # --- asking (the device's slow path) ---------------------------------------------------------

    def firing(self, kinds: frozenset[str], queue: int | None = None, op: str | None = None,
               sectors: tuple[int, int] | None = None, dir: str | None = None) -> _Rules:
        """The rules of ``kinds`` that fire for one event (each counted and logged)."""
        fired: _Rules = []
        for rule in self.rules:
            if rule.kind in kinds and rule.matches(queue, op, sectors, dir) and rule.trigger():
                self.fired(rule, queue)
                fired.append(rule)
        return fired

    def fired(self, rule: FaultRule, queue: int | None = None, what: str = "") -> None:
        """Log one firing (rate-limited: a rule may fire for every request)."""
        where = "" if queue is None else f" on queue {queue}"
        self.log.info("%s: fault #%d %s fired%s (%d)%s", self.name, rule.id, rule.describe(), where,
                      rule.fired, what)

    def has(self, kinds: frozenset[str]) -> bool:
        return any(r.kind in kinds for r in self.rules)


__all__ = ["FaultRule", "FaultRuleError", "FaultSet", "InjectedFault", "Delay", "KINDS", "OPS",
           "parse_rule", "BLK_KINDS", "NET_KINDS", "NET_FRAME_KINDS", "RNG_KINDS", "IRQ_KINDS"]
