"""``pyvirtio descriptors install|list``: the JSON files management software finds back-ends by.

QEMU's ``docs/interop/vhost-user.json`` says how a vhost-user back-end program is described
(``type``, ``binary``, ``description``, ``tags``) and where the files are looked for, later
directories winning over earlier ones for a file of the same name:

* ``/usr/share/qemu/vhost-user`` — what distribution packages install;
* ``/etc/qemu/vhost-user`` — the system administrator's (overrides the above);
* ``$XDG_CONFIG_HOME/qemu/vhost-user`` (default ``~/.config/qemu/vhost-user``) — the user's.

``install`` writes one file per pyvirtio back-end (``50-pyvirtio-blk.json``, ``-net``, ``-rng``,
``-console``) with ``binary`` set to the absolute path of the installed entry point
(``pyvirtio-vhost-user-blk`` …, next to this Python or on ``PATH``) — not a guess such as
``/usr/local/bin``.  ``list`` shows what that discovery finds, pyvirtio's or anyone's, and whether
each ``binary`` exists.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from ..errors import CliError, CliUsageError

#: (file name, QEMU's type name, entry point, description, tags)
BACKENDS = (
    ("50-pyvirtio-blk.json", "block", "pyvirtio-vhost-user-blk",
     "pyvirtio vhost-user-blk back-end: a virtio-blk disk served from a raw image or block "
     "device (Python)",
     ["runs 'pyvirtio serve blk'; needs --blk-file=IMAGE besides --socket-path or --fd"]),
    ("50-pyvirtio-net.json", "net", "pyvirtio-vhost-user-net",
     "pyvirtio vhost-user net back-end: a virtio-net device on a TAP, an in-daemon switch, a "
     "stream socket, or a sink (Python)",
     ["runs 'pyvirtio serve net'; needs exactly one of --tap=IF, --switch=NAME, --socket=PATH or "
      "--null besides --socket-path or --fd (there is no default)"]),
    ("50-pyvirtio-rng.json", "rng", "pyvirtio-vhost-user-rng",
     "pyvirtio vhost-user-rng back-end: a virtio entropy device fed by the host's getrandom() "
     "(Python)",
     ["runs 'pyvirtio serve rng'; needs only --socket-path or --fd"]),
    ("50-pyvirtio-console.json", "console", "pyvirtio-vhost-user-console",
     "pyvirtio vhost-user console back-end: a virtio-console device with named ports bridged to "
     "UNIX sockets, ptys or stdio (Python)",
     ["runs 'pyvirtio serve console'; QEMU 7.2 has no vhost-user console device: for front-ends "
      "that speak vhost-user to a console (pyvirtio's own driver)"]),
    ("50-pyvirtio-scsi.json", "scsi", "pyvirtio-vhost-user-scsi",
     "pyvirtio vhost-user-scsi back-end: a virtio-scsi host with disks, CD-ROM drives (ISO "
     "images) and SG_IO passthrough units (Python)",
     ["runs 'pyvirtio serve scsi'; needs at least one --disk=IMG, --cdrom=ISO or "
      "--passthrough=/dev/sgN besides --socket-path or --fd; QEMU: -device "
      "vhost-user-scsi-pci,chardev=ID"]),
    ("50-pyvirtio-fs.json", "fs", "pyvirtio-vhost-user-fs",
     "pyvirtio vhost-user-fs back-end: a virtio-fs device sharing a host directory, virtiofsd's "
     "conventions (Python)",
     ["runs 'pyvirtio serve fs'; needs --shared-dir=DIR besides --socket-path or --fd; QEMU: "
      "-device vhost-user-fs-pci,chardev=ID,tag=NAME"]),
)


def search_dirs() -> list[Path]:
    """QEMU's discovery order: lowest priority first."""
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [Path("/usr/share/qemu/vhost-user"), Path("/etc/qemu/vhost-user"),
            Path(config) / "qemu" / "vhost-user"]


def entry_point(name: str) -> str | None:
    """The absolute path of an installed console script: next to this interpreter (a venv's
    bin), else on PATH; None if it is not installed."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.absolute())
    found = shutil.which(name)
    return os.path.abspath(found) if found else None


def descriptor(kind: str, binary: str, description: str, tags: list[str]) -> dict:
    return {"description": description, "type": kind, "binary": binary, "tags": tags}


def install(directory: Path) -> list[Path]:
    """Write every pyvirtio descriptor into ``directory``; the files written."""
    missing = [ep for _, _, ep, _, _ in BACKENDS if entry_point(ep) is None]
    if missing:
        raise CliError(f"entry point(s) {', '.join(missing)} not installed (reinstall pyvirtio: "
                       "pip install pyvirtio)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"{directory}: {exc.strerror or exc}") from None
    written = []
    for name, kind, ep, description, tags in BACKENDS:
        path = directory / name
        text = json.dumps(descriptor(kind, entry_point(ep) or ep, description, tags), indent=2) + "\n"
        tmp = path.with_suffix(".json.tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError as exc:
            raise CliError(f"{path}: {exc.strerror or exc}") from None
        written.append(path)
    return written


def discover(dirs: list[Path] | None = None) -> list[dict]:
    """What QEMU-style discovery finds: one entry per file name (the highest-priority directory
    wins), sorted by file name; unreadable or invalid files are listed with an ``error``."""
    found: dict[str, dict] = {}
    for d in dirs if dirs is not None else search_dirs():
        try:
            names = sorted(n for n in os.listdir(d) if n.endswith(".json"))
        except OSError:
            continue
        for name in names:
            path = d / name
            entry: dict = {"file": str(path)}
            try:
                data = json.loads(path.read_text())
                if not isinstance(data, dict) or not isinstance(data.get("binary"), str):
                    raise ValueError("no 'binary'")
                entry.update(type=data.get("type"), binary=data["binary"],
                             description=data.get("description", ""),
                             runnable=os.access(data["binary"], os.X_OK))
            except (OSError, ValueError) as exc:
                entry["error"] = str(exc)
            found[name] = entry
    return [found[n] for n in sorted(found)]


def register(sub) -> None:
    p = sub.add_parser(
        "descriptors", help="install or list vhost-user back-end descriptions (QEMU's vhost-user.json)",
        description="The JSON files management software (libvirt …) finds vhost-user back-end "
                    "programs by: 'install' writes pyvirtio's with the absolute path of the "
                    "installed programs, 'list' shows what discovery finds.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    inst = actions.add_parser("install", help="write pyvirtio's descriptors")
    where = inst.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true",
                       help="into $XDG_CONFIG_HOME/qemu/vhost-user (the default)")
    where.add_argument("--system", action="store_true", help="into /etc/qemu/vhost-user")
    where.add_argument("--dir", metavar="DIR", help="into DIR")
    lst = actions.add_parser("list", help="show what discovery finds")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.add_argument("--dir", metavar="DIR", action="append",
                     help="look only here (repeatable; later ones win), not QEMU's directories")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.action == "install":
        if args.dir:
            target = Path(args.dir)
        elif args.system:
            target = Path("/etc/qemu/vhost-user")
        else:
            target = search_dirs()[-1]
        for path in install(target):
            print(path)
        return 0
    if args.action == "list":
        entries = discover([Path(d) for d in args.dir] if args.dir else None)
        if args.json:
            print(json.dumps(entries, indent=2))
            return 0
        if not entries:
            print("no vhost-user back-end descriptions found (looked in "
                  + ", ".join(str(d) for d in search_dirs()) + ")")
        for e in entries:
            if "error" in e:
                print(f"{e['file']}: unreadable: {e['error']}")
            else:
                state = "" if e["runnable"] else "  (binary missing or not executable)"
                print(f"{e['type'] or '?':8} {e['binary']}{state}\n         {e['file']}")
        return 0
    raise CliUsageError("say install or list")
