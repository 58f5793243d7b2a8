"""Input events as text: names of keys and codes, and the script ``pyvirtio serve input
--events=FILE|-`` reads (sans-I/O: text in, events out; the caller injects and sleeps).

Names: a code is a number or its evdev name, with or without its prefix and in any case
(``KEY_A``, ``key_a``, ``a``; ``BTN_LEFT``, ``btn_left``; ``REL_X``; ``ABS_MT_SLOT``;
``LED_CAPSL``; ``SYN_REPORT``); a type is ``EV_KEY``, ``key`` or a number.

A script has one command a line (``#`` starts a comment)::

    key KEY_A               # tap: press, SYN, release, SYN
    press KEY_LEFTSHIFT     # press (and SYN)
    release KEY_LEFTSHIFT
    text Hello, world!      # a tap per character (shifted ones with KEY_LEFTSHIFT), US layout
    move 10 -5              # EV_REL REL_X 10, REL_Y -5, SYN (a mouse)
    abs 16384 8192          # EV_ABS ABS_X, ABS_Y, SYN (a tablet)
    button BTN_LEFT         # tap a button (as key)
    wheel -1                # EV_REL REL_WHEEL, SYN
    event EV_KEY KEY_B 1    # one raw event, sent with the next sync
    sync                    # EV_SYN SYN_REPORT: ends the report
    sleep 0.25              # seconds

:func:`parse_line` turns one line into a :class:`Step` (events to inject, or a pause) and raises
:class:`ScriptError` (a UsageError naming the line) for anything it cannot read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ..errors import UsageError
from ..spec import evdev
from ..spec.evdev import Abs, EventType, Led, Msc, Rel, Rep, Snd, Syn

Event = tuple[int, int, int]
_SYN: Event = (EventType.SYN, Syn.REPORT, 0)
#: Seconds one ``sleep`` may last at most.
MAX_SLEEP = 3600.0

_TYPE_CODES: dict[int, dict[str, int]] = {
    EventType.KEY: {**evdev.KEYS, **evdev.BUTTONS},
    EventType.REL: {f"REL_{m.name}": m.value for m in Rel},
    EventType.ABS: {f"ABS_{m.name}": m.value for m in Abs},
    EventType.MSC: {f"MSC_{m.name}": m.value for m in Msc},
    EventType.LED: {f"LED_{m.name}": m.value for m in Led},
    EventType.SND: {f"SND_{m.name}": m.value for m in Snd},
    EventType.REP: {f"REP_{m.name}": m.value for m in Rep},
    EventType.SYN: {f"SYN_{m.name}": m.value for m in Syn},
}
_PREFIX: dict[int, tuple[str, ...]] = {
    EventType.KEY: ("KEY_", "BTN_"), EventType.REL: ("REL_",), EventType.ABS: ("ABS_",),
    EventType.MSC: ("MSC_",), EventType.LED: ("LED_",), EventType.SND: ("SND_",),
    EventType.REP: ("REP_",), EventType.SYN: ("SYN_",)}

# US layout: character -> (key name, shifted)
_PLAIN = {**{c: f"KEY_{c.upper()}" for c in "abcdefghijklmnopqrstuvwxyz"},
          **{str(d): f"KEY_{d}" for d in range(10)},
          " ": "KEY_SPACE", "\n": "KEY_ENTER", "\t": "KEY_TAB", "-": "KEY_MINUS", "=": "KEY_EQUAL",
          "[": "KEY_LEFTBRACE", "]": "KEY_RIGHTBRACE", ";": "KEY_SEMICOLON",
          "'": "KEY_APOSTROPHE", "`": "KEY_GRAVE", "\\": "KEY_BACKSLASH", ",": "KEY_COMMA",
          ".": "KEY_DOT", "/": "KEY_SLASH"}
_SHIFTED = {**{c.upper(): f"KEY_{c.upper()}" for c in "abcdefghijklmnopqrstuvwxyz"},
            **dict(zip("!@#$%^&*()", (f"KEY_{d}" for d in "1234567890"))),
            "_": "KEY_MINUS", "+": "KEY_EQUAL", "{": "KEY_LEFTBRACE", "}": "KEY_RIGHTBRACE",
            ":": "KEY_SEMICOLON", '"': "KEY_APOSTROPHE", "~": "KEY_GRAVE", "|": "KEY_BACKSLASH",
            "<": "KEY_COMMA", ">": "KEY_DOT", "?": "KEY_SLASH"}


class ScriptError(UsageError):
    """A name, number or script line that cannot be read."""


def parse_type(text: str | int) -> int:
    """``EV_KEY``, ``key``, ``1`` -> 1."""
    if isinstance(text, int) or text.strip().lstrip("-").isdigit() or text.lower().startswith("0x"):
        return _number(text, 0, 0xFFFF, "event type")
    name = text.upper()
    name = name[3:] if name.startswith("EV_") else name
    try:
        return EventType[name].value
    except KeyError:
        raise ScriptError(f"event type {text!r}: a number or one of "
                          f"{', '.join('EV_' + m.name for m in EventType)}") from None


def parse_code(etype: int, text: str | int) -> int:
    """A code of type ``etype`` by number or name (``KEY_A``, ``a``, ``REL_X``, ``x`` ...)."""
    if isinstance(text, int) or text.strip().lstrip("-").isdigit() or text.lower().startswith("0x"):
        return _number(text, 0, 0xFFFF, "event code")
    names = _TYPE_CODES.get(etype, {})
    name = text.upper()
    if name in names:
        return names[name]
    for prefix in _PREFIX.get(etype, ()):
        if prefix + name in names:
            return names[prefix + name]
    raise ScriptError(f"code {text!r} is not a known name of event type {etype:#x}")


def parse_key(text: str | int) -> int:
    """A key or button: ``KEY_A``, ``a``, ``BTN_LEFT``, ``30``."""
    return parse_code(EventType.KEY, text)


def parse_event(etype: str | int, code: str | int, value: str | int) -> Event:
    t = parse_type(etype)
    return t, parse_code(t, code), _number(value, -(1 << 31), (1 << 32) - 1, "event value")


def key_events(code: int, action: str = "tap") -> list[Event]:
    values = {"press": (1,), "release": (0,), "tap": (1, 0)}.get(action)
    if values is None:
        raise ScriptError(f"key action {action!r}: press, release or tap")
    out: list[Event] = []
    for v in values:
        out += [(EventType.KEY, code, v), _SYN]
    return out


def text_events(text: str) -> list[Event]:
    """Taps that type ``text`` on a US layout (shifted characters with KEY_LEFTSHIFT)."""
    shift = evdev.KEYS["KEY_LEFTSHIFT"]
    out: list[Event] = []
    for ch in text:
        if ch in _PLAIN:
            out += key_events(evdev.KEYS[_PLAIN[ch]])
        elif ch in _SHIFTED:
            out += key_events(shift, "press") + key_events(evdev.KEYS[_SHIFTED[ch]]) \
                + key_events(shift, "release")
        else:
            raise ScriptError(f"character {ch!r} has no key on a US layout")
    return out


def _number(text: str | int, lo: int, hi: int, what: str) -> int:
    try:
        value = text if isinstance(text, int) else int(text, 0)
    except ValueError:
        raise ScriptError(f"{what} {text!r} is not a number") from None
    if isinstance(value, bool) or not lo <= value <= hi:
        raise ScriptError(f"{what} {text!r}: not {lo}..{hi}")
    return value


# --- scripts ------------------------------------------------------------------------------------


@dataclass
class Step:
    """What one script line does: ``events`` to inject now (whole reports), then ``sleep``."""

    events: list[Event] = field(default_factory=list)
    sleep: float = 0.0


@dataclass
class Script:
    """The state across lines: raw ``event`` lines wait for their ``sync``."""

    pending: list[Event] = field(default_factory=list)

    def parse_line(self, line: str, lineno: int = 0) -> Step | None:
        """The step for one line (None for a blank or comment line); ScriptError names it."""
        words = line.split("#", 1)[0].split() if not line.lstrip().startswith("text ") else line.split()
        if not words:
            return None
        try:
            return self._step(words, line)
        except ScriptError as exc:
            raise ScriptError(f"line {lineno}: {exc}" if lineno else str(exc)) from None

    def _step(self, words: list[str], line: str) -> Step:
        cmd, args = words[0].lower(), words[1:]
        if cmd == "event":
            _arity(cmd, args, 3)
            self.pending.append(parse_event(*args))
            return Step()
        if cmd == "sync":
            _arity(cmd, args, 0)
            events, self.pending = self.pending + [_SYN], []
            return Step(events)
        if cmd == "sleep":
            _arity(cmd, args, 1)
            try:
                seconds = float(args[0])
            except ValueError:
                raise ScriptError(f"sleep {args[0]!r}: not a number of seconds") from None
            if not 0 <= seconds <= MAX_SLEEP:
                raise ScriptError(f"sleep {seconds}: 0..{MAX_SLEEP:.0f} seconds")
            return Step(sleep=seconds)
        return Step(self._flush() + _command(cmd, args, line))

    def _flush(self) -> list[Event]:
        """Raw events not yet synced go out (with their SYN) before the next command's."""
        if not self.pending:
            return []
        events, self.pending = self.pending + [_SYN], []
        return events


def _command(cmd: str, args: list[str], line: str) -> list[Event]:
    if cmd in ("key", "press", "release", "button"):
        _arity(cmd, args, 1)
        return key_events(parse_key(args[0]), {"key": "tap", "button": "tap"}.get(cmd, cmd))
    if cmd == "text":
        text = line.split(None, 1)[1] if len(line.split(None, 1)) > 1 else ""
        return text_events(text.rstrip("\n"))
    if cmd == "move":
        _arity(cmd, args, 2)
        dx, dy = (_number(a, -(1 << 31), (1 << 31) - 1, "move") for a in args)
        return [(EventType.REL, Rel.X, dx), (EventType.REL, Rel.Y, dy), _SYN]
    if cmd == "abs":
        _arity(cmd, args, 2)
        x, y = (_number(a, -(1 << 31), (1 << 31) - 1, "abs") for a in args)
        return [(EventType.ABS, Abs.X, x), (EventType.ABS, Abs.Y, y), _SYN]
    if cmd == "wheel":
        _arity(cmd, args, 1)
        return [(EventType.REL, Rel.WHEEL, _number(args[0], -(1 << 31), (1 << 31) - 1, "wheel")), _SYN]
    raise ScriptError(f"unknown command {cmd!r} (key, press, release, button, text, move, abs, "
                      "wheel, event, sync, sleep)")


def _arity(cmd: str, args: list[str], n: int) -> None:
    if len(args) != n:
        raise ScriptError(f"{cmd} takes {n} argument{'s' if n != 1 else ''}, not {len(args)}")


def parse_script(lines: Iterable[str]) -> Iterator[Step]:
    """Every step of a whole script (ScriptError at the first bad line)."""
    script = Script()
    for n, line in enumerate(lines, 1):
        step = script.parse_line(line, n)
        if step is not None:
            yield step
    if script.pending:
        yield Step(script._flush())


__all__ = ["Script", "ScriptError", "Step", "key_events", "parse_code", "parse_event", "parse_key",
           "parse_script", "parse_type", "text_events"]
