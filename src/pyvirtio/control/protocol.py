"""The control protocol, sans-I/O: bytes in, reply lines out (schema version 1).

Framing: one JSON object per line (UTF-8, ``\\n``-terminated), at most
:data:`~pyvirtio.limits.MAX_CONTROL_LINE` bytes.  Every request line gets exactly one reply line,
in order.  A request::

    {"v": 1, "id": 7, "cmd": "stats", "args": {}}

``v`` (optional, default 1) is the schema version; a request for another version is refused.
``id`` (optional: any JSON string, number or null) comes back in the reply.  ``args`` (optional,
default ``{}``) is an object of named arguments.  A reply::

    {"v": 1, "id": 7, "ok": true, "result": {...}}
    {"v": 1, "id": 7, "ok": false, "error": {"type": "unsupported", "message": "resize: not a block device"}}

Error types (:data:`ERROR_TYPES`): ``parse`` (not JSON, not UTF-8), ``request`` (not an object,
a field of the wrong type, another version), ``too-long`` (the line passed the bound; the rest up
to its newline is skipped), ``unknown-command``, ``bad-argument`` (missing, unknown or of the
wrong type), ``unsupported`` (the device has no such thing), ``failed`` (the device refused:
a bad size, a port name in use), ``timeout`` (the device's worker did not answer),
``internal`` (a bug of ours, logged in the daemon).  Nothing a client sends makes
:class:`ControlConnection` raise.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import UsageError, VirtioError
from ..limits import MAX_CONTROL_LINE

log = logging.getLogger("pyvirtio.control")

#: The schema version this module speaks.
VERSION = 1
ERROR_TYPES = ("parse", "request", "too-long", "unknown-command", "bad-argument", "unsupported",
               "failed", "timeout", "internal")


class ControlError(VirtioError):
    """A request the daemon refused: ``type`` is one of :data:`ERROR_TYPES`.  Command handlers
    raise it; a client gets one back from an error reply (:mod:`.client`)."""

    def __init__(self, type: str, message: str):
        self.type = type
        self.message = message
        super().__init__(message)


class Unsupported(ControlError, UsageError):
    """The device has no such thing ("resize: not a block device")."""

    def __init__(self, message: str):
        super().__init__("unsupported", message)


class BadArgument(ControlError, UsageError):
    def __init__(self, message: str):
        super().__init__("bad-argument", message)


# --- the argument schema ------------------------------------------------------------------------

_JSON_TYPES: dict[type, str] = {str: "a string", int: "an integer", bool: "true or false",
                                float: "a number", dict: "an object", list: "a list"}


@dataclass(frozen=True)
class Arg:
    """One named argument: its JSON type(s), whether it is required, its help."""

    name: str
    types: tuple[type, ...]
    required: bool = False
    help: str = ""

    def check(self, cmd: str, value: Any) -> Any:
        # bool is an int in Python, and an int is not a bool: compare exact types.
        if type(value) in self.types or (float in self.types and type(value) is int):
            return value
        want = " or ".join(_JSON_TYPES.get(t, t.__name__) for t in self.types)
        raise BadArgument(f"{cmd}: {self.name} must be {want}, not {_json_name(value)}")


def _json_name(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Command:
    """A command: its name, arguments, help line and handler ``run(args) -> result``."""

    name: str
    help: str
    run: Callable[[dict[str, Any]], Any]
    args: tuple[Arg, ...] = field(default=())

    def bind(self, args: Mapping[str, Any]) -> dict[str, Any]:
        known = {a.name: a for a in self.args}
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise BadArgument(f"{self.name}: unknown argument(s) {', '.join(unknown)}"
                              f" (it takes: {', '.join(known) or 'none'})")
        bound = {}
        for a in self.args:
            if a.name in args:
                bound[a.name] = a.check(self.name, args[a.name])
            elif a.required:
                raise BadArgument(f"{self.name}: {a.name} is required")
        return bound

    def describe(self) -> dict[str, Any]:
        return {"cmd": self.name, "help": self.help,
                "args": [{"name": a.name, "type": [_JSON_TYPES.get(t, t.__name__) for t in a.types],
                          "required": a.required, "help": a.help} for a in self.args]}


# --- requests and replies -----------------------------------------------------------------------


@dataclass
class Request:
    id: Any
    cmd: str
    args: dict[str, Any]


def parse_request(line: bytes) -> Request:
    """One request line (without its newline) → :class:`Request`; raises :class:`ControlError`
    (parse, request) with the request's id where it could be read (``err.request_id``)."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ControlError("parse", f"not a JSON line: {_short(exc)}") from None
    if not isinstance(obj, dict):
        raise ControlError("request", f"a request is a JSON object, not {_json_name(obj)}")
    rid = obj.get("id")
    if not (rid is None or type(rid) in (str, int, float)):
        raise ControlError("request", f"id must be a string, a number or null, not {_json_name(rid)}")
    try:
        return _fields(obj, rid)
    except ControlError as exc:
        exc.request_id = rid  # type: ignore[attr-defined]
        raise


def _fields(obj: dict, rid: Any) -> Request:
    unknown = sorted(set(obj) - {"v", "id", "cmd", "args"})
    if unknown:
        raise ControlError("request", f"unknown field(s) {', '.join(map(str, unknown))}")
    version = obj.get("v", VERSION)
    if type(version) is not int or version != VERSION:
        raise ControlError("request", f"schema version {version!r} is not spoken here (this daemon: {VERSION})")
    cmd = obj.get("cmd")
    if type(cmd) is not str or not cmd:
        raise ControlError("request", "cmd must be a non-empty string")
    args = obj.get("args", {})
    if type(args) is not dict:
        raise ControlError("request", f"args must be an object, not {_json_name(args)}")
    return Request(rid, cmd, args)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."


def encode_reply(rid: Any, result: Any) -> bytes:
    return _line({"v": VERSION, "id": rid, "ok": True, "result": result})


def encode_error(rid: Any, type: str, message: str) -> bytes:
    return _line({"v": VERSION, "id": rid, "ok": False, "error": {"type": type, "message": message}})


def encode_request(cmd: str, args: Mapping[str, Any] | None = None, rid: Any = None) -> bytes:
    """A request line (the client's side of the schema)."""
    return _line({"v": VERSION, "id": rid, "cmd": cmd, "args": dict(args or {})})


def _line(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


# --- dispatch -----------------------------------------------------------------------------------


class Dispatcher:
    """Runs one request line through a command table; always returns one reply line."""

    def __init__(self, commands: Mapping[str, Command]):
        self.commands = dict(commands)

    def handle_line(self, line: bytes) -> bytes:
        try:
            request = parse_request(line)
        except ControlError as exc:
            return encode_error(getattr(exc, "request_id", None), exc.type, exc.message)
        return self.handle(request)

    def handle(self, request: Request) -> bytes:
        command = self.commands.get(request.cmd)
        if command is None:
            return encode_error(request.id, "unknown-command",
                                f"unknown command {request.cmd[:64]!r} (try 'help')")
        try:
            result = command.run(command.bind(request.args))
            return encode_reply(request.id, result)
        except ControlError as exc:
            return encode_error(request.id, exc.type, exc.message)
        except UsageError as exc:  # the device refused (a bad size, a name in use ...)
            return encode_error(request.id, "failed", f"{command.name}: {exc}")
        except TimeoutError as exc:
            return encode_error(request.id, "timeout", f"{command.name}: {exc}")
        except Exception as exc:  # a bug of ours: logged, the daemon goes on
            log.exception("control: %s failed", command.name)
            return encode_error(request.id, "internal", f"{command.name}: internal error: {_short(exc)}")


class ControlConnection:
    """One client: bytes in (any split), reply lines out.  A line longer than ``max_line`` gets a
    ``too-long`` reply once and is skipped up to its newline."""

    def __init__(self, dispatcher: Dispatcher, *, max_line: int = MAX_CONTROL_LINE):
        self.dispatcher = dispatcher
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = False  # inside a line that was too long

    def receive(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                self._keep(data[start:], out)
                return out
            self._keep(data[start:nl], out)
            if self._skipping:
                self._skipping = False
            elif self._buf.strip():
                out.append(self.dispatcher.handle_line(bytes(self._buf)))
            self._buf.clear()
            start = nl + 1

    def _keep(self, part: bytes, out: list[bytes]) -> None:
        if self._skipping or not part:
            return
        if len(self._buf) + len(part) > self.max_line:
            self._buf.clear()
            self._skipping = True
            out.append(encode_error(None, "too-long", f"a request line is at most {self.max_line} bytes"))
            return
        self._buf += part

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held."""
        return len(self._buf)


__all__ = ["VERSION", "ERROR_TYPES", "Arg", "Command", "ControlConnection", "ControlError",
           "Dispatcher", "Request", "Unsupported", "BadArgument", "encode_error", "encode_reply",
           "encode_request", "parse_request"]
