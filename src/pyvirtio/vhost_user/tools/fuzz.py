"""A stateful fuzzer of any vhost-user back-end — its core, without I/O: cases, how they are
generated and mutated, how replies are judged, how a finding is minimised, and the replay file.

A **case** is a list of steps run on one fresh connection.  It starts with a valid set-up prefix
as QEMU sends it (features, protocol features, owner, a memory table of one shared memfd, ring 0
laid out in it with its call and kick eventfds), cut at a random point, followed by up to
:data:`MAX_FUZZ_STEPS` fuzzed steps: a well-formed request of any type (ring indices mostly
valid), the same with one field overwritten by an interesting value (0, 1, 2^k ± 1, all ones —
``index=0x100000`` is how an out-of-range ring reaches the back-end), a payload cut short,
lengthened or replaced by random bytes, header flags changed (NEED_REPLY, REPLY, version), fds
added, removed or of the wrong kind, a step of the prefix repeated out of order, or a
descriptor-chain attack: random descriptors written into ring 0 in the shared memory, the avail
index advanced, and the ring kicked.

The I/O shell (:mod:`pyvirtio.vhost_user.tools.fuzz_runner`) sends the steps, collects every reply,
sends a final GET_FEATURES probe, and reports an :class:`Outcome`; :func:`judge` turns it into a
:class:`Finding` or None:

* **crash** — the connection died and a new one is refused (or the target process we started
  exited on a signal);
* **hang** — the connection is open but the probe got no reply within the bound;
* **violation** — a reply where the protocol allows none (vhost-user.rst "Communication": only
  GET_* requests, requests with NEED_REPLY, and the few listed there are answered), a reply
  without the REPLY flag or version 1, or a reply of the wrong size (:data:`REPLY_PAYLOAD_SIZE`;
  u64 for a REPLY_ACK).

A connection the back-end closes after a malformed message is not a finding: refusing is fine.

Replay file (``--out=DIR``, one per finding; ``pyvirtio fuzz --replay FILE`` runs it): JSON,
``{"format": "pyvirtio-vhost-user-fuzz-case", "version": 1, "seed": N, "case": N,
"finding": {"kind": K, "detail": TEXT, "step": I, "confirmed": BOOL}, "steps": [STEP, ...]}`` where a STEP is
``{"op": "send", "request": N, "flags": N, "payload": HEX, "fds": [KIND, ...]}`` (KIND one of
:data:`FD_KINDS`: ``memory`` the guest memfd, ``kick``/``call`` ring 0's eventfds, ``eventfd``,
``memfd`` a 4 KiB memfd, ``devnull``, ``pipe``) or ``{"op": "ring", "writes": [[OFFSET, HEX],
...], "avail": N}`` (bytes written into guest memory at OFFSET, ring 0's avail index set to N,
then a kick).  Steps the generator made but the minimiser removed are not kept.  ``confirmed`` is false
when the case did not fail again on a fresh target (it is then saved as generated: a stray
write of an earlier case may have set it up, e.g. heap damage that did not crash at once).
"""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass, field
from typing import Callable

from ...errors import UsageError
from ...spec import vhost_user as spec
from ...spec.features import Feature
from ..protocol import (VERSION, VHOST_USER_F_PROTOCOL_FEATURES, FrontendReq, HeaderFlag,
                       ProtocolFeature)
from ..wire import (ConfigSpace, Inflight, MemoryRegion, MemoryTable, SingleMemoryRegion, U64,
                   VringAddr, VringState, encode)

CASE_FORMAT = "pyvirtio-vhost-user-fuzz-case"
CASE_VERSION = 1
FD_KINDS = ("memory", "kick", "call", "eventfd", "memfd", "devnull", "pipe")
MAX_FUZZ_STEPS = 8

#: Guest memory of every case: one memfd, guest-physical 0, at this "front-end address".
MEMORY_SIZE = 1 << 20
UADDR = 0x7F00_0000_0000
RING_SIZE = 64
DESC, AVAIL, USED = 0x0000, 0x1000, 0x2000  # ring 0's tables, offsets in the memory
DATA = 0x10000  # where chains' buffers point when they are sane

R = FrontendReq
PF = ProtocolFeature
#: Protocol features the prefix takes when offered (BACKEND_REQ needs a channel: never taken).
PROTOCOL_FEATURES_TAKEN = sum(1 << b for b in (PF.MQ, PF.REPLY_ACK, PF.CONFIG, PF.RESET_DEVICE,
                                               PF.CONFIGURE_MEM_SLOTS, PF.STATUS))
#: Virtio features never taken: the prefix lays out a split ring and keeps no dirty log.
FEATURES_REFUSED = (1 << Feature.RING_PACKED) | (1 << spec.VHOST_F_LOG_ALL)

#: Requests answered with a body whatever their flags ("Communication"), and the size of it
#: (None: variable — GET_CONFIG answers 12 + the size asked).
ALWAYS_ANSWERED = {R.GET_FEATURES: 8, R.GET_PROTOCOL_FEATURES: 8, R.GET_VRING_BASE: 8,
                   R.GET_QUEUE_NUM: 8, R.GET_CONFIG: None, R.GET_MAX_MEM_SLOTS: 8,
                   R.GET_STATUS: 8, R.GET_INFLIGHT_FD: spec.INFLIGHT_SIZE}
# The same tables keyed by plain request numbers (a fuzzed request need not be a FrontendReq).
_ANSWERED: dict[int, int | None] = {int(k): v for k, v in ALWAYS_ANSWERED.items()}
_PAYLOAD_SIZE: dict[int, int] = {int(k): v for k, v in spec.REQUEST_PAYLOAD_SIZE.items()}
#: Requests a back-end may answer without NEED_REPLY (a protocol feature or postcopy decides).
MAY_ANSWER = {R.SET_LOG_BASE, R.SET_MEM_TABLE, R.ADD_MEM_REG, R.IOTLB_MSG, R.POSTCOPY_ADVISE,
              R.POSTCOPY_END, R.SET_DEVICE_STATE_FD, R.CHECK_DEVICE_STATE}

INTERESTING_32 = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x3FF, 0x400, 0x7FFF, 0x8000, 0xFFFF,
                  0x10000, 0x100000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
INTERESTING_64 = INTERESTING_32 + (0x1_0000_0000, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000,
                                   0xFFFF_FFFF_FFFF_F000, 0xFFFF_FFFF_FFFF_FFFF, UADDR - 1,
                                   UADDR + MEMORY_SIZE, UADDR + MEMORY_SIZE - 1)


class CaseError(UsageError):
    """A replay file that is not one (names what is wrong)."""


@dataclass
class Step:
    op: str = "send"  # "send" or "ring"
    request: int = 0
    flags: int = VERSION
    payload: bytes = b""
    fds: tuple[str, ...] = ()
    writes: tuple[tuple[int, bytes], ...] = ()  # ring: (offset, bytes) into guest memory
    avail: int = 0  # ring: the avail index to publish
    mutated: bool = False  # generated away from the protocol (not stored)

    @property
    def data(self) -> bytes:
        return encode(self.request, self.payload, flags=self.flags)

    def name(self) -> str:
        if self.op == "ring":
            return f"ring attack (avail={self.avail}, {len(self.writes)} writes)"
        try:
            return R(self.request).name
        except ValueError:
            return f"request {self.request}"

    def to_json(self) -> dict:
        if self.op == "ring":
            return {"op": "ring", "writes": [[o, b.hex()] for o, b in self.writes], "avail": self.avail}
        return {"op": "send", "request": self.request, "flags": self.flags,
                "payload": self.payload.hex(), "fds": list(self.fds)}

    @classmethod
    def from_json(cls, obj: dict) -> "Step":
        try:
            if obj["op"] == "ring":
                return cls("ring", writes=tuple((int(o), bytes.fromhex(h)) for o, h in obj["writes"]),
                           avail=int(obj["avail"]) & 0xFFFF)
            fds = tuple(obj.get("fds", ()))
            if not set(fds) <= set(FD_KINDS) or obj["op"] != "send":
                raise ValueError(f"op {obj['op']!r} or fds {fds} unknown")
            return cls("send", int(obj["request"]) & 0xFFFFFFFF, int(obj["flags"]) & 0xFFFFFFFF,
                       bytes.fromhex(obj["payload"]), fds)
        except (KeyError, TypeError, ValueError) as exc:
            raise CaseError(f"a step is malformed ({exc}): {obj!r:.200}") from None


@dataclass
class Finding:
    kind: str  # crash, hang, violation
    detail: str
    step: int = -1  # the step it is attributed to (-1: the case as a whole)
    confirmed: bool = True  # it happened again on a fresh run (minimised then)

    def same_as(self, other: "Finding" | None) -> bool:
        """The minimiser keeps a smaller case when it fails the same way."""
        if other is None or other.kind != self.kind:
            return False
        return self.kind != "violation" or other.detail.split(":")[0] == self.detail.split(":")[0]


@dataclass
class Case:
    steps: list[Step]
    seed: int = 0
    number: int = 0
    finding: Finding | None = None

    def to_json(self) -> str:
        obj = {"format": CASE_FORMAT, "version": CASE_VERSION, "seed": self.seed, "case": self.number,
               "finding": None if self.finding is None else vars(self.finding),
               "steps": [s.to_json() for s in self.steps]}
        return json.dumps(obj, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Case":
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise CaseError(f"not JSON: {exc}") from None
        if not isinstance(obj, dict) or obj.get("format") != CASE_FORMAT:
            raise CaseError(f"not a {CASE_FORMAT} file")
        if not isinstance(obj.get("steps"), list):
            raise CaseError("no list of steps")
        f = obj.get("finding")
        finding = (Finding(f["kind"], f.get("detail", ""), f.get("step", -1), f.get("confirmed", True))
                   if isinstance(f, dict) else None)
        return cls([Step.from_json(s) for s in obj["steps"]], obj.get("seed", 0), obj.get("case", 0), finding)


# --- what the target offers --------------------------------------------------------------------


@dataclass
class TargetInfo:
    features: int = 1 << VHOST_USER_F_PROTOCOL_FEATURES
    protocol_features: int = 0
    queues: int = 1

    @property
    def taken_features(self) -> int:
        return self.features & ~FEATURES_REFUSED

    @property
    def taken_protocol(self) -> int:
        return self.protocol_features & PROTOCOL_FEATURES_TAKEN


# --- generation --------------------------------------------------------------------------------


def region() -> MemoryRegion:
    return MemoryRegion(0, MEMORY_SIZE, UADDR, 0)


def prefix(info: TargetInfo) -> list[Step]:
    """The valid set-up, as QEMU sends it: negotiation, memory, ring 0 started."""
    steps = [Step(request=R.GET_FEATURES)]
    if info.features & (1 << VHOST_USER_F_PROTOCOL_FEATURES):
        steps += [Step(request=R.GET_PROTOCOL_FEATURES),
                  Step(request=R.SET_PROTOCOL_FEATURES, payload=U64(info.taken_protocol).pack())]
    steps += [Step(request=R.SET_OWNER),
              Step(request=R.SET_FEATURES, payload=U64(info.taken_features).pack()),
              Step(request=R.SET_MEM_TABLE, payload=MemoryTable((region(),)).pack(), fds=("memory",))]
    steps += [Step(request=R.SET_VRING_NUM, payload=VringState(0, RING_SIZE).pack()),
              Step(request=R.SET_VRING_BASE, payload=VringState(0, 0).pack()),
              Step(request=R.SET_VRING_ADDR, payload=VringAddr(0, 0, UADDR + DESC, UADDR + USED,
                                                               UADDR + AVAIL, 0).pack()),
              Step(request=R.SET_VRING_CALL, payload=U64(0).pack(), fds=("call",)),
              Step(request=R.SET_VRING_KICK, payload=U64(0).pack(), fds=("kick",))]
    if info.taken_protocol:
        steps.append(Step(request=R.SET_VRING_ENABLE, payload=VringState(0, 1).pack()))
    return steps


def _ring(rng: random.Random, info: TargetInfo) -> int:
    return rng.randrange(max(info.queues, 1)) if rng.random() < 0.8 else rng.choice(INTERESTING_32)


def template(request: int, rng: random.Random, info: TargetInfo) -> Step:
    """A well-formed ``request`` (a random payload of the right size when it has no builder)."""
    i = _ring(rng, info)
    states: dict[int, int] = {R.SET_VRING_NUM: RING_SIZE, R.SET_VRING_ENABLE: rng.randrange(2)}
    state = states.get(request, 0)
    build: dict[int, Callable[[], tuple[bytes, tuple[str, ...]]]] = {
        R.SET_FEATURES: lambda: (U64(info.taken_features).pack(), ()),
        R.SET_PROTOCOL_FEATURES: lambda: (U64(info.taken_protocol).pack(), ()),
        R.SET_MEM_TABLE: lambda: (MemoryTable((region(),)).pack(), ("memory",)),
        R.ADD_MEM_REG: lambda: (SingleMemoryRegion.of(region()).pack(), ("memory",)),
        R.REM_MEM_REG: lambda: (SingleMemoryRegion.of(region()).pack(), ()),
        R.SET_VRING_ADDR: lambda: (VringAddr(i, 0, UADDR + DESC, UADDR + USED, UADDR + AVAIL, 0).pack(), ()),
        R.SET_VRING_KICK: lambda: (U64(i).pack(), ("kick" if i == 0 else "eventfd",)),
        R.SET_VRING_CALL: lambda: (U64(i).pack(), ("call" if i == 0 else "eventfd",)),
        R.SET_VRING_ERR: lambda: (U64(i).pack(), ("eventfd",)),
        R.GET_CONFIG: lambda: (ConfigSpace(0, (n := rng.choice((4, 8, 60, 256))), 0, bytes(n)).pack(), ()),
        R.SET_CONFIG: lambda: (ConfigSpace(rng.randrange(64), 4, 0, rng.randbytes(4)).pack(), ()),
        R.GET_INFLIGHT_FD: lambda: (Inflight(0, 0, info.queues, RING_SIZE).pack(), ()),
        R.SET_INFLIGHT_FD: lambda: (Inflight(4096, 0, info.queues, RING_SIZE).pack(), ("memfd",)),
        R.SET_LOG_BASE: lambda: (spec.LOG.pack(4096, 0), ("memfd",)),
        R.SET_LOG_FD: lambda: (b"", ("eventfd",)),
        R.SET_STATUS: lambda: (U64(rng.choice((0, 1, 3, 7, 15, 0x40, 0x80))).pack(), ()),
    }
    if request in build:
        payload, fds = build[request]()
    elif request in (R.SET_VRING_NUM, R.SET_VRING_BASE, R.GET_VRING_BASE, R.SET_VRING_ENABLE,
                     R.SET_VRING_ENDIAN, R.VRING_KICK):
        payload, fds = VringState(i, state).pack(), ()
    else:
        payload, fds = rng.randbytes(_PAYLOAD_SIZE.get(request, 0)), ()
    return Step(request=int(request), payload=payload, fds=fds)


def _mutate_field(step: Step, rng: random.Random) -> None:
    p = bytearray(step.payload)
    if len(p) >= 8 and rng.random() < 0.5:
        off = rng.randrange(0, len(p) - 7, 4)
        struct.pack_into("=Q", p, off, rng.choice(INTERESTING_64))
    elif len(p) >= 4:
        off = rng.randrange(0, len(p) - 3, 4)
        struct.pack_into("=I", p, off, rng.choice(INTERESTING_32))
    else:
        p += rng.randbytes(rng.choice((1, 4, 8)))
    step.payload = bytes(p)


def _mutate_size(step: Step, rng: random.Random) -> None:
    choice = rng.randrange(4)
    if choice == 0 and step.payload:
        step.payload = step.payload[:rng.randrange(len(step.payload))]
    elif choice == 1:
        step.payload += rng.randbytes(rng.choice((1, 4, 8, 32, 300)))
    elif choice == 2:
        step.payload = rng.randbytes(rng.choice((0, 1, 8, 12, 40, 268, 4096)))
    else:
        step.payload = bytes(len(step.payload))


def _mutate_flags(step: Step, rng: random.Random) -> None:
    step.flags = rng.choice((0, 2, 3, VERSION | HeaderFlag.REPLY, VERSION | 0x10,
                             VERSION | 0x8000_0000, 0xFFFF_FFFF))


def _mutate_fds(step: Step, rng: random.Random) -> None:
    if step.fds and rng.random() < 0.4:
        step.fds = ()
    else:
        step.fds = tuple(rng.choice(FD_KINDS) for _ in range(rng.choice((1, 1, 2, 4, 9))))


MUTATORS = (_mutate_field, _mutate_field, _mutate_field, _mutate_size, _mutate_flags, _mutate_fds)


def ring_attack(rng: random.Random) -> Step:
    """Random descriptors at ring 0's table (addresses in and around guest memory, lengths,
    flags, next links), a random avail ring, the avail index moved on, and a kick."""
    writes = []
    for i in range(rng.randrange(1, 6)):
        addr = rng.choice((DATA, DATA + 0x1000 * i, MEMORY_SIZE - 8, MEMORY_SIZE, 1 << 40,
                           0xFFFF_FFFF_FFFF_FFF0, rng.getrandbits(64)))
        length = rng.choice((0, 1, 16, 512, 4096, 0x10000, 0xFFFF_FFFF))
        flags = rng.choice((0, 1, 2, 3, 4, 5, 7, 0xFFFF))
        writes.append((DESC + 16 * rng.randrange(RING_SIZE), struct.pack("=QIHH", addr, length, flags,
                                                                        rng.randrange(RING_SIZE + 4))))
    for slot in range(rng.randrange(1, 5)):
        writes.append((AVAIL + 4 + 2 * slot, struct.pack("=H", rng.choice((0, 1, slot, RING_SIZE, 0xFFFF)))))
    avail = rng.choice((1, 2, 4, RING_SIZE, RING_SIZE + 1, 0x8000, 0xFFFF))
    return Step("ring", writes=tuple(writes), avail=avail, mutated=True)


def generate(rng: random.Random, info: TargetInfo) -> list[Step]:
    """One case: a cut of the valid prefix, then fuzzed steps."""
    base = prefix(info)
    steps = base[:rng.randrange(len(base) + 1)] if rng.random() < 0.5 else list(base)
    requests = list(R)
    for _ in range(rng.randrange(1, MAX_FUZZ_STEPS + 1)):
        roll = rng.random()
        if roll < 0.1 and steps[:len(base)] == base:
            steps.append(ring_attack(rng))
            continue
        if roll < 0.2:
            s = rng.choice(base)
            step = Step(request=s.request, payload=s.payload, fds=s.fds)
        else:
            step = template(rng.choice(requests) if rng.random() < 0.97 else rng.randrange(45, 1 << 16),
                            rng, info)
        if rng.random() < 0.7:
            for mutate in rng.sample(MUTATORS, rng.choice((1, 1, 2))):
                mutate(step, rng)
            step.mutated = True
        steps.append(step)
    return steps


# --- judging -----------------------------------------------------------------------------------


@dataclass
class Reply:
    request: int
    flags: int
    size: int


@dataclass
class Outcome:
    """What the shell saw when it ran a case."""

    replies: list[Reply] = field(default_factory=list)
    sent: int = 0  # steps sent before the connection broke
    closed: bool = False  # the back-end closed the connection (or it broke)
    probe_answered: bool = False
    reconnect_refused: str = ""  # why a new connection failed, if it did
    bad_framing: str = ""  # a reply stream that cannot be framed
    exit_status: int | None = None  # the target process we started, if it exited


def allowed_reply_size(step: Step) -> int | None | str:
    """The size a reply to ``step`` must have; None any size; "none" when no reply is allowed."""
    if step.op != "send":
        return "none"
    if step.request in ALWAYS_ANSWERED:
        if step.request == R.GET_CONFIG and len(step.payload) >= 12 and not step.mutated:
            return 12 + struct.unpack_from("=I", step.payload, 4)[0]
        return _ANSWERED[step.request]
    if step.flags & HeaderFlag.NEED_REPLY:
        return 8
    return None if step.request in MAY_ANSWER else "none"


def judge(steps: list[Step], out: Outcome) -> Finding | None:
    """The finding a run shows, if any (crash first, then hang, then the first violation)."""
    if out.exit_status is not None and out.exit_status < 0:
        return Finding("crash", f"the target died on signal {-out.exit_status}", out.sent - 1)
    if out.reconnect_refused:
        return Finding("crash", f"the connection died and a new one was refused: {out.reconnect_refused}",
                       out.sent - 1)
    if out.bad_framing:
        return Finding("violation", f"reply framing: {out.bad_framing}", out.sent - 1)
    if not out.closed and not out.probe_answered:
        return Finding("hang", "the connection is open but GET_FEATURES got no reply", out.sent - 1)
    pending = list(enumerate(steps[:out.sent]))
    for reply in out.replies:
        if reply.flags & spec.VERSION_MASK != VERSION or not reply.flags & HeaderFlag.REPLY:
            return Finding("violation", f"reply flags: {reply.flags:#x} on a reply to request "
                           f"{reply.request}")
        match = next(((n, i, s) for n, (i, s) in enumerate(pending) if s.op == "send"
                      and s.request == reply.request and allowed_reply_size(s) != "none"), None)
        if match is None:
            if reply.request == R.GET_FEATURES:
                continue  # the probe's
            return Finding("violation", f"reply where none is allowed: request {reply.request} "
                           f"({_name(reply.request)}) answered unasked")
        n, i, s = match
        del pending[:n + 1]
        want = allowed_reply_size(s)
        if s.request == R.GET_CONFIG and reply.size == 0:
            continue  # "zero length of payload to indicate an error" (vu.rst, GET_CONFIG)
        if isinstance(want, int) and reply.size != want and not s.mutated:
            return Finding("violation", f"wrong reply size: {_name(s.request)} answered with "
                           f"{reply.size} bytes, not {want}", i)
        if (isinstance(want, int) and s.mutated and s.request in ALWAYS_ANSWERED
                and reply.size not in (want, 0)):
            return Finding("violation", f"wrong reply size: {_name(s.request)} answered with "
                           f"{reply.size} bytes, not {want}", i)
    return None


def _name(request: int) -> str:
    try:
        return R(request).name
    except ValueError:
        return str(request)


# --- minimising --------------------------------------------------------------------------------


def minimise(steps: list[Step], fails: Callable[[list[Step]], bool], budget: int = 64) -> list[Step]:
    """A smaller list of steps for which ``fails`` still holds: the last step alone (one bad
    message is the common case), else the shortest failing prefix (binary search), then each
    step left out in turn from the end.  At most ``budget`` runs."""
    runs = 1
    if len(steps) > 1 and fails(steps[-1:]):
        return steps[-1:]
    lo, hi = 0, len(steps)  # steps[:hi] fails
    while lo + 1 < hi and runs < budget:
        mid = (lo + hi) // 2
        runs += 1
        if fails(steps[:mid]):
            hi = mid
        else:
            lo = mid
    best = steps[:hi]
    i = len(best) - 2  # the last step is the one that triggers
    while i >= 0 and runs < budget:
        candidate = best[:i] + best[i + 1:]
        runs += 1
        if fails(candidate):
            best = candidate
        i -= 1
    return best


__all__ = ["Case", "CaseError", "Finding", "Outcome", "Reply", "Step", "TargetInfo", "generate",
           "judge", "minimise", "prefix", "template", "ring_attack", "FD_KINDS", "MEMORY_SIZE",
           "UADDR", "RING_SIZE", "DESC", "AVAIL", "USED", "CASE_FORMAT"]
