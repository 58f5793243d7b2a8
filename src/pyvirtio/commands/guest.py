"""``pyvirtio guest run|bench``: boot a real Linux guest under QEMU, or time its boots.

    pyvirtio guest run 'cat /proc/cpuinfo' [--module ext4] [--qemu='-device virtio-rng-pci']
    pyvirtio guest bench [--rounds 5]

The kernel comes from the cache ``pyvirtio kernel prepare`` fills (:mod:`pyvirtio.guest.kernel`;
prepared on first use).  ``run`` exits with the guest script's exit status.
"""

from __future__ import annotations

import shlex
import statistics
import sys

from ..errors import CliError


def register(sub) -> None:
    p = sub.add_parser("guest", help="boot a real Linux guest under QEMU, or time its boots",
                       description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("--cache-dir", metavar="DIR", help="default: $PYVIRTIO_CACHE or ~/.cache/pyvirtio")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = actions.add_parser("run", help="boot a guest running SCRIPT")
    r.add_argument("script", help="guest shell script (use @FILE to read it from a file)")
    _qemu_option(r)
    r.add_argument("--module", action="append", default=[], help="extra kernel module")
    r.add_argument("--host-binary", action="append", default=[],
                   help="host program to copy into the guest with its libraries")
    r.add_argument("--memory", type=int, default=512, help="MiB")
    r.add_argument("--cpus", type=int, default=1)
    r.add_argument("--timeout", type=float, default=120)
    r.add_argument("--bzimage", action="store_true", help="boot the bzImage, not the PVH ELF")
    r.add_argument("--no-echo", action="store_true",
                   help="do not echo the serial console; print the script's output at the end")
    b = actions.add_parser("bench", help="time boots of the bzImage and the PVH ELF")
    _qemu_option(b)
    b.add_argument("--rounds", type=int, default=5)
    p.set_defaults(func=run)


def _qemu_option(p) -> None:
    p.add_argument("--qemu", action="append", default=[], metavar="ARGS",
                   help="extra QEMU arguments, split as a shell would (repeatable)")


def run(args) -> int:
    from ..guest.errors import GuestError
    from ..guest.kernel import prepare_kernel
    try:
        kernel = prepare_kernel(args.cache_dir,
                                progress=lambda m: print(f"[guest] {m}", file=sys.stderr))
        return _run(args, kernel) if args.action == "run" else _bench(args, kernel)
    except GuestError as exc:
        raise CliError(f"guest {args.action}: {exc}") from None


def _run(args, kernel) -> int:
    from ..guest.qemu import boot_guest
    script = args.script
    if script.startswith("@"):
        with open(script[1:]) as f:
            script = f.read()
    res = boot_guest(kernel, script, qemu_args=_qemu_args(args), memory_mb=args.memory,
                     cpus=args.cpus, timeout=args.timeout, modules=args.module,
                     host_binaries=args.host_binary,
                     kernel=kernel.vmlinuz if args.bzimage else None, echo=not args.no_echo)
    if args.no_echo:
        print("\n".join(res.lines))
    print(f"[guest] exit code {res.exit_code}, {res.duration:.2f} s "
          f"(init after {res.boot_time or 0:.2f} s)", file=sys.stderr)
    return res.exit_code or 0


def _bench(args, kernel) -> int:
    from ..guest.errors import GuestBootError
    from ..guest.qemu import boot_guest
    images = {"bzimage": kernel.vmlinuz}
    if kernel.elf:
        images["pvh"] = kernel.elf
    for name, image in images.items():
        runs = [boot_guest(kernel, "true", kernel=image, qemu_args=_qemu_args(args))
                for _ in range(args.rounds)]
        to_init = [r.boot_time for r in runs if r.boot_time is not None]
        if len(to_init) < len(runs):
            raise GuestBootError(f"{name}: a guest ended without reaching /init")
        total = [r.duration for r in runs]
        print(f"{name:8} to /init: median {statistics.median(to_init):.2f} s "
              f"(min {min(to_init):.2f}); whole run: median "
              f"{statistics.median(total):.2f} s (min {min(total):.2f})")
    return 0


def _qemu_args(args) -> list[str]:
    return [word for text in args.qemu for word in shlex.split(text)]
