"""A real Linux guest (QEMU 7.2, vhost-user-blk-pci, memfd shared memory) on a BlkDevice served
in this process by VhostUserServer: ``device.resize()`` grows the disk while the guest has it,
and the guest sees the new size in /sys/block/vda/size without a reconnect — the back-end's
CONFIG_CHANGE_MSG on its request channel, QEMU's GET_CONFIG, a config interrupt in the guest.

Without QEMU or the guest kernel this is skipped, except with CI set, where it fails.
"""

from __future__ import annotations

import os
import time

import pytest

from pyvirtio.devices.blk import BlkDevice

pytestmark = [pytest.mark.guest, pytest.mark.timeout(600)]

MiB = 1 << 20

WATCH_SIZE = r"""
echo "ready size=$(cat /sys/block/vda/size)"
last=x
n=0
while [ $n -lt 600 ]; do
    v=$(cat /sys/block/vda/size 2>/dev/null)
    if [ "$v" != "$last" ]; then echo "size=$v"; last=$v; fi
    usleep 100000
    n=$((n+1))
done
"""


def test_guest_sees_the_disk_grow_without_a_reconnect(boot, server, tmp_path):
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    device = BlkDevice(str(image))
    sock = str(tmp_path / "blk.sock")
    ep = server.add(device, socket_path=sock)
    server.start()
    try:
        guest = boot.start(WATCH_SIZE, qemu_args=[
            "-chardev", f"socket,id=blk,path={sock}",
            "-device", "vhost-user-blk-pci,chardev=blk,num-queues=1"], timeout=300)
        guest.expect(rf"ready size={16 * MiB // 512}", timeout=180)
        guest.expect(rf"size={16 * MiB // 512}", timeout=30)
        assert ep.session is not None and ep.session.conn.backend_fd >= 0  # QEMU gave a channel
        device.resize(48 * MiB)
        guest.expect(rf"size={48 * MiB // 512}", timeout=30)
        device.resize(64 * MiB)  # and again: the channel stays usable
        guest.expect(rf"size={64 * MiB // 512}", timeout=30)
        assert ep.connections == 1  # no reconnect
        assert os.path.getsize(image) == 64 * MiB
    finally:
        server.shutdown()  # the loop ends the session (device reset) before the image closes
        deadline = time.monotonic() + 10
        while server.running.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        device.close()
