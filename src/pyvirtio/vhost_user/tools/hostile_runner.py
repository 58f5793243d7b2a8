"""Run one hostile-back-end experiment against a front-end and say what the front-end did.

An experiment is a set of rules (:mod:`.hostile`) acting together: a :class:`~.hostile.
HostileServer` serves the device on the socket for at most ``seconds``; with ``command`` (a
QEMU, a DPDK application, any front-end program: split like a shell line, no shell, ``{socket}``
replaced by the socket path) it starts the front-end itself and the experiment ends when that
process exits.  :func:`classify` names the outcome:

=================  ===============================================================  ========
outcome            what the front-end did                                           finding
=================  ===============================================================  ========
crashed            its process died on a signal (SIGSEGV, SIGBUS …)                 yes
aborted            its process died on SIGABRT (an assertion, abort())              yes
hung               its process still ran at the end, the connection open, and no    yes
                   request nor I/O came after the first lie (it waits for ever)
exited-with-error  its process exited with a non-zero status (it refused; the last
                   line of its stderr says why)
exited             its process exited with status 0 (it survived, or shut down)
disconnected       it closed the connection after the lie and lived on (refused)
carried-on         requests or I/O kept coming after the lie (tolerated or ignored)
stalled            no process of ours: the connection open, nothing after the lie
not-triggered      no rule fired (the front-end never sent what the rules wait for)
=================  ===============================================================  ========

A finding is saved as a small JSON replay (``pyvirtio fuzz-frontend --replay FILE``):
``{"format": "pyvirtio-hostile-backend-case", "version": 1, "device": "blk", "packed": false,
"rules": [RULE, ...], "seed": N, "outcome": {"kind": K, "detail": TEXT, "exit": N|null,
"signal": NAME|null, "errors": [LINE, ...]}, "fired": [...], "connections": [...]}``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ...device import VirtioDevice
from ...errors import UsageError
from .hostile import HostilePlan, HostileRule, HostileServer, parse_rules

CASE_FORMAT = "pyvirtio-hostile-backend-case"
CASE_VERSION = 1
FINDINGS = ("crashed", "aborted", "hung")
#: stderr lines that count as "the front-end logged an error".
_ERROR_LINE = re.compile(r"\b(error|fail\w*|invalid|unexpected|abort\w*|assert\w*)\b", re.IGNORECASE)
STOP_GRACE = 5.0  # seconds a front-end we stop gets between SIGTERM and SIGKILL


@dataclass
class Outcome:
    kind: str
    detail: str
    exit: int | None = None  # the process's exit status (None: no process, or a signal)
    signal: str | None = None  # the signal that ended it
    errors: list[str] = field(default_factory=list)  # its stderr lines that report an error

    @property
    def finding(self) -> bool:
        return self.kind in FINDINGS

    def to_json(self) -> dict:
        return {"kind": self.kind, "detail": self.detail, "exit": self.exit,
                "signal": self.signal, "errors": self.errors}


@dataclass
class Experiment:
    """What one run produced: the rules, the record of lies and connections, the outcome."""

    device: str
    rules: list[HostileRule]
    seed: int
    plan: HostilePlan
    outcome: Outcome
    packed: bool = False

    def to_json(self) -> str:
        return json.dumps({
            "format": CASE_FORMAT, "version": CASE_VERSION, "device": self.device,
            "packed": self.packed, "rules": [r.describe() for r in self.rules], "seed": self.seed,
            "outcome": self.outcome.to_json(), "fired": [f.to_json() for f in self.plan.fired[:50]],
            "connections": [c.to_json() for c in self.plan.connections]}, indent=1)


def read_case(text: str) -> tuple[str, bool, list[HostileRule], int]:
    """(device, packed, rules, seed) of a saved case; UsageError if it is not one."""
    try:
        obj = json.loads(text)
        if obj.get("format") != CASE_FORMAT or obj.get("version") != CASE_VERSION:
            raise UsageError(f"not a {CASE_FORMAT} version {CASE_VERSION} file")
        rules = [r for text in obj["rules"] for r in parse_rules(text)]
        return str(obj["device"]), bool(obj.get("packed", False)), rules, int(obj["seed"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"not a hostile back-end case: {exc}") from None


def classify(plan: HostilePlan, returncode: int | None, stopped: bool, started: bool,
             stderr: str = "") -> Outcome:
    """The outcome of an experiment: ``returncode`` of the front-end process we started (None:
    none started), ``stopped``: it still ran at the end and we stopped it."""
    errors = [line.strip() for line in stderr.splitlines() if _ERROR_LINE.search(line)][:10]
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    exited = started and not stopped and returncode is not None
    if exited and returncode is not None and returncode < 0:
        name = _signal_name(-returncode)
        kind = "aborted" if -returncode == signal.SIGABRT else "crashed"
        return Outcome(kind, f"the front-end died on {name}" + (f": {last}" if last else ""),
                       None, name, errors)
    exit_status = returncode if exited else None
    if not plan.fired:
        return Outcome("not-triggered", "no rule fired" + (f"; the front-end exited with {returncode}"
                                                           if exited else ""), exit_status, None, errors)
    if exited:
        if returncode:
            return Outcome("exited-with-error", f"exit status {returncode}" + (f": {last}" if last else ""),
                           returncode, None, errors)
        return Outcome("exited", "exit status 0", 0, None, errors)
    first = plan.fired[0]
    touched = [c for c in plan.connections if c.closed is None or c.closed >= first.at]
    gone = [c for c in touched if c.closed_by in ("front-end", "hang-up rule")]
    if any(c.requests_after_fire or c.chains_after_fire for c in touched if c.number > first.connection):
        return Outcome("carried-on", "the front-end connected again after the lie and went on",
                       None, None, errors)
    if gone:
        g = gone[0]
        who = "we closed it (hang-up rule)" if g.closed_by == "hang-up rule" else "the front-end closed it"
        return Outcome("disconnected", f"connection {g.number}: {who} {(g.closed or 0) - first.at:.2f}s "
                       f"after the first lie ({g.requests_after_fire} requests after it)",
                       None, None, errors)
    lied = next((c for c in plan.connections if c.number == first.connection), None)
    if lied is not None and (lied.requests_after_fire or lied.chains_after_fire):
        return Outcome("carried-on", f"{lied.requests_after_fire} requests and "
                       f"{lied.chains_after_fire} chains after the first lie "
                       f"({', '.join(lied.after_fire[:4])} …)", None, None, errors)
    kind = "hung" if started else "stalled"
    return Outcome(kind, f"the connection stayed open with nothing after the first lie "
                   f"({first.detail}) until the end", None, None, errors)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_experiment(device: VirtioDevice, socket_path: str, rules: list[HostileRule], *, seed: int,
                   seconds: float, command: str | None = None, log_path: str | None = None,
                   device_name: str = "device", packed: bool = False,
                   on_start: Callable[[], None] | None = None) -> Experiment:
    """Serve ``device`` with ``rules`` on ``socket_path`` until the front-end process exits
    (``command``) or ``seconds`` pass; classify what the front-end did."""
    plan = HostilePlan(rules, seed)
    server = HostileServer(plan)
    server.add(device, socket_path=socket_path)
    thread = threading.Thread(target=server.serve_forever, name="hostile-backend", daemon=True)
    thread.start()
    proc = None
    log_file = None
    stopped = False
    try:
        if command:
            argv = [a.replace("{socket}", socket_path) for a in shlex.split(command)]
            log_file = open(log_path or os.devnull, "w+b")
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                raise UsageError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
        if on_start is not None:
            on_start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.05)
        if proc is not None and proc.poll() is None:
            stopped = True
    finally:
        server.shutdown()
        thread.join(10)
        if proc is not None and proc.poll() is None:
            _stop(proc)
    stderr = ""
    if log_file is not None:
        log_file.seek(0)
        stderr = log_file.read().decode(errors="replace")
        log_file.close()
    outcome = classify(plan, proc.returncode if proc else None, stopped, proc is not None, stderr)
    return Experiment(device_name, rules, seed, plan, outcome, packed)


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(STOP_GRACE)
            return
        except subprocess.TimeoutExpired:
            continue


__all__ = ["Outcome", "Experiment", "classify", "run_experiment", "read_case", "FINDINGS",
           "CASE_FORMAT"]
