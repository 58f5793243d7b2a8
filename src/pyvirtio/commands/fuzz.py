"""``pyvirtio fuzz --socket-path=PATH``: fuzz any vhost-user back-end for crashes, hangs and
protocol violations; ``--replay FILE`` runs one saved finding again.

Exit status: 0 nothing found (or, with --replay, the finding did not happen again); 1 a finding
(with --replay: it happened again), or the target was not there; 2 a usage error.  See
:mod:`pyvirtio.vhost_user.tools.fuzz` for what is generated, what counts as a finding, and the replay
file."""

from __future__ import annotations

import os
import random

from ..errors import CliError, CliUsageError
from .values import positive_int, positive_seconds, socket_path


def register(sub) -> None:
    p = sub.add_parser(
        "fuzz", help="fuzz a vhost-user back-end for crashes, hangs and protocol violations",
        description="Connect to a vhost-user back-end over and over; each time send a valid "
                    "set-up (cut at a random point) followed by mutated messages (fields, sizes, "
                    "flags, fds, order) or descriptor chains written into the shared memory, "
                    "then check that it still answers.  A crash (the connection dies and a new "
                    "one is refused), a hang (no answer within --timeout) or a reply the "
                    "protocol does not allow is minimised and saved in --out as a replay file.")
    p.add_argument("--socket-path", type=socket_path, required=True, metavar="PATH",
                   help="the back-end's socket")
    p.add_argument("--time", type=positive_seconds, default=60.0, metavar="SECONDS",
                   help="how long to generate cases (default 60; minimising may add up to half)")
    p.add_argument("--seed", type=positive_int, metavar="N",
                   help="the random seed (default: a new one, printed); same seed, same cases")
    p.add_argument("--out", default="fuzz-findings", metavar="DIR",
                   help="where replay files go (default ./fuzz-findings)")
    p.add_argument("--restart-cmd", metavar="CMD",
                   help="a shell command that starts the back-end on --socket-path; the fuzzer "
                        "runs it when the back-end is down and after every crash, and stops it at "
                        "the end (without it, a crash ends the run, unminimised); for a back-end "
                        "whose crashes depend on its heap layout (memory corruption in C), start it "
                        "with 'setarch -R CMD' (no address-space randomisation): each fresh target "
                        "then has the same layout, and its crashes confirm and replay")
    p.add_argument("--timeout", type=positive_seconds, default=2.0, metavar="SECONDS",
                   help="how long a reply, a new connection or the probe may take (default 2)")
    p.add_argument("--replay", metavar="FILE", help="run the case in FILE once and report")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..vhost_user.tools.fuzz_runner import Target, TargetDown

    log_path = None
    if not args.replay:
        os.makedirs(args.out, exist_ok=True)
        log_path = os.path.join(args.out, "target.log")
    target = Target(args.socket_path, args.restart_cmd, log_path=log_path)
    try:
        return replay(args, target) if args.replay else run_fuzzer(args, target)
    except TargetDown as exc:
        raise CliError(str(exc)) from None
    finally:
        target.stop()


def run_fuzzer(args, target) -> int:
    from ..vhost_user.tools.fuzz_runner import fuzz

    seed = args.seed or random.SystemRandom().randrange(1, 1 << 31)
    print(f"pyvirtio fuzz: {args.socket_path}, seed {seed}, {args.time:g}s", flush=True)

    def found(case) -> None:
        f = case.finding
        prefix = "" if f.confirmed else "unconfirmed-"
        path = os.path.join(args.out, f"{prefix}{f.kind}-seed{seed}-case{case.number}.json")
        with open(path, "w") as out:
            out.write(case.to_json())
        note = "" if f.confirmed else (" (not confirmed on a fresh target: it may depend on the "
                                       "target's memory layout; see --restart-cmd 'setarch -R ...')")
        print(f"{f.kind.upper()}{note}: {f.detail} — {len(case.steps)} steps, "
              f"last {case.steps[-1].name() if case.steps else '-'}; replay: {path}", flush=True)

    report = fuzz(target, seconds=args.time, seed=seed, bound=args.timeout, on_finding=found)
    print(f"{report.cases} cases, {len(report.findings)} findings, {report.restarts} restarts"
          + (f"; stopped early: {report.stopped_early}" if report.stopped_early else ""))
    return 1 if report.findings else 0


def replay(args, target) -> int:
    from ..vhost_user.tools.fuzz import Case, CaseError
    from ..vhost_user.tools.fuzz_runner import run_and_judge

    try:
        with open(args.replay, encoding="utf-8") as f:
            case = Case.from_json(f.read())
    except OSError as exc:
        raise CliError(f"cannot read {args.replay}: {exc.strerror}") from None
    except CaseError as exc:
        raise CliUsageError(f"{args.replay}: {exc}") from None
    finding = run_and_judge(target, case.steps, args.timeout)
    if finding is None:
        print(f"{args.replay}: no finding ({len(case.steps)} steps ran cleanly)")
        return 0
    same = " (as recorded)" if case.finding and case.finding.same_as(finding) else ""
    print(f"{finding.kind.upper()}{same}: {finding.detail}")
    return 1


__all__ = ["register", "run"]
