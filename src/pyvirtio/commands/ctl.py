"""``pyvirtio ctl PATH COMMAND ...``: the control socket's client (see :mod:`pyvirtio.control`).

    pyvirtio ctl PATH stats [--watch [--interval S]]
    pyvirtio ctl PATH resize SIZE [--shrink]          # blk: 1G, 512M, bytes
    pyvirtio ctl PATH link up|down                    # net
    pyvirtio ctl PATH port add NAME --path SOCK [--connect] | --pty  [--id N] [--console]
    pyvirtio ctl PATH port remove NAME
    pyvirtio ctl PATH port resize NAME COLS ROWS      # console
    pyvirtio ctl PATH fault add KIND [--key value ...]   # = the rule KIND:key=value,...
    pyvirtio ctl PATH fault list | fault remove ID | fault clear
    pyvirtio ctl PATH key KEY [press|release|tap]     # input: KEY_A, a, BTN_LEFT, 30
    pyvirtio ctl PATH event TYPE CODE VALUE [TYPE CODE VALUE ...] [--no-sync]   # input
    pyvirtio ctl PATH ring QUEUE [--window N]         # the ring as both sides see it
    pyvirtio ctl PATH reset | version | help

``--json`` prints the daemon's reply as it came (one JSON line); otherwise the result is shown
for reading.  An error reply, a missing socket or a refused connection: one line on stderr and
exit status 1 (2 for a command line that is wrong before anything is sent).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import CliError, CliUsageError
from .values import positive_seconds, socket_path

USAGE = """\
commands:
  stats [--watch [--interval S]]       device state, features, per-queue counters, fault rules
  resize SIZE [--shrink]               blk: new capacity (1G, 512M, 4096K, bytes); smaller
                                       only with --shrink (data past the new end is lost)
  link up|down                         net: take the link up or down
  port add NAME (--path SOCK [--connect] | --pty) [--id N] [--console]
  port remove NAME                     console: unplug a port
  port resize NAME COLS ROWS           console: a port's terminal size (0 or the console's name)
  fault add KIND [--key value ...]     add a fault rule (the same as serve --fault=KIND:key=value,...)
  fault list | fault remove ID | fault clear
  key KEY [press|release|tap]          input: a key or button (KEY_A, a, BTN_LEFT, 30)
  event TYPE CODE VALUE ... [--no-sync]  input: raw evdev events (EV_REL REL_X 5), then a
                                       SYN_REPORT unless --no-sync
  eject [T:L] [--force] | insert ISO [T:L]   scsi: a CD-ROM's disc (default: the first CD-ROM)
  scsi units | scsi attach KIND PATH[,OPTS] [T:L] | scsi detach T:L   scsi: units, hot-plug
  ring QUEUE [--window N]              one queue's ring as both sides see it: indices, wrap
                                       counters, in flight, notifications, descriptors
  reset                                put the device in DEVICE_NEEDS_RESET
  version | help
"""


def register(sub) -> None:
    p = sub.add_parser("ctl", help="control a running 'pyvirtio serve --control=PATH'",
                       description="Send one command to a daemon's control socket and show the reply.",
                       epilog=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="PATH", type=socket_path, help="the daemon's --control socket")
    p.add_argument("--json", action="store_true", help="print the reply as JSON, as it came")
    p.add_argument("--timeout", type=positive_seconds, default=30.0, metavar="S",
                   help="how long to wait for the reply (default 30 s)")
    p.add_argument("words", nargs=argparse.REMAINDER, metavar="COMMAND ...", help="see below")
    p.set_defaults(func=run)


# --- the command line → a request ---------------------------------------------------------------


def to_request(words: list[str]) -> tuple[str, dict[str, Any]]:
    """``ctl`` words → (cmd, args) of the control protocol; CliUsageError if they are wrong."""
    if not words:
        raise CliUsageError("say which command: stats, resize, link, port, fault, reset, version, help")
    head, rest = words[0], words[1:]
    if head in ("stats", "version", "help", "reset") and not rest:
        return head, {}
    if head == "resize" and len(rest) in (1, 2) and rest[1:] in ([], ["--shrink"]):
        args: dict = {"size": int(rest[0]) if rest[0].isdigit() else rest[0]}
        if rest[1:]:
            args["shrink"] = True  # refused without it: data past the new end is lost
        return "resize", args
    if head == "link" and len(rest) == 1 and rest[0] in ("up", "down"):
        return "link", {"state": rest[0]}
    if head == "port" and rest:
        return _port(rest[0], rest[1:])
    if head == "fault" and rest:
        return _fault(rest[0], rest[1:])
    if head == "key" and len(rest) in (1, 2) and rest[1:] in ([], ["press"], ["release"], ["tap"]):
        key: Any = int(rest[0]) if rest[0].isdigit() else rest[0]
        return "key", {"key": key, **({"action": rest[1]} if rest[1:] else {})}
    if head == "event" and rest:
        return _event(rest)
    if head == "ring" and rest:
        options = _options(rest[1:], valued={"window"})
        args = {"queue": _int(rest[0], "QUEUE")}
        if "window" in options:
            args["window"] = _int(options["window"], "--window")
        return "ring", args
    if head == "scsi" or head in ("eject", "insert"):  # pyvirtio.control.scsi
        from ..control.scsi import scsi_request
        return scsi_request(rest if head == "scsi" else words)
    raise CliUsageError(f"cannot read {' '.join(words)!r} as a command (see pyvirtio ctl --help)")


def _port(verb: str, rest: list[str]) -> tuple[str, dict[str, Any]]:
    if verb == "add" and rest:
        args: dict[str, Any] = {"name": rest[0]}
        options = _options(rest[1:], flags={"connect", "pty", "console"}, valued={"path", "id"})
        if "id" in options:
            args["id"] = _int(options.pop("id"), "--id")
        args.update(options)
        return "port.add", args
    if verb == "remove" and len(rest) == 1:
        return "port.remove", {"name": rest[0]}
    if verb == "resize" and len(rest) == 3:
        return "port.resize", {"name": rest[0], "cols": _int(rest[1], "COLS"), "rows": _int(rest[2], "ROWS")}
    raise CliUsageError(f"cannot read 'port {' '.join([verb, *rest])}' (port add NAME ..., "
                        "port remove NAME, port resize NAME COLS ROWS)")


def _fault(verb: str, rest: list[str]) -> tuple[str, dict[str, Any]]:
    if verb == "add" and rest:
        return "fault.add", {"rule": fault_rule_text(rest[0], rest[1:])}
    if verb in ("list", "clear") and not rest:
        return f"fault.{verb}", {}
    if verb == "remove" and len(rest) == 1:
        return "fault.remove", {"id": _int(rest[0], "ID")}
    raise CliUsageError(f"cannot read 'fault {' '.join([verb, *rest])}' (fault add KIND [--key value ...], "
                        "fault list, fault remove ID, fault clear)")


def _event(rest: list[str]) -> tuple[str, dict[str, Any]]:
    sync = "--no-sync" not in rest
    words = [w for w in rest if w != "--no-sync"]
    if not words or len(words) % 3:
        raise CliUsageError("event takes TYPE CODE VALUE, one or more times (e.g. event EV_REL "
                            "REL_X 5 EV_REL REL_Y -3)")
    events = [[_word(w) for w in words[i:i + 3]] for i in range(0, len(words), 3)]
    return "input.send", {"events": events, **({} if sync else {"sync": False})}


def _word(text: str) -> Any:
    """A number stays a number (negative too); a name goes as text for the daemon to read."""
    try:
        return int(text, 0)
    except ValueError:
        return text


def fault_rule_text(kind: str, words: list[str]) -> str:
    """``ioerr --sectors 2048-4095 --prob=0.5`` → ``ioerr:sectors=2048-4095,prob=0.5`` (the one
    rule syntax of ``serve --fault``; the daemon parses it)."""
    pairs = _options(words)
    if not pairs:
        return kind
    items = ",".join(f"{k}={v}" for k, v in pairs.items())
    return f"{kind},{items}" if ":" in kind else f"{kind}:{items}"


def _options(words: list[str], *, flags: frozenset[str] | set[str] = frozenset(),
             valued: set[str] | None = None) -> dict[str, Any]:
    """``--key value``, ``--key=value`` and (for ``flags``) ``--flag`` words; keys with dashes
    become underscores.  ``valued``: the only keys that take a value (None: any key)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--") or len(word) < 3:
            raise CliUsageError(f"{word!r}: expected --key value")
        key, eq, value = word[2:].partition("=")
        key = key.replace("-", "_")
        if key in flags:
            if eq:
                raise CliUsageError(f"--{key} takes no value")
            out[key] = True
            i += 1
            continue
        if valued is not None and key not in valued:
            raise CliUsageError(f"unknown option --{key}")
        if not eq:
            if i + 1 >= len(words):
                raise CliUsageError(f"--{key} needs a value")
            value = words[i + 1]
            i += 1
        out[key] = value
        i += 1
    return out


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CliUsageError(f"{what}: {text!r} is not a number") from None


# --- running ------------------------------------------------------------------------------------


def run(args) -> int:
    words = list(args.words)
    if words[:1] == ["stats"] and len(words) > 1:
        return _stats_watch(args, words[1:])
    cmd, cargs = to_request(words)
    from ..control.client import ControlClient, ControlUnavailable
    try:
        with ControlClient(args.path, timeout=args.timeout) as client:
            reply = client.request(cmd, cargs)
    except ControlUnavailable as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(reply))
    if not reply["ok"]:
        err = reply.get("error") or {}
        raise CliError(f"{err.get('type', 'failed')}: {err.get('message', '')}")
    if not args.json:
        show(cmd, reply.get("result"))
    return 0


def _stats_watch(args, rest: list[str]) -> int:
    options = _options(rest, flags={"watch"}, valued={"interval", "count"})
    if not options.pop("watch", False):
        raise CliUsageError("stats takes --watch [--interval S]")
    from . import top
    interval = positive_seconds(options.get("interval", "1"))
    count = _int(options["count"], "--count") if "count" in options else None
    return top.watch([args.path], interval=interval, count=count, timeout=args.timeout,
                     as_json=args.json)


def show(cmd: str, result: Any) -> None:
    """Print a result for reading."""
    out = sys.stdout
    if cmd == "stats":
        from .top import render_stats
        out.write(render_stats(result))
    elif cmd == "help":
        for c in result:
            names = " ".join(("" if a["required"] else "[") + a["name"] + ("" if a["required"] else "]")
                             for a in c["args"])
            print(f"{c['cmd']:<13} {names:<40} {c['help']}")
    elif cmd == "version":
        print(f"pyvirtio {result['pyvirtio']} (control protocol {result['protocol']})")
    elif cmd == "resize":
        print(f"capacity {result['size']} bytes ({result['sectors']} sectors)")
    elif cmd == "link":
        print(f"link {result['link']}")
    elif cmd == "port.add":
        print(f"port {result['id']} ({result['name']}) added: {result.get('pty') or result['endpoint']}")
    elif cmd in ("port.remove", "port.resize"):
        print(f"port {result['id']}" + (f" resized to {result['cols']}x{result['rows']}"
                                         if cmd == "port.resize" else " removed"))
    elif cmd in ("fault.add", "fault.remove"):
        print(f"{'added' if cmd == 'fault.add' else 'removed'} rule {result['id']}: {result['rule']}")
    elif cmd == "fault.list":
        for r in result:
            print(f"{r['id']:>3}  {r['rule']}  (fired {r['fired']})")
        if not result:
            print("no fault rules")
    elif cmd == "fault.clear":
        print(f"{result['removed']} fault rule(s) removed")
    elif cmd == "reset":
        print("device needs reset; status " + " ".join(result["status"]))
    elif cmd == "ring":
        out.write(render_ring(result))
    elif cmd in ("key", "input.send"):
        print(f"queued {result['queued']} event(s); {result['pending']} waiting for the guest, "
              f"{result['dropped_events']} dropped so far")
    else:
        print(json.dumps(result, indent=2))


def render_ring(r: dict[str, Any]) -> str:
    """``ctl ring`` for reading: the device's view, the driver's, then (packed) the descriptors."""
    head = (f"queue {r['index']}: {r['layout']} ring of {r['size']}"
            + ("" if r["ready"] else ", not ready") + (f", BROKEN: {r['fault']}" if r["broken"] else "")
            + (", EVENT_IDX" if r["event_idx"] else ""))
    lines = [head]
    if r["layout"] == "split":
        lines.append(f"  device: next_avail {r['next_avail']}, next_used {r['next_used']}, "
                     f"{r['in_flight']} in flight")
        if "driver" in r:
            d, v = r["driver"], r["device"]
            lines.append(f"  driver: avail_idx {d['avail_idx']} ({d['waiting']} not taken yet"
                         + (f": heads {' '.join(map(str, d['heads']))}" if d["heads"] else "") + ")"
                         + f"; interrupts {d['interrupts']}")
            lines.append(f"  ring:   used_idx {v['used_idx']}; kicks {v['kicks']}")
    else:
        ids = " ".join(map(str, r["in_flight_ids"])) + (" ..." if r["in_flight"] > len(r["in_flight_ids"]) else "")
        lines.append(f"  device: next_avail {r['next_avail']} w{r['avail_wrap']}, next_used "
                     f"{r['next_used']} w{r['used_wrap']}, {r['in_flight']} in flight"
                     + (f" (ids {ids})" if ids else ""))
        if "descriptors" in r:
            lines.append(f"  events: driver's {r['driver_event']}, device's {r['device_event']}; the "
                         f"descriptor at next_avail is {'' if r['next_avail_ready'] else 'not '}available")
            for d in r["descriptors"]:
                marks = [m for m, at in (("next_used", r["next_used"]), ("next_avail", r["next_avail"]))
                         if d["pos"] == at]
                lines.append(f"  {d['pos']:>5}  id {d['id']:>5}  len {d['len']:>8}  {d['flags']:#06x} "
                             f"{d['state']:<20} {' '.join(marks)}".rstrip())
    if "unreadable" in r:
        lines.append(f"  ring not readable: {r['unreadable']}")
    return "\n".join(lines) + "\n"
