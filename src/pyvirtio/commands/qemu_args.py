"""The QEMU arguments that attach a vhost-user back-end, and ``pyvirtio qemu-args``.

A vhost-user back-end reads the guest's memory, so QEMU must put guest RAM in a shared file
(``share=on``) and pass it over the socket; then one ``-chardev socket`` per back-end and the
device that speaks vhost-user over it::

    -m 1G -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem
    -chardev socket,id=vu-blk-disk,path=/run/disk.sock -device vhost-user-blk-pci,chardev=vu-blk-disk,num-queues=1
    -chardev socket,id=vu-net-n0,path=/run/n0.sock -netdev vhost-user,id=net-n0,chardev=vu-net-n0
        -device virtio-net-pci,netdev=net-n0

``pyvirtio serve`` prints these at start (:func:`attach_lines`); ``pyvirtio qemu-args
--socket-path=PATH`` prints them for any running back-end, from what :mod:`.probe` learns.
"""

from __future__ import annotations

import os
import re
import shlex

from ..errors import CliError
from ..spec.ids import DeviceType
from .probe import add_socket_args, device_type_arg

#: QEMU's vhost-user PCI device for each device type whose front-end is one ``-device``.
QEMU_DEVICES: dict[int, str] = {
    DeviceType.BLOCK: "vhost-user-blk-pci",
    DeviceType.ENTROPY: "vhost-user-rng-pci",
    DeviceType.SCSI: "vhost-user-scsi-pci",
    DeviceType.INPUT: "vhost-user-input-pci",
    DeviceType.I2C: "vhost-user-i2c-pci",
    DeviceType.GPIO: "vhost-user-gpio-pci",
    DeviceType.VSOCK: "vhost-user-vsock-pci",
    DeviceType.FS: "vhost-user-fs-pci",
}
DEFAULT_MEMORY = "1G"


def memory_args(size: str = DEFAULT_MEMORY) -> list[str]:
    """Guest RAM a back-end can map: a memfd shared with it, as the guest's only NUMA node."""
    return ["-m", size, "-object", f"memory-backend-memfd,id=mem,size={size},share=on",
            "-numa", "node,memdev=mem"]


def device_args(device_type: int, socket_path: str, *, queues: int = 1, fs_tag: str | None = None) -> list[str]:
    """``-chardev`` and ``-device`` (``-netdev`` for net) for the back-end on ``socket_path``;
    ``queues``: request queues (blk), queue pairs (net)."""
    tag = _tag(socket_path)
    chardev = f"vu-{tag}"
    args = ["-chardev", f"socket,id={chardev},path={_qemu_value(os.path.abspath(socket_path))}"]
    if device_type == DeviceType.NET:
        netdev = f"net-{tag}"
        args += ["-netdev", f"vhost-user,id={netdev},chardev={chardev}" + (f",queues={queues}" if queues > 1 else "")]
        nic = f"virtio-net-pci,netdev={netdev}"
        if queues > 1:
            nic += f",mq=on,vectors={2 * queues + 2}"
        return args + ["-device", nic]
    device = QEMU_DEVICES.get(device_type)
    if device is None:
        raise CliError(f"QEMU has no vhost-user device of type {device_type} that this command "
                       "can set up (it knows blk, net, rng, scsi, input, i2c and gpio)")
    if device_type == DeviceType.BLOCK:
        device += f",chardev={chardev},num-queues={queues}"
    elif device_type == DeviceType.SCSI:  # QEMU's default is one per vCPU: more than served hangs
        device += f",chardev={chardev},num_queues={queues}"
    elif device_type == DeviceType.FS:  # the guest mounts by this tag: mount -t virtiofs TAG
        device += f",chardev={chardev},tag={_qemu_value(fs_tag or 'share')}"
        device += f",num-request-queues={queues}" if queues > 1 else ""
    else:
        device += f",chardev={chardev}"
    return args + ["-device", device]


def attach_lines(device_type: int, socket_path: str, *, queues: int = 1,
                 memory: str = DEFAULT_MEMORY, tag: str | None = None) -> list[str]:
    """Two shell-quoted lines: the shared memory, then the device."""
    return [shlex.join(memory_args(memory)),
            shlex.join(device_args(device_type, socket_path, queues=queues, fs_tag=tag))]


def _tag(socket_path: str) -> str:
    stem = os.path.splitext(os.path.basename(socket_path))[0]
    return re.sub(r"[^A-Za-z0-9_.-]", "-", stem)[:32] or "sock"


def _qemu_value(text: str) -> str:
    """A comma inside a QEMU option value is written twice."""
    return text.replace(",", ",,")


def register(sub) -> None:
    p = sub.add_parser(
        "qemu-args", help="print the QEMU arguments that attach a running vhost-user back-end",
        description="Probe a running vhost-user back-end (device type, queues) and print the "
                    "QEMU arguments that attach it: guest memory shared with the back-end "
                    "(memory-backend-memfd,share=on), the -chardev socket, and the device "
                    "(vhost-user-blk-pci, -netdev vhost-user + virtio-net-pci, vhost-user-rng-pci …).")
    add_socket_args(p, type_help="the device type")
    p.add_argument("--memory", default=DEFAULT_MEMORY, metavar="SIZE",
                   help=f"guest RAM, as QEMU's -m takes it (default {DEFAULT_MEMORY})")
    p.set_defaults(func=run)


def run(args) -> int:
    from .probe import probe

    report = probe(args.socket_path, device_type_arg(args), timeout=args.timeout)
    dtype = report["device_type"]
    if not dtype:
        raise CliError(f"{args.socket_path}: cannot tell the device type; say it with --type=TYPE")
    print(" \\\n".join(attach_lines(dtype, args.socket_path, queues=_queues(report), memory=args.memory)))
    return 0


def _queues(report: dict) -> int:
    """Request queues (blk: the config's num_queues when it has one) or queue pairs (net)."""
    config = report.get("config") or {}
    if report["device_type"] == DeviceType.BLOCK and config.get("num_queues"):
        return int(config["num_queues"])
    return max(1, int(report["queues"] or 1))


def serve_banner(device_type: int, socket_path: str | None, *, queues: int = 1,
                 tag: str | None = None) -> list[str]:
    """What ``pyvirtio serve`` prints at start: how to attach it to QEMU."""
    if socket_path is None:
        return []
    try:
        lines = attach_lines(device_type, socket_path, queues=queues, tag=tag)
    except CliError:
        return [f"QEMU has no vhost-user device for type {device_type}; drive it with pyvirtio's "
                "front-end (pyvirtio.vhost_user.frontend.transport)"]
    return ["attach it to QEMU with:"] + ["  " + line for line in lines]
