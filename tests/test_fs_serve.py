"""``pyvirtio serve fs``: its flags, its refusals, and the real program answering FUSE over
vhost-user."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fs_requests import entry, init, name, request
from pyvirtio.spec import fuse as F
from pyvirtio.spec.ids import DeviceType
from pyvirtio.testing.serve import ServeProcess
from pyvirtio.vhost_user.frontend.transport import VhostUserTransport
from test_fs_vhost_user import RawFsDriver

CLI = [sys.executable, "-m", "pyvirtio.cli", "serve", "fs"]
pytestmark = pytest.mark.timeout(120)


def _run(*args):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def test_print_capabilities():
    out = _run("--print-capabilities")
    assert out.returncode == 0 and json.loads(out.stdout) == {"type": "fs"}


@pytest.mark.parametrize("args, code, words", [
    (["--socket-path=/tmp/x.sock"], 2, "--shared-dir=DIR is required"),
    (["--socket-path=/tmp/x.sock", "--shared-dir=/nonexistent/dir"], 1, "not a directory"),
    (["--socket-path=/tmp/x.sock", "--shared-dir=/tmp", "--cache=sometimes"], 2, "invalid choice"),
    (["--socket-path=/tmp/x.sock", "--shared-dir=/tmp", "--tag=" + "t" * 37], 2, "1..36 bytes"),
    (["--socket-path=/tmp/x.sock", "--shared-dir=/tmp", "--thread-pool-size=-1"], 2, "0..256"),
    (["--socket-path=/tmp/x.sock", "--shared-dir=/tmp", "--num-request-queues=0"], 2, "1..64"),
])
def test_refusals(args, code, words):
    out = _run(*args)
    assert out.returncode == code and words in out.stderr, out.stderr


def test_serves_a_directory_read_only(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    (share / "f").write_bytes(b"content")
    sock = str(tmp_path / "fs.sock")
    daemon = ServeProcess(tmp_path, "fs", ["fs", f"--socket-path={sock}", f"--shared-dir={share}",
                                           "--tag=ro", "--cache=none", "--read-only"], [sock])
    try:
        t = VhostUserTransport(sock, device_type=DeviceType.FS)
        try:
            drv = RawFsDriver.probe(t)
            drv.fuse(init())
            head, attr = entry(drv.fuse(request(F.FuseOpcode.LOOKUP, 1, name("f"))))
            assert attr.size == 7 and head.entry_valid == 0  # cache=none is virtiofsd's never
            reply = drv.requestq.call([request(F.FuseOpcode.UNLINK, 1, name("f"))], [64])
            assert F.FUSE_OUT_HEADER.unpack(reply)[1] == -30  # EROFS
            drv.remove()
        finally:
            t.close()
    finally:
        assert daemon.stop() == 0
    log = daemon.log.read_text()
    assert "vhost-user-fs-pci,chardev=vu-fs,tag=ro" in log, log
    assert (share / "f").exists()
