"""Command-line options of ``pyvirtio serve net``: which back-end, and the device's settings.

``add_arguments(parser)`` adds the options; ``build_device(args)`` validates them, opens the
back-end and builds the :class:`~pyvirtio.devices.net.NetDevice`.  The transport that serves the
device's queues serves its back-end too (the engine's worker watches the back-end's fds).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from ..devices.net import NetDevice
    from ..net.backend import NetBackend

BACKENDS = ("tap", "switch", "socket", "null")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    be = parser.add_argument_group("network back-end (exactly one)")
    be.add_argument("--tap", metavar="NAME", help="a TAP interface (created if missing), with vnet headers "
                                                  "and checksum/segmentation offloads")
    be.add_argument("--tap-netns", metavar="NETNS", help="create the TAP inside this network namespace")
    be.add_argument("--switch", metavar="NAME", help="an L2 learning switch in this process; every device "
                                                     "naming the same switch is on it")
    be.add_argument("--socket", metavar="HOST:PORT|PATH", help="frames over a stream socket, framed like "
                                                               "QEMU's -netdev stream (4-byte length)")
    be.add_argument("--socket-listen", action="store_true", help="listen on --socket's address (server) "
                                                                 "instead of connecting to it")
    be.add_argument("--null", action="store_true",
                    help="a sink (benchmarks): read each transmitted frame's header, copy the frame into "
                         "host memory, drop it; receive nothing")
    dev = parser.add_argument_group("network device")
    dev.add_argument("--mac", help="the device's MAC address (default: a random local one)")
    dev.add_argument("--mtu", type=int, help="offer VIRTIO_NET_F_MTU with this MTU")
    dev.add_argument("--queue-pairs", type=int, default=1, help="receive/transmit queue pairs (MQ)")
    dev.add_argument("--queue-size", type=int, default=1024,
                     help="largest virtqueue size the front-end may choose (default 1024: QEMU's "
                          "rx_queue_size/tx_queue_size maximum)")
    dev.add_argument("--no-offloads", action="store_true", help="offer no checksum/segmentation offloads")
    dev.add_argument("--link-down", action="store_true", help="start with the link down")


def build_backend(args: argparse.Namespace) -> NetBackend:
    from ..net.null import NullBackend
    from ..net.stream import StreamBackend
    from ..net.switch import get_switch
    from ..net.tap import TapBackend

    chosen = [name for name in BACKENDS if getattr(args, name, None)]
    if len(chosen) != 1:
        raise UsageError("choose exactly one network back-end: --tap, --switch, --socket or --null"
                         + (f" (got {', '.join('--' + c for c in chosen)})" if chosen else ""))
    if args.socket_listen and not args.socket:
        raise UsageError("--socket-listen needs --socket")
    if args.tap_netns and not args.tap:
        raise UsageError("--tap-netns needs --tap")
    if args.tap:
        return TapBackend(args.tap, netns=args.tap_netns)
    if args.switch:
        return get_switch(args.switch).port()
    if args.socket:
        return StreamBackend(args.socket, listen=args.socket_listen)
    return NullBackend()


def build_device(args: argparse.Namespace) -> NetDevice:
    """The device the options describe, on its back-end."""
    from ..devices.net import NetDevice
    from ..net.frame import mac_bytes

    try:
        mac = mac_bytes(args.mac) if args.mac else None
    except ValueError as exc:
        raise UsageError(f"--mac: {exc}") from None
    backend = build_backend(args)
    try:
        device = NetDevice(backend, mac=mac, mtu=args.mtu, queue_pairs=args.queue_pairs,
                           queue_size=args.queue_size, offloads=not args.no_offloads,
                           link_up=not args.link_down)
    except BaseException:
        backend.close()
        raise
    return device


def build_backend_name(args: argparse.Namespace) -> str:
    """How ``pyvirtio serve`` names the chosen back-end in its start-up line."""
    for name in BACKENDS:
        value = getattr(args, name, None)
        if value:
            return name if value is True else f"{name} {value}"
    return "no back-end"
