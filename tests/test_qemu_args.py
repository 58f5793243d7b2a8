"""``pyvirtio qemu-args`` and the QEMU lines ``pyvirtio serve`` prints: what they say for each
device type, that they agree with the README, and that a guest boots with exactly the README's
blk and rng lines and uses both devices."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyvirtio.cli import main
from pyvirtio.commands.qemu_args import attach_lines, device_args, memory_args
from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.spec.ids import DeviceType

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_qemu_lines() -> list[str]:
    """The attach lines of the README's QEMU command (after the qemu-system line)."""
    text = README.read_text()
    block = text[text.index("qemu-system-x86_64 -accel kvm"):]
    block = block[:block.index("```")]
    return [line.strip().rstrip("\\").strip() for line in block.splitlines()[1:] if line.strip()]


def test_device_args_per_type():
    assert device_args(DeviceType.BLOCK, "/run/d.sock", queues=4) == [
        "-chardev", "socket,id=vu-d,path=/run/d.sock", "-device", "vhost-user-blk-pci,chardev=vu-d,num-queues=4"]
    assert device_args(DeviceType.ENTROPY, "/run/r.sock")[-1] == "vhost-user-rng-pci,chardev=vu-r"
    net = device_args(DeviceType.NET, "/run/n,1.sock", queues=2)
    assert net == ["-chardev", "socket,id=vu-n-1,path=/run/n,,1.sock",
                   "-netdev", "vhost-user,id=net-n-1,chardev=vu-n-1,queues=2",
                   "-device", "virtio-net-pci,netdev=net-n-1,mq=on,vectors=6"]
    assert "share=on" in " ".join(memory_args("2G")) and memory_args("2G")[:2] == ["-m", "2G"]


def test_readme_lines_are_what_serve_prints():
    lines = readme_qemu_lines()
    assert lines[0] == attach_lines(DeviceType.BLOCK, "/tmp/vdisk.sock")[0]
    assert lines[1:] == [attach_lines(DeviceType.BLOCK, "/tmp/vdisk.sock")[1],
                         attach_lines(DeviceType.ENTROPY, "/tmp/vrng.sock")[1],
                         attach_lines(DeviceType.NET, "/tmp/vnet.sock")[1]]


def test_qemu_args_probes_a_running_back_end(server, tmp_path, image, capsys):
    disk = BlkDevice(image, num_queues=2)
    server.add(disk, socket_path=str(tmp_path / "disk.sock"))
    server.add(RngDevice(), socket_path=str(tmp_path / "rng.sock"))
    server.start()
    try:
        assert main(["qemu-args", f"--socket-path={tmp_path / 'disk.sock'}", "--memory=512M"]) == 0
        out = capsys.readouterr().out
        assert out.splitlines() == [
            "-m 512M -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \\",
            f"-chardev socket,id=vu-disk,path={tmp_path / 'disk.sock'} "
            "-device vhost-user-blk-pci,chardev=vu-disk,num-queues=2"]
        assert main(["qemu-args", f"--socket-path={tmp_path / 'rng.sock'}", "--type=rng"]) == 0
        assert "-device vhost-user-rng-pci,chardev=vu-rng" in capsys.readouterr().out
    finally:
        server.shutdown()
        disk.close()
    assert main(["qemu-args", f"--socket-path={tmp_path / 'gone.sock'}"]) == 1


def test_serve_prints_its_qemu_arguments(tmp_path):
    sock = tmp_path / "r.sock"
    proc = subprocess.Popen([sys.executable, "-m", "pyvirtio", "serve", "rng", f"--socket-path={sock}"],
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stderr.readline() for _ in range(4)]
    finally:
        proc.terminate()
        proc.wait(10)
    assert lines[1].strip() == "pyvirtio serve: attach it to QEMU with:"
    assert lines[3].strip() == f"pyvirtio serve:   -chardev socket,id=vu-r,path={sock} -device vhost-user-rng-pci,chardev=vu-r"


@pytest.mark.guest
@pytest.mark.peer
def test_guest_boots_with_the_readme_command_line(boot, tmp_path, image):
    """``pyvirtio serve blk`` and ``serve rng`` as the README starts them, QEMU with the README's
    memory, blk and rng lines (socket paths moved into this test's directory)."""
    disk_sock, rng_sock = tmp_path / "vdisk.sock", tmp_path / "vrng.sock"
    procs = [subprocess.Popen([sys.executable, "-m", "pyvirtio", "serve", *argv], stderr=subprocess.DEVNULL)
             for argv in (["blk", f"--socket-path={disk_sock}", f"--blk-file={image}"],
                          ["rng", f"--socket-path={rng_sock}"])]
    try:
        deadline = time.monotonic() + 30
        while not (disk_sock.exists() and rng_sock.exists()):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.05)
        lines = readme_qemu_lines()[:3]
        args = shlex.split(" ".join(lines).replace("/tmp/vdisk.sock", str(disk_sock))
                           .replace("/tmp/vrng.sock", str(rng_sock)))
        script = ("echo sectors=$(cat /sys/block/vda/size); "
                  "echo rng=$(cat /sys/class/misc/hw_random/rng_current); "
                  "echo bytes=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' \\n')")
        result = boot(script, qemu_args=args, shared_memory=False, memory_mb=1024, timeout=240)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    v = result.values()
    assert int(v["sectors"]) == (32 << 20) // 512, result.lines
    assert v["rng"].startswith("virtio_rng") and re.fullmatch(r"[0-9a-f]{32}", v["bytes"]), result.lines
