"""The vhost-user fuzzer's I/O shell: the target program, one connection per case, guest memory
and eventfds, the time bound.  Cases, judging and minimising are
:mod:`pyvirtio.vhost_user.tools.fuzz`'s.

A case runs on a fresh connection: each step is sent with one ``sendmsg`` (its fds made for it,
ours closed after), replies are read as they come, then a GET_FEATURES probe must be answered
within ``bound`` seconds unless the back-end closes the connection.  If the connection ended,
a new one must be accepted within ``bound`` — else the target crashed.  With ``restart_cmd`` the
fuzzer starts the target itself (a shell command, in its own session), restarts it after each
crash, sees the signal it died of, and stops it at the end; without it, a crash ends the run and
the finding is saved unminimised (minimising needs the target back).
"""

from __future__ import annotations

import logging
import mmap
import os
import random
import signal
import socket
import struct
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from ...errors import TransportError
from ..errors import FramingError
from ..fdio import ancillary, close_fds, fds_of
from .fuzz import (AVAIL, MEMORY_SIZE, Case, Finding, Outcome, Reply, Step, TargetInfo,
                   generate, judge, minimise)
from ..protocol import VHOST_USER_F_PROTOCOL_FEATURES, FrontendReq, HeaderFlag, ProtocolFeature
from ..wire import U64, Framer, encode

log = logging.getLogger("pyvirtio.vhost_user.tools.fuzz")

#: Earlier cases tried when a crash does not repeat on a fresh target.
HISTORY = 4
#: Replies longer than this break framing (no vhost-user reply comes near it).
MAX_REPLY_PAYLOAD = 1 << 16

#: The least time a finding gets to be confirmed and minimised (seconds).
MINIMISE_SECONDS = 10.0


class TargetDown(TransportError):
    """The target does not accept connections and cannot be restarted."""


class Target:
    """The back-end under test: its socket, and the program when we start it ourselves."""

    def __init__(self, socket_path: str, restart_cmd: str | None = None, *,
                 start_timeout: float = 20.0, log_path: str | None = None):
        self.socket_path = socket_path
        self.restart_cmd = restart_cmd
        self.start_timeout = start_timeout
        self.log_path = log_path or os.devnull
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def connect(self, timeout: float) -> socket.socket:
        """A connection, retried for ``timeout`` seconds; raises OSError when refused."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(self.socket_path)
                return sock
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def exit_status(self) -> int | None:
        """The started program's exit status once it ended (a signal as -N; sh's 128+N too)."""
        if self.process is None or self.process.poll() is None:
            return None
        code = self.process.returncode
        return -(code - 128) if 128 < code < 160 else code

    def ensure_up(self, timeout: float = 1.0) -> None:
        """Make sure a connection would be accepted: (re)start the program if we can."""
        if self.process is not None and self.process.poll() is None and self._accepts(timeout):
            return
        if self.process is None and self._accepts(timeout if not self.restart_cmd else 0.2):
            return
        if not self.restart_cmd:
            raise TargetDown(f"{self.socket_path} accepts no connection (give --restart-cmd to restart it)")
        self.stop()
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.restart_cmd, shell=True, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        if not self._accepts(self.start_timeout):
            raise TargetDown(f"the restart command did not bring {self.socket_path} up within "
                             f"{self.start_timeout:g}s (status {self.process.poll()})")

    def _accepts(self, timeout: float) -> bool:
        try:
            self.connect(timeout).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """End the program we started (its whole session), if it still runs."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                proc.wait()


# --- one case ----------------------------------------------------------------------------------


class _Guest:
    """The memory and eventfds of one case (closed after it)."""

    def __init__(self):
        self.memory_fd = os.memfd_create("pyvirtio-fuzz-guest", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.memory_fd, MEMORY_SIZE)
        self.map = mmap.mmap(self.memory_fd, MEMORY_SIZE)
        self.kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def fds(self, kinds) -> tuple[list[int], list[int]]:
        """The fds to send for ``kinds`` and those to close after sending."""
        send: list[int] = []
        close: list[int] = []
        for kind in kinds:
            fd = {"memory": self.memory_fd, "kick": self.kick, "call": self.call}.get(kind)
            if fd is None:
                fd = _make(kind, close)
                close.append(fd)
            send.append(fd)
        return send, close

    def ring(self, step: Step) -> None:
        for offset, data in step.writes:
            end = min(offset + len(data), MEMORY_SIZE)
            if 0 <= offset < end:
                self.map[offset:end] = data[:end - offset]
        struct.pack_into("=H", self.map, AVAIL + 2, step.avail)
        os.eventfd_write(self.kick, 1)

    def close(self) -> None:
        self.map.close()
        close_fds((self.memory_fd, self.kick, self.call))


def _make(kind: str, close: list[int]) -> int:
    if kind == "eventfd":
        return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    if kind == "memfd":
        fd = os.memfd_create("pyvirtio-fuzz-small", os.MFD_CLOEXEC)
        os.ftruncate(fd, 4096)
        return fd
    if kind == "pipe":
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        close.append(w)
        return r
    return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)


class _Replies:
    """Whole replies from the back-end as they arrive."""

    def __init__(self, sock: socket.socket, out: Outcome):
        self.sock, self.out = sock, out
        self.framer = Framer(MAX_REPLY_PAYLOAD)

    def read(self, timeout: float) -> bool:
        """Read what is there (waiting up to ``timeout`` for the first byte); False at EOF or
        when the stream cannot be framed."""
        self.sock.settimeout(timeout)
        try:
            data, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(16 * 4), socket.MSG_CMSG_CLOEXEC)
        except (socket.timeout, BlockingIOError):
            return True
        except OSError:
            data, anc = b"", []
        close_fds(fds_of(anc))  # fds a back-end sends (GET_INFLIGHT_FD): not ours to keep
        if not data:
            self.out.closed = True
            return False
        try:
            for msg in self.framer.feed(data):
                self.out.replies.append(Reply(msg.request, msg.flags, len(msg.payload)))
        except FramingError as exc:
            self.out.bad_framing = str(exc)
            return False
        return True


def run_case(target: Target, steps: list[Step], bound: float) -> Outcome:
    """Send ``steps`` on a new connection, probe, and see whether the target survived."""
    out = Outcome()
    sock = target.connect(bound)
    guest = _Guest()
    replies = _Replies(sock, out)
    try:
        for step in steps:
            if not _send(sock, guest, step):
                out.closed = True
                break
            out.sent += 1
            if not replies.read(0.0):
                break
        if not out.closed and not out.bad_framing:
            _probe(sock, replies, bound)
    finally:
        sock.close()
        guest.close()
    if out.closed:
        out.exit_status = _wait_exit(target, 0.2)
        if out.exit_status is None:
            try:
                target.connect(bound).close()
            except OSError as exc:
                out.reconnect_refused = exc.strerror or str(exc)
    out.exit_status = target.exit_status()
    return out


def _send(sock: socket.socket, guest: _Guest, step: Step) -> bool:
    if step.op == "ring":
        guest.ring(step)
        return True
    fds, close = guest.fds(step.fds)
    anc = ancillary(fds)
    try:
        sock.settimeout(5.0)
        sock.sendmsg([step.data], anc)
        return True
    except OSError:
        return False
    finally:
        close_fds(close)


def _probe(sock: socket.socket, replies: _Replies, bound: float) -> None:
    out = replies.out
    try:
        sock.sendall(encode(FrontendReq.GET_FEATURES))
    except OSError:
        out.closed = True
        return
    before = len(out.replies)
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if not replies.read(max(0.0, deadline - time.monotonic())):
            return
        if any(r.request == FrontendReq.GET_FEATURES for r in out.replies[before:]):
            out.probe_answered = True
            return


def _wait_exit(target: Target, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while target.process is not None and time.monotonic() < deadline:
        status = target.exit_status()
        if status is not None:
            return status
        time.sleep(0.01)
    return target.exit_status()


# --- what the target offers --------------------------------------------------------------------


def query_target(target: Target, bound: float) -> TargetInfo:
    """Features, protocol features and queue count, as a front-end learns them."""
    sock = target.connect(bound)
    sock.settimeout(bound)
    try:
        info = TargetInfo(features=_ask(sock, FrontendReq.GET_FEATURES))
        if info.features & (1 << VHOST_USER_F_PROTOCOL_FEATURES):
            info.protocol_features = _ask(sock, FrontendReq.GET_PROTOCOL_FEATURES)
            sock.sendall(encode(FrontendReq.SET_PROTOCOL_FEATURES, U64(info.taken_protocol).pack()))
            if info.taken_protocol & (1 << ProtocolFeature.MQ):
                info.queues = max(1, min(_ask(sock, FrontendReq.GET_QUEUE_NUM), 256))
        return info
    except OSError as exc:
        raise TargetDown(f"{target.socket_path}: the target does not answer GET_FEATURES: "
                         f"{exc.strerror or exc}") from None
    finally:
        sock.close()


def _ask(sock: socket.socket, request: int) -> int:
    sock.sendall(encode(request))
    data = b""
    while len(data) < 20:
        chunk = sock.recv(20 - len(data))
        if not chunk:
            raise ConnectionResetError(0, "the target hung up")
        data += chunk
    req, flags, size = struct.unpack_from("=III", data)
    if req != request or size != 8 or not flags & HeaderFlag.REPLY:
        raise ConnectionResetError(0, f"unexpected reply {req}/{flags:#x}/{size}")
    return U64.unpack(data[12:]).value


# --- the loop ----------------------------------------------------------------------------------


@dataclass
class Report:
    cases: int = 0
    findings: list[Case] = field(default_factory=list)
    restarts: int = 0
    stopped_early: str = ""


def run_and_judge(target: Target, steps: list[Step], bound: float) -> Finding | None:
    target.ensure_up()
    return judge(steps, run_case(target, steps, bound))


def fuzz(target: Target, *, seconds: float, seed: int, bound: float = 2.0,
         on_case: Callable[[Case], None] | None = None,
         on_finding: Callable[[Case], None] | None = None, max_findings: int = 20) -> Report:
    """Run generated cases for ``seconds``; minimise and report each new kind of finding."""
    report = Report()
    target.ensure_up()
    info = query_target(target, bound)
    seen: set[tuple] = set()
    history: deque[Case] = deque(maxlen=HISTORY)  # cases the running target has seen
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(report.findings) < max_findings:
        rng = random.Random(f"{seed}:{report.cases}")
        case = Case(generate(rng, info), seed, report.cases)
        report.cases += 1
        starts = target.starts
        try:
            case.finding = run_and_judge(target, case.steps, bound)
        except (TargetDown, OSError) as exc:
            report.stopped_early = str(exc)
            break
        if target.starts != starts:
            history.clear()  # a new process: what the old one saw does not matter
        if on_case:
            on_case(case)
        if case.finding is None:
            history.append(case)
            continue
        key = _signature(case)
        if key in seen:
            continue
        # each finding gets a quarter of the run, at least MINIMISE_SECONDS (a restart of the
        # target per trial is slow on a busy machine), and the run at most half its time again
        until = min(deadline + max(0.5 * seconds, MINIMISE_SECONDS),
                    time.monotonic() + max(MINIMISE_SECONDS, 0.25 * seconds))
        _minimise(target, case, bound, until)
        if not _finding(case).confirmed and _finding(case).kind == "crash":
            case = _blame_earlier(target, case, history, bound, until)
        history.clear()
        if not _finding(case).confirmed:  # say so, but let a confirmed one of its kind come
            key = ("unconfirmed", _finding(case).kind)
            if key in seen:
                continue
        elif _signature(case) in seen:
            continue  # minimised, it is one already reported
        seen.update({key, _signature(case)} if _finding(case).confirmed else {key})
        report.findings.append(case)
        if on_finding:
            on_finding(case)
        if not target.restart_cmd and _finding(case).kind == "crash":
            report.stopped_early = "the target crashed and there is no --restart-cmd to restart it"
            break
    report.restarts = max(0, target.starts - 1)
    return report


def _finding(case: Case) -> Finding:
    """A case known to hold a finding (the loop only gets here with one)."""
    if case.finding is None:
        raise AssertionError("a case without a finding")
    return case.finding


def _blame_earlier(target: Target, case: Case, history: deque, bound: float, until: float) -> Case:
    """A crash that a fresh target does not repeat was often set up by an earlier case (a
    write out of bounds that did not fault at once): the latest earlier case that crashes a
    fresh target alone becomes the finding."""
    for earlier in reversed(history):
        if time.monotonic() > until:
            break
        trial = Case(list(earlier.steps), earlier.seed, earlier.number,
                     Finding("crash", _finding(case).detail, len(earlier.steps) - 1))
        _minimise(target, trial, bound, until)
        if _finding(trial).confirmed:
            return trial
    return case


def _signature(case: Case) -> tuple:
    f = _finding(case)
    step = case.steps[f.step] if 0 <= f.step < len(case.steps) else None
    return (f.kind, f.detail.split(":")[0], step.name() if f.kind != "violation" and step else "")


def _minimise(target: Target, case: Case, bound: float, deadline: float) -> None:
    """Confirm the finding on a fresh target, then minimise it (each run on a fresh target when
    we can restart it: an earlier case's stray write must not make a later one look guilty)."""
    original = _finding(case)
    if original.kind == "crash" and not target.restart_cmd:
        original.confirmed = False
        return

    def fails(steps: list[Step], *, confirming: bool = False) -> bool:
        """Confirming: it fails in one of two runs (a crash can depend on the heap's layout).
        Minimising: it fails twice in a row, so that a smaller case is no less reliable."""
        for _ in range(2):
            if time.monotonic() > deadline and not confirming:
                return False
            try:
                target.stop()  # a fresh target (a no-op unless we started it)
                failed = original.same_as(run_and_judge(target, steps, bound))
            except (TargetDown, OSError):
                return False
            if failed == confirming:
                return confirming
        return not confirming

    if not fails(case.steps, confirming=True):  # whatever the time: an unconfirmed crash misleads
        original.confirmed = False
        return
    budget = 8 if original.kind == "hang" else 64
    case.steps = minimise(case.steps, fails, budget)
    case.finding = Finding(original.kind, original.detail, len(case.steps) - 1)


__all__ = ["Target", "TargetDown", "Report", "fuzz", "run_case", "run_and_judge", "query_target"]
