"""``pyvirtio serve TYPE --transport=virtio-msg`` (and, through :mod:`.serve_bus`, ``pyvirtio
serve-bus``): devices on a virtio-msg bus (:mod:`pyvirtio.virtio_msg`) served on a UNIX socket.

    pyvirtio serve blk --transport=virtio-msg --socket-path=PATH --blk-file=FILE ...
    pyvirtio serve-bus --socket-path=PATH --device 'blk --blk-file=FILE' --device rng ...

Every device class ``pyvirtio serve`` knows works here with the same flags (``--device`` takes
them after the type, as ``serve`` does).  Drivers connect to the socket (``pyvirtio probe
--transport=virtio-msg --socket-path=PATH`` lists the bus), share their memory as memfds and
claim devices; a driver that hangs up releases its claims.  It ends cleanly on SIGTERM, SIGINT
and SIGHUP (the socket file removed).  Not with virtio-msg: ``--connect`` (vhost-user's client
mode) and ``--control`` (its live control talks to a vhost-user endpoint).
"""

from __future__ import annotations

import select
import sys

from ..errors import CliError, CliUsageError, UsageError
from ..signals import StopSignals
from . import systemd

#: What ``--transport`` takes; vhost-user stays the default.
TRANSPORTS = ("vhost-user", "virtio-msg")


def add_transport_arg(p) -> None:
    """``--transport`` for every ``pyvirtio serve TYPE``."""
    p.add_argument("--transport", choices=TRANSPORTS, default="vhost-user",
                   help="vhost-user (the default: one device per socket, for QEMU) or virtio-msg "
                        "(a message bus on the socket: drivers enumerate, claim and release "
                        "devices; see docs/virtio-msg.md)")


def build(args, kind, faults: list):
    """The device of ``pyvirtio serve TYPE`` ``args`` (``kind``: its BackendType), with its
    ``--fault`` rules (parsed by the caller), ready for a virtio-msg bus."""
    if args.connect:
        raise CliUsageError("--connect is vhost-user's client mode; a virtio-msg bus listens")
    if args.control:
        raise CliUsageError("--control works with --transport=vhost-user only")
    try:
        device = kind.build(args)
    except UsageError as exc:
        raise CliUsageError(str(exc)) from None
    for rule in faults:
        device.faults.add(rule)
    if not args.split_only:
        device.offer_packed_ring()
    return device


def run_one(args, kind, faults: list) -> int:
    """``pyvirtio serve TYPE --transport=virtio-msg``: one device on its own bus."""
    device = build(args, kind, faults)
    return serve_devices(args, [(kind.describe(args), device)])


def serve_devices(args, devices: list) -> int:
    """Serve ``devices`` [(description, VirtioDevice)] on one bus on ``--socket-path``/``--fd``
    until a signal; the devices are closed afterwards."""
    from ..sockets import SocketInUse
    from ..vhost_user.backend.server import inherited_socket, is_listening
    from ..virtio_msg import BusServer
    server = BusServer()
    # Before the socket file exists (see serve.py).  The handler only notes the signal: one that
    # interrupts server.wait() in this thread must not take the lock that wait holds.
    signalled: list[bool] = []
    signals = StopSignals(lambda: signalled.append(True))
    try:
        if args.socket_path is None and args.fd is None:
            args.fd = systemd.listen_fd("virtio-msg")
        if (args.socket_path is None) == (args.fd is None):
            raise CliUsageError("give exactly one of --socket-path=PATH and --fd=FDNUM")
        numbers = [server.bus.add(device) for _, device in devices]
        try:
            if args.fd is not None:
                sock = inherited_socket(args.fd)
                if not is_listening(sock):
                    raise CliUsageError(f"--fd={args.fd}: a virtio-msg bus needs a listening socket")
                server.listen_on(sock)
                where = f"inherited fd {args.fd}"
            else:
                server.listen(args.socket_path, mode=args.socket_mode)
                where = args.socket_path
        except SocketInUse as exc:
            raise CliError(str(exc)) from None
        except UsageError as exc:
            raise CliUsageError(str(exc)) from None
        except OSError as exc:
            raise CliError(f"{args.socket_path}: {exc.strerror or exc}") from None
        for n, (text, device) in zip(numbers, devices):
            io = getattr(device, "io_mode", "")
            print(f"pyvirtio serve: {text}{f' ({io})' if io else ''} as virtio-msg device {n} on {where}",
                  file=sys.stderr, flush=True)
        systemd.notify("READY=1")
        try:
            # The signal's handler has run (in this thread) by the time the pipe is drained.
            while not signalled and not server.wait(0):
                select.select([signals], [], [], 1.0)
                signals.drain()
        finally:
            systemd.notify("STOPPING=1")
    finally:
        signals.close()
        server.close()
        for _, device in devices:
            device.close()
    return 0


__all__ = ["TRANSPORTS", "add_transport_arg", "build", "run_one", "serve_devices"]
