"""DPDK's virtio-user front-end (``net_virtio_user``, testpmd) on ``pyvirtio serve net`` with
packed rings (``packed_vq=1``) and, for comparison, split rings (``--split-only``).

Each run checks what was really negotiated — the daemon logs the features SET_FEATURES carried
— so a silent fall-back to split rings fails the packed test; and that traffic moved: testpmd's
Tx-pps and the frames the daemon took off its transmit ring.  Without dpdk-testpmd these are
skipped, except with CI set, where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from pyvirtio.bench.peers import run_virtio_user_txonly
from pyvirtio.spec.features import Feature
from pyvirtio.testing.env import require

pytestmark = pytest.mark.timeout(120)
TESTPMD = "dpdk-testpmd"


def serve_net(tmp_path, *extra):
    sock = str(tmp_path / "net.sock")
    log = tmp_path / "serve.log"
    out = open(log, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "pyvirtio.cli", "-v", "serve", "net", "--null",
                             f"--socket-path={sock}", *extra],
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    deadline = time.monotonic() + 20
    while not os.path.exists(sock):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return proc, sock, log


def run_testpmd(sock, prefix, vdev_opts, seconds=6.0) -> str:
    return run_virtio_user_txonly(sock, prefix=prefix, seconds=seconds, vdev_opts=vdev_opts)


def negotiated(log_text: str) -> int:
    found = re.findall(r"features (0x[0-9a-f]+) negotiated", log_text)
    assert found, f"the daemon logged no SET_FEATURES:\n{log_text[-3000:]}"
    return int(found[-1], 16)


def tx_chains(log_text: str) -> int:
    m = re.search(r"requests served: ring 0: (\d+), ring 1: (\d+)", log_text)
    assert m, f"the daemon did not report the session:\n{log_text[-3000:]}"
    return int(m.group(2))


@pytest.mark.parametrize("mode", ["packed", "split"])
def test_dpdk_virtio_user_on_serve_net(tmp_path, mode):
    require(shutil.which(TESTPMD) is not None, f"{TESTPMD} (Debian: dpdk-dev)")
    proc, sock, log = serve_net(tmp_path, *(["--split-only"] if mode == "split" else []))
    try:
        out = run_testpmd(sock, f"pvpk-{os.getpid()}-{mode}", "packed_vq=1,in_order=0,mrg_rxbuf=0",
                          seconds=10.0)
        deadline = time.monotonic() + 10
        while "requests served" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)  # the daemon logs the session when testpmd hangs up
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    text = log.read_text()
    features = negotiated(text)
    assert bool(features >> Feature.RING_PACKED & 1) == (mode == "packed"), (hex(features), mode)
    pps = [int(x) for x in re.findall(r"Tx-pps:\s+(\d+)", out)]
    assert pps and max(pps) > 0, out[-3000:]
    frames = tx_chains(text)
    print(f"{mode}: features {features:#x}, tx chains served {frames}, Tx-pps samples {pps}")
    # Traffic never stops once it started (the last sample may be the shutdown's): a descriptor
    # lost between the two sides stalls testpmd's ring for good — the packed ring did, one run
    # in two, while its flags were published with strided slice stores (store_flags).
    moving = pps[next(i for i, p in enumerate(pps) if p > 0):-1]
    assert all(p > 0 for p in moving), f"transmit stalled: Tx-pps {pps}"
    assert frames > 1000
    assert "Traceback" not in text and "broken" not in text, text[-3000:]


@pytest.mark.parametrize("mode", ["packed", "split"])
def test_dpdk_virtio_user_in_order_on_serve_net(tmp_path, mode):
    """``in_order=1``: VIRTIO_F_IN_ORDER is negotiated with either ring, and frames move (with
    packed rings the daemon returns each transmit batch as one used descriptor, which DPDK's
    in-order cleanup walks back)."""
    require(shutil.which(TESTPMD) is not None, f"{TESTPMD} (Debian: dpdk-dev)")
    proc, sock, log = serve_net(tmp_path, *(["--split-only"] if mode == "split" else []))
    packed_vq = int(mode == "packed")
    try:
        out = run_testpmd(sock, f"pvio-{os.getpid()}-{mode}", f"packed_vq={packed_vq},in_order=1,mrg_rxbuf=0")
        deadline = time.monotonic() + 10
        while "requests served" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    text = log.read_text()
    features = negotiated(text)
    assert features >> Feature.IN_ORDER & 1, hex(features)
    assert bool(features >> Feature.RING_PACKED & 1) == (mode == "packed"), (hex(features), mode)
    pps = [int(x) for x in re.findall(r"Tx-pps:\s+(\d+)", out)]
    assert pps and max(pps) > 0, out[-3000:]
    frames = tx_chains(text)
    print(f"in-order {mode}: features {features:#x}, tx chains served {frames}, Tx-pps samples {pps}")
    assert frames > 1000
    assert "Traceback" not in text and "broken" not in text, text[-3000:]


def test_dpdk_no_huge_memory_is_served_by_the_real_daemon(tmp_path):
    """DPDK's --no-huge memory is a memfd that cannot be sealed: the daemon serves it (with one
    warning) rather than refusing a real front-end."""
    require(shutil.which(TESTPMD) is not None, f"{TESTPMD} (Debian: dpdk-dev)")
    proc, sock, log = serve_net(tmp_path)
    try:
        run_testpmd(sock, f"pvpk-{os.getpid()}-seal", "packed_vq=1,in_order=0,mrg_rxbuf=0", seconds=4)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    text = log.read_text()
    assert "cannot be sealed against shrinking" in text
    assert "rejected SET_MEM_TABLE" not in text
