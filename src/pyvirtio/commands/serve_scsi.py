"""Command-line options of ``pyvirtio serve scsi``.

    pyvirtio serve scsi --socket-path=PATH [--disk=IMG[,OPTS]]... [--cdrom=ISO[,OPTS]]...
                        [--passthrough=/dev/sgN[,OPTS]]... [--request-queues=N]

Numbering: every ``--disk``, then every ``--cdrom``, then every ``--passthrough`` (each kind in
the order given) is a unit on the next free target, LUN 0 — the lowest target that no option
names and no earlier unit took — unless its options say ``target=N`` and/or ``lun=M`` (several units on one target: ``--disk=a.img,target=1,lun=0 --disk=b.img,target=1,lun=1``).
Options, comma-separated after the path:

* ``--disk``: ``ro`` (read-only), ``serial=S``, ``block-size=512|4096``, ``wce=on|off`` (write
  cache at start), ``discard=on|off`` (UNMAP, default on), ``locking=on|off``,
  ``aio=auto|io_uring|threads|off`` (READ/WRITE through the block device's I/O engine, or
  ``off``: synchronously in the worker);
* ``--cdrom``: ``serial=S``; the path ``empty`` starts with no disc;
* ``--passthrough``: ``writable`` (allow write commands, default read-only), ``timeout=SECONDS``.

QEMU attaches it with ``-chardev socket,id=c0,path=PATH -device vhost-user-scsi-pci,chardev=c0``;
with ``--control=CTL``, ``pyvirtio ctl CTL scsi eject|insert|attach|detach|units`` changes discs
and hot-plugs disks at run time.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from ..errors import CliError, CliUsageError, UsageError

if TYPE_CHECKING:
    from ..devices.scsi import ScsiDevice
    from ..devices.scsi.media import ImageMedium

#: Request queues served unless told otherwise: QEMU's vhost-user-scsi-pci sets up one per vCPU
#: when its num_queues is not given, and a guest whose QEMU asks for more rings than the
#: back-end has never boots (the rings past ours are refused), so this covers guests of up to 8
#: vCPUs; rings QEMU does not set up cost nothing.
DEFAULT_REQUEST_QUEUES = 8

_ON = {"on": True, "yes": True, "true": True, "1": True, "off": False, "no": False, "false": False, "0": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "scsi units", "each unit takes the next free target, LUN 0, unless it says target=N,lun=M")
    group.add_argument("--disk", action="append", default=[], metavar="IMG[,OPTS]",
                       help="a disk (SBC) on a raw image; OPTS: ro, serial=S, block-size=N, "
                            "wce=on|off, discard=on|off, locking=on|off, aio=auto|io_uring|threads|off, "
                            "target=N, lun=M")
    group.add_argument("--cdrom", action="append", default=[], metavar="ISO[,OPTS]",
                       help="a CD/DVD-ROM drive (MMC) with ISO in it ('empty': no disc); OPTS: "
                            "serial=S, target=N, lun=M")
    group.add_argument("--passthrough", action="append", default=[], metavar="DEV[,OPTS]",
                       help="a host SCSI generic device (/dev/sgN) reached with SG_IO behind an "
                            "allow-list; OPTS: writable, timeout=SECONDS, target=N, lun=M")
    group.add_argument("--request-queues", type=int, default=DEFAULT_REQUEST_QUEUES, metavar="N",
                       help=f"request queues (default {DEFAULT_REQUEST_QUEUES}); QEMU's num_queues "
                            "must not exceed it, and its default is one per guest vCPU: give "
                            "vhost-user-scsi-pci num_queues=N (the start-up banner does)")


def parse_unit_spec(text: str) -> tuple[str, dict[str, str]]:
    """``PATH[,key=value|flag]...`` -> (path, options); a flag maps to "on"."""
    path, *rest = text.split(",")
    opts: dict[str, str] = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not key:
            raise UsageError(f"{text!r}: empty option")
        opts[key.strip().lower()] = value.strip() if sep else "on"
    if not path:
        raise UsageError(f"{text!r}: no path")
    return path, opts


def _flag(opts: dict[str, str], key: str, default: bool, where: str) -> bool:
    value = opts.pop(key, None)
    if value is None:
        return default
    if value.lower() not in _ON:
        raise UsageError(f"{where}: {key}={value} is not on or off")
    return _ON[value.lower()]


def _int(opts: dict[str, str], key: str, where: str) -> int | None:
    value = opts.pop(key, None)
    if value is None:
        return None
    try:
        return int(value, 0)
    except ValueError:
        raise UsageError(f"{where}: {key}={value} is not a number") from None


def build_device(args: argparse.Namespace) -> ScsiDevice:
    from ..devices.scsi import ScsiDevice
    from ..devices.scsi.target import MAX_LUN, MAX_TARGET

    specs = [("disk", s) for s in args.disk] + [("cdrom", s) for s in args.cdrom] + \
        [("passthrough", s) for s in args.passthrough]
    if not specs:
        raise CliUsageError("give at least one of --disk=IMG, --cdrom=ISO, --passthrough=DEV")
    if not 1 <= args.request_queues <= 64:
        raise CliUsageError(f"--request-queues={args.request_queues}: must be 1..64")
    # argparse keeps each flag's values in order: all --disk, then --cdrom, then --passthrough
    device = ScsiDevice(request_queues=args.request_queues)
    placed: list[tuple[str, str, dict[str, str], int | None, int]] = []
    for kind, text in specs:
        try:
            path, opts = parse_unit_spec(text)
            where = f"--{kind}={text}"
            target, lun = _int(opts, "target", where), _int(opts, "lun", where) or 0
        except UsageError as exc:
            raise CliUsageError(str(exc)) from None
        placed.append((kind, path, opts, target, lun))
    explicit = {t for _, _, _, t, _ in placed if t is not None}
    next_target = 0
    try:
        for kind, path, opts, target, lun in placed:
            if target is None:  # the next target no unit names and none took yet
                while next_target in explicit or device.targets.get(next_target):
                    next_target += 1
                target = next_target
            if not 0 <= target <= MAX_TARGET or not 0 <= lun <= MAX_LUN:
                raise CliUsageError(f"--{kind}={path}: target 0..{MAX_TARGET}, lun 0..{MAX_LUN}")
            if device.unit(target, lun) is not None:
                raise CliUsageError(f"--{kind}={path}: target {target} lun {lun} is taken")
            device.add_unit(target, lun, make_unit(kind, path, opts, f"--{kind}={path}",
                                                   serial=f"pyvirtio-{target}-{lun}"))
    except BaseException:
        device.close()
        raise
    return device


def make_unit(kind: str, path: str, opts: dict[str, str], where: str, *, serial: str):
    """One unit from its command-line (or control-socket) description."""
    from ..devices.scsi import CdromUnit, DiskUnit, PassthroughUnit

    opts = dict(opts)
    try:
        if kind == "disk":
            read_only = _flag(opts, "ro", False, where)
            locking = _flag(opts, "locking", True, where)
            unit: object = DiskUnit(
                _open(path, read_only, locking, where), serial=opts.pop("serial", serial),
                block_size=_int(opts, "block-size", where) or 512,
                writeback=_flag(opts, "wce", True, where), discard=_flag(opts, "discard", True, where),
                aio=opts.pop("aio", "auto"))
        elif kind == "cdrom":
            medium = None if path == "empty" else _open(path, True, True, where)
            unit = CdromUnit(medium, serial=opts.pop("serial", serial))
        elif kind == "passthrough":
            timeout = _int(opts, "timeout", where)
            try:
                unit = PassthroughUnit(path, writable=_flag(opts, "writable", False, where),
                                       timeout_ms=(timeout or 30) * 1000)
            except OSError as exc:
                raise CliError(f"{where}: {exc.strerror or exc} (a SCSI generic device such as "
                               "/dev/sg0 is needed: modprobe sg)") from None
        else:
            raise UsageError(f"unknown unit kind {kind!r}")
    except ValueError as exc:  # a block size the unit refuses
        raise CliUsageError(f"{where}: {exc}") from None
    except UsageError as exc:  # an option's value (the message names the flag)
        raise CliUsageError(str(exc)) from None
    if opts:
        raise CliUsageError(f"{where}: unknown option(s) {', '.join(sorted(opts))}")
    return unit


def _open(path: str, read_only: bool, locking: bool, where: str) -> ImageMedium:
    from ..devices.blk_image import ImageError
    from ..devices.scsi.media import ImageMedium

    if not os.path.exists(path):
        raise CliError(f"{where}: no such file")
    try:
        return ImageMedium(path, read_only=read_only, locking=locking)
    except ImageError as exc:
        raise CliError(f"{where}: {exc.why}") from None


def describe(args: argparse.Namespace) -> str:
    n = len(args.disk) + len(args.cdrom) + len(args.passthrough)
    return (f"SCSI host ({len(args.disk)} disk(s), {len(args.cdrom)} CD-ROM(s), "
            f"{len(args.passthrough)} passthrough; {n} unit(s))")
