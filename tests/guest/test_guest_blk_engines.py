"""A real Linux guest on ``pyvirtio serve blk`` disks served by each I/O engine and cache mode.

One boot, three disks on three daemons: ``--direct --aio=io_uring`` (vda), ``--direct
--aio=threads`` (vdb) and the page cache with ``--aio=threads`` (vdc; the default page-cache
io_uring disk is the one of test_guest_vhost_user.py).  On each: O_DIRECT reads and writes
from 512 B to 1 MiB (512 B ones are not aligned as an image opened O_DIRECT on a 4 KiB
disk needs: they go through the bounce buffer), 16 writers in parallel, a flush, and an ext2
file system made, filled, and checked after dropping the guest's caches.  Without QEMU or
busybox these are skipped, except with CI set, where they fail.
"""

from __future__ import annotations

import os

import pytest

from pyvirtio.guest import boot_guest
from pyvirtio.guest.modules import EXT4_MODULES

from test_guest_vhost_user import Daemon  # noqa: E402 (same folder, on sys.path)

pytestmark = [pytest.mark.guest, pytest.mark.timeout(600)]

MiB = 1 << 20
DISKS = {
    "vda": ("--direct", "--aio=io_uring"),
    "vdb": ("--direct", "--aio=threads"),
    "vdc": ("--aio=threads",),
}

SCRIPT = r"""
for d in vda vdb vdc; do
  base=$((40 << 20))
  for bs in 512 4096 65536 1048576; do
    dd if=/dev/urandom of=/tmp/src bs=$bs count=1 2>/dev/null
    dd if=/tmp/src of=/dev/$d bs=$bs seek=$((base / bs)) count=1 oflag=direct 2>/dev/null
    dd if=/dev/$d of=/tmp/back bs=$bs skip=$((base / bs)) count=1 iflag=direct 2>/dev/null
    cmp -s /tmp/src /tmp/back && echo "${d}_odirect_$bs=ok" || echo "${d}_odirect_$bs=BAD"
  done
  for i in $(seq 0 15); do dd if=/dev/urandom of=/tmp/w$i bs=64k count=8 2>/dev/null; done
  for i in $(seq 0 15); do
    dd if=/tmp/w$i of=/dev/$d bs=64k seek=$((768 + i * 8)) count=8 oflag=direct 2>/dev/null &
  done
  wait
  bad=0
  for i in $(seq 0 15); do
    dd if=/dev/$d bs=64k skip=$((768 + i * 8)) count=8 iflag=direct 2>/dev/null | cmp -s - /tmp/w$i || bad=$((bad + 1))
  done
  echo "${d}_parallel_bad=$bad"
  mke2fs -F /dev/$d 32768 >/dev/null 2>&1 && echo "${d}_mkfs=ok"
  mount -t ext2 /dev/$d /mnt
  dd if=/dev/urandom of=/mnt/big bs=1M count=4 2>/dev/null
  for i in $(seq 1 50); do echo "file $i $(dd if=/dev/urandom bs=16 count=1 2>/dev/null | od -An -tx1)" >/mnt/f$i; done
  ( cd /mnt && find . -type f | sort | xargs sha256sum >/tmp/SUMS_$d )
  sync
  umount /mnt
  echo 3 >/proc/sys/vm/drop_caches
  mount -t ext2 /dev/$d /mnt
  ( cd /mnt && sha256sum -c /tmp/SUMS_$d >/tmp/check 2>&1 ) && echo "${d}_fs_verified=$(wc -l </tmp/check)" || echo "${d}_fs_verified=FAILED"
  umount /mnt
done
"""


@pytest.fixture(scope="module")
def booted(guest_kernel, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("blk-engines")
    daemons, qemu_args = {}, []
    try:
        for name, flags in DISKS.items():
            image = tmp / f"{name}.img"
            with open(image, "wb") as f:
                f.truncate(64 * MiB)
            d = daemons[name] = Daemon(tmp, name, "blk", f"--blk-file={image}", *flags)
            qemu_args += d.chardev(name) + ["-device", f"vhost-user-blk-pci,chardev={name},num-queues=1"]
        res = boot_guest(guest_kernel, SCRIPT, cpus=2, timeout=400, qemu_args=qemu_args,
                         console_log=tmp / "console.log", modules=EXT4_MODULES)
        yield res, daemons
    finally:
        for d in daemons.values():
            d.stop()


@pytest.mark.parametrize("disk", sorted(DISKS))
def test_each_engine_serves_a_guest_correctly(booted, disk):
    res, daemons = booted
    v = res.check().values()
    for bs in (512, 4096, 65536, 1048576):
        assert v[f"{disk}_odirect_{bs}"] == "ok", (bs, v)
    assert v[f"{disk}_parallel_bad"] == "0"
    assert v[f"{disk}_mkfs"] == "ok"
    assert v[f"{disk}_fs_verified"] == "51"
    log = daemons[disk].log.read_text()
    flags = DISKS[disk]
    assert ("aio=threads" if "--aio=threads" in flags else "aio=io_uring") in log
    assert ("cache=direct" if "--direct" in flags else "cache=page cache") in log


def test_no_daemon_logged_an_internal_error(booted):
    _, daemons = booted
    for name, d in daemons.items():
        text = d.log.read_text()
        assert "Traceback" not in text and "internal error" not in text, (name, text[-2000:])
        assert os.path.exists(d.socket)
