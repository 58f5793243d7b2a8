"""A Linux guest's vhost-user-blk disk through ``pyvirtio proxy`` (the real program, with
--record): between QEMU 7.2 and ``pyvirtio serve blk``, and between QEMU and
qemu-storage-daemon.  The guest writes, flushes and reads back through the proxy; the decoded
record names every message of the session."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from pyvirtio.bench.peers import start_pyvirtio, start_qsd, which
from pyvirtio.testing.env import require

pytestmark = [pytest.mark.guest, pytest.mark.peer, pytest.mark.timeout(300)]

SCRIPT = r"""
echo "sectors=$(cat /sys/block/vda/size)"
dd if=/dev/urandom of=/tmp/src bs=64k count=16 2>/dev/null
dd if=/tmp/src of=/dev/vda bs=64k seek=32 count=16 oflag=direct conv=fsync 2>/dev/null
dd if=/dev/vda of=/tmp/back bs=64k skip=32 count=16 iflag=direct 2>/dev/null
cmp -s /tmp/src /tmp/back && echo readback=ok || echo readback=BAD
"""

#: What a QEMU vhost-user-blk session must show (memory goes as SET_MEM_TABLE or ADD_MEM_REG).
SESSION = ("GET_FEATURES", "GET_PROTOCOL_FEATURES", "SET_PROTOCOL_FEATURES", "SET_OWNER",
           "GET_CONFIG", "SET_FEATURES", "SET_VRING_NUM", "SET_VRING_BASE", "SET_VRING_ADDR",
           "SET_VRING_KICK", "SET_VRING_CALL")
LINE = re.compile(r"^\s*[\d.]+ #(\d+) (fe>be\*?|be>fe\*?)\s+([A-Z_]+[0-9]*) flags=(\S+) size=(\d+)")


def _proxy(tmp_path, backend_socket):
    listen, record = str(tmp_path / "proxy.sock"), tmp_path / "session.jsonl"
    log = open(tmp_path / "proxy.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "pyvirtio.cli", "proxy", f"--listen={listen}",
                             f"--connect={backend_socket}", f"--record={record}", "--quiet-messages"],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 20
    while not os.path.exists(listen):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "proxy.log").read_text()
        time.sleep(0.02)
    return proc, listen, record


@pytest.mark.parametrize("backend", ["pyvirtio", "qemu-storage-daemon"])
def test_guest_blk_through_the_proxy(boot, tmp_path, backend):
    require(backend != "qemu-storage-daemon" or which("qemu-storage-daemon") is not None,
            "qemu-storage-daemon")
    image = str(tmp_path / "disk.img")
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    sock = str(tmp_path / "be.sock")
    peer = start_qsd(sock, image) if backend == "qemu-storage-daemon" else start_pyvirtio("blk", sock, blk_file=image)
    with peer:
        proc, listen, record = _proxy(tmp_path, sock)
        try:
            res = boot(SCRIPT, qemu_args=["-chardev", f"socket,id=blk,path={listen}",
                                          "-device", "vhost-user-blk-pci,chardev=blk"])
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0, (tmp_path / "proxy.log").read_text()
        assert peer.alive, peer.log()
    values = res.check().values()
    assert values["sectors"] == str((16 << 20) // 512) and values["readback"] == "ok"

    out = subprocess.run([sys.executable, "-m", "pyvirtio.cli", "proxy", "--decode", str(record)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    messages = [line for line in lines[1:] if " -- " not in line]
    n_records = sum(1 for line in open(record)) - 1
    assert len(lines) - 1 == n_records  # one decoded line per record entry
    parsed = [LINE.match(line) for line in messages]
    unnamed = [line for line, m in zip(messages, parsed) if not m or m[3].startswith("UNKNOWN")]
    assert not unnamed, unnamed[:5]
    assert not [line for line in messages if "malformed" in line], "QEMU or the back-end sent a payload the codec refuses"
    names = {m[3] for m in parsed}
    missing = [n for n in SESSION if n not in names]
    assert not missing and names & {"SET_MEM_TABLE", "ADD_MEM_REG"}, (missing, sorted(names))
    # every request that must be answered was answered, in the same session
    asked = [(m[1], m[3]) for m in parsed if m[2] == "fe>be" and m[3] in ("GET_FEATURES", "GET_PROTOCOL_FEATURES", "GET_CONFIG", "GET_QUEUE_NUM")]
    answered = [(m[1], m[3]) for m in parsed if m[2] == "be>fe" and "REPLY" in m[4]]
    assert asked and all(a in answered for a in asked)
    kicks = [line for line in messages if "SET_VRING_KICK" in line]
    assert all("fds=1" in line for line in kicks)  # the eventfds went through
    print(f"{backend}: {len(messages)} messages, {len(names)} request types: {sorted(names)}")
