"""``pyvirtio demo`` end to end: it boots a guest on its own back-ends and reports success."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.guest, pytest.mark.timeout(600)]


def test_demo_runs_and_reports_what_the_guest_saw(guest_kernel):
    r = subprocess.run([sys.executable, "-m", "pyvirtio.cli", "demo"], capture_output=True, text=True,
                       timeout=500)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for needle in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "block device /dev/vda", "ext2 file system made",
                   "read back: identical", "rng_current=virtio_rng.0", "32 bytes from /dev/hwrng"):
        assert needle in out, out
