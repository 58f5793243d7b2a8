"""``pyvirtio top PATH...``: a live per-queue view of one or more daemons' control sockets.

    pyvirtio top /run/blk.ctl /run/net.ctl [--interval 1] [--count N] [--json]

Every interval it asks each daemon for ``stats`` and shows, per queue, the counters and their
rates per second (from the previous snapshot: chains/s, bytes/s read and written, kicks/s,
interrupts/s), in flight, errors, and the fault rules with how often they fired.  On a terminal
the view is redrawn in place; otherwise (a pipe, a file) each snapshot is printed after the
previous one.  Ctrl-C ends it (exit 0); a daemon that goes away is shown as such and asked
again next time.  ``ctl PATH stats --watch`` is the same for one daemon.
"""

from __future__ import annotations

import json
import sys
import time

from .values import positive_int, positive_seconds, socket_path

_RATES = ("chains", "bytes_read", "bytes_written", "kicks", "interrupts")


def register(sub) -> None:
    p = sub.add_parser("top", help="a live per-queue view of running daemons (their --control sockets)",
                       description="Show the per-queue counters and rates of one or more "
                                   "'pyvirtio serve --control=PATH' daemons, refreshed in place.")
    p.add_argument("paths", nargs="+", metavar="PATH", type=socket_path, help="control sockets")
    p.add_argument("--interval", type=positive_seconds, default=1.0, metavar="S",
                   help="seconds between snapshots (default 1)")
    p.add_argument("--count", type=positive_int, metavar="N", help="stop after N snapshots")
    p.add_argument("--json", action="store_true", help="one JSON line per daemon and snapshot")
    p.set_defaults(func=run)


def run(args) -> int:
    return watch(args.paths, interval=args.interval, count=args.count, as_json=args.json)


def watch(paths: list[str], *, interval: float = 1.0, count: int | None = None,
          timeout: float = 5.0, as_json: bool = False) -> int:
    """Poll ``paths`` every ``interval`` s and show them (``count`` times; until Ctrl-C)."""
    from ..control.client import ControlClient
    clients: dict[str, ControlClient | None] = dict.fromkeys(paths)
    previous: dict[str, tuple[float, dict]] = {}
    tty = sys.stdout.isatty() and not as_json
    shown = 0
    try:
        while count is None or shown < count:
            if shown:
                time.sleep(interval)
            frames = []
            for path in paths:
                stats, error = _ask(clients, path, timeout)
                now = time.monotonic()
                if as_json:
                    print(json.dumps({"path": path, "time": time.time(), "stats": stats, "error": error}))
                    continue
                rates = _rates(previous.get(path), now, stats) if stats else None
                if stats:
                    previous[path] = (now, stats)
                frames.append(render_stats(stats, rates, path=path) if stats else f"{path}: {error}\n")
            if not as_json:
                _show("\n".join(frames), tty, first=not shown)
            sys.stdout.flush()
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        for client in clients.values():
            if client is not None:
                client.close()
    return 0


def _ask(clients: dict, path: str, timeout: float) -> tuple[dict | None, str | None]:
    from ..control.client import ControlClient, ControlUnavailable
    from ..control.protocol import ControlError
    for attempt in range(2):  # a daemon restarted since the last snapshot: connect again once
        client = clients.get(path)
        try:
            if client is None:
                client = clients[path] = ControlClient(path, timeout=timeout)
            return client.call("stats"), None
        except ControlUnavailable as exc:
            if client is not None:
                client.close()
            clients[path] = None
            if attempt:
                return None, str(exc)
        except ControlError as exc:
            return None, f"{exc.type}: {exc.message}"
    return None, "unreachable"


def _rates(before: tuple[float, dict] | None, now: float, stats: dict) -> dict[int, dict] | None:
    if before is None:
        return None
    t0, old = before
    dt = now - t0
    if dt <= 0:
        return None
    olds = {q["index"]: q for q in old.get("queues", [])}
    out = {}
    for q in stats.get("queues", []):
        o = olds.get(q["index"])
        if o is not None:
            out[q["index"]] = {k: max(0, q.get(k, 0) - o.get(k, 0)) / dt for k in _RATES}
    return out


def _show(text: str, tty: bool, *, first: bool) -> None:
    if tty:
        sys.stdout.write("\x1b[H\x1b[2J" + text)  # home, clear: redraw in place
    else:
        if not first:
            sys.stdout.write("\n")
        sys.stdout.write(time.strftime("--- %H:%M:%S\n") + text)


def _si(value: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(value) < 1000:
            return f"{value:.0f}{unit}" if unit == "" or value >= 100 else f"{value:.1f}{unit}"
        value /= 1000
    return f"{value:.0f}P"


def render_stats(stats: dict, rates: dict[int, dict] | None = None, *, path: str = "") -> str:
    """One daemon's stats as text: a header, a line per queue (with rates when given), faults."""
    conn = stats.get("connection", {})
    state = ("connected" if conn.get("connected") else "waiting for a front-end") \
        if conn.get("transport") == "vhost-user" else conn.get("transport", "")
    lines = [f"{path + ': ' if path else ''}{stats.get('name', '')} ({stats.get('type')}) {state}"
             + (f", {conn['connections']} connection(s) so far" if "connections" in conn else "")
             + (f", link {stats['link']}" if "link" in stats else ""),
             "  status: " + (" ".join(stats.get("status", [])) or "0")
             + ("  NEEDS RESET" if stats.get("needs_reset") else "")
             + f"  config interrupts {stats.get('config_interrupts', 0)}",
             "  features: " + (" ".join(stats.get("features", {}).get("names", [])) or "none negotiated")]
    head = f"  {'queue':>5} {'chains':>9} {'read':>8} {'written':>8} {'kicks':>8} {'irqs':>8} {'inflight':>8} {'errors':>6}"
    if rates is not None:
        head += f"  {'chains/s':>9} {'rd B/s':>8} {'wr B/s':>8} {'kicks/s':>8} {'irqs/s':>8}"
    lines.append(head)
    for q in stats.get("queues", []):
        line = (f"  {q['index']:>5} {q['chains']:>9} {_si(q['bytes_read']):>8} {_si(q['bytes_written']):>8} "
                f"{q['kicks']:>8} {q['interrupts']:>8} {q['in_flight']:>8} {q['errors']:>6}")
        r = (rates or {}).get(q["index"])
        if r is not None:
            line += (f"  {_si(r['chains']):>9} {_si(r['bytes_read']):>8} {_si(r['bytes_written']):>8} "
                     f"{_si(r['kicks']):>8} {_si(r['interrupts']):>8}")
        if q.get("broken"):
            line += "  BROKEN" + (f": {q['fault']}" if q.get("fault") else "")
        lines.append(line)
    device = stats.get("device")
    if device:
        lines.append("  device: " + " ".join(f"{k}={v}" for k, v in device.items()))
    for rule in stats.get("faults", []) or []:
        lines.append(f"  fault {rule['id']}: {rule['rule']} (fired {rule['fired']})")
    return "\n".join(lines) + "\n"
