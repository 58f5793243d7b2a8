"""``pyvirtio demo``: a real Linux guest on pyvirtio's vhost-user back-ends, start to finish.

It serves a fresh sparse disk image (vhost-user-blk) and an entropy device (vhost-user-rng)
from this process, boots the Debian kernel with a busybox initramfs under QEMU (TCG; shared
memfd guest memory), and prints what the guest saw: its disk and size, an ext2 file system made,
written and read back with a checksum, bytes from /dev/hwrng and the rng driver in use.

On a fresh Debian 12 machine it needs ``qemu-system-x86`` and ``busybox-static`` (it says so if
they are missing) and downloads the kernel package once with ``apt-get download``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time

from ..errors import CliError, CliUsageError
from .values import positive_seconds

APT_PACKAGES = {"qemu-system-x86_64": "qemu-system-x86", "busybox": "busybox-static"}

GUEST_SCRIPT = r"""
echo "disk=/dev/vda"
echo "sectors=$(cat /sys/block/vda/size)"
echo "serial=$(cat /sys/block/vda/serial)"
echo "queues=$(ls /sys/block/vda/mq | wc -l)"
mke2fs -F -L pyvirtio /dev/vda >/dev/null 2>&1 && echo "mkfs=ext2"
mount -t ext2 /dev/vda /mnt
dd if=/dev/urandom of=/tmp/data bs=1M count=4 2>/dev/null
cp /tmp/data /mnt/data
echo "written=$(sha256sum /tmp/data | cut -d' ' -f1)"
sync
umount /mnt
echo 3 >/proc/sys/vm/drop_caches
mount -t ext2 -o ro /dev/vda /mnt
echo "read_back=$(sha256sum /mnt/data | cut -d' ' -f1)"
echo "fs_usage=$(df -k /mnt | tail -1 | awk '{print $3 " KiB used of " $2 " KiB"}')"
umount /mnt
echo "rng_current=$(cat /sys/class/misc/hw_random/rng_current)"
echo "hwrng=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
"""


def register(sub) -> None:
    p = sub.add_parser("demo", help="boot a Linux guest on pyvirtio's vhost-user blk and rng back-ends",
                       description="Serve a fresh sparse disk image and an entropy device over "
                                   "vhost-user, boot the Debian kernel under QEMU (TCG) with them, "
                                   "and print what the guest saw.")
    p.add_argument("--image-size", type=int, default=64, metavar="MIB",
                   help="size of the sparse disk image in MiB (default 64)")
    p.add_argument("--timeout", type=positive_seconds, default=300, metavar="S", help="give up on the guest after S seconds")
    p.add_argument("--keep", action="store_true", help="keep the work directory (image, sockets, console log)")
    p.set_defaults(func=run)


def say(msg: str) -> None:
    print(msg, flush=True)


def check_host() -> None:
    """Name the apt packages to install if QEMU or a static busybox is missing."""
    from ..guest.errors import InitramfsError
    from ..guest.initramfs import find_busybox, is_static
    from ..guest.qemu import qemu_binary
    missing = []
    if not shutil.which(qemu_binary()):
        missing.append(APT_PACKAGES["qemu-system-x86_64"])
    try:
        static = is_static(find_busybox())  # Debian's plain "busybox" is dynamic: no use in a guest
    except (InitramfsError, OSError):
        static = False
    if not static:
        missing.append(APT_PACKAGES["busybox"])
    if missing:
        raise CliError(f"missing {' and '.join(missing)}: run "
                       f"'sudo apt-get update && sudo apt-get install -y {' '.join(missing)}'")


def run(args) -> int:
    if args.image_size < 8:
        raise CliUsageError("--image-size must be at least 8 (MiB)")
    check_host()
    work = tempfile.mkdtemp(prefix="pyvirtio-demo-")
    try:
        return _demo(args, work)
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _demo(args, work: str) -> int:
    from ..devices.blk import BlkDevice
    from ..devices.rng import RngDevice
    from ..guest import GuestError, boot_guest, prepare_kernel
    from ..guest.modules import EXT4_MODULES
    from ..vhost_user.backend.server import VhostUserServer

    say("[1/4] guest kernel (the first run downloads the Debian kernel package, ~70 MB)")
    try:
        kernel = prepare_kernel(progress=lambda m: say(f"      {m}"))
    except GuestError as exc:
        raise CliError(f"cannot prepare the guest kernel: {exc}") from None
    say(f"      using {kernel.package}")

    image = os.path.join(work, "disk.img")
    with open(image, "wb") as f:
        f.truncate(args.image_size << 20)
    blk_sock, rng_sock = os.path.join(work, "blk.sock"), os.path.join(work, "rng.sock")
    disk = BlkDevice(image, serial="pyvirtio-demo")
    server = VhostUserServer()
    server.add(disk, socket_path=blk_sock)
    server.add(RngDevice(), socket_path=rng_sock)
    loop = threading.Thread(target=server.serve_forever, name="vhost-user", daemon=True)
    loop.start()
    say(f"[2/4] vhost-user back-ends (this process): blk on {blk_sock} "
        f"({args.image_size} MiB sparse image), rng on {rng_sock}")

    say("[3/4] booting Linux under QEMU (TCG) with vhost-user-blk-pci and vhost-user-rng-pci …")
    qemu_args = ["-chardev", f"socket,id=blk,path={blk_sock}",
                 "-device", "vhost-user-blk-pci,chardev=blk,num-queues=1",
                 "-chardev", f"socket,id=rng,path={rng_sock}",
                 "-device", "vhost-user-rng-pci,chardev=rng"]
    started = time.monotonic()
    try:
        result = boot_guest(kernel, GUEST_SCRIPT, qemu_args=qemu_args, modules=EXT4_MODULES,
                            timeout=args.timeout, console_log=os.path.join(work, "console.log"))
    except GuestError as exc:
        raise CliError(f"the guest did not finish: {str(exc).splitlines()[0]}") from None
    finally:
        server.shutdown()
        loop.join(10)
        disk.close()
    elapsed = time.monotonic() - started
    return _report(result, elapsed, image, disk)


def _report(result, elapsed: float, image: str, disk) -> int:
    v = result.values()
    say(f"[4/4] the guest booted in {result.boot_time or 0:.1f} s and finished in {elapsed:.1f} s; it saw:")
    sectors = int(v.get("sectors", "0") or 0)
    say(f"      block device {v.get('disk', '?')}: {sectors} sectors ({sectors * 512 >> 20} MiB), "
        f"serial {v.get('serial', '?')!r}, {v.get('queues', '?')} queue(s)")
    same = v.get("written") and v.get("written") == v.get("read_back")
    say(f"      {v.get('mkfs', 'no')} file system made; 4 MiB file written, unmounted, read back: "
        f"{'identical' if same else 'DIFFERENT'} (sha256 {v.get('read_back', '?')[:16]}…)")
    say(f"      {v.get('fs_usage', '')}")
    say(f"      entropy: rng_current={v.get('rng_current', '?')}, 32 bytes from /dev/hwrng: {v.get('hwrng', '?')}")
    allocated = os.stat(image).st_blocks * 512
    say(f"      host side: the image file has {allocated >> 20} MiB allocated; the daemon read "
        f"{disk.stats['read_bytes'] >> 10} KiB and wrote {disk.stats['write_bytes'] >> 10} KiB "
        f"in {disk.stats['requests']} requests")
    ok = result.exit_code == 0 and same and v.get("rng_current", "").startswith("virtio_rng")
    if not ok:
        print("pyvirtio demo: the guest's checks did not all pass; script output:", file=sys.stderr)
        for line in result.lines[-20:]:
            print("  " + line, file=sys.stderr)
    return 0 if ok else 1
