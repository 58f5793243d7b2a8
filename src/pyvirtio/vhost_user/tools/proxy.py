"""A vhost-user proxy's core, without I/O: framing, one readable line per message, rules, and
the record file.

A proxy sits between a front-end (QEMU, DPDK, …) and a back-end.  Four byte streams pass it:

========  ==============================================================================
stream    what flows
========  ==============================================================================
fe>be     the main socket, front-end to back-end: requests (:class:`FrontendReq`)
be>fe     the main socket, back-end to front-end: replies
be>fe*    the back-end request channel (SET_BACKEND_REQ_FD), back-end to front-end:
          back-end requests (:class:`BackendReq`)
fe>be*    the back-end request channel, front-end to back-end: replies to those
========  ==============================================================================

:class:`ProxySession` is fed each stream's bytes and fds (``receive(stream, data, fds, now)``)
and answers :class:`Passage` objects: the whole message, its fds, what to do with it (pass,
drop, or hold until ``send_at``) and its log line.  Framing and payloads are
:mod:`pyvirtio.vhost_user.wire`'s; this module only renders them.  Decoding never raises: a
payload that does not fit its request is shown as ``malformed (...)`` and its hex bytes, and
passed on unchanged — the proxy judges nothing.

The back-end request channel is **proxied**, not passed through: a SET_BACKEND_REQ_FD's passage
says ``opens_backend_channel``; the I/O shell keeps the front-end's socket, hands the back-end
one end of a new socketpair instead, and feeds the two ``*`` streams between them.

Rules (``--drop``, ``--delay``) pick requests by name (a front-end request on ``fe>be`` or a
back-end request on ``be>fe*``; replies are never picked) and, optionally, by occurrence:
``SET_VRING_CALL:2`` is the second SET_VRING_CALL the proxy sees, counted over its lifetime.
A delayed message holds back every later message of its stream (order is kept).

Record file (``--record=FILE``): JSON Lines, UTF-8.  The first line is the header
``{"format": "pyvirtio-vhost-user-record", "version": 1, "listen": PATH, "connect": PATH,
"started": UNIX_TIME}``; every further line is one object, either a message::

    {"t": 0.0123, "conn": 1, "stream": "fe>be", "request": 5, "flags": 1, "size": 40,
     "fds": 1, "action": "pass", "payload": "01000000..."}

(``t`` seconds since the start, ``conn`` the front-end connection's number, ``action`` one of
``pass``, ``drop``, ``delay``; ``payload`` the hex of the payload bytes as they were received)
or an event ``{"t": …, "conn": 1, "event": "connect" | "close", "detail": TEXT}``.  Any JSON
reader can load it; ``pyvirtio proxy --decode FILE`` prints it as the proxy logs it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, fields, is_dataclass
from typing import Callable, Iterable, Iterator

from ...errors import UsageError
from ...spec import vhost_user as spec
from ...spec.features import Feature
from ..errors import FramingError, MessageRejected
from ..protocol import (VHOST_USER_F_PROTOCOL_FEATURES, VRING_IDX_MASK, VRING_NOFD_MASK,
                       BackendReq, FrontendReq, HeaderFlag, ProtocolFeature, request_name)
from ..wire import (ConfigSpace, Framer, Inflight, MemoryTable, Message, SingleMemoryRegion, U64,
                   VringAddr, VringState, encode)

RECORD_FORMAT = "pyvirtio-vhost-user-record"
RECORD_VERSION = 1

FE_BE, BE_FE, BE_FE_REQ, FE_BE_REQ = "fe>be", "be>fe", "be>fe*", "fe>be*"
STREAMS = (FE_BE, BE_FE, BE_FE_REQ, FE_BE_REQ)
#: Which request numbering each stream uses, and whose stream carries that numbering's requests.
_REQUESTS = {FE_BE: FrontendReq, BE_FE: FrontendReq, BE_FE_REQ: BackendReq, FE_BE_REQ: BackendReq}
_REQUEST_STREAM = {FE_BE: True, BE_FE: False, BE_FE_REQ: True, FE_BE_REQ: False}
#: Largest payload a ``--mutate`` rule may make (the protocol's own bound on payloads).
MAX_MUTATED_SIZE = 4096
#: Largest payload hex shown in a log line (the record keeps it all).
MAX_HEX_SHOWN = 32
#: Digits of a time kept in the record file.
RECORD_DIGITS = 6


def stamp(t: float) -> str:
    """A log line's time, from the value the record keeps: a line and its decoded record agree
    (formatting the unrounded time could round the other way, 0.00385 vs 0.003849...)."""
    return f"{round(t, RECORD_DIGITS):9.4f}"


# --- rendering ---------------------------------------------------------------------------------


def stream_request_name(stream: str, request: int) -> str:
    return request_name(request, _REQUESTS[stream], "UNKNOWN_{}")


def flag_names(flags: int) -> str:
    names = [f"v{flags & spec.VERSION_MASK}"]
    names += [n for bit, n in ((HeaderFlag.REPLY, "REPLY"), (HeaderFlag.NEED_REPLY, "NEED_REPLY"))
              if flags & bit]
    rest = flags & ~spec.FLAGS_DEFINED_MASK
    return "|".join(names + ([f"{rest:#x}"] if rest else []))


def _bit_names(value: int, names: Callable[[int], str | None]) -> str:
    bits = [names(b) or str(b) for b in range(64) if value >> b & 1]
    return f"{value:#x}[{','.join(bits)}]"


def _protocol_feature(bit: int) -> str | None:
    try:
        return ProtocolFeature(bit).name
    except ValueError:
        return None


def _virtio_feature(bit: int) -> str | None:
    if bit == VHOST_USER_F_PROTOCOL_FEATURES:
        return "PROTOCOL_FEATURES"
    try:
        return Feature(bit).name
    except ValueError:
        return None


def _fields(obj) -> str:
    parts = []
    for f in fields(obj) if is_dataclass(obj) else ():
        value = getattr(obj, f.name)
        if isinstance(value, bytes):
            parts.append(f"{f.name}={_hex(value)}")
        elif isinstance(value, int) and value > 0xFFFF:
            parts.append(f"{f.name}={value:#x}")
        elif f.name != "padding":
            parts.append(f"{f.name}={value}")
    return " ".join(parts)


def _hex(data: bytes) -> str:
    return data[:MAX_HEX_SHOWN].hex() + ("…" if len(data) > MAX_HEX_SHOWN else "")


def _u64(render: Callable[[int], str]) -> Callable[[bytes], str]:
    return lambda data: render(U64.unpack(data).value)


def _vring_fd(value: int) -> str:
    return f"index={value & VRING_IDX_MASK}" + (" nofd" if value & VRING_NOFD_MASK else "")


def _memory_table(data: bytes) -> str:
    table = MemoryTable.unpack(data)
    return f"nregions={len(table.regions)} " + " ".join(
        f"[gpa={r.guest_phys_addr:#x} size={r.memory_size:#x} uaddr={r.userspace_addr:#x} "
        f"offset={r.mmap_offset:#x}]" for r in table.regions)


def _struct(st: struct.Struct, names: Iterable[str]) -> Callable[[bytes], str]:
    def render(data: bytes) -> str:
        if len(data) != st.size:
            raise MessageRejected(f"{len(data)} bytes, expected {st.size}")
        return " ".join(f"{n}={v:#x}" if v > 0xFFFF else f"{n}={v}"
                        for n, v in zip(names, st.unpack(data)))
    return render


def _dataclass(cls) -> Callable[[bytes], str]:
    return lambda data: _fields(cls.unpack(data))


_FEATURES = _u64(lambda v: "features=" + _bit_names(v, _virtio_feature))
_PROTOCOL = _u64(lambda v: "protocol_features=" + _bit_names(v, _protocol_feature))
_STATE = _dataclass(VringState)
_VALUE = _u64(lambda v: f"value={v:#x}" if v > 0xFFFF else f"value={v}")

R, B = FrontendReq, BackendReq
#: Payload renderers of front-end requests (main channel, not replies).
FRONTEND_REQUEST_PAYLOADS: dict[int, Callable[[bytes], str]] = {
    R.SET_FEATURES: _FEATURES, R.SET_PROTOCOL_FEATURES: _PROTOCOL,
    R.SET_MEM_TABLE: _memory_table, R.SET_LOG_BASE: _struct(spec.LOG, spec.LOG_FIELDS),
    R.SET_VRING_NUM: _STATE, R.SET_VRING_BASE: _STATE, R.GET_VRING_BASE: _STATE,
    R.SET_VRING_ENABLE: _STATE, R.SET_VRING_ENDIAN: _STATE, R.VRING_KICK: _STATE,
    R.SET_VRING_ADDR: _dataclass(VringAddr),
    R.SET_VRING_KICK: _u64(_vring_fd), R.SET_VRING_CALL: _u64(_vring_fd),
    R.SET_VRING_ERR: _u64(_vring_fd),
    R.SEND_RARP: _VALUE, R.NET_SET_MTU: _VALUE, R.CLOSE_CRYPTO_SESSION: _VALUE,
    R.SET_STATUS: _u64(lambda v: f"status={v:#x}"),
    R.IOTLB_MSG: _struct(spec.IOTLB_MSG, spec.IOTLB_MSG_FIELDS),
    R.GET_CONFIG: _dataclass(ConfigSpace), R.SET_CONFIG: _dataclass(ConfigSpace),
    R.GET_INFLIGHT_FD: _dataclass(Inflight), R.SET_INFLIGHT_FD: _dataclass(Inflight),
    R.ADD_MEM_REG: _dataclass(SingleMemoryRegion), R.REM_MEM_REG: _dataclass(SingleMemoryRegion),
    R.SET_DEVICE_STATE_FD: _struct(spec.DEVICE_STATE_PARAMS, spec.DEVICE_STATE_PARAMS_FIELDS),
}
#: Payload renderers of the replies that have a body of their own (any other reply is a u64 ack).
FRONTEND_REPLY_PAYLOADS: dict[int, Callable[[bytes], str]] = {
    R.GET_FEATURES: _FEATURES, R.GET_PROTOCOL_FEATURES: _PROTOCOL, R.GET_VRING_BASE: _STATE,
    R.GET_QUEUE_NUM: _u64(lambda v: f"queues={v}"),
    R.GET_MAX_MEM_SLOTS: _u64(lambda v: f"slots={v}"),
    R.GET_STATUS: _u64(lambda v: f"status={v:#x}"),
    R.GET_CONFIG: _dataclass(ConfigSpace), R.GET_INFLIGHT_FD: _dataclass(Inflight),
}
BACKEND_REQUEST_PAYLOADS: dict[int, Callable[[bytes], str]] = {
    B.IOTLB_MSG: _struct(spec.IOTLB_MSG, spec.IOTLB_MSG_FIELDS),
    B.VRING_HOST_NOTIFIER_MSG: _struct(spec.VRING_AREA, spec.VRING_AREA_FIELDS),
    B.VRING_CALL: _STATE, B.VRING_ERR: _STATE,
}

_ACK = _u64(lambda v: "ack" if v == 0 else f"nack={v:#x}")


def describe_payload(stream: str, request: int, flags: int, payload: bytes) -> str:
    """The payload's fields as ``name=value`` words; never raises."""
    is_reply = bool(flags & HeaderFlag.REPLY)
    if stream in (FE_BE, BE_FE):
        table = FRONTEND_REPLY_PAYLOADS if is_reply else FRONTEND_REQUEST_PAYLOADS
    else:
        table = {} if is_reply else BACKEND_REQUEST_PAYLOADS
    render = table.get(request) or (_ACK if is_reply and len(payload) == 8 else None)
    if not payload and render is None:
        return ""
    if render is None:
        return f"payload={_hex(payload)}"
    try:
        return render(payload)
    except (MessageRejected, struct.error, ValueError) as exc:
        return f"malformed ({exc}) payload={_hex(payload)}"


def describe(stream: str, request: int, flags: int, payload: bytes, nfds: int = 0) -> str:
    """One message as a readable line: stream, request name, flags, size, fds, payload fields."""
    text = (f"{stream:<6} {stream_request_name(stream, request)} flags={flag_names(flags)} "
            f"size={len(payload)}" + (f" fds={nfds}" if nfds else ""))
    body = describe_payload(stream, request, flags, payload)
    return f"{text} {body}" if body else text


# --- rules -------------------------------------------------------------------------------------


class RuleError(UsageError):
    """A ``--drop`` / ``--delay`` / ``--mutate`` rule that does not parse (names the rule and why)."""


#: ``--mutate`` fields by name: (byte offset in the payload, width) — the u64 of a u64 payload
#: (features, GET_QUEUE_NUM's answer, a REPLY_ACK status …), and a VringState's index and num.
MUTATE_FIELDS = {"u64": (0, 8), "index": (0, 4), "num": (4, 4)}


@dataclass
class Rule:
    """Drop, delay or mutate the requests named ``request`` (the ``nth`` one only, when given);
    a mutate rule with ``reply`` changes the replies to that request instead."""

    action: str  # "drop", "delay" or "mutate"
    request: str
    nth: int | None = None
    delay: float = 0.0  # seconds
    seen: int = 0
    reply: bool = False  # mutate: the reply to ``request``, not the request
    field: str = ""  # mutate: "flags", "size", a MUTATE_FIELDS name or "@OFFSET[/WIDTH]"
    value: int = 0

    def matches(self, name: str) -> bool:
        if name != self.request:
            return False
        self.seen += 1
        return self.nth is None or self.seen == self.nth

    def mutate(self, msg: Message) -> Message:
        """The message with this rule's change: the header's flags; the payload cut or padded
        with zeros to ``size`` bytes (the header says the new size: the stream stays framed);
        or ``value`` written little-endian at a payload offset (the payload grows if needed)."""
        if self.field == "flags":
            return Message(msg.request, self.value, msg.payload, msg.fds)
        if self.field == "size":
            payload = msg.payload[:self.value].ljust(self.value, b"\0")
            return Message(msg.request, msg.flags, payload, msg.fds)
        offset, width = _field_place(self.field)
        buf = bytearray(msg.payload.ljust(offset + width, b"\0"))
        buf[offset:offset + width] = (self.value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
        return Message(msg.request, msg.flags, bytes(buf), msg.fds)


def _field_place(name: str) -> tuple[int, int]:
    if name in MUTATE_FIELDS:
        return MUTATE_FIELDS[name]
    offset, _, width = name[1:].partition("/")
    return int(offset, 0), int(width or "1", 0)


_NAMES = {r.name for r in FrontendReq} | {r.name for r in BackendReq}


def parse_rule(action: str, text: str) -> Rule:
    """``REQUEST[:N]`` for drop, ``REQUEST:MS`` for delay (a name of FrontendReq or BackendReq,
    upper or lower case, with or without the ``VHOST_USER_`` prefix), and for mutate
    ``[reply:]REQUEST[:N]:FIELD=VALUE`` (FIELD ``flags``, ``size``, ``u64``, ``index``, ``num``
    or ``@OFFSET[/WIDTH]`` with WIDTH 1, 2, 4 or 8; VALUE an integer, 0x… allowed)."""
    if action == "mutate":
        return _parse_mutate(text)
    name, _, arg = text.partition(":")
    name = name.upper().removeprefix("VHOST_USER_")
    if name not in _NAMES:
        raise RuleError(f"{action} rule {text!r}: {name!r} is not a vhost-user request name")
    if action == "delay":
        try:
            ms = float(arg)
        except ValueError:
            ms = -1.0
        if not 0 <= ms <= 3_600_000:
            raise RuleError(f"delay rule {text!r}: give REQUEST:MS, MS from 0 to 3600000")
        return Rule("delay", name, delay=ms / 1000)
    if action != "drop":
        raise RuleError(f"unknown rule action {action!r}")
    if not arg:
        return Rule("drop", name)
    if not arg.isdigit() or int(arg) == 0:
        raise RuleError(f"drop rule {text!r}: N must be a whole number from 1")
    return Rule("drop", name, nth=int(arg))


def _parse_mutate(text: str) -> Rule:
    def bad(why: str) -> RuleError:
        return RuleError(f"mutate rule {text!r}: {why} (give [reply:]REQUEST[:N]:FIELD=VALUE, FIELD "
                         f"one of flags, size, {', '.join(MUTATE_FIELDS)}, @OFFSET[/WIDTH])")
    head, eq, value_text = text.rpartition("=")
    if not eq:
        raise bad("no FIELD=VALUE")
    parts = head.split(":")
    reply = parts[0].lower() == "reply"
    if reply:
        parts = parts[1:]
    if len(parts) not in (2, 3):
        raise bad("expected REQUEST, an optional N and a FIELD")
    name = parts[0].upper().removeprefix("VHOST_USER_")
    if name not in _NAMES:
        raise bad(f"{name!r} is not a vhost-user request name")
    nth = None
    if len(parts) == 3:
        if not parts[1].isdigit() or int(parts[1]) == 0:
            raise bad("N must be a whole number from 1")
        nth = int(parts[1])
    field_name = parts[-1].lower()
    try:
        value = int(value_text, 0)
    except ValueError:
        raise bad(f"{value_text!r} is not an integer") from None
    if field_name in ("flags", "size"):
        limit = 1 << 32 if field_name == "flags" else MAX_MUTATED_SIZE + 1
        if not 0 <= value < limit:
            raise bad(f"{field_name} {value} is out of range")
    elif field_name in MUTATE_FIELDS:
        if not 0 <= value < 1 << (8 * MUTATE_FIELDS[field_name][1]):
            raise bad(f"{value} does not fit {field_name}")
    elif field_name.startswith("@"):
        try:
            offset, width = _field_place(field_name)
        except ValueError:
            raise bad(f"{field_name!r} is not @OFFSET[/WIDTH]") from None
        if width not in (1, 2, 4, 8) or not 0 <= offset <= MAX_MUTATED_SIZE - width:
            raise bad(f"{field_name!r}: WIDTH 1, 2, 4 or 8 inside {MAX_MUTATED_SIZE} bytes")
        if not 0 <= value < 1 << (8 * width):
            raise bad(f"{value} does not fit {width} bytes")
    else:
        raise bad(f"unknown FIELD {field_name!r}")
    return Rule("mutate", name, nth=nth, reply=reply, field=field_name, value=value)


# --- the session -------------------------------------------------------------------------------


@dataclass
class Passage:
    """One whole message through the proxy and what to do with it."""

    stream: str
    message: Message
    t: float  # seconds since the proxy started, when it arrived
    action: str = "pass"  # pass, drop, delay, mutate
    send_at: float = 0.0  # the caller's clock: hold the message (and its stream) until then
    conn: int = 0
    original: Message | None = None  # mutate: the message as it came (``message`` goes on)

    @property
    def data(self) -> bytes:
        m = self.message
        return encode(m.request, m.payload, flags=m.flags)

    @property
    def fds(self) -> list[int]:
        return self.message.fds

    @property
    def opens_backend_channel(self) -> bool:
        """A SET_BACKEND_REQ_FD with its socket: the shell proxies that channel too."""
        m = self.message
        return (self.stream == FE_BE and m.request == FrontendReq.SET_BACKEND_REQ_FD
                and not m.flags & HeaderFlag.REPLY and len(m.fds) == 1)

    def line(self) -> str:
        m = self.message
        text = f"{stamp(self.t)} #{self.conn} " + describe(self.stream, m.request, m.flags,
                                                        m.payload, len(m.fds))
        if self.action == "mutate" and self.original is not None:
            o = self.original
            return f"{text} [mutate; was flags {o.flags:#x}, payload {o.payload.hex()[:2 * MAX_HEX_SHOWN] or '-'}]"
        return text if self.action == "pass" else f"{text} [{self.action}]"

    def record(self) -> dict:
        m = self.message
        out = {"t": round(self.t, RECORD_DIGITS), "conn": self.conn, "stream": self.stream,
               "request": m.request, "flags": m.flags, "size": len(m.payload),
               "fds": len(m.fds), "action": self.action, "payload": m.payload.hex()}
        if self.original is not None:  # mutate: what came in, beside what went on
            out["original"] = {"flags": self.original.flags, "payload": self.original.payload.hex()}
        return out


class ProxySession:
    """The four streams of one front-end connection: bytes and fds in, passages out.

    ``start`` is the proxy's start on the caller's clock (record times count from it); ``rules``
    may be shared by every session of one proxy (occurrences count over its lifetime)."""

    def __init__(self, conn: int = 1, rules: list[Rule] | None = None, start: float = 0.0):
        self.conn = conn
        self.rules = rules if rules is not None else []
        self.start = start
        self._framers = {s: Framer() for s in STREAMS}
        self._held_until = dict.fromkeys(STREAMS, 0.0)

    def want(self, stream: str) -> int:
        """How many bytes to read next on ``stream`` so each header is read with its own fds."""
        return self._framers[stream].want()

    def receive(self, stream: str, data: bytes, fds: Iterable[int] = (), now: float = 0.0
                ) -> list[Passage]:
        """Feed one chunk of ``stream``; the whole messages it completes, in order.  Raises
        :class:`FramingError` when the stream cannot be framed (the shell ends the session;
        :meth:`take_all_fds` gives the fds still held)."""
        out = []
        for msg in self._framers[stream].feed(data, list(fds)):
            out.append(self._passage(stream, msg, now))
        return out

    def _passage(self, stream: str, msg: Message, now: float) -> Passage:
        p = Passage(stream, msg, now - self.start, conn=self.conn,
                    send_at=max(now, self._held_until[stream]))
        is_reply = not _REQUEST_STREAM[stream] or bool(msg.flags & HeaderFlag.REPLY)
        name = stream_request_name(stream, msg.request)  # a reply carries its request's code
        for rule in self.rules:
            if (rule.reply if rule.action == "mutate" else False) != is_reply:
                continue
            if rule.matches(name):
                p.action = rule.action
                if rule.action == "delay":
                    p.send_at = max(p.send_at, now + rule.delay)
                elif rule.action == "mutate":
                    p.original = msg
                    p.message = rule.mutate(msg)
                break
        if p.action != "drop":
            self._held_until[stream] = p.send_at
        return p

    def take_all_fds(self) -> list[int]:
        return [fd for f in self._framers.values() for fd in f.take_all_fds()]


# --- the record file ---------------------------------------------------------------------------


def record_header(listen: str, connect: str, started: float) -> dict:
    return {"format": RECORD_FORMAT, "version": RECORD_VERSION, "listen": listen,
            "connect": connect, "started": started}


def event_record(t: float, conn: int, event: str, detail: str = "") -> dict:
    return {"t": round(t, RECORD_DIGITS), "conn": conn, "event": event, "detail": detail}


def dumps(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":")) + "\n"


class RecordError(UsageError):
    """A record file that is not one (names the line and why)."""


def read_record(lines: Iterable[str]) -> Iterator[dict]:
    """The objects of a record file, the header first, each checked for the fields it needs."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise RecordError(f"line {n}: not JSON ({exc})") from None
        if n == 1 and (not isinstance(obj, dict) or obj.get("format") != RECORD_FORMAT):
            raise RecordError(f"line 1: not a {RECORD_FORMAT} header")
        if n > 1 and not (isinstance(obj, dict) and ("event" in obj or {
                "stream", "request", "flags", "payload"} <= obj.keys())):
            raise RecordError(f"line {n}: neither a message nor an event")
        if n > 1 and "event" not in obj and obj["stream"] not in STREAMS:
            raise RecordError(f"line {n}: stream {obj['stream']!r} is not one of {STREAMS}")
        yield obj


def decode_line(obj: dict) -> str:
    """A record object as the proxy logged it (the header as a comment line)."""
    if "format" in obj:
        return (f"# {obj['format']} v{obj.get('version')}: {obj.get('listen')} -> "
                f"{obj.get('connect')}, started {obj.get('started')}")
    if "event" in obj:
        return f"{stamp(obj['t'])} #{obj['conn']} -- {obj['event']} {obj.get('detail', '')}".rstrip()
    try:
        payload = bytes.fromhex(obj["payload"])
    except (TypeError, ValueError):
        raise RecordError(f"record at t={obj.get('t')}: payload is not hex") from None
    text = f"{stamp(obj['t'])} #{obj['conn']} " + describe(obj["stream"], obj["request"],
                                                        obj["flags"], payload, obj.get("fds", 0))
    action = obj.get("action", "pass")
    original = obj.get("original")
    if action == "mutate" and isinstance(original, dict):
        return (f"{text} [mutate; was flags {original.get('flags', 0):#x}, payload "
                f"{str(original.get('payload', ''))[:2 * MAX_HEX_SHOWN] or '-'}]")
    return text if action == "pass" else f"{text} [{action}]"


__all__ = ["ProxySession", "Passage", "Rule", "RuleError", "RecordError", "parse_rule",
           "describe", "describe_payload", "request_name", "read_record", "decode_line",
           "record_header", "event_record", "dumps", "STREAMS", "FE_BE", "BE_FE", "BE_FE_REQ",
           "FE_BE_REQ", "FramingError"]
