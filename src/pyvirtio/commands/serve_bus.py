"""``pyvirtio serve-bus``: several devices on one virtio-msg bus on a UNIX socket.

    pyvirtio serve-bus --socket-path=PATH --device 'blk --blk-file=FILE' --device rng ...

Each ``--device`` is a device class and its flags exactly as ``pyvirtio serve`` takes them; the
devices are numbered 1, 2, ... in order.  Serving is :mod:`.serve_virtio_msg`'s.
"""

from __future__ import annotations

import argparse
import shlex

from ..errors import CliUsageError
from . import Parser, serve, serve_virtio_msg
from .values import socket_path


def register(sub) -> None:
    p = sub.add_parser("serve-bus", help="serve several devices on one virtio-msg bus",
                       description="Serve several pyvirtio devices on one virtio-msg bus on a UNIX "
                                   "socket; drivers enumerate the bus and claim devices.")
    p.add_argument("--socket-path", metavar="PATH", type=socket_path, help="listen on this UNIX socket")
    p.add_argument("--socket-mode", type=serve._octal_mode, default=0o600, metavar="MODE",
                   help="permissions of the socket, octal (default 0600)")
    p.add_argument("--fd", type=int, metavar="FDNUM", help="use this inherited listening socket")
    p.add_argument("--device", action="append", default=[], metavar="'TYPE FLAGS'",
                   help="a device as 'pyvirtio serve' takes it, e.g. 'blk --blk-file=disk.img' "
                        "(repeatable; numbered 1, 2, ... in this order)")
    p.set_defaults(func=run_bus)


def parse_device(text: str) -> argparse.Namespace:
    """``'TYPE FLAGS'`` parsed by ``pyvirtio serve``'s own parser for TYPE."""
    parser = Parser(prog="pyvirtio serve-bus --device")
    serve.register(parser.add_subparsers(dest="command", parser_class=Parser))
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise CliUsageError(f"--device {text!r}: {exc}") from None
    if not words or words[0] not in serve.BACKENDS:
        raise CliUsageError(f"--device {text!r}: begin with a type: {', '.join(serve.BACKENDS)}")
    try:
        return parser.parse_args(["serve", *words])
    except SystemExit:
        raise CliUsageError(f"--device {text!r}: bad flags (see pyvirtio serve {words[0]} --help)") from None


def run_bus(args) -> int:
    """Build every ``--device`` (each refused early, one line), then serve them on one bus."""
    if not args.device:
        raise CliUsageError("give at least one --device 'TYPE FLAGS'")
    devices = []
    try:
        for text in args.device:
            dev_args = parse_device(text)
            kind = serve.BACKENDS[dev_args.backend]
            device = serve_virtio_msg.build(dev_args, kind, serve._fault_rules(dev_args))
            devices.append((kind.describe(dev_args), device))
    except BaseException:
        for _, device in devices:
            device.close()
        raise
    return serve_virtio_msg.serve_devices(args, devices)


__all__ = ["parse_device", "register", "run_bus"]
