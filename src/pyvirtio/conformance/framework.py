"""The conformance framework: checks, results, the context a check runs in, and the runner.

A check is a function of a :class:`Context` registered with :func:`check`; it returns what it saw
(PASS), or raises :class:`Skip`, :class:`Fail`, or a back-end error (FAIL), or cannot reach the
back-end (ERROR).  The checks themselves live in :mod:`.checks_session` and :mod:`.checks_device`;
:mod:`.vhost_user` is the entry point that loads them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterable

from ..errors import VirtioError
from ..vhost_user.frontend.errors import BackendError, BackendUnreachable
from ..vhost_user.frontend.identify import infer_device_type, type_name
from ..vhost_user.protocol import VERSION, HeaderFlag, ProtocolFeature as PF
from ..vhost_user.frontend.transport import probe_config_size
from .session import Session, Workload

log = logging.getLogger("pyvirtio.conformance")

REPLY = int(HeaderFlag.REPLY)
NEED_REPLY = VERSION | int(HeaderFlag.NEED_REPLY)
#: How long a check waits to be sure something did *not* happen.
QUIET_PERIOD = 0.3


class Status(Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"
    ERROR = "ERROR"


class Skip(Exception):
    """The requirement does not apply to this back-end."""


class Fail(Exception):
    """The back-end broke the requirement."""


def expect(condition: bool, detail: str) -> None:
    if not condition:
        raise Fail(detail)


@dataclass(frozen=True)
class Check:
    id: str
    level: str  # MUST or SHOULD
    section: str
    text: str
    func: Callable[["Context"], str] = field(repr=False)


@dataclass(frozen=True)
class Result:
    check: Check
    status: Status
    detail: str
    seconds: float = 0.0

    def as_dict(self) -> dict:
        c = self.check
        return {"id": c.id, "level": c.level, "section": c.section, "requirement": c.text,
                "status": self.status.value, "detail": self.detail, "seconds": round(self.seconds, 3)}

    def line(self) -> str:
        c = self.check
        return f"{self.status.value:<5} {c.level:<6} {c.id:<28} [{c.section}] {c.text} — {self.detail}"


CHECKS: list[Check] = []


def check(id: str, level: str, section: str, text: str):
    def register(fn):
        CHECKS.append(Check(id, level, section, text, fn))
        return fn
    return register


# --- the context a check runs in -----------------------------------------------------------------


class Context:
    """The back-end under test: its socket, its device type (given or guessed on first contact)."""

    def __init__(self, path: str, device_type: int | None = None, timeout: float = 2.0):
        self.path = path
        self.device_type = device_type
        self.type_source = "given" if device_type else None
        self.timeout = timeout

    def session(self, **kw) -> Session:
        kw.setdefault("timeout", self.timeout)
        s = Session(self.path, device_type=self.device_type, **kw)
        if self.type_source is None and kw.get("handshake", True):
            self._identify(s)
        return s

    def _identify(self, s: Session) -> None:
        try:
            size = probe_config_size(s.client) if s.has(PF.CONFIG) else None
        except BackendError:
            size = None
        dtype, why = infer_device_type(s.conn.backend_features or 0,
                                       s.conn.backend_protocol_features or 0, s.conn.queue_num, size)
        self.device_type, self.type_source = (int(dtype) if dtype else None), why
        s.device_type = self.device_type


def need_workload(s: Session) -> Workload:
    """The session's workload; Skip when no request is known for its device type."""
    if s.workload is None:
        raise Skip(f"no request is known for device type {type_name(s.device_type)}")
    return s.workload


def need(s: Session, bit: PF) -> None:
    if not s.has(bit):
        raise Skip(f"protocol feature {bit.name} not offered")


def complete(s: Session, count: int = 1, index: int | None = None, what: str = "") -> None:
    got = s.wait(count, index)
    what = what or (s.workload.describe if s.workload else "requests")
    expect(got == count, f"{what}: {got} of {count} requests completed "
                         f"within {s.timeout}s")


_UNREACHABLE = "back-end unreachable: "


def run_one(ctx: Context, c: Check) -> Result:
    start = time.monotonic()
    try:
        detail = c.func(ctx)
        status = Status.PASS
    except Skip as exc:
        status, detail = Status.SKIP, str(exc)
    except Fail as exc:
        status, detail = Status.FAIL, str(exc)
    except BackendUnreachable as exc:
        status, detail = Status.ERROR, f"{_UNREACHABLE}{exc}"
    except BackendError as exc:
        status, detail = Status.FAIL, f"{type(exc).__name__}: {exc}"
    except (VirtioError, OSError) as exc:
        status, detail = Status.ERROR, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a bug in the check: report it, run the others
        log.exception("check %s crashed", c.id)
        status, detail = Status.ERROR, f"internal error in the check: {type(exc).__name__}: {exc}"
    return Result(c, status, detail, time.monotonic() - start)


def run_checks(path: str, device_type: int | None = None, *, timeout: float = 2.0,
               only: Iterable[str] | None = None,
               on_result: Callable[[Result], None] | None = None) -> tuple[Context, list[Result]]:
    """Run every check (or those whose id starts with one of ``only``)."""
    ctx = Context(path, device_type, timeout)
    wanted = tuple(only or ())
    results: list[Result] = []
    gone: str | None = None  # the back-end stopped listening after serving some checks
    for c in CHECKS:
        if wanted and not c.id.startswith(wanted):
            continue
        if gone is not None:
            result = Result(c, Status.SKIP, gone)
        else:
            result = run_one(ctx, c)
            unreachable = result.status is Status.ERROR and result.detail.startswith(_UNREACHABLE)
            if unreachable and not results:  # never reached at all: one error, not one per check
                raise BackendUnreachable(result.detail[len(_UNREACHABLE):])
            if unreachable:
                gone = (f"not run: the back-end stopped accepting connections after the "
                        f"earlier checks (see {c.id}); it may serve one front-end per process")
        results.append(result)
        if on_result is not None:
            on_result(result)
    return ctx, results


def failed_musts(results: Iterable[Result]) -> list[Result]:
    return [r for r in results if r.check.level == "MUST" and r.status in (Status.FAIL, Status.ERROR)]


__all__ = ["CHECKS", "Check", "Result", "Status", "Context", "Skip", "Fail", "expect", "check",
           "need", "need_workload", "complete", "run_checks", "run_one", "failed_musts",
           "QUIET_PERIOD", "REPLY", "NEED_REPLY"]
