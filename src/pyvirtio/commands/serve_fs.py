"""Command-line options of ``pyvirtio serve fs``.

    pyvirtio serve fs --socket-path=PATH --shared-dir=DIR [--tag=NAME]
                      [--cache=auto|always|never] [--read-only] [--xattr] [--thread-pool-size=N]
                      [--num-request-queues=N]

The conventions are virtiofsd's (QEMU's tools/virtiofsd and the Rust virtiofsd): the shared
directory is the guest's root of the mount; ``--cache`` sets how long the guest may cache names
and attributes (never: 0 s and direct I/O; auto: 1 s; always: a day, page cache kept across
opens; ``none`` is accepted as virtiofsd spells it); extended attributes are off unless
``--xattr``; POSIX and flock locks stay local to the guest.  As virtiofsd, the process runs
with umask 0 (the guest's kernel applied the caller's umask already) and raises its open-file
limit to the hard limit (each inode the guest holds is one descriptor).  QEMU attaches with
``-chardev socket,id=c0,path=PATH -device vhost-user-fs-pci,chardev=c0,tag=NAME`` and the
guest mounts with ``mount -t virtiofs NAME /mnt``.
"""

from __future__ import annotations

import argparse
import os
import resource

from ..errors import CliError, CliUsageError

CACHE_MODES = ("auto", "always", "never", "none")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fs device")
    group.add_argument("--shared-dir", metavar="DIR", help="the host directory the guest mounts")
    group.add_argument("--tag", default="share", metavar="NAME",
                       help="the mount tag in the device's config space (default share; QEMU "
                            "takes it from -device vhost-user-fs-pci,tag=NAME)")
    group.add_argument("--cache", choices=CACHE_MODES, default="auto",
                       help="guest caching: never (0 s timeouts, direct I/O), auto (1 s, the "
                            "default), always (1 day, page cache kept); none = never")
    group.add_argument("--read-only", action="store_true", help="refuse every change (EROFS)")
    group.add_argument("--xattr", action="store_true",
                       help="serve extended attributes (off by default, as virtiofsd)")
    group.add_argument("--num-request-queues", type=int, default=1, metavar="N",
                       help="request queues besides hiprio (default 1; QEMU's "
                            "vhost-user-fs-pci,num-request-queues= must not exceed it)")
    group.add_argument("--thread-pool-size", type=int, default=4, metavar="N",
                       help="threads that run the requests moving file data (READ, WRITE, "
                            "FSYNC ...), so a slow one does not hold up the others (default 4; "
                            "0: everything runs in the queue's own thread, virtiofsd's default)")


def build_device(args: argparse.Namespace):
    """The FsDevice for ``args`` (flags checked first, one line for each mistake)."""
    from ..devices.fs import FsDevice
    if not args.shared_dir:
        raise CliUsageError("--shared-dir=DIR is required")
    if not os.path.isdir(args.shared_dir):
        raise CliError(f"--shared-dir={args.shared_dir}: not a directory")
    if not 0 <= args.thread_pool_size <= 256:
        raise CliUsageError(f"--thread-pool-size={args.thread_pool_size}: must be 0..256")
    if not 1 <= args.num_request_queues <= 64:
        raise CliUsageError(f"--num-request-queues={args.num_request_queues}: must be 1..64")
    if not 0 < len(args.tag.encode()) <= 36:
        raise CliUsageError(f"--tag={args.tag!r}: 1..36 bytes")
    os.umask(0)  # the guest's kernel applied the caller's umask (virtiofsd does the same)
    _raise_nofile()
    try:
        return FsDevice(args.shared_dir, tag=args.tag, cache=_cache(args.cache),
                        read_only=args.read_only, xattr=args.xattr, threads=args.thread_pool_size,
                        num_request_queues=args.num_request_queues)
    except OSError as exc:
        raise CliError(f"--shared-dir={args.shared_dir}: {exc.strerror or exc}") from None


def _cache(mode: str) -> str:
    return "never" if mode == "none" else mode


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            pass


def describe(args: argparse.Namespace) -> str:
    """One line for the start banner."""
    extra = ", read-only" if args.read_only else ""
    return f"file system device {args.shared_dir} (tag {args.tag}, cache={_cache(args.cache)}{extra})"
