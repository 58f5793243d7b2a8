"""Command-line options of ``pyvirtio serve vsock``.

    pyvirtio serve vsock --socket-path=PATH --guest-cid=N --uds-path=UDS

The host side follows the hybrid-vsock convention (:mod:`pyvirtio.vsock.hybrid`): host programs
connect to ``UDS`` and write ``CONNECT <port>\\n``; guest connections to host port P go to
``UDS_P``.  QEMU attaches with ``-chardev socket,id=c0,path=PATH -device
vhost-user-vsock-pci,chardev=c0`` (the guest's CID comes from this back-end's config space).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import CliError, UsageError

if TYPE_CHECKING:
    from ..devices.vsock import VsockDevice


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("vsock device")
    group.add_argument("--guest-cid", type=int, metavar="N",
                       help="the guest's CID (3..4294967294), given to the guest in the config space")
    group.add_argument("--uds-path", metavar="UDS",
                       help="host side: host programs connect here and write 'CONNECT <port>\\n'; "
                            "guest connections to host port P go to UDS_P")


def build_device(args: argparse.Namespace) -> VsockDevice:
    from ..devices.vsock import VsockDevice, check_guest_cid
    from ..sockets import SocketInUse
    from ..vsock.hybrid import HybridHost

    if args.guest_cid is None:
        raise UsageError("--guest-cid=N is required")
    if not args.uds_path:
        raise UsageError("--uds-path=UDS is required")
    cid = check_guest_cid(args.guest_cid)
    try:
        host = HybridHost(args.uds_path, socket_mode=args.socket_mode)
    except SocketInUse as exc:
        raise CliError(f"--uds-path={args.uds_path}: {exc}") from None
    except OSError as exc:
        raise CliError(f"--uds-path={args.uds_path}: {exc.strerror or exc}") from None
    return VsockDevice(cid, host)


def attach(device: VsockDevice, endpoint) -> None:
    from ..devices.vsock import serve_on_vhost_user

    serve_on_vhost_user(device, endpoint)


def describe(args: argparse.Namespace) -> str:
    return f"vsock device (guest CID {args.guest_cid}, host side {args.uds_path})"
