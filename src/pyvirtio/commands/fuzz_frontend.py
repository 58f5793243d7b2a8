"""``pyvirtio fuzz-frontend --socket-path=PATH --device=blk|rng --rule=RULES``: a hostile
vhost-user back-end for testing front-ends (QEMU, DPDK, pyvirtio's own), and what they did.

Each ``--rule`` is one experiment (several rules acting together are joined with ``;``): the
device is served with the rules for ``--time`` seconds, or — with ``--qemu-cmd`` — until the
front-end program it starts exits.  Every experiment prints one line (the rules and the
outcome) and appends its record to ``--out/outcomes.jsonl``; a finding (crashed, aborted, hung)
is also saved as a replay file.  ``--replay FILE`` runs a saved case again.  The rules, the
outcomes and the files: :mod:`pyvirtio.vhost_user.tools.hostile` and
:mod:`pyvirtio.vhost_user.tools.hostile_runner`.

Exit status: 0 no finding; 1 a finding (with --replay: the case is a finding again), or the
front-end program could not be started; 2 a usage error."""

from __future__ import annotations

import argparse
import os
import random
import tempfile

from ..errors import CliError, CliUsageError
from .values import positive_int, positive_seconds, socket_path

DEVICES = ("blk", "rng")


def _rules(text: str):
    from ..vhost_user.tools.hostile import HostileRuleError, parse_rules
    try:
        return parse_rules(text)
    except HostileRuleError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_rules.__name__ = "hostile rule"


def register(sub) -> None:
    p = sub.add_parser(
        "fuzz-frontend", help="a hostile vhost-user back-end that lies to a front-end on purpose",
        description="Serve a real device on --socket-path and lie to the front-end that connects "
                    "as the rules say: replies of the wrong size or type, replies that must not "
                    "come, no reply, impossible values (features, queue counts, config space, "
                    "vring base, inflight buffers), bad used-ring entries and spurious "
                    "interrupts.  Record what the front-end did: crashed, aborted, hung, "
                    "refused (exited with an error, closed the connection) or carried on.  "
                    "Rules: KIND[:key=value,...]; see pyvirtio.vhost_user.tools.hostile.")
    p.add_argument("--socket-path", type=socket_path, required=True, metavar="PATH",
                   help="the socket to serve the device on (the front-end connects to it)")
    p.add_argument("--device", choices=DEVICES, default="blk", help="the device (default blk)")
    p.add_argument("--blk-file", metavar="FILE",
                   help="blk: the disk image (default: a new 16 MiB sparse one, removed after)")
    p.add_argument("--packed", action="store_true", help="offer VIRTIO_F_RING_PACKED too")
    p.add_argument("--rule", type=_rules, action="append", default=[], metavar="RULES",
                   help="one experiment: a rule, or rules joined with ';' (repeatable; each "
                        "--rule runs on its own, with a fresh front-end when --qemu-cmd is given)")
    p.add_argument("--time", type=positive_seconds, default=30.0, metavar="SECONDS",
                   help="how long each experiment may last (default 30)")
    p.add_argument("--seed", type=positive_int, metavar="N",
                   help="the random seed (default: a new one, printed); same seed, same lies")
    p.add_argument("--out", default="fuzz-frontend-findings", metavar="DIR",
                   help="where outcomes.jsonl, replay files and front-end logs go "
                        "(default ./fuzz-frontend-findings)")
    p.add_argument("--qemu-cmd", metavar="CMD",
                   help="a front-end program to start for each experiment (split like a shell "
                        "line, no shell; {socket} is replaced by --socket-path); its exit "
                        "status or signal and its stderr are recorded")
    p.add_argument("--replay", metavar="FILE", help="run the case saved in FILE again")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import UsageError
    from ..vhost_user.tools.hostile_runner import read_case

    seed = args.seed or random.SystemRandom().randrange(1, 1 << 31)
    experiments = args.rule
    if args.replay:
        if args.rule:
            raise CliUsageError("--replay FILE takes its rules from the file, not --rule")
        try:
            with open(args.replay, encoding="utf-8") as f:
                args.device, args.packed, rules, seed = read_case(f.read())
        except OSError as exc:
            raise CliError(f"cannot read {args.replay}: {exc.strerror}") from None
        except UsageError as exc:
            raise CliUsageError(f"{args.replay}: {exc}") from None
        experiments = [rules]
    if not experiments:
        raise CliUsageError("give at least one --rule=RULES (or --replay FILE)")
    os.makedirs(args.out, exist_ok=True)
    print(f"pyvirtio fuzz-frontend: {args.device} on {args.socket_path}, seed {seed}, "
          f"{len(experiments)} experiment(s) of up to {args.time:g}s", flush=True)
    findings = 0
    for number, rules in enumerate(experiments, 1):
        try:
            findings += _experiment(args, number, rules, seed)
        except UsageError as exc:
            raise CliError(str(exc)) from None
    return 1 if findings else 0


def _experiment(args, number: int, rules, seed: int) -> int:
    from ..vhost_user.tools.hostile_runner import run_experiment

    image = None
    device = None
    try:
        device, image = _device(args)
        exp = run_experiment(device, args.socket_path, rules, seed=seed, seconds=args.time,
                             command=args.qemu_cmd, device_name=args.device, packed=args.packed,
                             log_path=os.path.join(args.out, f"frontend-{number}.log"))
    finally:
        if device is not None and hasattr(device, "close"):
            device.close()
        if image is not None:
            os.unlink(image)
    names = "; ".join(r.describe() for r in rules)
    o = exp.outcome
    with open(os.path.join(args.out, "outcomes.jsonl"), "a", encoding="utf-8") as f:
        f.write(exp.to_json().replace("\n", "") + "\n")
    saved = ""
    if o.finding:
        kind = rules[0].kind
        path = os.path.join(args.out, f"{o.kind}-{kind}-seed{seed}-{number}.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(exp.to_json())
        saved = f"; replay: {path}"
    print(f"[{number}] {names}: {o.kind.upper()}: {o.detail} ({len(exp.plan.fired)} lies)"
          + (f"; it logged: {o.errors[0]}" if o.errors else "") + saved, flush=True)
    return int(o.finding)


def _device(args):
    if args.device == "rng":
        from ..devices.rng import RngDevice
        dev = RngDevice()
        image = None
    else:
        from ..devices.blk import BlkDevice
        image = None
        path = args.blk_file
        if path is None:
            fd, image = tempfile.mkstemp(prefix="pyvirtio-hostile-", suffix=".img")
            os.ftruncate(fd, 16 << 20)
            os.close(fd)
            path = image
        try:
            dev = BlkDevice(path)
        except OSError as exc:
            if image:
                os.unlink(image)
            raise CliError(f"--blk-file={path}: {exc.strerror}") from None
    if args.packed:
        dev.offer_packed_ring()
    return dev, image


__all__ = ["register", "run"]
