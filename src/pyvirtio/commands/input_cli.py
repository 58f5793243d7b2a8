"""``pyvirtio serve input``: the flags of the input back-end, and its event script reader.

    pyvirtio serve input --socket-path=PATH --kind=keyboard|mouse|tablet|multitouch
                         [--name=NAME] [--serial=TEXT] [--width=N --height=N]
                         [--max-pending=N] [--events=FILE|-]

``--events`` reads a script (:mod:`pyvirtio.devices.input_script`: ``key KEY_A``, ``text hi``,
``move 5 -3``, ``abs 100 200``, ``sleep 0.5`` ...) in a thread and injects its events: a file is
read whole and checked before the daemon starts (a bad line: exit 2); ``-`` reads stdin line by
line as it comes, and a bad line there is logged and skipped.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from typing import Callable, Iterable

from ..errors import CliError, CliUsageError

log = logging.getLogger("pyvirtio.serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..devices.input_config import ABS_RANGE, KINDS, MAX_PENDING_EVENTS
    p.add_argument("--kind", choices=KINDS, default="keyboard",
                   help="what the guest sees (default keyboard; tablet and multitouch have "
                        "absolute axes)")
    p.add_argument("--name", help="the device's name (ID_NAME; default 'pyvirtio KIND')")
    p.add_argument("--serial", default="", help="the device's serial (ID_SERIAL)")
    p.add_argument("--width", type=int, default=ABS_RANGE, metavar="N",
                   help=f"tablet/multitouch: ABS_X runs 0..N (default {ABS_RANGE})")
    p.add_argument("--height", type=int, default=ABS_RANGE, metavar="N",
                   help=f"tablet/multitouch: ABS_Y runs 0..N (default {ABS_RANGE})")
    p.add_argument("--max-pending", type=int, default=MAX_PENDING_EVENTS, metavar="N",
                   help="events kept for a guest that takes none; older whole reports are "
                        f"dropped past it (default {MAX_PENDING_EVENTS})")
    p.add_argument("--events", metavar="FILE|-",
                   help="inject the events of this script (- for stdin): key KEY_A, text hi, "
                        "move 5 -3, abs 100 200, sleep 0.5 ...")


def build_device(args: argparse.Namespace):
    from ..devices.input import InputDevice
    from ..devices.input_config import profile
    args.input_steps = _read_script(args.events) if args.events and args.events != "-" else None
    return InputDevice(profile(args.kind, name=args.name, serial=args.serial, width=args.width,
                               height=args.height), max_pending=args.max_pending)


def describe(args: argparse.Namespace) -> str:
    return f"input device ({args.kind})"


def _read_script(path: str) -> list:
    from ..devices.input_script import ScriptError, parse_script
    try:
        with open(path, encoding="utf-8") as f:
            return list(parse_script(f))
    except OSError as exc:
        raise CliError(f"--events={path}: {exc.strerror or exc}") from None
    except ScriptError as exc:
        raise CliUsageError(f"--events={path}: {exc}") from None


def start_script(args: argparse.Namespace, device) -> Callable[[], None]:
    """Start the ``--events`` reader (if any); returns what stops it."""
    if not args.events:
        return lambda: None
    stop = threading.Event()
    if args.events == "-":
        target: Callable[[], None] = lambda: _run_stdin(device, sys.stdin, stop)
    else:
        target = lambda: _run_steps(device, args.input_steps, stop)
    thread = threading.Thread(target=target, name="input-events", daemon=True)
    thread.start()
    return stop.set


def _run_steps(device, steps: Iterable, stop: threading.Event) -> None:
    for step in steps:
        if stop.is_set():
            return
        _apply(device, step, stop)
    log.info("input: --events script done")


def _run_stdin(device, stream, stop: threading.Event) -> None:
    from ..devices.input_script import Script, ScriptError
    script = Script()
    for n, line in enumerate(stream, 1):
        if stop.is_set():
            return
        try:
            step = script.parse_line(line, n)
        except ScriptError as exc:
            log.warning("input: --events=-: %s (skipped)", exc)
            continue
        if step is not None:
            _apply(device, step, stop)
    log.info("input: --events=-: end of input")


def _apply(device, step, stop: threading.Event) -> None:
    from ..errors import UsageError
    if step.events:
        try:
            device.inject(step.events)
        except UsageError as exc:
            log.warning("input: --events: %s", exc)
    if step.sleep:
        stop.wait(step.sleep)


__all__ = ["add_arguments", "build_device", "describe", "start_script"]
