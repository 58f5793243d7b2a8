"""``pyvirtio serve TYPE``: a vhost-user back-end program (vhost-user.rst, "Backend program
conventions").

    pyvirtio serve blk --socket-path=PATH --blk-file=FILE [--read-only] [--num-queues=N] [--serial=ID]
                       [--direct] [--format=raw] [--aio=auto|io_uring|threads]
                       [--locking=auto|on|off]
    pyvirtio serve rng --socket-path=PATH
    pyvirtio serve blk --fd=FDNUM ...          # an inherited socket: listening (served until
                                               # SIGTERM) or connected (served once, then exit)
    pyvirtio serve blk --print-capabilities    # {"type": "block", "features": [...]}

Under systemd it takes the socket of its .socket unit (``LISTEN_FDS``/``LISTEN_PID``, the one
named after the back-end type when ``LISTEN_FDNAMES`` lists several; see ``contrib/``) and
reports ``READY=1`` / ``STOPPING=1`` on ``NOTIFY_SOCKET`` (:mod:`.systemd`).  At start it prints
the QEMU arguments that attach it (:mod:`.qemu_args`).

It never daemonizes, ends cleanly on SIGTERM/SIGINT/SIGHUP, and refuses early (non-zero exit, one line
on stderr) a bad flag, a missing or unreadable file, an image another process locks (QEMU's
lock protocol, see :mod:`pyvirtio.devices.blk_image`), an empty or non-raw image, or a socket
path a live back-end listens on (a stale socket file is replaced).  When a front-end hangs up it
waits for the next one.

Management software finds the program through the JSON descriptions of QEMU's
docs/interop/vhost-user.json, which ``pyvirtio descriptors install`` writes (:mod:`.descriptors`);
their ``binary`` is the absolute path of the installed ``pyvirtio-vhost-user-blk`` / ``-net`` /
``-rng`` / ``-console`` entry point (:func:`main_blk` …).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..errors import CliError, CliUsageError, UsageError
from . import Parser, systemd
from .values import socket_path

if TYPE_CHECKING:
    from ..device import VirtioDevice

log = logging.getLogger("pyvirtio.serve")


@dataclass(frozen=True)
class BackendType:
    """One kind of back-end: its vhost-user.json type and features, and how to build it."""

    json_type: str
    features: tuple[str, ...]
    build: Callable[[argparse.Namespace], VirtioDevice]
    describe: Callable[[argparse.Namespace], str]

    def capabilities(self) -> dict:
        caps: dict = {"type": self.json_type}
        if self.features:
            caps["features"] = list(self.features)
        return caps


def _build_blk(args):
    from ..devices.blk import BlkDevice
    from ..devices.blk_image import ImageError
    if not args.blk_file:
        raise CliUsageError("--blk-file=FILE is required")
    if not 1 <= args.num_queues <= 64:
        raise CliUsageError(f"--num-queues={args.num_queues}: must be 1..64")
    if args.serial is not None and len(args.serial.encode()) > 20:
        raise CliUsageError(f"--serial={args.serial!r}: at most 20 bytes")
    if args.format is not None and args.format != "raw":
        raise CliUsageError(f"--format={args.format}: pyvirtio serves raw images only")
    path = args.blk_file
    if not os.path.exists(path):
        raise CliError(f"--blk-file={path}: no such file")
    if os.path.isdir(path):
        raise CliError(f"--blk-file={path}: is a directory")
    try:
        return BlkDevice(path, read_only=args.read_only, serial=args.serial,
                         num_queues=args.num_queues, direct=args.direct, aio=args.aio,
                         image_format=args.format, locking=args.locking != "off",
                         in_order=args.in_order)
    except ImageError as exc:
        raise CliError(f"--blk-file={exc.path}: {exc.why}") from None
    except UsageError as exc:
        raise CliUsageError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"--blk-file={path}: {exc.strerror}") from None


def _build_rng(args):
    from ..devices.rng import RngDevice
    return RngDevice()


BACKENDS = {
    "blk": BackendType("block", ("read-only", "blk-file"), _build_blk,
                       lambda a: f"block device {a.blk_file}" + (" (read-only)" if a.read_only else "")),
    "rng": BackendType("rng", (), _build_rng, lambda a: "entropy device"),
    "net": BackendType("net", (), lambda a: _build_net(a),
                       lambda a: f"network device on {_net_cli().build_backend_name(a)}"),
    "console": BackendType("console", (), lambda a: _console_cli().build_device(a),
                           lambda a: _console_cli().describe(a)),
    "input": BackendType("input", (), lambda a: _input_cli().build_device(a),
                         lambda a: _input_cli().describe(a)),
    "scsi": BackendType("scsi", (), lambda a: _scsi_cli().build_device(a),
                        lambda a: _scsi_cli().describe(a)),
    "vsock": BackendType("vsock", (), lambda a: _vsock_cli().build_device(a),
                         lambda a: _vsock_cli().describe(a)),
    "fs": BackendType("fs", (), lambda a: _fs_cli().build_device(a), lambda a: _fs_cli().describe(a)),
}


def _build_net(args):
    """The net device; a back-end the OS refuses is named by its flag, with the likely cause."""
    try:
        return _net_cli().build_device(args)
    except OSError as exc:
        flag = "--" + _net_cli().build_backend_name(args).replace(" ", "=", 1)
        if args.tap_netns:
            flag += f" --tap-netns={args.tap_netns}"
        why = (exc.strerror or str(exc)) + (f": {exc.filename}" if exc.filename else "")
        if args.tap and exc.errno in (errno.EPERM, errno.EACCES):
            why += (" (creating or opening a TAP needs CAP_NET_ADMIN: run as root, or create it "
                    f"first with 'ip tuntap add dev {args.tap} mode tap user $USER')")
        raise CliError(f"{flag}: {why}") from None


def _net_cli():
    from . import serve_net
    return serve_net


def _console_cli():
    from . import serve_console
    return serve_console


def _input_cli():
    from . import input_cli
    return input_cli


def _scsi_cli():
    from . import serve_scsi
    return serve_scsi


def _virtio_msg_cli():
    from . import serve_virtio_msg
    return serve_virtio_msg


def _vsock_cli():
    from . import serve_vsock
    return serve_vsock


def _fs_cli():
    from . import serve_fs
    return serve_fs


def register(sub) -> None:
    p = sub.add_parser("serve", help="run a vhost-user back-end (blk, rng, net, console) for QEMU",
                       description="Serve a pyvirtio device over vhost-user on a UNIX socket, "
                                   "following vhost-user.rst's back-end program conventions.")
    types = p.add_subparsers(dest="backend", metavar="TYPE", parser_class=Parser)
    blk = types.add_parser("blk", help="a virtio-blk disk backed by a raw image or block device")
    _common(blk)
    blk.add_argument("--blk-file", metavar="FILE", help="the raw image file or block device")
    blk.add_argument("--read-only", action="store_true", help="refuse writes (VIRTIO_BLK_F_RO)")
    blk.add_argument("--num-queues", type=int, default=1, metavar="N",
                     help="request queues (default 1; QEMU's num-queues must not exceed it)")
    blk.add_argument("--serial", metavar="ID", help="the disk's ID string (at most 20 bytes)")
    blk.add_argument("--format", metavar="raw",
                     help="the image's format: only raw; saying so serves an image whose first "
                          "bytes look like qcow2, vmdk, LUKS ... (refused otherwise)")
    blk.add_argument("--direct", action="store_true",
                     help="open the image O_DIRECT, bypassing the host page cache (like "
                          "qemu-storage-daemon's cache.direct=on)")
    blk.add_argument("--aio", choices=("auto", "io_uring", "threads"), default="auto",
                     help="how requests reach the image: io_uring, a thread pool, or auto "
                          "(the default) to let pyvirtio choose")
    blk.add_argument("--in-order", action="store_true",
                     help="offer VIRTIO_F_IN_ORDER: requests still run concurrently, but go back "
                          "to the driver in the order it made them available")
    blk.add_argument("--locking", choices=("auto", "on", "off"), default="auto",
                     help="lock the image as QEMU does, so that QEMU, qemu-storage-daemon and "
                          "other pyvirtio processes cannot write it under us (default auto = on)")
    rng = types.add_parser("rng", help="a virtio entropy device fed by the host's getrandom()")
    _common(rng)
    net = types.add_parser("net", help="a virtio-net device on a TAP, an in-daemon switch, a stream "
                                       "socket, or nothing (--null)")
    _common(net)
    _net_cli().add_arguments(net)
    console = types.add_parser("console", help="a virtio-console device with named ports bridged to "
                                               "UNIX sockets, ptys or stdio")
    _common(console)
    _console_cli().add_arguments(console)
    inp = types.add_parser("input", help="a virtio input device (keyboard, mouse, tablet, "
                                         "multitouch) fed by ctl key/event or an --events script")
    _common(inp)
    _input_cli().add_arguments(inp)
    scsi = types.add_parser("scsi", help="a virtio-scsi host with disks (raw images), CD-ROM drives "
                                         "(ISO images) and SG_IO passthrough units")
    _common(scsi)
    _scsi_cli().add_arguments(scsi)
    vsock = types.add_parser("vsock", help="a virtio-vsock device whose streams go to UNIX sockets "
                                           "(hybrid vsock: CONNECT <port>, UDS_<port>)")
    _common(vsock)
    _vsock_cli().add_arguments(vsock)
    fs = types.add_parser("fs", help="a virtio-fs device sharing a host directory (virtiofsd's "
                                     "conventions: --shared-dir, --cache, --read-only)")
    _common(fs)
    _fs_cli().add_arguments(fs)
    p.set_defaults(func=run)


def _common(p) -> None:
    p.add_argument("--socket-path", metavar="PATH", type=socket_path, help="listen on this UNIX socket")
    p.add_argument("--socket-mode", type=_octal_mode, default=0o600, metavar="MODE",
                   help="permissions of the socket --socket-path creates, octal (default 0600: "
                        "only this user may connect)")
    p.add_argument("--fd", type=int, metavar="FDNUM",
                   help="use this inherited socket (listening, or one connected front-end)")
    p.add_argument("--connect", action="store_true",
                   help="client mode: connect to a front-end that listens on --socket-path (DPDK "
                        "virtio-user server=1, QEMU -chardev socket,server=on) instead of "
                        "listening, and connect again whenever it goes away")
    p.add_argument("--print-capabilities", action="store_true",
                   help="print the back-end's capabilities as JSON and exit")
    p.add_argument("--control", metavar="PATH", type=socket_path,
                   help="also listen on this UNIX socket (mode 0600) for live control: "
                        "'pyvirtio ctl PATH stats|resize|link|port|fault|reset', 'pyvirtio top PATH'")
    p.add_argument("--split-only", action="store_true",
                   help="do not offer VIRTIO_F_RING_PACKED (packed rings are offered by default; "
                        "this forces split rings, e.g. for comparisons)")
    p.add_argument("--poll-us", type=_poll_us, default=DEFAULT_POLL_US, metavar="US",
                   help="adaptive polling, as QEMU's IOThreads (poll-max-ns): a queue worker "
                        "whose waits are short looks for its next kick or completion without "
                        "sleeping for up to US microseconds, and stops after a long wait "
                        "(default 0: always sleep; QEMU's IOThreads use 32; 64 serves a "
                        "driver that answers within 64 us without a wake-up: lower latency "
                        "at queue depth 1, for the CPU time spent looking)")
    _virtio_msg_cli().add_transport_arg(p)
    p.add_argument("--fault", action="append", default=[], metavar="RULE",
                   help="inject a fault from the start, e.g. ioerr:sectors=2048-4095, "
                        "latency:ms=20, drop:rate=0.5 (repeatable; README 'Fault injection')")


#: ``serve --poll-us`` default: off, as qemu-storage-daemon's main loop (QEMU's IOThreads poll
#: for up to 32 µs), so that a daemon's CPU use follows its load.  The budget must cover the
#: driver's answer to a notification (its wake-up, its next request, its kick) or the window
#: closes after every wait: with pyvirtio's Python driver 32 µs is too short and 64 µs makes
#: 4 KiB qd1 1.5x what it is without (benchmarks/README.md, session 14); in a TCG guest on a
#: 2-CPU host 64 µs cost the guest nothing measurable (in-guest fio 4 KiB qd1 0.95 with it,
#: 0.92 without; the requests come too far apart for the window to stay open).
DEFAULT_POLL_US = 0.0


def _poll_us(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of microseconds") from None
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r}: between 0 and 10000 microseconds")
    return value


def _octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 0600") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a permission mode (0..0777)")
    return mode


def run(args) -> int:
    if not getattr(args, "backend", None):
        raise CliUsageError("say which back-end to serve: blk, rng, net or console")
    kind = BACKENDS[args.backend]
    if args.print_capabilities:
        print(json.dumps(kind.capabilities()))
        return 0
    if args.transport == "virtio-msg":
        return _virtio_msg_cli().run_one(args, kind, _fault_rules(args))
    activated = False
    if args.socket_path is None and args.fd is None:  # started by a systemd .socket unit?
        args.fd = systemd.listen_fd(args.backend)
        activated = args.fd is not None
    if (args.socket_path is None) == (args.fd is None):
        raise CliUsageError("give exactly one of --socket-path=PATH and --fd=FDNUM "
                            "(or start it from a systemd .socket unit)")
    if args.connect and args.socket_path is None:
        raise CliUsageError("--connect needs --socket-path=PATH (the front-end's socket)")
    from ..sockets import SocketInUse
    from ..vhost_user.backend.server import VhostUserServer, inherited_socket, is_listening
    faults = _fault_rules(args)  # refused before anything is opened
    try:
        device = kind.build(args)
    except UsageError as exc:  # net and console: a flag's value, or flags that do not go together
        raise CliUsageError(str(exc)) from None
    for rule in faults:
        device.faults.add(rule)
    if not args.split_only:
        device.offer_packed_ring()
    server = VhostUserServer()
    # Before any socket file exists: a supervisor that stops us as soon as it sees the file must
    # find a handler (the default action would leave the file behind).
    server.install_signal_handlers()
    poll_max = args.poll_us / 1e6
    undo: list[Callable[[], None]] = []  # the control socket's parts, closed before the server
    try:
        try:
            if args.fd is not None:
                sock = inherited_socket(args.fd)
                listening_on = sock.getsockname() if is_listening(sock) else None
                endpoint = server.add(device, sock=sock, poll_max=poll_max)
            elif args.connect:
                listening_on = None
                endpoint = server.add(device, socket_path=args.socket_path, connect=True,
                                      poll_max=poll_max)
            else:
                listening_on = args.socket_path
                endpoint = server.add(device, socket_path=args.socket_path,
                                      socket_mode=args.socket_mode, poll_max=poll_max)
            if args.backend == "console":  # its rings are gated by the vhost-user ring state
                from ..devices.console import ConsoleDevice, attach
                assert isinstance(device, ConsoleDevice)
                attach(device, endpoint)
            if args.backend == "vsock":  # its rings are gated by the vhost-user ring state
                _vsock_cli().attach(device, endpoint)
            if args.control:
                undo.append(_serve_control(args, device, endpoint, server))
            if args.backend == "input":
                undo.append(_input_cli().start_script(args, device))
        except SocketInUse as exc:
            raise CliError(str(exc)) from None
        except UsageError as exc:
            raise CliUsageError(str(exc)) from None
        except OSError as exc:
            raise CliError(f"{args.socket_path}: {exc.strerror or exc}") from None
        where = args.socket_path or f"inherited fd {args.fd}" + (" (systemd)" if activated else "")
        if args.connect:
            where = f"{args.socket_path} (client mode: connecting to the front-end)"
        io = getattr(device, "io_mode", "")
        print(f"pyvirtio serve: {kind.describe(args)}{f' ({io})' if io else ''} on {where}",
              file=sys.stderr, flush=True)
        for line in _qemu_banner(args, listening_on or None):
            print(f"pyvirtio serve: {line}", file=sys.stderr, flush=True)
        systemd.notify("READY=1")  # listening: QEMU may connect now
        try:
            server.serve_forever()
        finally:
            systemd.notify("STOPPING=1")
    finally:
        for close in reversed(undo):
            close()
        server.close()
        device.close()
    return 0


def _serve_control(args, device, endpoint, server) -> Callable[[], None]:
    """The control socket for ``device`` on ``args.control``; for a net device served on a
    socket path, ``link down/up`` is also shown to the front-end by the connection (QEMU takes
    a vhost-user net's link state only from that: :mod:`pyvirtio.net.vhost_link`).  Returns
    what closes both."""
    from ..control import ControlServer, ControlTarget
    from ..sockets import SocketInUse
    try:
        control = ControlServer(args.control, ControlTarget(device, endpoint), server)
    except SocketInUse as exc:
        raise CliError(f"--control={args.control}: {exc}") from None
    except OSError as exc:
        raise CliError(f"--control={args.control}: {exc.strerror or exc}") from None
    link = None
    if args.backend == "net" and endpoint.path and not args.connect:
        from ..net.vhost_link import VhostLinkControl
        link = VhostLinkControl(device, endpoint)
    print(f"pyvirtio serve: control socket on {args.control} (pyvirtio ctl {args.control} help)",
          file=sys.stderr, flush=True)

    def close() -> None:
        control.close()
        if link is not None:
            link.close()
    return close


def _device_type(backend: str) -> int:
    from ..spec.ids import DeviceType
    return {"blk": DeviceType.BLOCK, "rng": DeviceType.ENTROPY, "net": DeviceType.NET,
            "console": DeviceType.CONSOLE, "input": DeviceType.INPUT,
            "scsi": DeviceType.SCSI,
            "vsock": DeviceType.VSOCK, "fs": DeviceType.FS}[backend]


def _fault_rules(args) -> list:
    """The ``--fault`` rules, each parsed and checked against the device type."""
    from ..faults import FaultRuleError, FaultSet, parse_rule
    check = FaultSet(_device_type(args.backend), name=args.backend)
    rules = []
    for text in args.fault:
        try:
            rule = parse_rule(text)
            check.add(rule)
        except FaultRuleError as exc:
            raise CliUsageError(f"--fault={text}: {exc}") from None
        rules.append(parse_rule(text))
    return rules


def _qemu_banner(args, socket_path) -> list[str]:
    from .qemu_args import serve_banner
    dtype = _device_type(args.backend)
    queues = (getattr(args, "num_queues", None) or getattr(args, "queue_pairs", None)
              or getattr(args, "num_request_queues", None) or getattr(args, "request_queues", None) or 1)
    return serve_banner(dtype, socket_path, queues=queues, tag=getattr(args, "tag", None))
