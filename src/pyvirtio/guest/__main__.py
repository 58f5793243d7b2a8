"""``python -m pyvirtio.guest`` — prepare the guest kernel, boot a guest, time boots.

    python -m pyvirtio.guest prepare [--cache-dir DIR]
    python -m pyvirtio.guest run 'cat /proc/cpuinfo' [--module ext4] -- -device virtio-rng-pci
    python -m pyvirtio.guest bench [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from .errors import GuestBootError, GuestError
from .kernel import prepare_kernel
from .qemu import boot_guest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    qemu_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, qemu_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="python -m pyvirtio.guest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", help="default: $PYVIRTIO_CACHE or ~/.cache/pyvirtio")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare", help="download, unpack and check the guest kernel")
    r = sub.add_parser("run", help="boot a guest running SCRIPT; QEMU arguments after --")
    r.add_argument("script", help="guest shell script (use @FILE to read it from a file)")
    r.add_argument("--module", action="append", default=[], help="extra kernel module")
    r.add_argument("--host-binary", action="append", default=[],
                   help="host program to copy into the guest with its libraries")
    r.add_argument("--memory", type=int, default=512, help="MiB")
    r.add_argument("--cpus", type=int, default=1)
    r.add_argument("--timeout", type=float, default=120)
    r.add_argument("--bzimage", action="store_true", help="boot the bzImage, not the PVH ELF")
    r.add_argument("--quiet", action="store_true", help="do not echo the serial console")
    b = sub.add_parser("bench", help="time boots of the bzImage and the PVH ELF")
    b.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    try:
        kernel = prepare_kernel(args.cache_dir,
                                progress=lambda m: print(f"[guest] {m}", file=sys.stderr))
        if args.cmd == "prepare":
            print(f"kernel      {kernel.version} ({kernel.package})")
            print(f"bzImage     {kernel.vmlinuz}")
            print(f"PVH ELF     {kernel.elf}")
            print(f"modules     {kernel.modules_dir}")
            print(f"boot image  {kernel.boot_image}")
            for name, t in kernel.boot_times.items():
                print(f"boot time   {name}: {t:.2f} s (boot + 'true' + power off)")
            return 0
        if args.cmd == "run":
            script = args.script
            if script.startswith("@"):
                with open(script[1:]) as f:
                    script = f.read()
            res = boot_guest(kernel, script, qemu_args=qemu_args, memory_mb=args.memory,
                             cpus=args.cpus, timeout=args.timeout, modules=args.module,
                             host_binaries=args.host_binary,
                             kernel=kernel.vmlinuz if args.bzimage else None,
                             echo=not args.quiet)
            if args.quiet:
                print("\n".join(res.lines))
            print(f"[guest] exit code {res.exit_code}, {res.duration:.2f} s "
                  f"(init after {res.boot_time or 0:.2f} s)", file=sys.stderr)
            return res.exit_code or 0
        if args.cmd == "bench":
            images = {"bzimage": kernel.vmlinuz}
            if kernel.elf:
                images["pvh"] = kernel.elf
            for name, image in images.items():
                runs = [boot_guest(kernel, "true", kernel=image, qemu_args=qemu_args)
                        for _ in range(args.rounds)]
                to_init = [r.boot_time for r in runs if r.boot_time is not None]
                if len(to_init) < len(runs):
                    raise GuestBootError(f"{name}: a guest ended without reaching /init")
                total = [r.duration for r in runs]
                print(f"{name:8} to /init: median {statistics.median(to_init):.2f} s "
                      f"(min {min(to_init):.2f}); whole run: median "
                      f"{statistics.median(total):.2f} s (min {min(total):.2f})")
            return 0
    except GuestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
