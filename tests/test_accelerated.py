"""The optional accelerated ring cores (pyvirtio.accel): built with mypyc into a temporary
directory, they must be the same software as the pure Python ones — the ring tests (property,
hostile, limits, fence) run again, in a subprocess that loads the compiled modules.

Needs mypy (a test extra), a C compiler and the Python headers; without them the test skips
(fails under CI, whose setup installs gcc and python3-dev).  The build takes about a minute.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pyvirtio import accel
from pyvirtio.testing.env import require

pytestmark = pytest.mark.timeout(900)

#: The ring tests, run again against the compiled cores.
RING_TESTS = ("test_virtq_chain.py", "test_virtq_edges.py", "test_virtq_event.py", "test_virtq_hostile.py",
              "test_virtq_in_order.py", "test_virtq_notification.py", "test_virtq_packed.py",
              "test_virtq_properties.py", "test_virtq_split_device.py", "test_virtq_split_driver.py",
              "test_memory.py", "test_fence.py", "test_limits.py", "test_bench_virtqueue.py",
              "test_control_stats.py", "test_virtq_batch.py", "test_virtq_packed_batch.py")


def _run(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def accel_env(tmp_path_factory) -> dict[str, str]:
    missing = accel.missing_tools()
    require(not missing, "accelerated build", "missing " + ", ".join(missing))
    env = {**os.environ, "PYVIRTIO_ACCEL_DIR": str(tmp_path_factory.mktemp("accel"))}
    env.pop("PYVIRTIO_PURE", None)
    r = _run(env, "-m", "pyvirtio", "accelerate")
    assert r.returncode == 0, r.stdout + r.stderr
    env["BUILD_KEY"] = accel.build_key()
    return env


def _same_source(env: dict[str, str]) -> None:
    """A tree edited while the test runs gets the pure cores (by design): say so, not "failed"."""
    if accel.build_key() != env["BUILD_KEY"]:
        pytest.fail("the compiled modules' source changed while the test ran; the build no longer applies")


def test_the_build_is_used_and_can_be_turned_off(accel_env):
    probe = "import pyvirtio.virtq.split_device as m, pyvirtio.virtq.packed_driver as d; print(m.__file__, d.__file__)"
    r = _run(accel_env, "-c", probe)
    _same_source(accel_env)
    assert r.returncode == 0 and all(f.endswith(".so") for f in r.stdout.split()), r.stdout + r.stderr
    r = _run(accel_env, "-m", "pyvirtio", "--version")
    assert r.stdout.strip().endswith("(accelerated: mypyc)"), r.stdout + r.stderr
    r = _run({**accel_env, "PYVIRTIO_PURE": "1"}, "-c", probe)
    assert r.returncode == 0 and all(f.endswith(".py") for f in r.stdout.split()), r.stdout + r.stderr
    r = _run({**accel_env, "PYVIRTIO_PURE": "1"}, "-m", "pyvirtio", "--version")
    assert "accelerated" not in r.stdout, r.stdout


def test_the_ring_tests_pass_against_the_compiled_cores(accel_env):
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**accel_env, "PYVIRTIO_HYPOTHESIS_EXAMPLES": "200"}  # the pure run does thousands
    check = "from pyvirtio import accel; assert accel.active() and len(accel.compiled_modules()) == len(accel.MODULES)"
    r = _run(env, "-c", check)
    _same_source(env)
    assert r.returncode == 0, r.stderr
    r = _run(env, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x",
             *(os.path.join(here, name) for name in RING_TESTS), timeout=850)
    _same_source(env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout


def test_a_changed_source_is_not_served_by_an_old_build(monkeypatch):
    """The build is named by the compiled modules' source: another source, another name (so
    an edited module runs as Python until the next ``pyvirtio accelerate``)."""
    key = accel.build_key()
    real_open = open

    def edited_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if str(path).endswith("split_device.py") and "b" in mode:
            import io
            return io.BytesIO(f.read() + b"\n# edited\n")
        return f

    monkeypatch.setattr("builtins.open", edited_open)
    assert accel.build_key() != key
