"""The ``pyvirtio`` command line.

Each subcommand lives in its own module exposing ``register(subparsers)``; this file only wires
them together, parses, and reports a typed error once, at the top, as one line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import VirtioError

#: Modules that register subcommands, in help order.  A module that fails to import is a bug.
SUBCOMMAND_MODULES = (
    "pyvirtio.commands.loopback_demo",
    "pyvirtio.commands.serve",
    "pyvirtio.commands.demo",
    "pyvirtio.commands.bench",
    "pyvirtio.commands.probe",
    "pyvirtio.commands.check",
    "pyvirtio.commands.qtest_probe",
)


class CliError(VirtioError):
    """A bad flag, a missing file, a socket in use: the user's input, reported in one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyvirtio",
        description="The standard virtual devices (virtio) in Python: devices, drivers, transports.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except (VirtioError, OSError) as exc:
        print(f"pyvirtio {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
