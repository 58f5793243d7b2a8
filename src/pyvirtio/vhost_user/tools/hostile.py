"""A hostile vhost-user back-end: a real device that lies to its front-end on purpose, to test
front-ends (QEMU's, DPDK's, pyvirtio's :class:`~.transport.VhostUserTransport`).

The back-end is pyvirtio's own (:class:`~.server.VhostUserServer` and a real device), so a
front-end gets through a valid set-up and real I/O; a :class:`HostileSession` then rewrites what
goes back at the moments the rules choose.  A front-end must refuse every lie with an error — end
the connection, fail the request, mark the device broken — and never hang, crash or trust it.

A rule is written ``KIND[:key=value,...]`` (the syntax of :mod:`pyvirtio.faults`); several rules
that act together are joined with ``;`` (``pyvirtio fuzz-frontend --rule`` runs each flag as an
experiment of its own).  Message rules act on the replies of the control socket (``req=NAME``
chooses the request, else every one the rule can act on); ring rules act on a queue's used ring
after the device has served real requests (``queue=N``, default 0).

=================  =========================================================================
kind               what the front-end gets when the rule fires (keys besides the common ones)
=================  =========================================================================
short              the reply payload cut by ``bytes`` (default 1)
long               the reply payload with ``bytes`` (default 8) zero bytes more
wrong-code         the reply names another request (``value``; default GET_FEATURES, or
                   GET_PROTOCOL_FEATURES for a GET_FEATURES reply)
no-reply-flag      the reply without the REPLY header flag
extra-reply        a u64 0 reply to a request that must not get one (SET_OWNER … without
                   NEED_REPLY)
no-reply           no reply at all: the front-end must time out, not hang
hang-up            the connection closed instead of the reply
delay              the reply after ``ms`` milliseconds (default 1000)
features           GET_FEATURES answers ``value`` (default every bit)
protocol-features  GET_PROTOCOL_FEATURES answers the offer | ``value`` (default every bit
                   vhost-user.rst does not define)
queue-num          GET_QUEUE_NUM answers ``value`` (default 0; try 0xffff)
mem-slots          GET_MAX_MEM_SLOTS answers ``value`` (default 0)
config             GET_CONFIG's data: ``bytes`` bytes at offset ``at`` set to ``value``
                   (little-endian), e.g. blk capacity 2^64-1 ``config:at=0,bytes=8,value=max``,
                   blk num_queues 0 ``config:at=34,bytes=2,value=0``; without ``at``, every
                   byte random (seeded garbage)
vring-base         GET_VRING_BASE answers ``value`` (default 0xffffffff; ``index`` another ring)
inflight-size      GET_INFLIGHT_FD answers mmap_size ``value`` (default 2^62)
inflight-fd        GET_INFLIGHT_FD passes a ``fd`` of another kind: pipe (default), devnull,
                   eventfd, socket
used-id            ring: the last used entry's id set to ``value`` (default the ring size: out
                   of range)
used-not-head      ring: the last used entry published again (its id is no longer in flight)
used-len           ring: the last used entry's length set to ``value`` (default 0xffffffff)
used-idx-jump      ring (split): the used idx moved on by ``by`` (default the ring size + 1)
irq-spurious       ring: ``irqs`` (default 1) notifications with nothing new, before a turn
wrap-flip          ring (packed): the device's used wrap counter flipped: the used descriptors
                   of this turn on carry the wrong AVAIL/USED bits (a split ring: never fires)
=================  =========================================================================

Common keys: ``req=NAME`` (message rules: the request, by name or number), ``queue=N`` (ring
rules), ``after=N`` (let the first N matching events pass), ``count=N`` (fire at most N times;
default: every matching event after ``after``), ``rate=P`` or ``prob=P`` (fire with probability
P, drawn from the rule's generator), ``seed=N`` (that generator's seed; default derived from the
run's seed and the rule's position, so a run repeats exactly).  An event of a message rule is
one reply (extra-reply: one request without a reply; hang-up and delay: one request); of a ring
rule, one turn of the queue that published used buffers (irq-spurious, wrap-flip: any turn of
a started, enabled ring).

Ring rules rewrite entries after the device published them: a front-end polling its used ring
may see the true entry first (QEMU and pyvirtio's drivers wait for the interrupt, which comes
after).  Every firing is recorded (:class:`Fired`), and so is what the front-end did — its
connections, the requests after the first firing, who closed the connection
(:class:`Connection`); :mod:`.hostile_runner` turns that into an outcome.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ...errors import UsageError
from ..fdio import close_fds
from ..backend.connection import Reply
from ..errors import ConnectionFatal
from ..protocol import HeaderFlag, FrontendReq, request_name
from ..backend.server import Session, VhostUserServer
from ..wire import (HEADER, HEADER_SIZE, ConfigSpace, Framer, Inflight, U64, VringState,
                   encode_reply)

R = FrontendReq


class HostileRuleError(UsageError):
    """A hostile rule that cannot be read: names the part that is wrong and what is valid."""


# --- the rule table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    ring: bool  # a ring rule (else a message rule)
    keys: tuple[str, ...] = ()  # keys besides the common ones
    requests: tuple[int, ...] = ()  # the only requests it acts on (empty: any)


_U64_REPLIES = (R.GET_FEATURES, R.GET_PROTOCOL_FEATURES, R.GET_QUEUE_NUM, R.GET_MAX_MEM_SLOTS,
                R.GET_STATUS)
KINDS = {k.name: k for k in (
    Kind("short", False, ("bytes",)),
    Kind("long", False, ("bytes",)),
    Kind("wrong-code", False, ("value",)),
    Kind("no-reply-flag", False),
    Kind("extra-reply", False),
    Kind("no-reply", False),
    Kind("hang-up", False),
    Kind("delay", False, ("ms",)),
    Kind("features", False, ("value",), (R.GET_FEATURES,)),
    Kind("protocol-features", False, ("value",), (R.GET_PROTOCOL_FEATURES,)),
    Kind("queue-num", False, ("value",), (R.GET_QUEUE_NUM,)),
    Kind("mem-slots", False, ("value",), (R.GET_MAX_MEM_SLOTS,)),
    Kind("config", False, ("at", "bytes", "value"), (R.GET_CONFIG,)),
    Kind("vring-base", False, ("value", "index"), (R.GET_VRING_BASE,)),
    Kind("inflight-size", False, ("value",), (R.GET_INFLIGHT_FD,)),
    Kind("inflight-fd", False, ("fd",), (R.GET_INFLIGHT_FD,)),
    Kind("used-id", True, ("value",)),
    Kind("used-not-head", True),
    Kind("used-len", True, ("value",)),
    Kind("used-idx-jump", True, ("by",)),
    Kind("irq-spurious", True, ("irqs",)),
    Kind("wrap-flip", True),
)}
COMMON_KEYS = ("after", "count", "prob", "seed")
FD_KINDS = ("pipe", "devnull", "eventfd", "socket")
#: Every protocol feature bit vhost-user.rst (QEMU 8.x) defines: 0..18.
DEFINED_PROTOCOL_FEATURES = (1 << 19) - 1


@dataclass
class HostileRule:
    """One parsed rule; its counters and generator live in the :class:`HostilePlan`."""

    kind: str
    req: int | None = None
    queue: int = 0
    after: int = 0
    count: int | None = None  # None: every matching event
    prob: float = 1.0
    seed: int | None = None
    value: int | None = None
    bytes: int | None = None
    at: int | None = None
    ms: float | None = None
    index: int | None = None
    by: int | None = None
    irqs: int | None = None
    fd: str | None = None

    @property
    def ring(self) -> bool:
        return KINDS[self.kind].ring

    def describe(self) -> str:
        """The canonical text (parses back to an equal rule)."""
        parts = []
        for key in ("req", "queue") + KINDS[self.kind].keys + COMMON_KEYS:
            value = getattr(self, key)
            if key == "req" and value is not None:
                parts.append(f"req={_request_name(value)}")
            elif key == "queue" and self.ring and value:
                parts.append(f"queue={value}")
            elif key in ("after",) and value:
                parts.append(f"after={value}")
            elif key == "prob" and value != 1.0:
                parts.append(f"rate={value:g}")
            elif key in ("value", "at", "bytes", "index", "by", "irqs", "count", "seed") and value is not None:
                parts.append(f"{key}={value:#x}" if key == "value" else f"{key}={value}")
            elif key == "ms" and value is not None:
                parts.append(f"ms={value:g}")
            elif key == "fd" and value is not None:
                parts.append(f"fd={value}")
        return self.kind + (":" + ",".join(parts) if parts else "")


def _request_name(request: int) -> str:
    return request_name(request, unknown="{}")  # a number parses back as req=N


def _int(kind: str, key: str, text: str) -> int:
    if key == "value" and text.lower() == "max":
        return (1 << 64) - 1
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if value < 0 or value >= 1 << 64:
        raise HostileRuleError(f"{kind}: {key}={text!r} is not a whole number 0..2^64-1")
    return value


def _request(kind: str, text: str) -> int:
    name = text.strip().upper().removeprefix("VHOST_USER_")
    if name in R.__members__:
        return int(FrontendReq[name])
    try:
        return int(text, 0)
    except ValueError:
        raise HostileRuleError(f"{kind}: req={text!r} is not a front-end request name or "
                               "number (e.g. GET_FEATURES)") from None


def parse_rule(text: str) -> HostileRule:
    """Read ``KIND[:key=value,...]``; :class:`HostileRuleError` says what is wrong."""
    kind, _, body = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise HostileRuleError(f"unknown hostile rule {kind!r}; valid: {', '.join(KINDS)}")
    spec = KINDS[kind]
    valid = spec.keys + COMMON_KEYS + (("queue",) if spec.ring else ("req",))
    rule = HostileRule(kind)
    seen: set[str] = set()
    for word in (w.strip() for w in body.split(",") if body.strip()):
        key, eq, value = word.partition("=")
        key = {"rate": "prob"}.get(key.strip().replace("-", "_"), key.strip().replace("-", "_"))
        if not eq or key not in valid:
            raise HostileRuleError(f"{kind}: {word!r} is not key=value with a key of "
                                   f"{', '.join(valid)}")
        if key in seen:
            raise HostileRuleError(f"{kind}: {key} given twice")
        seen.add(key)
        setattr(rule, key, _value(kind, key, value.strip()))
    if spec.requests and rule.req is not None and rule.req not in spec.requests:
        raise HostileRuleError(f"{kind} acts on {', '.join(_request_name(r) for r in spec.requests)}"
                               f" only, not req={_request_name(rule.req)}")
    if rule.count == 0:
        raise HostileRuleError(f"{kind}: count= must be at least 1 (leave it out: every time)")
    return rule


def _value(kind: str, key: str, text: str):
    if key == "req":
        return _request(kind, text)
    if key == "prob":
        try:
            p = float(text)
        except ValueError:
            p = -1.0
        if not 0 <= p <= 1:
            raise HostileRuleError(f"{kind}: rate={text!r} is not a probability (0..1)")
        return p
    if key == "ms":
        try:
            ms = float(text)
        except ValueError:
            ms = -1.0
        if not 0 <= ms <= 3_600_000:
            raise HostileRuleError(f"{kind}: ms={text!r} is not a delay in ms (0..3600000)")
        return ms
    if key == "fd":
        if text not in FD_KINDS:
            raise HostileRuleError(f"{kind}: fd={text!r} is not one of {', '.join(FD_KINDS)}")
        return text
    value = _int(kind, key, text)
    limits = {"queue": 0xFF, "bytes": 4096, "at": 4096, "index": 0xFFFFFFFF, "by": 0xFFFF,
              "irqs": 10_000}
    if key in limits and value > limits[key]:
        raise HostileRuleError(f"{kind}: {key}={text!r} is more than {limits[key]}")
    return value


def parse_rules(text: str) -> list[HostileRule]:
    """Rules joined with ``;`` (one experiment)."""
    rules = [parse_rule(part) for part in text.split(";") if part.strip()]
    if not rules:
        raise HostileRuleError("no rule given")
    return rules


# --- what happened -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fired:
    """One lie told: when (seconds since the plan started), which rule, what exactly."""

    at: float
    rule: str
    detail: str
    connection: int

    def to_json(self) -> dict:
        return {"at": round(self.at, 3), "rule": self.rule, "detail": self.detail,
                "connection": self.connection}


@dataclass
class Connection:
    """One front-end connection as the hostile back-end saw it."""

    number: int
    opened: float
    closed: float | None = None
    closed_by: str | None = None  # "front-end", "hang-up rule", "end of run"
    requests: int = 0
    chains: int = 0  # descriptor chains the device served
    after_fire: list[str] = field(default_factory=list)  # requests after the first lie (first 8)
    requests_after_fire: int = 0
    chains_after_fire: int = 0

    def to_json(self) -> dict:
        return {"number": self.number, "opened": round(self.opened, 3),
                "closed": None if self.closed is None else round(self.closed, 3),
                "closed_by": self.closed_by, "requests": self.requests, "chains": self.chains,
                "requests_after_fire": self.requests_after_fire,
                "chains_after_fire": self.chains_after_fire, "after_fire": self.after_fire}


class HostilePlan:
    """The rules of one experiment, their counters and generators, and the record (thread-safe:
    the control loop and the queue workers both ask it)."""

    def __init__(self, rules: list[HostileRule], seed: int = 1, *, clock: Callable[[], float] = time.monotonic):
        self.rules = list(rules)
        self.seed = seed
        self._clock = clock
        self.start = clock()
        self._lock = threading.Lock()
        self._rng = [random.Random(r.seed if r.seed is not None else f"{seed}:{i}:{r.kind}")
                     for i, r in enumerate(self.rules)]
        self._matched = [0] * len(self.rules)
        self._fired = [0] * len(self.rules)
        self.fired: list[Fired] = []
        self.connections: list[Connection] = []
        self.stopping = False  # the run is ending: a close now is ours

    def now(self) -> float:
        return self._clock() - self.start

    def _fires(self, i: int) -> bool:
        rule = self.rules[i]
        self._matched[i] += 1
        if self._matched[i] <= rule.after:
            return False
        if rule.count is not None and self._fired[i] >= rule.count:
            return False
        if rule.prob < 1.0 and self._rng[i].random() >= rule.prob:
            return False
        self._fired[i] += 1
        return True

    def select(self, test: Callable[[HostileRule], bool]) -> list[tuple[int, HostileRule]]:
        """The rules that match an event (``test``) and fire for it, counted."""
        with self._lock:
            return [(i, r) for i, r in enumerate(self.rules) if test(r) and self._fires(i)]

    def rng(self, i: int) -> random.Random:
        return self._rng[i]

    def record(self, rule: HostileRule, detail: str, conn: Connection | None) -> None:
        with self._lock:
            self.fired.append(Fired(self.now(), rule.describe(), detail, conn.number if conn else 0))

    def open_connection(self) -> Connection:
        with self._lock:
            conn = Connection(len(self.connections) + 1, self.now())
            self.connections.append(conn)
            return conn

    def seen(self, conn: Connection, names: list[str], chains: int = 0) -> None:
        """Requests (names) and chains a connection brought."""
        with self._lock:
            conn.requests += len(names)
            conn.chains += chains
            if self.fired:
                conn.requests_after_fire += len(names)
                conn.chains_after_fire += chains
                room = 8 - len(conn.after_fire)
                conn.after_fire += names[:max(0, room)]

    def close_connection(self, conn: Connection, by: str) -> None:
        with self._lock:
            if conn.closed is None:
                conn.closed, conn.closed_by = self.now(), ("end of run" if self.stopping else by)


# --- message rules -----------------------------------------------------------------------------


class HangUp(ConnectionFatal):
    """The hang-up rule fired: the session ends instead of replying."""


def _rewrite(rule: HostileRule, rng: random.Random, request: int, reply: Reply,
             opened: list[int]) -> tuple[Reply | None, str]:
    """The lie one rule tells in place of ``reply``; (new reply or None, what was done)."""
    req, flags, size = HEADER.unpack_from(reply.data)
    body = reply.data[HEADER_SIZE:]
    k, name = rule.kind, _request_name(request)

    def msg(payload: bytes, *, code: int = req, fl: int = flags, fds=reply.fds) -> Reply:
        return Reply(HEADER.pack(code, fl, len(payload)) + payload, tuple(fds))

    if k == "short":
        cut = min(rule.bytes or 1, len(body))
        return msg(body[:len(body) - cut]), f"{name} reply cut to {len(body) - cut} bytes"
    if k == "long":
        extra = rule.bytes if rule.bytes is not None else 8
        return msg(body + bytes(extra)), f"{name} reply grown to {len(body) + extra} bytes"
    if k == "wrong-code":
        code = rule.value if rule.value is not None else (
            R.GET_PROTOCOL_FEATURES if req == R.GET_FEATURES else R.GET_FEATURES)
        return msg(body, code=int(code) & 0xFFFFFFFF), f"{name} reply sent as {_request_name(code)}"
    if k == "no-reply-flag":
        return msg(body, fl=flags & ~HeaderFlag.REPLY), f"{name} reply without the REPLY flag"
    if k == "no-reply":
        close_fds(reply.fds)
        return None, f"{name} not answered"
    if k in ("features", "protocol-features", "queue-num", "mem-slots"):
        old = U64.unpack(body).value if len(body) == 8 else 0
        defaults = {"features": (1 << 64) - 1, "protocol-features": ~DEFINED_PROTOCOL_FEATURES,
                    "queue-num": 0, "mem-slots": 0}
        value = rule.value if rule.value is not None else defaults[k]
        new = (old | value) & ((1 << 64) - 1) if k == "protocol-features" else value
        return msg(U64(new).pack()), f"{name} answered {new:#x} (truly {old:#x})"
    if k == "config":
        if len(body) < ConfigSpace.HEADER_SIZE:
            return reply, f"{name}: the error reply left alone"
        data = bytearray(body)
        if rule.at is None:
            for i in range(ConfigSpace.HEADER_SIZE, len(data)):
                data[i] = rng.randrange(256)
            return msg(bytes(data)), f"{name}: {len(data) - ConfigSpace.HEADER_SIZE} bytes of garbage"
        width = rule.bytes or 1
        start = ConfigSpace.HEADER_SIZE + rule.at  # the reply's data starts at the read's offset
        offset = struct.unpack_from("=I", body)[0]
        start -= offset
        if start < ConfigSpace.HEADER_SIZE or start + width > len(data):
            return reply, f"{name}: [{rule.at}, +{width}) not in this read"
        value = (rule.value if rule.value is not None else 0) & ((1 << (8 * width)) - 1)
        data[start:start + width] = value.to_bytes(width, "little")
        return msg(bytes(data)), f"{name}: config [{rule.at}, +{width}) = {value:#x}"
    if k == "vring-base":
        state = VringState.unpack(body)
        index = rule.index if rule.index is not None else state.index
        num = rule.value if rule.value is not None else 0xFFFFFFFF
        new = VringState(index & 0xFFFFFFFF, num & 0xFFFFFFFF)
        return msg(new.pack()), f"{name} answered ring {new.index} base {new.num:#x} (truly {state.num:#x})"
    if k == "inflight-size":
        info = Inflight.unpack(body)
        size = rule.value if rule.value is not None else 1 << 62
        new_info = Inflight(size, info.mmap_offset, info.num_queues, info.queue_size)
        return msg(new_info.pack()), f"{name} answered mmap_size {size:#x} (truly {info.mmap_size:#x})"
    if k == "inflight-fd":
        fd = _make_fd(rule.fd or "pipe", opened)
        close_fds(reply.fds)
        return msg(body, fds=(fd,)), f"{name} passed a {rule.fd or 'pipe'} fd instead of the memfd"
    return reply, f"{name}: {k} does not apply"


def _make_fd(kind: str, opened: list[int]) -> int:
    """A fd of ``kind`` to pass; the fds of its making that are not passed go in ``opened``."""
    if kind == "devnull":
        return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    if kind == "eventfd":
        return os.eventfd(0, os.EFD_CLOEXEC)
    if kind == "socket":
        a, b = socket.socketpair()
        opened.append(b.detach())
        return a.detach()
    r, w = os.pipe()
    opened.append(w)
    return r


# --- ring rules --------------------------------------------------------------------------------


_F_AVAIL, _F_USED = 1 << 7, 1 << 15


@dataclass(frozen=True)
class _Before:
    next_used: int
    wrap: int
    chains: int


def _attack_ring(rule: HostileRule, session: "HostileSession", index: int, before: _Before) -> str | None:
    """Do what a ring rule says on ring ``index`` after a turn; what was done, or None when it
    does not apply to this ring."""
    queue = session.conn.vrings[index].queue
    mem = session.conn.memory
    packed = bool(getattr(queue, "packed", False))
    size = queue.size
    if packed:
        return _attack_packed(rule, queue, mem, before)
    used = queue.used_ring
    last = (queue.next_used - 1) & 0xFFFF
    slot = used + 4 + 8 * (last % size)
    if rule.kind == "used-id":
        value = (rule.value if rule.value is not None else size) & 0xFFFFFFFF
        mem.store32(slot, value)
        return f"ring {index}: used[{last % size}].id = {value}"
    if rule.kind == "used-len":
        value = (rule.value if rule.value is not None else 0xFFFFFFFF) & 0xFFFFFFFF
        mem.store32(slot + 4, value)
        return f"ring {index}: used[{last % size}].len = {value:#x}"
    if rule.kind == "used-not-head":
        nxt = queue.next_used
        mem.write(used + 4 + 8 * (nxt % size), mem.read(slot, 8))
        queue.next_used = (nxt + 1) & 0xFFFF
        mem.store16(used + 2, queue.next_used)
        return f"ring {index}: used[{last % size}] published again at used idx {nxt}"
    if rule.kind == "used-idx-jump":
        by = rule.by if rule.by is not None else size + 1
        new = (queue.next_used + by) & 0xFFFF
        mem.store16(used + 2, new)
        return f"ring {index}: used idx {queue.next_used} -> {new} (by {by}, ring of {size})"
    return None


def _attack_packed(rule: HostileRule, queue, mem, before: _Before) -> str | None:
    desc, pos = queue.desc_table, before.next_used  # the first descriptor used this turn
    if rule.kind == "used-id":
        value = (rule.value if rule.value is not None else queue.size) & 0xFFFF
        mem.store16(desc + 16 * pos + 12, value)
        return f"ring {queue.index} (packed): used descriptor {pos} id = {value}"
    if rule.kind == "used-len":
        value = (rule.value if rule.value is not None else 0xFFFFFFFF) & 0xFFFFFFFF
        mem.store32(desc + 16 * pos + 8, value)
        return f"ring {queue.index} (packed): used descriptor {pos} len = {value:#x}"
    if rule.kind == "used-not-head":
        nxt = queue.next_used
        mem.write(desc + 16 * nxt + 8, mem.read(desc + 16 * pos + 8, 6))  # len, id
        mem.store16(desc + 16 * nxt + 14, (_F_AVAIL | _F_USED) if queue.used_wrap else 0)
        return f"ring {queue.index} (packed): descriptor {pos} published again at {nxt}"
    return None


# --- the session and the server ----------------------------------------------------------------


class HostileSession(Session):
    """A :class:`~.server.Session` whose replies and used rings the plan rewrites."""

    def __init__(self, endpoint, sock: socket.socket, plan: HostilePlan):
        self.plan = plan
        self.record = plan.open_connection()
        self._requests = Framer()  # our own reading of the request stream (no fds)
        self._hung_up = False
        # Queues whose used buffers a device told of in the middle of a turn (held, below).
        self._held: set[int] = set()
        self._rewrites_rings = any(r.ring and r.kind != "irq-spurious" for r in plan.rules)
        super().__init__(endpoint, sock)

    # the control path

    def handle(self, data: bytes, fds: list[int]) -> list[Reply]:
        replies = super().handle(data, fds)
        self._requests.push(data)
        messages = []
        while (m := self._requests.next_message()) is not None:
            messages.append(m)
        if messages:
            self.plan.seen(self.record, [_request_name(m.request) for m in messages])
        out: list[Reply] = []
        pending = list(replies)
        for m in messages:
            reply = None
            if pending and HEADER.unpack_from(pending[0].data)[0] == m.request:
                reply = pending.pop(0)
            out += self._lie(m.request, reply)
        return out + pending

    def _lie(self, request: int, reply: Reply | None) -> list[Reply]:
        plan = self.plan
        for i, rule in plan.select(lambda r: r.kind in ("hang-up", "delay") and _wants(r, request)):
            if rule.kind == "delay":
                ms = rule.ms if rule.ms is not None else 1000.0
                plan.record(rule, f"{_request_name(request)} held {ms:g} ms", self.record)
                time.sleep(ms / 1000)
            else:
                plan.record(rule, f"connection closed at {_request_name(request)}", self.record)
                self._hung_up = True
                if reply is not None:
                    close_fds(reply.fds)
                raise HangUp(f"hostile rule {rule.describe()}")
        if reply is None:
            extra = plan.select(lambda r: r.kind == "extra-reply" and _wants(r, request))
            for i, rule in extra[:1]:
                plan.record(rule, f"{_request_name(request)} answered though it must not be",
                            self.record)
                return [Reply(encode_reply(request, U64(0).pack()))]
            return []
        chosen = plan.select(lambda r: not r.ring and r.kind not in ("hang-up", "delay", "extra-reply")
                             and _acts_on(r, request))
        replies: list[Reply] = [reply]
        for i, rule in chosen:
            if not replies:
                break
            opened: list[int] = []
            new, detail = _rewrite(rule, plan.rng(i), request, replies[0], opened)
            close_fds(opened)
            plan.record(rule, detail, self.record)
            replies = [new] if new is not None else []
        return replies

    # the rings (queue workers)

    def process(self, index: int) -> bool:
        ring = self.conn.vrings[index]
        if not ring.active:  # a turn after a control message, nothing to serve: no event
            return super().process(index)
        queue = ring.queue
        packed = bool(getattr(queue, "packed", False))
        before = _Before(queue.next_used, getattr(queue, "used_wrap", 0), queue.stats.chains)
        for i, rule in self.plan.select(lambda r: r.queue == index and (
                r.kind == "irq-spurious" or (r.kind == "wrap-flip" and packed))):
            self._before_turn(rule, index)
        notify = super().process(index)
        if index in self._held:
            self._held.discard(index)
            notify = True
        served = queue.stats.chains - before.chains
        if served:
            self.plan.seen(self.record, [], served)
        if not served or queue.next_used == before.next_used:
            return notify
        for i, rule in self.plan.select(lambda r: r.queue == index and r.ring
                                        and r.kind not in ("irq-spurious", "wrap-flip")):
            detail = _attack_ring(rule, self, index, before)
            self.plan.record(rule, detail or f"ring {index}: {rule.kind} does not apply to it",
                             self.record)
            notify = notify or detail is not None
        return notify

    def _notify_counted(self, index: int) -> None:
        # A ring rule rewrites the used ring after the turn, so the driver must not hear of the
        # turn's used buffers before that: it could take them, reuse their ids, and a lie about
        # an id (one published again) would then read as a true completion.  Held to the turn's
        # end, where the worker notifies.
        if self._rewrites_rings:
            self._held.add(index)
            return
        super()._notify_counted(index)

    def _before_turn(self, rule: HostileRule, index: int) -> None:
        queue = self.conn.vrings[index].queue
        if rule.kind == "wrap-flip":
            wrap = getattr(queue, "used_wrap") ^ 1  # a packed queue (only they fire this rule)
            setattr(queue, "used_wrap", wrap)
            self.plan.record(rule, f"ring {index}: used wrap counter now {wrap}", self.record)
            return
        irqs = rule.irqs if rule.irqs is not None else 1
        for n in range(irqs):
            self.notify(index)
            if n + 1 < irqs:
                time.sleep(0.001)
        self.plan.record(rule, f"ring {index}: {irqs} notification(s) before the turn", self.record)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.plan.close_connection(self.record, "hang-up rule" if self._hung_up else "front-end")


def _wants(rule: HostileRule, request: int) -> bool:
    return rule.req is None or rule.req == request


def _acts_on(rule: HostileRule, request: int) -> bool:
    kind = KINDS[rule.kind]
    if kind.requests and request not in kind.requests:
        return False
    return _wants(rule, request)


class HostileServer(VhostUserServer):
    """A :class:`~.server.VhostUserServer` whose every session follows ``plan``."""

    def __init__(self, plan: HostilePlan):
        super().__init__()
        self.plan = plan

    def new_session(self, ep, sock: socket.socket) -> Session:
        return HostileSession(ep, sock, self.plan)

    def shutdown(self) -> None:
        self.plan.stopping = True
        super().shutdown()


__all__ = ["HostileRule", "HostileRuleError", "HostilePlan", "HostileSession", "HostileServer",
           "Fired", "Connection", "KINDS", "parse_rule", "parse_rules"]
