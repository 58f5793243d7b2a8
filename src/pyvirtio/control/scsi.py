"""The control commands of a virtio-scsi device (``pyvirtio serve scsi --control=PATH``).

=================  ==========================================  ====================================
cmd                args                                        result
=================  ==========================================  ====================================
``scsi.units``                                                 ``[{"unit": "T:L", "type", ...}]``
``scsi.eject``     ``unit``: "T:L" (default: the first         ``{"unit": "T:L"}``; refused while
                   CD-ROM); ``force``: true to eject while     the guest prevents removal (the
                   the guest prevents removal                  guest gets an EJECT REQUEST event)
``scsi.insert``    ``path``: an ISO image; ``unit``            ``{"unit": "T:L", "medium": path}``
``scsi.attach``    ``kind``: disk, cdrom or passthrough;       ``{"unit": "T:L"}``: hot-plugged (the
                   ``path`` (with ``serve``'s options:         guest rescans: TRANSPORT_RESET)
                   "IMG,ro,serial=S"); ``unit`` (default: the
                   lowest free target, LUN 0)
``scsi.detach``    ``unit``                                    ``{"unit": "T:L"}``: hot-unplugged
``scsi.resize``    ``unit``, ``size`` (bytes or "1G"),          ``{"unit", "blocks"}``: the guest is
                   ``shrink``                                  told (PARAM_CHANGE 2Ah/09h)
=================  ==========================================  ====================================

``pyvirtio ctl PATH`` words: ``scsi units``, ``eject [T:L] [--force]``, ``insert ISO [T:L]``,
``scsi attach KIND PATH[,OPTS] [T:L]``, ``scsi detach T:L``, ``scsi resize T:L SIZE [--shrink]``
(``scsi eject`` / ``scsi insert``
work too).  Each change runs in the device's worker (:meth:`ScsiDevice.run_on_worker`).
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import CliError, UsageError
from .protocol import Arg, BadArgument, Command, ControlError, Unsupported

KINDS = ("disk", "cdrom", "passthrough")


def parse_unit(text: Any, cmd: str) -> tuple[int, int] | None:
    """``"T:L"`` (or ``"T"``: LUN 0) -> (target, lun); None for None."""
    if text is None:
        return None
    target, _, lun = str(text).partition(":")
    try:
        return int(target), int(lun or 0)
    except ValueError:
        raise BadArgument(f"{cmd}: unit {text!r} is not TARGET:LUN") from None


def _name(address: tuple[int, int]) -> str:
    return f"{address[0]}:{address[1]}"


def _device(target: Any, cmd: str) -> Any:
    from ..devices.scsi import ScsiDevice
    if not isinstance(target.device, ScsiDevice):
        raise Unsupported(f"{cmd}: not a SCSI host (this one is {target.kind})")
    return target.device


def _failed(fn):
    """Run ``fn``; our refusals become a "failed" reply that says why."""
    try:
        return fn()
    except (UsageError, CliError) as exc:
        if isinstance(exc, ControlError):
            raise
        raise ControlError("failed", str(exc)) from None


def _units(target: Any) -> list[dict[str, Any]]:
    device = _device(target, "scsi.units")
    return [{"unit": _name(a), **u.describe()} for a, u in device.units()]


def _eject(target: Any, args: dict[str, Any]) -> dict[str, Any]:
    device = _device(target, "scsi.eject")
    where = parse_unit(args.get("unit"), "scsi.eject")
    return {"unit": _name(_failed(lambda: device.eject(where, force=bool(args.get("force")))))}


def _insert(target: Any, args: dict[str, Any]) -> dict[str, Any]:
    device = _device(target, "scsi.insert")
    where = parse_unit(args.get("unit"), "scsi.insert")
    path = args["path"]

    def run():
        from ..devices.scsi.media import ImageMedium
        from ..devices.blk_image import ImageError
        device.cdrom(where)  # refuse before opening anything
        try:
            medium = ImageMedium(path, read_only=True)
        except ImageError as exc:
            raise UsageError(f"scsi.insert: {exc}") from None
        except OSError as exc:
            raise UsageError(f"scsi.insert: {path}: {exc.strerror}") from None
        try:
            return device.insert(medium, where)
        except BaseException:
            medium.close()
            raise
    return {"unit": _name(_failed(run)), "medium": path}


def _attach(target: Any, args: dict[str, Any]) -> dict[str, Any]:
    device = _device(target, "scsi.attach")
    kind = args["kind"]
    if kind not in KINDS:
        raise BadArgument(f"scsi.attach: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    where = parse_unit(args.get("unit"), "scsi.attach")

    def run():
        from ..commands.serve_scsi import make_unit, parse_unit_spec
        address = where if where is not None else (device.free_target(), 0)
        if device.unit(*address) is not None:
            raise UsageError(f"scsi.attach: unit {_name(address)} is taken")
        path, opts = parse_unit_spec(args["path"])
        unit = make_unit(kind, path, opts, f"scsi.attach {kind} {args['path']}",
                         serial=f"pyvirtio-{address[0]}-{address[1]}")
        try:
            device.attach(address[0], address[1], unit)
        except BaseException:
            unit.close()
            raise
        return address
    return {"unit": _name(_failed(run))}


def _detach(target: Any, args: dict[str, Any]) -> dict[str, Any]:
    device = _device(target, "scsi.detach")
    where = parse_unit(args["unit"], "scsi.detach")
    assert where is not None
    unit = _failed(lambda: device.detach(*where))
    unit.close()
    return {"unit": _name(where)}


def _resize(target: Any, args: dict[str, Any], parse_size: Callable[[Any], int]) -> dict[str, Any]:
    device = _device(target, "scsi.resize")
    where = parse_unit(args["unit"], "scsi.resize")
    assert where is not None
    size = parse_size(args["size"])
    blocks = _failed(lambda: device.resize(where, size, shrink=bool(args.get("shrink"))))
    return {"unit": _name(where), "blocks": blocks}


def scsi_commands(target: Any, parse_size: Callable[[Any], int]) -> list[Command]:
    """The SCSI commands for the control socket of ``target``; ``parse_size`` reads a size
    ("1G", bytes) as ``resize`` does (handed in: .commands imports this module)."""
    unit = Arg("unit", (str, int), False, "TARGET:LUN (default: the first CD-ROM)")
    return [
        Command("scsi.units", "scsi: the units, by TARGET:LUN", lambda a: _units(target)),
        Command("scsi.eject", "scsi: open a CD-ROM's tray and take its disc out",
                lambda a: _eject(target, a),
                (unit, Arg("force", (bool,), False, "true: even while the guest prevents removal"))),
        Command("scsi.insert", "scsi: put an ISO image in a CD-ROM drive and close the tray",
                lambda a: _insert(target, a), (Arg("path", (str,), True, "the ISO image"), unit)),
        Command("scsi.attach", "scsi: hot-plug a unit (the guest rescans)", lambda a: _attach(target, a),
                (Arg("kind", (str,), True, "disk, cdrom or passthrough"),
                 Arg("path", (str,), True, "IMG[,ro,serial=S,...] as serve --disk/--cdrom/--passthrough"),
                 Arg("unit", (str, int), False, "TARGET:LUN (default: the lowest free target, LUN 0)"))),
        Command("scsi.detach", "scsi: hot-unplug a unit", lambda a: _detach(target, a),
                (Arg("unit", (str, int), True, "TARGET:LUN"),)),
        Command("scsi.resize", "scsi: a disk's new capacity (the guest is told)", lambda a: _resize(target, a, parse_size),
                (Arg("unit", (str, int), True, "TARGET:LUN"), Arg("size", (int, str), True, "bytes, or 1G, 512M"),
                 Arg("shrink", (bool,), False, "true: allow a smaller size (data past it is lost)"))),
    ]


def scsi_request(words: list[str]) -> tuple[str, dict[str, Any]]:
    """``ctl`` words after ``scsi`` (or ``eject``/``insert`` with their verb first) -> request."""
    from ..errors import CliUsageError
    verb, rest = (words[0], words[1:]) if words else ("", [])
    force = "--force" in rest
    rest = [w for w in rest if w != "--force"]
    if verb == "units" and not rest and not force:
        return "scsi.units", {}
    if verb == "eject" and len(rest) <= 1:
        return "scsi.eject", {**({"unit": rest[0]} if rest else {}), **({"force": True} if force else {})}
    if verb == "insert" and len(rest) in (1, 2) and not force:
        return "scsi.insert", {"path": rest[0], **({"unit": rest[1]} if rest[1:] else {})}
    if verb == "attach" and len(rest) in (2, 3) and not force:
        return "scsi.attach", {"kind": rest[0], "path": rest[1], **({"unit": rest[2]} if rest[2:] else {})}
    if verb == "detach" and len(rest) == 1 and not force:
        return "scsi.detach", {"unit": rest[0]}
    shrink = "--shrink" in rest
    rest = [w for w in rest if w != "--shrink"]
    if verb == "resize" and len(rest) == 2 and not force:
        size: Any = int(rest[1]) if rest[1].isdigit() else rest[1]
        return "scsi.resize", {"unit": rest[0], "size": size, **({"shrink": True} if shrink else {})}
    raise CliUsageError("scsi commands: scsi units | eject [T:L] [--force] | insert ISO [T:L] | "
                        "scsi attach disk|cdrom|passthrough PATH[,OPTS] [T:L] | scsi detach T:L | "
                        "scsi resize T:L SIZE [--shrink]")
