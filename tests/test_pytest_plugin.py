"""The pytest plugin (``pyvirtio.pytest_plugin``, entry point ``pytest11``): its example runs
as a project would run it, and its fixtures take any vhost-user back-end."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys

import pytest

from pyvirtio.bench.peers import start_qsd
from pyvirtio.pytest_plugin import _attach
from pyvirtio.testing.env import require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_installed_as_a_pytest_plugin():
    names = {e.name: e.value for e in importlib.metadata.entry_points(group="pytest11")}
    assert names.get("pyvirtio") == "pyvirtio.pytest_plugin"


def test_the_example_runs_as_a_project_would_run_it():
    example = os.path.join(ROOT, "examples", "pytest", "test_guest_example.py")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", example],
                         capture_output=True, text=True, timeout=300, cwd=os.path.dirname(example))
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]


def test_a_guest_on_someone_elses_back_end(tmp_path, pyvirtio_guest):
    # Any vhost-user back-end the test started itself, given as (kind, socket path).
    require(shutil.which("qemu-storage-daemon") is not None, "qemu-storage-daemon (Debian: qemu-utils)")
    with start_qsd(str(tmp_path / "qsd.sock"), null_size=16 << 20) as qsd:
        guest = pyvirtio_guest(("blk", qsd.socket_path))
        assert guest.run("cat /sys/block/vda/size").check().output.strip() == str((16 << 20) // 512)
        assert guest.run("exit 7").exit_code == 7


def test_unknown_device_kinds_are_refused():
    assert "vhost-user-rng-pci" in " ".join(_attach(("rng", "/x"), 0))
    assert "virtio-net-pci" in " ".join(_attach(("net", "/x"), 1))
    with pytest.raises(ValueError, match="no QEMU vhost-user device"):
        _attach(("console", "/x"), 0)
