"""A real Linux guest (QEMU 7.2, TCG) on ``pyvirtio serve`` back-ends: vhost-user-blk and
vhost-user-rng.

Four boots share one disk image (64 MiB: an ext2 file system in the first 32 MiB, raw test
areas after it):

1. daemons D1 (blk, 2 queues) and R1 (rng), 2 CPUs: queues, O_DIRECT 512 B … 1 MiB, parallel
   writers, discard and write-zeroes, /dev/hwrng; then mkfs.ext2, fill, sync, re-read; then a
   guest reboot (the same daemons serve the rebooted guest, which re-checks the file system);
2. the same daemons, a new QEMU, killed (SIGKILL) in the middle of writes;
3. the same daemons again, a new QEMU: the disk and the file system still work;
4. a NEW daemon process on the same image, read-only: the file system is intact, writes fail.

Without QEMU or busybox these are skipped, except with CI set, where they fail.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time

import pytest

from pyvirtio.guest import boot_guest, start_guest
from pyvirtio.guest.modules import EXT4_MODULES
from pyvirtio.testing.serve import ServeProcess

pytestmark = [pytest.mark.guest, pytest.mark.timeout(600)]

MiB = 1 << 20
DISK_SIZE = 64 * MiB
BLKDISCARD = "/usr/sbin/blkdiscard"  # util-linux: has -z (busybox's does not)


class Daemon(ServeProcess):
    """A ``pyvirtio serve`` process (the real program, as QEMU users run it)."""

    def __init__(self, tmp, name, *args):
        self.socket = str(tmp / f"{name}.sock")
        super().__init__(tmp, name, [*args, f"--socket-path={self.socket}"], [self.socket])

    def chardev(self, cid, reconnect=False):
        # QEMU 7.2's vhost-user-rng cannot start on a reconnecting chardev (it is connected
        # asynchronously: "Failed to set msg fds", then an assertion); vhost-user-blk can.
        return ["-chardev", f"socket,id={cid},path={self.socket}" + (",reconnect=1" if reconnect else "")]

def blk_args(daemon, queues=1):
    return daemon.chardev("blk", reconnect=True) + ["-device", f"vhost-user-blk-pci,chardev=blk,num-queues={queues}"]


def rng_args(daemon):
    return daemon.chardev("rng") + ["-device", "vhost-user-rng-pci,chardev=rng"]


def guest_extras():
    return dict(modules=EXT4_MODULES,
                host_binaries=[BLKDISCARD] if os.path.exists(BLKDISCARD) else [])


# The sums of the files written in boot 1 are kept in the file system itself (/SUMS).
VERIFY_FS = r"""
mount -t ext2 $MOUNT_OPTS /dev/vda /mnt
( cd /mnt && sha256sum -c SUMS >/tmp/check 2>&1 ) && echo "fs_verified=$(wc -l </tmp/check)" || { cat /tmp/check; echo fs_verified=FAILED; }
echo "sums_digest=$(sha256sum /mnt/SUMS | cut -c1-16)"
"""

BOOT1 = r"""
marker=$(dd if=/dev/vda bs=512 skip=$((131071)) count=1 2>/dev/null | head -c 8)
if [ "$marker" = "REBOOTED" ]; then
    echo "second_pass=1"
    echo "rng_after_reboot=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
    MOUNT_OPTS=""
""" + VERIFY_FS + r"""
    umount /mnt
    exit 0
fi
echo "mq=$(ls /sys/block/vda/mq | wc -l)"
echo "cpus=$(nproc)"
echo "sectors=$(cat /sys/block/vda/size)"
echo "serial=$(cat /sys/block/vda/serial)"
echo "ro=$(cat /sys/block/vda/ro)"
echo "discard_max=$(cat /sys/block/vda/queue/discard_max_bytes)"
echo "write_zeroes_max=$(cat /sys/block/vda/queue/write_zeroes_max_bytes)"

# entropy
echo "rng_current=$(cat /sys/class/misc/hw_random/rng_current)"
for i in 1 2 3 4; do
    echo "rng_$i=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
done

# O_DIRECT, 512 B ... 1 MiB, at 40 MiB
base=$((40 << 20))
for bs in 512 1024 4096 16384 65536 262144 1048576; do
    dd if=/dev/urandom of=/tmp/src bs=$bs count=1 2>/dev/null
    dd if=/tmp/src of=/dev/vda bs=$bs seek=$((base / bs)) count=1 oflag=direct 2>/dev/null
    dd if=/dev/vda of=/tmp/back bs=$bs skip=$((base / bs)) count=1 iflag=direct 2>/dev/null
    cmp -s /tmp/src /tmp/back && echo "odirect_$bs=ok" || echo "odirect_$bs=BAD"
done

# 16 writers in parallel (on both CPUs, hence both queues), 512 KiB each, at 48 MiB
for i in $(seq 0 15); do
    dd if=/dev/urandom of=/tmp/w$i bs=64k count=8 2>/dev/null
done
for i in $(seq 0 15); do
    dd if=/tmp/w$i of=/dev/vda bs=64k seek=$((768 + i * 8)) count=8 oflag=direct 2>/dev/null &
done
wait
bad=0
for i in $(seq 0 15); do
    dd if=/dev/vda bs=64k skip=$((768 + i * 8)) count=8 iflag=direct 2>/dev/null | cmp -s - /tmp/w$i || bad=$((bad + 1))
done
echo "parallel_bad=$bad"

# discard and write-zeroes, at 56 MiB
dd if=/dev/urandom of=/dev/vda bs=1M seek=56 count=4 oflag=direct 2>/dev/null
blkdiscard -o $((56 << 20)) -l $((2 << 20)) /dev/vda && echo discard_cmd=ok
echo "discarded_nonzero=$(dd if=/dev/vda bs=1M skip=56 count=2 iflag=direct 2>/dev/null | tr -d '\000' | wc -c)"
if [ -x /usr/sbin/blkdiscard ]; then
    /usr/sbin/blkdiscard -z -o $((58 << 20)) -l $((2 << 20)) /dev/vda && echo zeroout_cmd=ok
    echo "zeroed_nonzero=$(dd if=/dev/vda bs=1M skip=58 count=2 iflag=direct 2>/dev/null | tr -d '\000' | wc -c)"
fi

# ext2 in the first 32 MiB: format, fill, sync, read back after a remount
mke2fs -F /dev/vda 32768 >/dev/null 2>&1 && echo mkfs=ok
mount -t ext2 /dev/vda /mnt
dd if=/dev/urandom of=/mnt/big bs=1M count=6 2>/dev/null
mkdir /mnt/small
for i in $(seq 1 150); do echo "file $i $(dd if=/dev/urandom bs=16 count=1 2>/dev/null | od -An -tx1)" >/mnt/small/f$i; done
( cd /mnt && find . -type f ! -name SUMS | sort | xargs sha256sum >/tmp/SUMS ) && cp /tmp/SUMS /mnt/SUMS
sync
umount /mnt
echo 3 >/proc/sys/vm/drop_caches
MOUNT_OPTS=""
""" + VERIFY_FS + r"""
umount /mnt

# now reboot the guest: the daemons must serve it again
printf REBOOTED | dd of=/dev/vda bs=512 seek=131071 conv=sync,fsync 2>/dev/null
sync
echo rebooting=1
reboot -f
sleep 30
"""


@pytest.fixture(scope="module")
def disk(guest_kernel, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vhost-user-guest")
    image = tmp / "disk.img"
    with open(image, "wb") as f:
        f.truncate(DISK_SIZE)
    state = {"tmp": tmp, "image": image, "kernel": guest_kernel}
    blk = Daemon(tmp, "d1", "blk", f"--blk-file={image}", "--num-queues=2", "--serial=pyvirtio-d1")
    rng = Daemon(tmp, "r1", "rng")
    state["d1"], state["r1"] = blk, rng
    yield state
    for d in (blk, rng):
        d.stop()


@pytest.fixture(scope="module")
def boot1(disk):
    t = time.monotonic()
    res = boot_guest(disk["kernel"], BOOT1, cpus=2, timeout=300,
                     qemu_args=["-action", "reboot=reset"] + blk_args(disk["d1"], 2) + rng_args(disk["r1"]),
                     console_log=disk["tmp"] / "boot1.log", **guest_extras())
    res.elapsed = time.monotonic() - t
    print(f"boot 1 (with a guest reboot): {res.elapsed:.1f} s, first boot to /init {res.boot_time:.1f} s")
    return res


def test_blk_queues_odirect_parallel_discard_and_fs(boot1):
    v = boot1.check().values()
    assert v["mq"] == "2" and v["cpus"] == "2"
    assert int(v["sectors"]) == DISK_SIZE // 512
    assert v["serial"] == "pyvirtio-d1" and v["ro"] == "0"
    for bs in (512, 1024, 4096, 16384, 65536, 262144, 1048576):
        assert v[f"odirect_{bs}"] == "ok", bs
    assert v["parallel_bad"] == "0"
    assert int(v["discard_max"]) > 0 and int(v["write_zeroes_max"]) > 0
    assert v["discard_cmd"] == "ok" and v["discarded_nonzero"] == "0"
    if os.path.exists(BLKDISCARD):
        assert v["zeroout_cmd"] == "ok" and v["zeroed_nonzero"] == "0"
    assert v["mkfs"] == "ok"
    assert int(v["fs_verified"]) >= 151


def test_both_queues_carried_requests(boot1, disk):
    deadline = time.monotonic() + 10
    while True:
        m = re.search(r"requests served: ring 0: (\d+), ring 1: (\d+)", (disk["tmp"] / "d1.log").read_text())
        if m or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert m, "the daemon did not report the first session"
    print(f"requests per queue in boot 1: {m.group(1)}, {m.group(2)}")
    assert int(m.group(1)) > 0 and int(m.group(2)) > 0


def test_rng_delivers_fresh_bytes(boot1):
    v = boot1.check().values()
    assert v["rng_current"] == "virtio_rng.0"
    samples = [v[f"rng_{i}"] for i in range(1, 5)]
    assert all(len(s) == 64 for s in samples)
    assert len(set(samples)) == 4 and "00" * 32 not in samples


def test_guest_reboot_is_served_by_the_same_daemons(boot1, disk):
    v = boot1.check().values()
    assert v["rebooting"] == "1" and v["second_pass"] == "1"
    assert int(v["fs_verified"]) >= 151 and len(v["rng_after_reboot"]) == 32
    assert boot1.output.count("PYVIRTIO-GUEST-BOOTED") == 2
    assert disk["d1"].proc.poll() is None and disk["r1"].proc.poll() is None
    disk["sums_digest"] = v["sums_digest"]


def test_qemu_killed_mid_io_then_restarted_against_the_same_daemon(boot1, disk):
    writer = r"""
echo writing=1
i=0
while true; do
    dd if=/dev/urandom of=/dev/vda bs=64k seek=$((832 + i % 64)) count=1 oflag=direct 2>/dev/null
    i=$((i + 1))
done
"""
    with start_guest(disk["kernel"], writer, timeout=120, qemu_args=blk_args(disk["d1"]) + rng_args(disk["r1"]),
                     console_log=disk["tmp"] / "boot2.log", **guest_extras()) as guest:
        guest.expect("writing=1", timeout=60)
        time.sleep(1.0)
        guest.popen.send_signal(signal.SIGKILL)
        guest.popen.wait(10)
    check = r"""
MOUNT_OPTS=""
""" + VERIFY_FS + r"""
echo fresh > /mnt/after-kill && sync && umount /mnt && mount -t ext2 /dev/vda /mnt && cat /mnt/after-kill
umount /mnt
echo "rng=$(dd if=/dev/hwrng bs=8 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
"""
    res = boot_guest(disk["kernel"], check, timeout=120, qemu_args=blk_args(disk["d1"]) + rng_args(disk["r1"]),
                     console_log=disk["tmp"] / "boot3.log", **guest_extras()).check()
    v = res.values()
    assert int(v["fs_verified"]) >= 151 and "fresh" in res.lines
    assert len(v["rng"]) == 16
    assert disk["d1"].proc.poll() is None, "the daemon died with QEMU"
    log = (disk["tmp"] / "d1.log").read_text()
    assert log.count("front-end connected") == 3  # boots 1 (its reboot keeps the connection), 2, 3


def test_new_daemon_read_only_finds_the_fs_intact_and_refuses_writes(boot1, disk):
    assert disk["d1"].stop() == 0, "SIGTERM must end the daemon cleanly"
    assert not os.path.exists(disk["d1"].socket)
    before = hashlib.sha256(open(disk["image"], "rb").read(32 * MiB)).hexdigest()
    d2 = Daemon(disk["tmp"], "d2", "blk", f"--blk-file={disk['image']}", "--read-only")
    try:
        script = r"""
echo "ro=$(cat /sys/block/vda/ro)"
dd if=/dev/zero of=/dev/vda bs=512 count=1 oflag=direct 2>/dev/null && echo write=accepted || echo write=refused
MOUNT_OPTS="-o ro"
""" + VERIFY_FS + r"""
touch /mnt/x 2>/dev/null && echo fs_write=accepted || echo fs_write=refused
umount /mnt
"""
        res = boot_guest(disk["kernel"], script, timeout=120, qemu_args=blk_args(d2),
                         console_log=disk["tmp"] / "boot4.log", **guest_extras()).check()
    finally:
        assert d2.stop() == 0
    v = res.values()
    assert v["ro"] == "1" and v["write"] == "refused" and v["fs_write"] == "refused"
    assert int(v["fs_verified"]) >= 151
    if "sums_digest" in disk:
        assert v["sums_digest"] == disk["sums_digest"]
    assert hashlib.sha256(open(disk["image"], "rb").read(32 * MiB)).hexdigest() == before


def test_daemon_killed_and_restarted_while_the_guest_writes(guest_kernel, tmp_path):
    """QEMU (``reconnect=1``) reconnects to a new daemon; requests in flight when the old one
    died are fetched again from the used index (pyvirtio completes each ring in order), so the
    guest sees no error and no corruption.  The new daemon replaces the stale socket file."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(DISK_SIZE)
    script = r"""
echo start=1
i=0; bad=0; errors=0
end=$(( $(date +%s) + 10 ))
while [ $(date +%s) -lt $end ]; do
    dd if=/dev/urandom of=/tmp/s bs=64k count=1 2>/dev/null
    dd if=/tmp/s of=/dev/vda bs=64k seek=$((i % 256)) count=1 oflag=direct 2>/dev/null || errors=$((errors + 1))
    dd if=/dev/vda bs=64k skip=$((i % 256)) count=1 iflag=direct 2>/dev/null | cmp -s - /tmp/s || bad=$((bad + 1))
    i=$((i + 1))
done
echo "iterations=$i"
echo "bad=$bad"
echo "errors=$errors"
"""
    first = Daemon(tmp_path, "d", "blk", f"--blk-file={image}")
    second = None
    try:
        with start_guest(guest_kernel, script, timeout=120, qemu_args=blk_args(first),
                         console_log=tmp_path / "console.log") as guest:
            guest.expect("start=1", timeout=60)
            time.sleep(2)
            first.proc.send_signal(signal.SIGKILL)  # no clean-up: the socket file stays
            first.stop()
            assert os.path.exists(first.socket)
            time.sleep(0.5)
            second = Daemon(tmp_path, "d", "blk", f"--blk-file={image}")
            res = guest.wait().check()
    finally:
        if second is not None:
            assert second.stop() == 0
    v = res.values()
    print(f"daemon restart: {v['iterations']} write+read rounds, {v['bad']} bad, {v['errors']} errors")
    assert int(v["iterations"]) > 50 and v["bad"] == "0" and v["errors"] == "0"
    assert (tmp_path / "d.log").read_text().count("front-end connected") == 2
