"""``pyvirtio kernel prepare|list|prune``: the guest kernel cache the guest tests, ``demo`` and
the pytest plugin boot from (:mod:`pyvirtio.guest.kernel`).

``prepare`` downloads the Debian package ``linux-image-amd64`` depends on (once; it says how big
it is first), unpacks it under ``$PYVIRTIO_CACHE`` or ``~/.cache/pyvirtio`` and checks that it
boots under QEMU; ``list`` shows what the cache holds and its size on disk; ``prune`` removes
every kernel but the current one (a new Debian kernel leaves the old one behind until then).
"""

from __future__ import annotations

import sys

from ..errors import CliError


def register(sub) -> None:
    p = sub.add_parser("kernel", help="the guest kernel cache: prepare, list, prune",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--cache-dir", metavar="DIR", help="default: $PYVIRTIO_CACHE or ~/.cache/pyvirtio")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("prepare", help="download (once), unpack and check the guest kernel")
    actions.add_parser("list", help="the kernels in the cache and their size on disk")
    actions.add_parser("prune", help="remove every cached kernel but the current one")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..guest.errors import GuestError
    from ..guest.kernel import cached_kernels, find_kernel_package, prepare_kernel, prune_kernels

    def say(msg: str) -> None:
        print(f"kernel: {msg}", file=sys.stderr, flush=True)

    try:
        if args.action == "prepare":
            bundle = prepare_kernel(args.cache_dir, progress=say)
            print(f"{bundle.package} {bundle.version}: boots from {bundle.boot_image}")
            others = [k for k in cached_kernels(args.cache_dir) if k[0] != bundle.package]
            if others:
                say(f"{len(others)} older kernel(s) in the cache "
                    f"({sum(k[2] for k in others) / 1e6:.0f} MB): 'pyvirtio kernel prune' removes them")
        elif args.action == "list":
            kernels = cached_kernels(args.cache_dir)
            if not kernels:
                print("the cache holds no kernel ('pyvirtio kernel prepare' fetches one)")
            for package, directory, size in kernels:
                print(f"{package:36} {size / 1e6:8.0f} MB  {directory}")
        else:
            current = find_kernel_package(progress=say)
            removed = prune_kernels(current, args.cache_dir)
            print(f"kept {current}; removed: {', '.join(removed) if removed else 'nothing'}")
    except GuestError as exc:
        raise CliError(f"kernel {args.action}: {exc}") from None
    return 0
