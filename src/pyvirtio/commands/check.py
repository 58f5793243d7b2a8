"""``pyvirtio check --socket-path=PATH``: a conformance run against a vhost-user back-end.

One line per requirement: its status (PASS, FAIL, SKIP, ERROR), level (MUST or SHOULD), id,
spec section, the requirement, and what was seen.  The exit status is 1 when a MUST requirement
failed (or could not be checked because the back-end went away), else 0; SHOULD failures are
reported but do not change it.  See :mod:`pyvirtio.conformance.vhost_user` for the checks.
"""

from __future__ import annotations

import json
import sys

from ..errors import CliUsageError
from .probe import add_socket_args, device_type_arg


def register(sub) -> None:
    p = sub.add_parser(
        "check", help="run the vhost-user conformance checks against a back-end",
        description="Connect to a vhost-user back-end many times, each time testing one "
                    "normative requirement of vhost-user.rst or the VIRTIO spec (initialisation, "
                    "feature rules, ring start/stop/enable, GET_VRING_BASE after traffic, config "
                    "reads, reset, REPLY_ACK, queue sizes, a second connection …), and print one "
                    "line per requirement.  Exit status 1 if a MUST requirement failed.")
    add_socket_args(p, type_help="the device type, which decides the requests the traffic checks send",
                    timeout=2.0, required=False)
    p.add_argument("--only", action="append", metavar="ID",
                   help="run only checks whose id starts with ID (repeatable), e.g. --only=vring")
    p.add_argument("--list", action="store_true", help="list the checks and exit (no socket needed)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..vhost_user.frontend.identify import type_name
    from ..conformance.vhost_user import CHECKS, Status, failed_musts, run_checks

    if args.list:
        for c in CHECKS:
            print(f"{c.level:<6} {c.id:<28} [{c.section}] {c.text}")
        return 0
    if not args.socket_path:
        raise CliUsageError("--socket-path=PATH is required (or --list)")
    _check_only(args.only, CHECKS)
    print_line = None if args.json else (lambda r: print(r.line(), flush=True))
    ctx, results = run_checks(args.socket_path, device_type_arg(args), timeout=args.timeout,
                              only=args.only, on_result=print_line)
    counts = {s: sum(r.status is s for r in results) for s in Status}
    bad = failed_musts(results)
    if args.json:
        print(json.dumps({"socket": args.socket_path, "device_type": ctx.device_type,
                          "device_type_name": type_name(ctx.device_type),
                          "device_type_source": ctx.type_source,
                          "results": [r.as_dict() for r in results],
                          "counts": {s.value: n for s, n in counts.items()},
                          "failed_musts": [r.check.id for r in bad]}, indent=2))
    else:
        summary = ", ".join(f"{n} {s.value.lower()}" for s, n in counts.items() if n)
        print(f"{args.socket_path}: {type_name(ctx.device_type)} ({ctx.type_source}); "
              f"{len(results)} checks: {summary}; "
              + (f"{len(bad)} MUST requirement(s) not met" if bad else "every MUST requirement met"))
    ran = [r for r in results if r.status is not Status.SKIP]
    if ran and all(r.detail.startswith("BackendHungUp") for r in ran):
        print(f"pyvirtio check: error: {args.socket_path}: the back-end hung up on every "
              "connection", file=sys.stderr)
    return 1 if bad else 0


def _check_only(prefixes, checks) -> None:
    """``--only=zzz`` that matches no check is a usage error, not "0 checks, all good"."""
    for prefix in prefixes or ():
        if not any(c.id.startswith(prefix) for c in checks):
            raise CliUsageError(f"--only={prefix}: no check id starts with {prefix!r} (see --list)")
