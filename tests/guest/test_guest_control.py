"""A real Linux guest (QEMU 7.2) on ``pyvirtio serve ... --control=PATH``, changed live with
``pyvirtio ctl``: a disk grows under the guest without a reconnect (CONFIG_CHANGE_MSG on the
back-end request channel), a network link goes down and up (seen by the guest's operstate;
over vhost-user QEMU takes the link only from the connection, pyvirtio.net.vhost_link), and
the README's worked example: an ext4 file system under write errors injected live."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pyvirtio.testing.serve import ServeProcess

pytestmark = [pytest.mark.guest, pytest.mark.timeout(600)]

MiB = 1 << 20
CLI = [sys.executable, "-m", "pyvirtio.cli"]


class Daemon(ServeProcess):
    """``pyvirtio serve TYPE ... --control=PATH`` (the real program), its log in ``tmp``."""

    def __init__(self, tmp, kind, *args):
        self.socket, self.control = str(tmp / f"{kind}.sock"), str(tmp / f"{kind}.ctl")
        super().__init__(tmp, kind, [kind, *args, f"--socket-path={self.socket}",
                                     f"--control={self.control}"], [self.socket, self.control])

    def ctl(self, *words):
        run = subprocess.run([*CLI, "ctl", "--json", self.control, *words], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stderr + self.log.read_text()[-3000:]
        return json.loads(run.stdout)["result"]



WATCH = r"""
last=x
n=0
while [ $n -lt 3000 ]; do
    v=$(cat {path} 2>/dev/null)
    if [ "$v" != "$last" ]; then echo "{name}=$v"; last=$v; fi
    usleep 100000
    n=$((n + 1))
done
"""


def _watch(path: str, name: str) -> str:
    return WATCH.replace("{path}", path).replace("{name}", name)


def test_ctl_resize_grows_the_disk_the_guest_has_open(boot, tmp_path):
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(32 * MiB)
    daemon = Daemon(tmp_path, "blk", f"--blk-file={image}")
    try:
        script = "exec 3</dev/vda\n" + _watch("/sys/block/vda/size", "sectors")  # the disk is open
        guest = boot.start(script, qemu_args=["-chardev", f"socket,id=blk,path={daemon.socket}",
                                              "-device", "vhost-user-blk-pci,chardev=blk"], timeout=300)
        guest.expect(f"sectors={32 * MiB // 512}", timeout=120)
        result = daemon.ctl("resize", "64M")
        assert result["size"] == 64 * MiB
        guest.expect(f"sectors={64 * MiB // 512}", timeout=60)
        stats = daemon.ctl("stats")
        assert stats["connection"]["connections"] == 1  # the same connection all along
        assert stats["config_interrupts"] >= 1
    finally:
        assert daemon.stop() == 0


def test_ctl_link_down_and_up_is_seen_by_the_guest(boot, tmp_path):
    daemon = Daemon(tmp_path, "net", "--null")
    try:
        script = "ip link set eth0 up\n" + _watch("/sys/class/net/eth0/operstate", "operstate")
        guest = boot.start(script, qemu_args=[
            "-chardev", f"socket,id=c0,path={daemon.socket},reconnect=1",
            "-netdev", "vhost-user,id=n0,chardev=c0",
            "-device", "virtio-net-pci,netdev=n0,vectors=0,mac=52:54:00:80:00:09"], timeout=300)
        guest.expect("operstate=up", timeout=120)
        assert daemon.ctl("link", "down") == {"link": "down"}
        guest.expect("operstate=down", timeout=60)
        assert daemon.ctl("link", "up") == {"link": "up"}
        guest.expect("operstate=up", timeout=60)
        assert daemon.ctl("stats")["link"] == "up"
    finally:
        assert daemon.stop() == 0


EXT4_UNDER_FAULTS = r"""
go() { while [ "$(dd if=/dev/vdb bs=512 count=1 iflag=direct 2>/dev/null | head -c 4)" != "$1" ]; do usleep 100000; done; }
/usr/sbin/mke2fs -t ext4 -q -F /dev/vda >/tmp/mkfs.out 2>&1; echo "mkfs_rc=$?"
mount -t ext4 -o errors=remount-ro /dev/vda /mnt; echo "mount_rc=$?"
echo "fs_ready=1"
go "go!!"
dd if=/dev/urandom of=/mnt/f bs=1M count=32 conv=fsync 2>/tmp/dd.err; echo "dd_rc=$?"
sync
echo "eio=$(dmesg | grep -c 'I/O error')"
grep ' /mnt ' /proc/mounts | grep -q '[ ,]ro[ ,]' && echo remounted_ro=1 || echo remounted_ro=0
echo "wrote=1"
go "clr!"
umount /mnt; echo "umount_rc=$?"
/usr/sbin/e2fsck -fn /dev/vda >/tmp/fsck.out 2>&1; echo "fsck_rc=$?"
dd if=/dev/vda of=/dev/null bs=1M count=64 iflag=direct 2>/dev/null; echo "read_back_rc=$?"
"""


def test_readme_worked_example_ext4_under_injected_write_errors(boot, tmp_path):
    """README "Fault injection": the disk is served with --control; once ext4 is made and
    mounted, ``ctl fault add ioerr --sectors 65536-131071 --ops write --prob 0.2 --seed 7`` makes
    a fifth of the writes to that range fail; the guest's fsync reports it, the kernel logs the
    I/O errors, ``stats`` counts the firings; after ``fault clear`` the disk reads and fsck runs."""
    from pyvirtio.guest import EXT4_MODULES
    mkfs, fsck = "/usr/sbin/mke2fs", "/usr/sbin/e2fsck"
    if not (os.path.exists(mkfs) and os.path.exists(fsck)):
        pytest.fail("e2fsprogs (mke2fs, e2fsck) is part of Debian's base system and must be here")
    image, control = tmp_path / "disk.img", tmp_path / "control.img"
    for path, size in ((image, 256 * MiB), (control, MiB)):
        with open(path, "wb") as f:
            f.truncate(size)
    daemon = Daemon(tmp_path, "blk", f"--blk-file={image}")
    try:
        guest = boot.start(EXT4_UNDER_FAULTS, qemu_args=[
            "-chardev", f"socket,id=blk,path={daemon.socket}",
            "-device", "vhost-user-blk-pci,chardev=blk,addr=0x4",
            "-drive", f"if=none,id=ctl,file={control},format=raw",
            "-device", "virtio-blk-pci,drive=ctl,addr=0x5"],
            modules=EXT4_MODULES, host_binaries=[mkfs, fsck],
            timeout=400)
        guest.expect("fs_ready=1", timeout=180)
        rule = daemon.ctl("fault", "add", "ioerr", "--sectors", "65536-131071", "--ops", "write",
                          "--prob", "0.2", "--seed", "7")
        with open(control, "r+b") as f:
            f.write(b"go!!")
        guest.expect("wrote=1", timeout=240)
        fired = [r for r in daemon.ctl("fault", "list") if r["id"] == rule["id"]][0]["fired"]
        errors = sum(q["errors"] for q in daemon.ctl("stats")["queues"])
        assert daemon.ctl("fault", "clear") == {"removed": 1}
        with open(control, "r+b") as f:
            f.write(b"clr!")
        values = guest.wait(180).check().values()
    finally:
        assert daemon.stop() == 0
    print(f"\next4 under ioerr prob 0.2: {fired} writes failed, guest values {values}")
    assert values["mkfs_rc"] == "0" and values["mount_rc"] == "0", guest.output
    assert fired >= 1 and errors >= fired, (fired, errors)
    assert values["dd_rc"] != "0" or int(values["eio"]) >= 1, guest.output  # the guest was told
    assert int(values["eio"]) >= 1, guest.output  # the kernel logged the failed writes
    assert values["read_back_rc"] == "0", guest.output  # with the rule cleared, all reads work
    assert values["fsck_rc"] in {"0", "1", "4"}, guest.output  # it ran; 4: errors left uncorrected (-n)
