"""``pyvirtio check``: pyvirtio's own back-ends meet every requirement; other back-ends get a
complete run whose findings are recorded (printed, and kept as test properties)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from pyvirtio.bench.peers import PeerFailed, start_pyvirtio, start_qsd, start_testpmd
from pyvirtio.cli import main
from pyvirtio.conformance.vhost_user import CHECKS, Status, run_checks
from pyvirtio.spec.ids import DeviceType
from pyvirtio.testing.env import require






def _findings(results) -> list[str]:
    return [r.line() for r in results if r.status in (Status.FAIL, Status.ERROR)]


def test_every_check_has_a_section_level_and_unique_id():
    ids = [c.id for c in CHECKS]
    assert len(ids) == len(set(ids)) >= 30
    assert all(c.level in ("MUST", "SHOULD") and c.section and c.text for c in CHECKS)


@pytest.mark.peer
def test_pyvirtio_serve_blk_passes_every_check(tmp_path, image):
    with start_pyvirtio("blk", str(tmp_path / "b.sock"), blk_file=image, num_queues=2) as peer:
        ctx, results = run_checks(peer.socket_path, timeout=10.0)  # a busy machine (issue 12)
    assert ctx.device_type == DeviceType.BLOCK
    assert len(results) == len(CHECKS)
    assert not _findings(results), "\n".join(_findings(results))
    skipped = {r.check.id for r in results if r.status is Status.SKIP}
    assert skipped <= {"protocol.inband-deps"}, skipped  # everything else applies to blk


@pytest.mark.peer
def test_pyvirtio_serve_rng_passes_every_check(tmp_path, capsys):
    with start_pyvirtio("rng", str(tmp_path / "r.sock")) as peer:
        assert main(["check", f"--socket-path={peer.socket_path}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device_type_name"] == "rng"
    bad = [r for r in report["results"] if r["status"] in ("FAIL", "ERROR")]
    assert not bad, bad
    assert report["counts"]["PASS"] >= 30


@pytest.mark.peer
def test_check_runs_to_completion_against_qemu_storage_daemon(tmp_path, image, record_property):
    require(shutil.which("qemu-storage-daemon") is not None, "qemu-storage-daemon")
    with start_qsd(str(tmp_path / "q.sock"), image, num_queues=2) as peer:
        ctx, results = run_checks(peer.socket_path, timeout=3.0)
    assert ctx.device_type == DeviceType.BLOCK
    assert len(results) == len(CHECKS)
    assert not [r for r in results if r.status is Status.ERROR], "the back-end became unreachable"
    by_id = {r.check.id: r for r in results}
    # The data path works: traffic checks pass against QEMU's reference back-end.
    for cid in ("init.sequence", "vring.base-after-traffic", "vring.base-wrap", "vring.suspended",
                "mem.multi-region", "mem.slots", "vring.multiqueue", "reset.reconnect"):
        assert by_id[cid].status is Status.PASS, by_id[cid].line()
    findings = _findings(results)
    record_property("qsd_findings", json.dumps(findings))
    print("qemu-storage-daemon findings:\n" + "\n".join(findings))


@pytest.mark.peer
def test_check_against_dpdk_net_vhost(tmp_path, record_property):
    if shutil.which("dpdk-testpmd") is None:
        pytest.skip("dpdk-testpmd is not installed (Debian: dpdk-dev)")
    try:
        peer = start_testpmd(str(tmp_path / "n.sock"))
    except PeerFailed as exc:
        pytest.skip(f"testpmd did not start here: {exc}")
    with peer:
        ctx, results = run_checks(peer.socket_path, timeout=3.0)
    assert ctx.device_type == DeviceType.NET and len(results) == len(CHECKS)
    assert {r.check.id: r.status for r in results}["init.sequence"] is Status.PASS
    findings = _findings(results)
    record_property("dpdk_findings", json.dumps(findings))
    print("DPDK net_vhost findings:\n" + "\n".join(findings))


def test_check_cli_errors_and_help(tmp_path, capsys):
    assert main(["check", f"--socket-path={tmp_path / 'none.sock'}"]) == 1
    captured = capsys.readouterr()
    assert "no such socket" in captured.err and captured.err.strip().count("\n") == 0
    assert main(["check", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == len(CHECKS)
    assert main(["check"]) == 2
    assert "--socket-path=PATH is required" in capsys.readouterr().err
    out = subprocess.run([sys.executable, "-m", "pyvirtio.cli", "check", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--socket-path", "--type", "--timeout", "--only", "--list", "--json"):
        assert flag in out


def test_check_back_end_that_hangs_up(tmp_path, capsys):
    import socket
    import threading
    path = str(tmp_path / "hup.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    stop = threading.Event()

    def accept_and_close():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                conn.close()
            except OSError:
                pass

    thread = threading.Thread(target=accept_and_close, daemon=True)
    thread.start()
    try:
        assert main(["check", f"--socket-path={path}", "--only=init", "--only=owner"]) == 1
    finally:
        stop.set()
        thread.join(2)
        listener.close()
    err = capsys.readouterr().err.strip()
    assert err == f"pyvirtio check: error: {path}: the back-end hung up on every connection"
