"""The control commands, over one device (:class:`ControlTarget`).

=================  ========================================  ========================================
cmd                args                                      result
=================  ========================================  ========================================
``version``                                                  ``{"protocol": 1, "pyvirtio": "..."}``
``help``                                                     the commands, their args and help
``stats``                                                    the device's statistics
                                                             (:func:`pyvirtio.stats.device_statistics`)
                                                             plus ``name`` and ``connection``
``resize``         ``size``: bytes (int) or "1G", "512M"...  ``{"size": bytes, "sectors": n}`` (blk)
                   ``shrink``: true to allow a smaller size
``link``           ``state``: "up" or "down"                 ``{"link": "up"|"down"}`` (net)
``port.add``       ``name``; one of ``path`` (a UNIX socket  ``{"id", "name", "endpoint"}`` (console)
                   to listen on; with ``connect``: to
                   connect to) or ``pty``; ``id``, ``console``
``port.remove``    ``name`` (a port name or id)              ``{"id", "name"}``
``port.resize``    ``name``, ``cols``, ``rows``              ``{"id", "cols", "rows"}``
``fault.add``      ``rule``: "KIND[:key=value,...]"          the rule: ``{"id", "rule", "fired"}``
``fault.list``                                               the rules
``fault.remove``   ``id``                                    the rule removed
``fault.clear``                                              ``{"removed": n}``
``ring``           ``queue``: the queue's index; ``window``:  the ring as both sides see it
                   descriptors shown around the positions    (:meth:`~pyvirtio.virtq.SplitDeviceQueue.describe`,
                   (packed; default 8, at most 64)           ``PackedDeviceQueue.describe``)
``reset``                                                    ``{"status": [...]}``: the device is in
                                                             DEVICE_NEEDS_RESET
``key``            ``key``: a name (KEY_A, a, BTN_LEFT) or   ``{"queued", "pending", "dropped_events"}``
                   code; ``action``: press, release or tap   (input)
``input.send``     ``events``: [[type, code, value], ...]    the same (input); a SYN_REPORT ends
                   (names or numbers); ``sync``: false to    the events unless ``sync`` is false
                   send them without a closing SYN_REPORT
=================  ========================================  ========================================

Device operations run where the device's code runs: ``resize``, ``link`` and the port commands
through the device's own thread-safe host API (which hands the work to its engine worker),
``reset`` with every queue group held still (:meth:`ControlTarget.hold`).
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from typing import Any, Callable, ContextManager

from ..errors import UsageError
from ..spec.ids import DeviceType
from .protocol import VERSION, Arg, BadArgument, Command, ControlError, Unsupported

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(value: int | str) -> int:
    """Bytes from an int or from text such as ``1G``, ``512M``, ``1.5GiB``, ``4096`` (binary
    units).  Raises :class:`BadArgument`."""
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE.fullmatch(value)
        if m is None or (m.group(3) and not m.group(2) and m.group(3).lower() != "b"):
            raise BadArgument(f"resize: {value!r} is not a size (bytes, or e.g. 1G, 512M, 4096K)")
        number, unit = m.group(1), m.group(2).lower()
        if "." in number:
            size = int(float(number) * _UNITS[unit])
        else:
            size = int(number) * _UNITS[unit]
    if size <= 0:
        raise BadArgument(f"resize: size {value!r} must be above zero")
    return size


class ControlTarget:
    """One device as the control socket sees it: the device, and (over vhost-user) its endpoint —
    for the connection's state and for holding its queue groups still."""

    def __init__(self, device: Any, endpoint: Any = None, *, name: str | None = None,
                 port_endpoint: Callable[..., Any] | None = None):
        self.device = device
        self.endpoint = endpoint
        self.name = name or (getattr(endpoint, "name", None) or type(device).__name__)
        self._port_endpoint = port_endpoint

    @property
    def kind(self) -> str:
        try:
            return DeviceType(self.device.device_type).name.lower()
        except ValueError:
            return str(self.device.device_type)

    @property
    def session(self) -> Any:
        """The front-end connection the device serves now (vhost-user), or None: the one way the
        commands reach its rings, workers and guest memory."""
        return getattr(self.endpoint, "session", None)

    def guest_memory(self) -> Any:
        """The connected front-end's guest memory (where the rings are), or None."""
        session = self.session
        return session.conn.memory if session is not None else None

    def hold(self) -> ContextManager[None]:
        """Every queue group of the device held still (the engine's rule for the control path)."""
        session = self.session
        if session is None:
            return nullcontext()
        from ..engine import hold
        return hold(list(session.workers))

    def connection(self) -> dict[str, Any]:
        ep = self.endpoint
        if ep is None:
            return {"transport": "in-process"}
        session = self.session
        out: dict[str, Any] = {"transport": "vhost-user", "socket": ep.path or ep.connect_to,
                               "connected": session is not None, "connections": ep.connections}
        if session is not None:
            rings = session.conn.vrings
            out["rings"] = [{"index": r.index, "started": r.started, "enabled": r.enabled,
                             "chains": r.chains, **({"fault": r.fault} if r.fault else {})}
                            for r in rings]
        return out

    def open_port_endpoint(self, args: dict[str, Any]) -> Any:
        if self._port_endpoint is not None:
            return self._port_endpoint(args)
        from ..devices.console_endpoints import open_endpoint
        kind = "pty" if args.get("pty") else "connect" if args.get("connect") else "listen"
        return open_endpoint(kind, args.get("path"), f"port {args['name']}")


def build_commands(target: ControlTarget) -> dict[str, Command]:
    """The command table for ``target``."""
    cmds = [
        Command("version", "the protocol and pyvirtio versions", lambda a: _version()),
        Command("help", "the commands, their arguments and what they do", lambda a: None),
        Command("stats", "device state, features, per-queue counters, fault rules",
                lambda a: _stats(target)),
        Command("resize", "blk: set the disk's capacity; the guest is told (config change)",
                lambda a: _resize(target, a),
                (Arg("size", (int, str), True, "bytes, or a size such as 1G, 512M"),
                 Arg("shrink", (bool,), False, "true: allow a smaller size (data past it is lost)"))),
        Command("link", "net: take the link up or down", lambda a: _link(target, a),
                (Arg("state", (str,), True, "up or down"),)),
        Command("port.add", "console: add a named port bridged to a UNIX socket or a pty",
                lambda a: _port_add(target, a),
                (Arg("name", (str,), True, "the port's name (the guest's tag)"),
                 Arg("path", (str,), False, "a UNIX socket to listen on (to connect to: connect)"),
                 Arg("connect", (bool,), False, "connect to path instead of listening"),
                 Arg("pty", (bool,), False, "a new pseudo-terminal (its path is in the result)"),
                 Arg("id", (int,), False, "the port id (default: the lowest free)"),
                 Arg("console", (bool,), False, "a console port"))),
        Command("port.remove", "console: unplug a port", lambda a: _port_remove(target, a),
                (Arg("name", (str, int), True, "the port's name or id"),)),
        Command("port.resize", "console: a port's terminal size", lambda a: _port_resize(target, a),
                (Arg("name", (str, int), True, "the port's name or id (0: the console)"),
                 Arg("cols", (int,), True), Arg("rows", (int,), True))),
        Command("fault.add", "add a fault rule, KIND[:key=value,...]", lambda a: _fault_add(target, a),
                (Arg("rule", (str,), True, "e.g. ioerr:sectors=2048-4095"),)),
        Command("fault.list", "the fault rules and how often each fired", lambda a: _fault_list(target)),
        Command("fault.remove", "remove one fault rule", lambda a: _fault_remove(target, a),
                (Arg("id", (int,), True),)),
        Command("fault.clear", "remove every fault rule", lambda a: _fault_clear(target)),
        Command("ring", "one queue's ring as both sides see it: indices, wrap counters, buffers "
                "in flight, notification suppression, descriptors around the positions",
                lambda a: _ring(target, a),
                (Arg("queue", (int,), True, "the queue's index"),
                 Arg("window", (int,), False, "descriptors shown around the positions (1-64, default 8)"))),
        Command("reset", "put the device in DEVICE_NEEDS_RESET (the driver must reset it)",
                lambda a: _reset(target)),
        Command("key", "input: press, release or tap a key or button", lambda a: _key(target, a),
                (Arg("key", (str, int), True, "KEY_A, a, BTN_LEFT, or a code"),
                 Arg("action", (str,), False, "press, release or tap (the default)"))),
        Command("input.send", "input: send evdev events to the guest", lambda a: _input_send(target, a),
                (Arg("events", (list,), True, "[[type, code, value], ...]: EV_REL REL_X 5 or numbers"),
                 Arg("sync", (bool,), False, "false: no SYN_REPORT appended"))),
    ]
    from .scsi import scsi_commands
    cmds += scsi_commands(target, parse_size)
    table = {c.name: c for c in cmds}
    table["help"] = Command("help", table["help"].help,
                            lambda a: [c.describe() for c in table.values()])
    return table


def _version() -> dict[str, Any]:
    from .. import version
    return {"protocol": VERSION, "pyvirtio": version()}


def _stats(target: ControlTarget) -> dict[str, Any]:
    stats = target.device.statistics()
    stats["name"] = target.name
    stats["connection"] = target.connection()
    if target.kind == "net":
        stats["link"] = "up" if target.device.link_up else "down"
    return stats


def _ring(target: ControlTarget, args: dict[str, Any]) -> dict[str, Any]:
    queues = getattr(target.device, "queues", [])
    index, window = args["queue"], args.get("window", 8)
    if not 0 <= index < len(queues):
        raise BadArgument(f"ring: queue {index} does not exist (this device has {len(queues)})")
    if not 1 <= window <= 64:
        raise BadArgument(f"ring: window {window} is not in 1..64")
    with target.hold():  # the device's positions (and the memory table) hold still while read
        mem = target.guest_memory()
        if mem is None:
            raise Unsupported("ring: no front-end connected (no guest memory to read the ring from)")
        return queues[index].describe(mem, window)


def _need(target: ControlTarget, method: str, what: str, cmd: str) -> Callable[..., Any]:
    fn = getattr(target.device, method, None)
    if fn is None:
        raise Unsupported(f"{cmd}: not a {what} (this one is {target.kind})")
    return fn


def _resize(target: ControlTarget, args: dict[str, Any]) -> dict[str, Any]:
    if target.kind != "block":
        raise Unsupported(f"resize: not a block device (this one is {target.kind})")
    size = parse_size(args["size"])
    resize = _need(target, "resize", "block device that can be resized", "resize")
    if args.get("shrink"):
        resize(size, shrink=True)
    else:
        resize(size)
    capacity = getattr(target.device, "capacity", None)
    return {"size": size, "sectors": capacity if capacity is not None else size // 512}


def _link(target: ControlTarget, args: dict[str, Any]) -> dict[str, Any]:
    if target.kind != "net":
        raise Unsupported(f"link: not a network device (this one is {target.kind})")
    state = args["state"].lower()
    if state not in ("up", "down"):
        raise BadArgument(f"link: state must be up or down, not {args['state']!r}")
    target.device.set_link(state == "up")
    return {"link": "up" if target.device.link_up else "down"}


def _console(target: ControlTarget, cmd: str) -> Any:
    if target.kind != "console":
        raise Unsupported(f"{cmd}: not a console device (this one is {target.kind})")
    return target.device


def _port_add(target: ControlTarget, args: dict[str, Any]) -> dict[str, Any]:
    device = _console(target, "port add")
    sides = [k for k in ("path", "pty") if args.get(k)]
    if len(sides) != 1:
        raise BadArgument("port add: give exactly one of path (a UNIX socket) and pty")
    if args.get("connect") and "path" not in sides:
        raise BadArgument("port add: connect needs path")
    name = args["name"]
    if any(p.name == name for p in list(device.ports.values())):
        raise ControlError("failed", f"port add: a port named {name!r} exists")
    endpoint = target.open_port_endpoint(args)
    try:
        pid = device.add_port(endpoint, name, port_id=args.get("id"), console=bool(args.get("console")))
    except BaseException:
        endpoint.close()
        raise
    out = {"id": pid, "name": name, "endpoint": endpoint.describe()}
    if getattr(endpoint, "path", None) and args.get("pty"):
        out["pty"] = endpoint.path
    return out


def _find_port(device: Any, name: str | int, cmd: str) -> int:
    ports = dict(device.ports)
    if isinstance(name, int) or (isinstance(name, str) and name.isdigit() and name not in
                                 {p.name for p in ports.values()}):
        pid = int(name)
        if pid in ports or (cmd == "port resize" and pid == 0):
            return pid
    else:
        for pid, port in ports.items():
            if port.name == name:
                return pid
    raise ControlError("failed", f"{cmd}: no port {name!r}")


def _port_remove(target: ControlTarget, args: dict[str, Any]) -> dict[str, Any]:
    device = _console(target, "port remove")
    pid = _find_port(device, args["name"], "port remove")
    name = device.ports[pid].name if pid in device.ports else None
    device.remove_port(pid)
    return {"id": pid, "name": name}


def _port_resize(target: ControlTarget, args: dict[str, Any]) -> dict[str, Any]:
    device = _console(target, "port resize")
    pid = _find_port(device, args["name"], "port resize")
    cols, rows = args["cols"], args["rows"]
    if not (0 < cols <= 0xFFFF and 0 < rows <= 0xFFFF):
        raise BadArgument(f"port resize: {cols}x{rows} does not fit (1..65535 each)")
    device.resize(cols, rows, port_id=pid)
    return {"id": pid, "cols": cols, "rows": rows}


def _faults(target: ControlTarget, cmd: str) -> Any:
    faults = getattr(target.device, "faults", None)
    if faults is None:
        raise Unsupported(f"{cmd}: this {target.kind} device has no fault injection")
    return faults


def _rule(rule: Any) -> dict[str, Any]:
    from ..stats import fault_statistics
    return fault_statistics(rule)


def _fault_add(target: ControlTarget, args: dict[str, Any]) -> dict[str, Any]:
    faults = _faults(target, "fault add")
    from ..faults import parse_rule
    rule = parse_rule(args["rule"])  # FaultRuleError (a UsageError): a "failed" reply
    return _rule(faults.add(rule))


def _fault_list(target: ControlTarget) -> list[dict[str, Any]]:
    return [_rule(r) for r in _faults(target, "fault list").list()]


def _fault_remove(target: ControlTarget, args: dict[str, Any]) -> dict[str, Any]:
    return _rule(_faults(target, "fault remove").remove(args["id"]))


def _fault_clear(target: ControlTarget) -> dict[str, Any]:
    faults = _faults(target, "fault clear")
    count = len(faults.list())
    faults.clear()
    return {"removed": count}


def _input(target: ControlTarget, cmd: str) -> Any:
    if target.kind != "input":
        raise Unsupported(f"{cmd}: not an input device (this one is {target.kind})")
    return target.device


def _queued(device: Any, n: int) -> dict[str, Any]:
    return {"queued": n, "pending": device.pending_events,
            "dropped_events": device.stats["dropped_events"]}


def _key(target: ControlTarget, args: dict[str, Any]) -> dict[str, Any]:
    device = _input(target, "key")
    from ..devices.input_script import ScriptError, key_events, parse_key
    try:
        events = key_events(parse_key(args["key"]), args.get("action") or "tap")
    except ScriptError as exc:
        raise BadArgument(f"key: {exc}") from None
    return _queued(device, device.inject(events))


def _input_send(target: ControlTarget, args: dict[str, Any]) -> dict[str, Any]:
    device = _input(target, "input.send")
    from ..devices.input_script import ScriptError, parse_event
    events = []
    for item in args["events"]:
        if not isinstance(item, list) or len(item) != 3 or \
                not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in item):
            raise BadArgument(f"input.send: {item!r} is not [type, code, value]")
        try:
            events.append(parse_event(*item))
        except ScriptError as exc:
            raise BadArgument(f"input.send: {exc}") from None
    if not events:
        raise BadArgument("input.send: no events")
    try:
        return _queued(device, device.inject(events, sync=args.get("sync", True)))
    except UsageError as exc:  # a report longer than a ring
        raise BadArgument(f"input.send: {exc}") from None


class ResetRequested(UsageError):
    """Why the device entered DEVICE_NEEDS_RESET: the control socket asked."""


def _reset(target: ControlTarget) -> dict[str, Any]:
    device = target.device
    with target.hold():
        device.needs_reset(ResetRequested("reset requested on the control socket"))
    return {"status": device.statistics()["status"]}


__all__ = ["ControlTarget", "build_commands", "parse_size", "ResetRequested"]
