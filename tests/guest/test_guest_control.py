"""A real Linux guest (QEMU 7.2) on ``pyvirtio serve ... --control=PATH``, changed live with
``pyvirtio ctl``: a disk grows under the guest without a reconnect (CONFIG_CHANGE_MSG on the
back-end request channel), and a network link goes down and up (seen by the guest's operstate;
over vhost-user QEMU takes the link only from the connection, pyvirtio.net.vhost_link)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.guest, pytest.mark.timeout(600)]

MiB = 1 << 20
CLI = [sys.executable, "-m", "pyvirtio.cli"]


class Daemon:
    """``pyvirtio serve TYPE ... --control=PATH`` (the real program), its log in ``tmp``."""

    def __init__(self, tmp, kind, *args):
        self.socket, self.control = str(tmp / f"{kind}.sock"), str(tmp / f"{kind}.ctl")
        self.log = tmp / f"{kind}.log"
        self._log = open(self.log, "a")
        self.proc = subprocess.Popen([*CLI, "-v", "serve", kind, *args, f"--socket-path={self.socket}",
                                      f"--control={self.control}"], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not (os.path.exists(self.socket) and os.path.exists(self.control)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{kind} did not start:\n{self.log.read_text()}")
            time.sleep(0.02)

    def ctl(self, *words):
        run = subprocess.run([*CLI, "ctl", "--json", self.control, *words], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stderr + self.log.read_text()[-3000:]
        return json.loads(run.stdout)["result"]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            self.proc.kill()
            self._log.close()


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
    from pyvirtio.devices.blk import BlkDevice
    if not hasattr(BlkDevice, "resize"):
        pytest.skip("BlkDevice.resize is not there yet")
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
