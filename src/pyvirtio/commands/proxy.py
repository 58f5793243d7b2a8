"""``pyvirtio proxy --listen=PATH --connect=PATH [--record=FILE]``: relay a vhost-user front-end
to a back-end, print every message in both directions, optionally drop or delay chosen ones;
``pyvirtio proxy --decode FILE`` prints a record.  See :mod:`pyvirtio.vhost_user.tools.proxy` for the
streams, the log line and the record format."""

from __future__ import annotations

import argparse
import sys

from ..errors import CliError, CliUsageError
from ..signals import StopSignals
from .values import socket_path


def _rule(action: str):
    def parse(text: str):
        from ..vhost_user.tools.proxy import RuleError, parse_rule
        try:
            return parse_rule(action, text)
        except RuleError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = f"{action} rule"
    return parse


def register(sub) -> None:
    p = sub.add_parser(
        "proxy", help="relay a vhost-user front-end to a back-end and decode every message",
        description="Listen on --listen for a vhost-user front-end (QEMU, DPDK …), connect each "
                    "one to the back-end at --connect, and pass every message both ways with its "
                    "fds (the back-end request channel is relayed too).  Each message is printed "
                    "as one line: time, connection, stream (fe>be, be>fe; * for the back-end "
                    "request channel), request, flags, size, fds and payload fields.  "
                    "--record writes a JSON Lines record; --decode FILE prints one.")
    p.add_argument("--listen", type=socket_path, metavar="PATH",
                   help="the socket the front-end connects to (created)")
    p.add_argument("--connect", type=socket_path, metavar="PATH",
                   help="the back-end's socket")
    p.add_argument("--record", metavar="FILE", help="write every message and event to FILE (JSONL)")
    p.add_argument("--drop", type=_rule("drop"), action="append", default=[], metavar="REQUEST[:N]",
                   help="drop the REQUEST messages (only the Nth one, counted from 1), repeatable; "
                        "e.g. --drop=SET_VRING_CALL:2")
    p.add_argument("--delay", type=_rule("delay"), action="append", default=[], metavar="REQUEST:MS",
                   help="hold each REQUEST (and what follows it on its stream) for MS "
                        "milliseconds, repeatable")
    p.add_argument("--mutate", type=_rule("mutate"), action="append", default=[],
                   metavar="[reply:]REQUEST[:N]:FIELD=VALUE",
                   help="change the REQUEST messages (with reply: the replies to them; only the "
                        "Nth, counted from 1) on their way: FIELD flags (the header's), size (the "
                        "payload cut or zero-padded, the header follows), u64, index, num (a "
                        "vring state's), or @OFFSET[/WIDTH] (WIDTH 1, 2, 4, 8 bytes, little-endian); "
                        "repeatable; e.g. --mutate=reply:GET_QUEUE_NUM:u64=0xffff")
    p.add_argument("--quiet-messages", action="store_true",
                   help="do not print the message lines (with --record)")
    p.add_argument("--decode", metavar="FILE", help="print the record FILE and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.decode:
        if args.listen or args.connect or args.record or args.drop or args.delay or args.mutate:
            raise CliUsageError("--decode FILE takes no other proxy flag")
        return decode(args.decode)
    if not (args.listen and args.connect):
        raise CliUsageError("give --listen=PATH and --connect=PATH (or --decode FILE)")
    from ..vhost_user.tools.proxy_server import ProxyServer

    try:
        record = open(args.record, "w", encoding="utf-8") if args.record else None
    except OSError as exc:
        raise CliError(f"cannot write the record {args.record}: {exc.strerror}") from None
    on_line = (lambda line: None) if args.quiet_messages else (lambda line: print(line, flush=True))
    # The stop signals' handlers go in before the socket file exists (the default action would
    # leave the file behind), and the loop watches their pipe: a signal caught since, before the
    # proxy was made or by another thread (a library's), ends it.  SIGHUP too: a closed terminal.
    signals = StopSignals(lambda: None)
    try:
        server = ProxyServer(args.listen, args.connect, rules=args.drop + args.delay + args.mutate,
                             record=record, on_line=on_line)
        server.wake_on(signals)
        print(f"pyvirtio proxy: {args.listen} -> {args.connect}", file=sys.stderr, flush=True)
        server.serve_forever()
    finally:
        signals.close()
        if record is not None:
            record.close()
    return 0


def decode(path: str) -> int:
    from ..vhost_user.tools.proxy import decode_line, read_record

    try:
        with open(path, encoding="utf-8") as f:
            for obj in read_record(f):
                print(decode_line(obj))
    except OSError as exc:
        raise CliError(f"cannot read the record {path}: {exc.strerror}") from None
    return 0
