"""Subcommands of the ``pyvirtio`` CLI, one module each, and the parser class they share.

Every module here that :data:`pyvirtio.cli.SUBCOMMAND_MODULES` names exposes
``register(subparsers)``; the others (``serve_net``, ``serve_console``, ``values`` ...) hold the
options of one subcommand.  Errors are :class:`~pyvirtio.errors.CliError` (exit 1) and
:class:`~pyvirtio.errors.CliUsageError` (exit 2), reported once by :func:`pyvirtio.cli.main`.
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
