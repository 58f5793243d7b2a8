"""kill -9 under load: a Linux guest runs fio with ``--verify=crc32c`` on a ``pyvirtio serve blk``
disk (2 queues, QEMU's chardev ``reconnect=1``) while the test kills the daemon with SIGKILL at
random moments and starts a new one on the same socket and image, 20 times in one run.  The
daemon records every request in flight in QEMU's inflight buffer (INFLIGHT_SHMFD); each new
daemon resubmits them.  Passes only if every fio round verifies, no round stalls (a lost request
hangs fio) and the guest's kernel logged no I/O error.

Each run takes about a minute under TCG (20 kills in 52-59 s, ~10 fio rounds); CI runs all four
(io_uring and threads; split and packed rings), about 4.5 minutes.  ``PYVIRTIO_KILL_CYCLES``
changes the number of kills (default 20), ``PYVIRTIO_KILL_SEED`` fixes the kill moments.
benchmarks/blk_kill_loop.py runs the same loop against qemu-storage-daemon for pass rates.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import time

import pytest

from pyvirtio.guest import start_guest

from test_guest_vhost_user import Daemon  # noqa: E402 (same folder, on sys.path)

pytestmark = [pytest.mark.guest, pytest.mark.peer, pytest.mark.timeout(900)]

MiB = 1 << 20
CYCLES = int(os.environ.get("PYVIRTIO_KILL_CYCLES", "20"))
STOP = b"stop"

# Rounds of fio until the host writes "stop" into the control disk (vdb, QEMU's own virtio-blk).
# Each round writes 2 x 16 MiB at random with crc32c headers and reads it all back; a new seed
# per round, so data a lost write left behind from the round before cannot pass for new data.
SCRIPT = r"""
echo "queues=$(ls /sys/block/vda/mq | wc -l)"; echo "packed=$(cut -c35 /sys/block/vda/device/features)"
r=0
while [ "$(dd if=/dev/vdb bs=512 count=1 iflag=direct 2>/dev/null | head -c 4)" != stop ]; do
  echo "round_start=$r"
  fio --name=kill --filename=/dev/vda --direct=1 --ioengine=libaio --rw=randwrite --bs=4k \
      --iodepth=16 --numjobs=2 --size=16M --offset_increment=16M --verify=crc32c \
      --verify_fatal=1 --randseed=$((r + 1)) --group_reporting >/tmp/fio.out 2>&1
  rc=$?
  echo "round=$r rc=$rc"
  [ $rc = 0 ] || { grep -iE "verify|error|bad" /tmp/fio.out | head -5; }
  r=$((r + 1))
done
echo "rounds=$r"
echo "io_errors=$(dmesg | grep -c 'I/O error')"
echo "hung=$(dmesg | grep -c 'blocked for more than')"
"""


def _kill_loop(guest, daemons, tmp, daemon_args, cycles, rnd):
    """Kill the last daemon and start a new one, ``cycles`` times, while fio runs."""
    guest.expect(r"round_start=0", timeout=120)
    for cycle in range(cycles):
        time.sleep(rnd.uniform(0.2, 2.5))
        d = daemons[-1]
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        d._log.close()
        os.unlink(d.socket)  # left behind by the kill: the next daemon's start is seen by its file
        daemons.append(Daemon(tmp, "blk", *daemon_args))  # same socket; the log file is appended to
        _wait_connected(daemons[-1], guest, cycle, cycle + 2)


def _wait_connected(daemon, guest, cycle, connections, timeout=30):
    deadline = time.monotonic() + timeout
    while daemon.log.read_text().count("front-end connected") < connections:
        if time.monotonic() > deadline or not guest.running:
            raise AssertionError(f"cycle {cycle}: QEMU did not reconnect:\n{daemon.log.read_text()[-2000:]}")
        time.sleep(0.05)


def _resubmitted(log_text):
    """Requests resubmitted by each ring start that found some in flight."""
    return [int(n) for n in re.findall(r"resubmitting (\d+) requests", log_text) if n != "0"]


@pytest.mark.parametrize("ring", ["split", "packed"])
@pytest.mark.parametrize("aio", ["io_uring", "threads"])
def test_fio_verify_survives_20_kills_of_the_daemon(guest_kernel, tmp_path, aio, ring):
    fio = shutil.which("fio")
    assert fio, "fio is not installed"
    image, control = tmp_path / "disk.img", tmp_path / "control.img"
    for path, size in ((image, 64 * MiB), (control, 1 * MiB)):
        with open(path, "wb") as f:
            f.truncate(size)
    daemon_args = ("blk", f"--blk-file={image}", f"--aio={aio}", "--num-queues=2")
    sock = str(tmp_path / "blk.sock")
    qemu_args = ["-chardev", f"socket,id=blk,path={sock},reconnect=1",
                 "-device", "vhost-user-blk-pci,chardev=blk,num-queues=2,addr=0x4"
                 + (",packed=on" if ring == "packed" else ""),
                 "-drive", f"if=none,id=ctl,file={control},format=raw",
                 "-device", "virtio-blk-pci,drive=ctl,addr=0x5"]
    rnd = random.Random(int(os.environ.get("PYVIRTIO_KILL_SEED", "0")) or None)
    t0 = time.monotonic()
    daemons = [Daemon(tmp_path, "blk", *daemon_args)]
    with start_guest(guest_kernel, SCRIPT, cpus=2, timeout=800, qemu_args=qemu_args,
                     host_binaries=[fio], console_log=tmp_path / "console.log") as guest:
        try:
            _kill_loop(guest, daemons, tmp_path, daemon_args, CYCLES, rnd)
            # After the last restart: two whole rounds on the last daemon, then stop.
            last = int(guest.expect(r"round=(\d+) rc=", timeout=240).group(1))
            guest.expect(rf"round={last + 1} rc=", timeout=240)
            with open(control, "r+b") as f:
                f.write(STOP)
            res = guest.wait(timeout=300)
        finally:
            for d in daemons:
                if d.proc.poll() is None:
                    d.stop()
    elapsed = time.monotonic() - t0
    v = res.values()
    rounds = [re.fullmatch(r"round=(\d+) rc=(\d+)", line).groups() for line in res.lines
              if line.startswith("round=")]
    logs = daemons[0].log.read_text()
    resubmitted = _resubmitted(logs)
    print(f"\nkill loop {aio}/{ring}: {CYCLES} kills in {elapsed:.0f} s, {len(rounds)} fio rounds, "
          f"resubmitted per restart: {resubmitted} (total {sum(resubmitted)})")
    assert v["queues"] == "2" and v["packed"] == ("1" if ring == "packed" else "0")
    assert rounds and all(rc == "0" for _, rc in rounds), f"fio failed:\n{res.output[-3000:]}"
    assert v["io_errors"] == "0" and v["hung"] == "0", res.output[-3000:]
    assert len(daemons) == CYCLES + 1
    assert logs.count("front-end connected") == CYCLES + 1

