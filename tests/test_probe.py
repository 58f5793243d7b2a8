"""``pyvirtio probe``: against pyvirtio's own back-ends (in a thread), qemu-storage-daemon, DPDK's
net_vhost and virtiofsd; and its one-line errors."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading

import pytest

from pyvirtio.bench.peers import (InProcessBackend, PeerFailed, start_qsd, start_testpmd,
                                  start_virtiofsd, virtiofsd_path)
from pyvirtio.cli import main
from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.testing.env import require






def _probe_json(capsys, *args) -> dict:
    assert main(["probe", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_probe_pyvirtio_blk(tmp_path, image, capsys):
    with InProcessBackend(BlkDevice(image, num_queues=2), str(tmp_path / "b.sock")) as be:
        r = _probe_json(capsys, f"--socket-path={be.socket_path}")
        assert r["device_type_name"] == "blk" and "guessed" in r["device_type_source"]
        assert "VIRTIO_BLK_F_FLUSH" in r["feature_names"] and "VIRTIO_F_VERSION_1" in r["feature_names"]
        assert {"MQ", "REPLY_ACK", "CONFIG", "STATUS"} <= set(r["protocol_feature_names"])
        assert r["queues"] == 2 and r["max_queue_sizes"] == [256, 256]
        assert r["config"]["capacity"] == (32 << 20) // 512 and r["config"]["num_queues"] == 2
        assert main(["probe", f"--socket-path={be.socket_path}"]) == 0
        table = capsys.readouterr().out
        assert "capacity" in table and "32.0 MiB" in table and "256 on all 2 rings" in table


def test_probe_with_explicit_type(tmp_path, capsys):
    with InProcessBackend(RngDevice(), str(tmp_path / "r.sock")) as be:
        r = _probe_json(capsys, f"--socket-path={be.socket_path}", "--type=rng")
        assert r["device_type"] == 4 and r["device_type_source"] == "given by the caller"
        assert r["queues"] == 1


def test_probe_errors_are_one_line(tmp_path, capsys):
    assert main(["probe", f"--socket-path={tmp_path / 'none.sock'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such socket" in err
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))
    try:
        assert main(["probe", f"--socket-path={tmp_path / 'stale.sock'}"]) == 1
        assert "connection refused" in capsys.readouterr().err
    finally:
        stale.close()
    assert main(["probe", f"--socket-path={tmp_path / 'stale.sock'}", "--type=nonsense"]) == 2
    assert "unknown device type" in capsys.readouterr().err


def test_probe_back_end_that_hangs_up(tmp_path, capsys):
    path = str(tmp_path / "hup.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def accept_and_close():
        conn, _ = listener.accept()
        conn.close()

    threading.Thread(target=accept_and_close, daemon=True).start()
    try:
        assert main(["probe", f"--socket-path={path}", "--timeout=2"]) == 1
        err = capsys.readouterr().err.strip()
        assert "hung up" in err and "\n" not in err
    finally:
        listener.close()


def test_probe_help_explains_every_flag():
    out = subprocess.run([sys.executable, "-m", "pyvirtio.cli", "probe", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--socket-path", "--json", "--type", "--timeout"):
        assert flag in out


# --- real back-ends ------------------------------------------------------------------------------


@pytest.mark.peer
def test_probe_qemu_storage_daemon(tmp_path, image, capsys):
    require(shutil.which("qemu-storage-daemon") is not None, "qemu-storage-daemon")
    with start_qsd(str(tmp_path / "q.sock"), image, num_queues=2) as peer:
        r = _probe_json(capsys, f"--socket-path={peer.socket_path}")
    assert r["device_type_name"] == "blk"
    assert "VIRTIO_BLK_F_DISCARD" in r["feature_names"]
    assert r["config_size"] == 60  # QEMU 7.2's struct virtio_blk_config stops before secure erase
    assert r["config"]["capacity"] == (32 << 20) // 512 and r["config"]["num_queues"] == 2
    assert r["queues"] == 2


@pytest.mark.peer
def test_probe_dpdk_net_vhost(tmp_path, capsys):
    if shutil.which("dpdk-testpmd") is None:
        pytest.skip("dpdk-testpmd is not installed (Debian: dpdk-dev)")
    try:
        peer = start_testpmd(str(tmp_path / "n.sock"))
    except PeerFailed as exc:
        pytest.skip(f"testpmd did not start here: {exc}")
    with peer:
        r = _probe_json(capsys, f"--socket-path={peer.socket_path}")
    assert r["device_type_name"] == "net" and "RARP" in r["device_type_source"]
    assert "VIRTIO_NET_F_MRG_RXBUF" in r["feature_names"]
    assert r["config"] is None  # DPDK offers no CONFIG: a net config lives in the VMM


@pytest.mark.peer
def test_probe_virtiofsd(tmp_path, capsys):
    if virtiofsd_path() is None:
        pytest.skip("virtiofsd is not installed")
    share = tmp_path / "share"
    share.mkdir()
    try:
        peer = start_virtiofsd(str(tmp_path / "f.sock"), str(share))
    except PeerFailed as exc:
        pytest.skip(f"virtiofsd did not start here (it wants root): {exc}")
    with peer:
        r = _probe_json(capsys, f"--socket-path={peer.socket_path}")
    assert r["device_type_name"] == "fs" and r["queues"] >= 2
    assert r["config_size"] is None
