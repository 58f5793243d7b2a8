"""Command-line options of ``pyvirtio serve console``.

    pyvirtio serve console --socket-path=PATH \\
        --port=name=org.example.pipe,path=SOCK [--port=name=other,path=SOCK2,connect] \\
        [--console=stdio|pty|none|SOCK|connect:SOCK] [--max-ports=N] [--size=COLSxROWS]

``--port`` takes comma-separated ``key=value`` items: ``name=`` (the tag the guest sees),
then one host side — ``path=SOCK`` (a UNIX socket we listen on; add ``connect`` to connect to
one instead), ``pty`` (a new pseudo-terminal, its path is printed), or ``stdio`` — and optionally
``id=N`` and ``console`` (a second console port).  ``--console`` is port 0.

:func:`add_arguments` adds the options and :func:`build_device` validates them and builds the
:class:`~pyvirtio.devices.console.ConsoleDevice` (endpoints opened by
:func:`~pyvirtio.devices.console_endpoints.open_endpoint`); ``serve`` then fits it to the
vhost-user endpoint that serves it with :func:`~pyvirtio.devices.console.attach`.
"""

from __future__ import annotations

import argparse
import logging
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from ..devices.console import ConsoleDevice
    from ..devices.console_endpoints import HostEndpoint

log = logging.getLogger(__name__)
_KEYS = {"name", "path", "id", "connect", "pty", "stdio", "console"}


@dataclass(frozen=True)
class PortOption:
    """One parsed ``--port`` value."""

    name: str
    kind: str  # "listen", "connect", "pty" or "stdio"
    path: str | None = None
    port_id: int | None = None
    console: bool = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("console device")
    group.add_argument("--port", action="append", default=[], metavar="name=NAME,path=SOCK[,connect]",
                       help="a named port; host side: path=SOCK (listen; with 'connect': connect), "
                            "pty, or stdio; optional id=N and console.  Repeat for more ports")
    group.add_argument("--console", default="none", metavar="stdio|pty|none|SOCK|connect:SOCK",
                       help="port 0, the console (default: none, output is discarded)")
    group.add_argument("--max-ports", type=int, default=31, metavar="N",
                       help="max_nr_ports in the config space (default 31, as QEMU)")
    group.add_argument("--size", default="80x25", metavar="COLSxROWS", help="console size (default 80x25)")


def parse_port(text: str) -> PortOption:
    items = dict(_item(part) for part in text.split(",") if part)
    unknown = set(items) - _KEYS
    if unknown:
        raise UsageError(f"--port={text}: unknown item(s) {', '.join(sorted(unknown))}")
    if not items.get("name"):
        raise UsageError(f"--port={text}: name=NAME is required")
    sides = [k for k in ("path", "pty", "stdio") if k in items]
    if len(sides) != 1:
        raise UsageError(f"--port={text}: give exactly one of path=SOCK, pty, stdio")
    kind = "connect" if "connect" in items else sides[0] if sides[0] != "path" else "listen"
    if "connect" in items and "path" not in items:
        raise UsageError(f"--port={text}: connect needs path=SOCK")
    return PortOption(items["name"], kind, items.get("path"), _port_id(text, items.get("id")),
                      "console" in items)


def _item(part: str) -> tuple[str, str]:
    key, _, value = part.partition("=")
    return key.strip(), value.strip()


def _port_id(text: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"--port={text}: id={value} is not a number") from None


def parse_size(text: str) -> tuple[int, int]:
    cols, sep, rows = text.lower().partition("x")
    try:
        size = int(cols), int(rows)
    except ValueError:
        size = None
    if not sep or size is None or not all(0 < v <= 0xFFFF for v in size):
        raise UsageError(f"--size={text}: expected COLSxROWS, e.g. 80x25")
    return size


def _console_endpoint(text: str) -> HostEndpoint:
    from ..devices.console_endpoints import open_endpoint

    if text in ("stdio", "pty", "none"):
        return open_endpoint(text, None, "the console")
    if text.startswith("connect:"):
        return open_endpoint("connect", text[len("connect:"):], "the console")
    return open_endpoint("listen", text, "the console")


def build_device(args: argparse.Namespace) -> ConsoleDevice:
    """Validate the options, open every endpoint, build the device (nothing left open on error)."""
    from ..devices.console import MAX_PORTS_LIMIT, ConsoleDevice, PortSpec
    from ..devices.console_endpoints import open_endpoint

    if not 1 <= args.max_ports <= MAX_PORTS_LIMIT:
        raise UsageError(f"--max-ports={args.max_ports}: must be 1..{MAX_PORTS_LIMIT}")
    size = parse_size(args.size)
    options = [parse_port(text) for text in args.port]
    names = [o.name for o in options]
    if len(set(names)) != len(names):
        raise UsageError("two --port options have the same name")
    if sum(o.kind == "stdio" for o in options) + (args.console == "stdio") > 1:
        raise UsageError("only one port can use stdio")
    with ExitStack() as undo:
        console = _console_endpoint(args.console)
        undo.callback(console.close)
        specs = []
        for o in options:
            ep = open_endpoint(o.kind, o.path, f"port {o.name}")
            undo.callback(ep.close)
            specs.append(PortSpec(ep, o.name, o.port_id, o.console))
        device = ConsoleDevice(console, specs, max_nr_ports=args.max_ports, size=size)
        undo.pop_all()
    return device


def describe(args: argparse.Namespace) -> str:
    return f"console device ({len(args.port)} port(s), console {args.console})"
