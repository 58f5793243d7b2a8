"""The ``pyvirtio`` command line.

Each subcommand lives in its own module exposing ``register(subparsers)``; this file only wires
them together, parses, and reports a typed error once, at the top, as one line.

Exit status: 0 success; 1 a runtime failure (a back-end that is not there or misbehaves, a file
that cannot be opened, a MUST requirement that failed); 2 a usage error (a bad flag or value,
flags that do not go together) — see :data:`EPILOG`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from . import version
from .commands import Parser
from .errors import CliError, CliUsageError, VirtioError

#: Modules that register subcommands, in help order.  A module that fails to import is a bug.
SUBCOMMAND_MODULES = (
    "pyvirtio.commands.loopback_demo",
    "pyvirtio.commands.serve",
    "pyvirtio.commands.serve_bus",
    "pyvirtio.commands.ctl",
    "pyvirtio.commands.top",
    "pyvirtio.commands.qemu_args",
    "pyvirtio.commands.descriptors",
    "pyvirtio.commands.kernel",
    "pyvirtio.commands.guest",
    "pyvirtio.commands.demo",
    "pyvirtio.commands.bench",
    "pyvirtio.commands.accelerate",
    "pyvirtio.commands.probe",
    "pyvirtio.commands.check",
    "pyvirtio.commands.qtest_probe",
    "pyvirtio.commands.proxy",
    "pyvirtio.commands.fuzz",
    "pyvirtio.commands.fuzz_frontend",
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, CliError.exit_code, CliUsageError.exit_code

EPILOG = """\
logging options (-v, -q, --log-level) are accepted before and after the subcommand.

exit status:
  0  success
  1  runtime failure: the back-end is not there or misbehaves, a file cannot be opened,
     a requirement failed (check: a MUST requirement was not met or could not be checked)
  2  usage error: a bad flag or value, or flags that do not go together
"""

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def log_level_name(text: str) -> int:
    name = text.lower()
    if name not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return getattr(logging, name.upper())


def _add_logging_options(p: argparse.ArgumentParser, prefix: str) -> None:
    """-v/-q/--log-level; below the top level they go to ``sub_*`` and default to nothing, so
    that a subparser does not overwrite what was given before the subcommand."""
    default = argparse.SUPPRESS if prefix else None
    g = p.add_argument_group("logging")
    g.add_argument("-v", "--verbose", dest=prefix + "verbose", action="count", default=default or 0,
                   help="more log output (-vv for debug)")
    g.add_argument("-q", "--quiet", dest=prefix + "quiet", action="store_true", default=default or False,
                   help="log errors only")
    g.add_argument("--log-level", dest=prefix + "log_level", type=log_level_name, default=default,
                   metavar="NAME", help=f"log at this level: {', '.join(LOG_LEVELS)} (default warning)")


def _subparsers(p: argparse.ArgumentParser):
    for action in p._actions:  # noqa: SLF001 - argparse has no public walk of its tree
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            seen = set()
            for child in action.choices.values():
                if id(child) not in seen:
                    seen.add(id(child))
                    yield child


def _walk(p: argparse.ArgumentParser):
    for child in _subparsers(p):
        yield child
        yield from _walk(child)


def _build() -> str:
    """`` (accelerated: mypyc)`` when ``pyvirtio accelerate``'s compiled ring cores run."""
    from .accel import active

    return " (accelerated: mypyc)" if active() else ""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pyvirtio", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The standard virtual devices (virtio) in Python: devices, drivers, transports.")
    parser.add_argument("--version", action="version", version=f"pyvirtio {version()}{_build()}")
    _add_logging_options(parser, "")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)  # a module that fails to import is a bug
    for child in _walk(parser):
        _add_logging_options(child, "sub_")
    return parser


def log_level(args: argparse.Namespace) -> int:
    """The level the flags ask for: --log-level wins, then --quiet, then -v counted everywhere."""
    named = getattr(args, "sub_log_level", None) or args.log_level
    if named is not None:
        return named
    if args.quiet or getattr(args, "sub_quiet", False):
        return logging.ERROR
    return logging.WARNING - 10 * min(args.verbose + getattr(args, "sub_verbose", 0), 2)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=log_level(args), format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code = args.func(args) or EXIT_OK
        sys.stdout.flush()  # a reader that went away (| head) fails here, not at exit
        return code
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_FAILURE
    except CliError as exc:
        return _fail(args, exc, exc.exit_code)
    except (VirtioError, OSError) as exc:  # a UsageError here came from the run, not the flags
        return _fail(args, exc, EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130


def _fail(args: argparse.Namespace, exc: BaseException, code: int) -> int:
    print(f"pyvirtio {args.command}: error: {exc}", file=sys.stderr)
    return code


def _stdout_to_devnull() -> None:
    """The reader of our output went away: say nothing more there (Python's own advice)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _serve(backend: str, argv: list[str] | None) -> int:
    return main(["serve", backend, *(sys.argv[1:] if argv is None else argv)])


def main_blk(argv: list[str] | None = None) -> int:
    """Entry point ``pyvirtio-vhost-user-blk`` (the ``binary`` of its vhost-user.json description)."""
    return _serve("blk", argv)


def main_rng(argv: list[str] | None = None) -> int:
    """Entry point ``pyvirtio-vhost-user-rng`` (the ``binary`` of its vhost-user.json description)."""
    return _serve("rng", argv)


def main_net(argv: list[str] | None = None) -> int:
    """Entry point ``pyvirtio-vhost-user-net`` (the ``binary`` of its vhost-user.json description)."""
    return _serve("net", argv)


def main_console(argv: list[str] | None = None) -> int:
    """Entry point ``pyvirtio-vhost-user-console`` (the ``binary`` of its vhost-user.json description)."""
    return _serve("console", argv)


def main_scsi(argv: list[str] | None = None) -> int:
    """Entry point ``pyvirtio-vhost-user-scsi`` (the ``binary`` of its vhost-user.json description)."""
    return _serve("scsi", argv)


def main_fs(argv: list[str] | None = None) -> int:
    """Entry point ``pyvirtio-vhost-user-fs`` (the ``binary`` of its vhost-user.json description)."""
    return _serve("fs", argv)


if __name__ == "__main__":
    sys.exit(main())
