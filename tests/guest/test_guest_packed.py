"""A real Linux guest (QEMU 7.2, TCG) on ``pyvirtio serve`` back-ends with packed rings.

``vhost-user-blk-pci,packed=on`` (2 queues, requests completed out of order by the I/O engine)
and ``vhost-user-rng-pci,packed=on``, each on its own daemon.  The guest prints its negotiated
feature bits (``/sys/bus/virtio/devices/*/features``); the tests fail unless bit 34
(VIRTIO_F_RING_PACKED) is there, so a silent fall-back to split rings cannot pass.  Then real
I/O with its data checked: O_DIRECT 512 B … 1 MiB, 16 parallel writers over both queues, an
ext2 file system re-read after dropping the caches, /dev/hwrng.  A second guest on the same
daemons with ``packed=off`` shows the same daemons still serve split rings.

Without QEMU or busybox these are skipped, except with CI set, where they fail.
"""

from __future__ import annotations

import pytest

from pyvirtio.guest import boot_guest
from pyvirtio.guest.modules import EXT4_MODULES

from test_guest_vhost_user import Daemon  # noqa: E402 (same folder, on sys.path)

pytestmark = [pytest.mark.guest, pytest.mark.timeout(600)]

MiB = 1 << 20
RING_PACKED = 34

FEATURES = r"""
for d in /sys/bus/virtio/devices/virtio*; do
  echo "features_$(cat $d/device)=$(cat $d/features)"
done
"""

SCRIPT = FEATURES + r"""
echo "mq=$(ls /sys/block/vda/mq | wc -l)"
base=$((40 << 20))
for bs in 512 4096 65536 1048576; do
  dd if=/dev/urandom of=/tmp/src bs=$bs count=1 2>/dev/null
  dd if=/tmp/src of=/dev/vda bs=$bs seek=$((base / bs)) count=1 oflag=direct 2>/dev/null
  dd if=/dev/vda of=/tmp/back bs=$bs skip=$((base / bs)) count=1 iflag=direct 2>/dev/null
  cmp -s /tmp/src /tmp/back && echo "odirect_$bs=ok" || echo "odirect_$bs=BAD"
done
for i in $(seq 0 15); do dd if=/dev/urandom of=/tmp/w$i bs=64k count=8 2>/dev/null; done
for i in $(seq 0 15); do
  dd if=/tmp/w$i of=/dev/vda bs=64k seek=$((768 + i * 8)) count=8 oflag=direct 2>/dev/null &
done
wait
bad=0
for i in $(seq 0 15); do
  dd if=/dev/vda bs=64k skip=$((768 + i * 8)) count=8 iflag=direct 2>/dev/null | cmp -s - /tmp/w$i || bad=$((bad + 1))
done
echo "parallel_bad=$bad"
mke2fs -F /dev/vda 32768 >/dev/null 2>&1 && echo "mkfs=ok"
mount -t ext2 /dev/vda /mnt
dd if=/dev/urandom of=/mnt/big bs=1M count=4 2>/dev/null
for i in $(seq 1 50); do echo "file $i $(dd if=/dev/urandom bs=16 count=1 2>/dev/null | od -An -tx1)" >/mnt/f$i; done
( cd /mnt && find . -type f | sort | xargs sha256sum >/tmp/SUMS )
sync
umount /mnt
echo 3 >/proc/sys/vm/drop_caches
mount -t ext2 /dev/vda /mnt
( cd /mnt && sha256sum -c /tmp/SUMS >/tmp/check 2>&1 ) && echo "fs_verified=$(wc -l </tmp/check)" || echo "fs_verified=FAILED"
umount /mnt
echo "rng_current=$(cat /sys/class/misc/hw_random/rng_current)"
for i in 1 2 3; do echo "rng_$i=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"; done
"""

SPLIT_CHECK = FEATURES + r"""
dd if=/dev/vda bs=64k skip=768 count=8 iflag=direct 2>/dev/null | sha256sum | cut -c1-16 | sed 's/^/split_read=/'
echo "rng=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
"""


def has_bit(features: str, bit: int) -> bool:
    """``features`` as the kernel prints it: one '0'/'1' per bit, bit 0 first."""
    return len(features) > bit and features[bit] == "1"


def qemu_args(blk, rng, packed):
    on = "on" if packed else "off"
    return (blk.chardev("blk") + ["-device", f"vhost-user-blk-pci,chardev=blk,num-queues=2,packed={on}"]
            + rng.chardev("rng") + ["-device", f"vhost-user-rng-pci,chardev=rng,packed={on}"])


@pytest.fixture(scope="module")
def daemons(guest_kernel, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packed-guest")
    image = tmp / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    blk = Daemon(tmp, "blk", "blk", f"--blk-file={image}", "--num-queues=2")
    rng = Daemon(tmp, "rng", "rng")
    yield {"tmp": tmp, "kernel": guest_kernel, "blk": blk, "rng": rng}
    for d in (blk, rng):
        d.stop()


@pytest.fixture(scope="module")
def packed_boot(daemons):
    return boot_guest(daemons["kernel"], SCRIPT, cpus=2, timeout=400,
                      qemu_args=qemu_args(daemons["blk"], daemons["rng"], True),
                      console_log=daemons["tmp"] / "packed.log", modules=EXT4_MODULES).check()


def test_guest_negotiated_packed_rings(packed_boot):
    v = packed_boot.values()
    blk, rng = v["features_0x0002"], v["features_0x0004"]
    assert has_bit(blk, RING_PACKED), f"blk fell back to split rings: {blk}"
    assert has_bit(rng, RING_PACKED), f"rng fell back to split rings: {rng}"


def test_blk_io_on_packed_rings_is_correct(packed_boot):
    v = packed_boot.values()
    assert v["mq"] == "2"
    for bs in (512, 4096, 65536, 1048576):
        assert v[f"odirect_{bs}"] == "ok", (bs, v)
    assert v["parallel_bad"] == "0"
    assert v["mkfs"] == "ok" and v["fs_verified"] == "51"


def test_rng_on_a_packed_ring(packed_boot):
    v = packed_boot.values()
    assert v["rng_current"] == "virtio_rng.0"
    samples = [v[f"rng_{i}"] for i in (1, 2, 3)]
    assert all(len(s) == 64 for s in samples) and len(set(samples)) == 3


def test_same_daemons_serve_a_split_guest_next(packed_boot, daemons):
    res = boot_guest(daemons["kernel"], SPLIT_CHECK, timeout=200,
                     qemu_args=qemu_args(daemons["blk"], daemons["rng"], False),
                     console_log=daemons["tmp"] / "split.log").check()
    v = res.values()
    assert not has_bit(v["features_0x0002"], RING_PACKED)
    assert not has_bit(v["features_0x0004"], RING_PACKED)
    assert len(v["split_read"]) == 16 and len(v["rng"]) == 32
    for d in ("blk", "rng"):
        text = (daemons["tmp"] / f"{d}.log").read_text()
        assert "Traceback" not in text and "broken" not in text, text[-2000:]
