"""Subcommands of the ``pyvirtio`` CLI, one module each, and the parser class they share.

Every module here that :data:`pyvirtio.cli.SUBCOMMAND_MODULES` names exposes
``register(subparsers)``; the others (``serve_net``, ``serve_console``, ``values`` ...) hold the
options of one subcommand.  Errors are :class:`~pyvirtio.errors.CliError` (exit 1) and
:class:`~pyvirtio.errors.CliUsageError` (exit 2), reported once by :func:`pyvirtio.cli.main`.

Every ``pyvirtio`` invocation (``--version``, each daemon's start) builds every subcommand's
parser, so these modules import at their top only what their parsers need (``errors``, ``spec``,
``values``); devices, drivers, the bus, the vhost-user package and numpy are imported inside the
functions that run a command (``tests/test_cli_errors.py`` checks that building the parser
loads none of them).
"""

from __future__ import annotations

import argparse

from ..errors import CliUsageError

EXIT_USAGE = CliUsageError.exit_code


class Parser(argparse.ArgumentParser):
    """No abbreviated flags (``--sock=`` is not ``--socket-path=``); errors in one line, exit 2;
    unknown flags refused by the subcommand that got them, naming it."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        ns, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return ns, extra
