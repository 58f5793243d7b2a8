"""Argument types shared by the subcommands: each turns one flag's text into a value or refuses
it with a reason argparse prints as a one-line usage error (exit status 2).

``type=positive_seconds`` refuses ``-1``, ``0``, ``nan`` and ``inf`` (a socket timeout of
``-1`` would otherwise end in ``ValueError: Timeout value out of range`` deep inside ``socket``);
``type=socket_path`` refuses a path longer than a UNIX socket address holds.
"""

from __future__ import annotations

import argparse
import math
import os

#: ``sizeof(struct sockaddr_un.sun_path)`` on Linux is 108, one byte of which is the final NUL.
SUN_PATH_MAX = 107


def positive_seconds(text: str) -> float:
    """A finite number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def positive_int(text: str) -> int:
    """A whole number above zero."""
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def socket_path(text: str) -> str:
    """A path that fits in a UNIX socket address (at most 107 bytes)."""
    size = len(os.fsencode(text))
    if size == 0:
        raise argparse.ArgumentTypeError("the path is empty")
    if size > SUN_PATH_MAX:
        raise argparse.ArgumentTypeError(
            f"{text[:40]}… is {size} bytes; a UNIX socket path holds at most {SUN_PATH_MAX} "
            "(use a shorter path, e.g. one relative to the working directory)")
    return text
