"""The atheris fuzz targets in ``fuzz/`` (their invariant: nothing but typed pyvirtio errors, no
hang, no fd left open): every corpus file replayed in-process, and a short coverage-guided run of
each target in a subprocess (a few seconds each).  A long campaign: see ``fuzz/README.md``."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

atheris = pytest.importorskip("atheris")

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
TARGETS = sorted(p.stem for p in FUZZ.glob("*.py") if not p.stem.startswith("_"))
RUNS = int(os.environ.get("PYVIRTIO_FUZZ_RUNS", "3000"))
SECONDS = int(os.environ.get("PYVIRTIO_FUZZ_SECONDS", "6"))


def _target(name: str):
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))
    return importlib.import_module(name)


def _corpus(name: str) -> list[Path]:
    return sorted((FUZZ / "corpus" / name).iterdir())


def test_every_target_has_a_corpus_and_states_its_invariant():
    assert len(TARGETS) >= 9
    for name in TARGETS:
        assert _corpus(name), f"{name}: empty corpus"
        first = (FUZZ / f"{name}.py").read_text().splitlines()[0]
        assert first.startswith("# Invariant:"), name


@pytest.mark.parametrize("name", TARGETS)
def test_corpus_replays_cleanly(name):
    target = _target(name)
    for path in _corpus(name):
        target.test_one_input(path.read_bytes())


@pytest.mark.parametrize("name", TARGETS)
def test_seeds_are_in_the_corpus(name):
    """The recorded sessions are still what the corpus holds (regenerate: fuzz/README.md)."""
    target = _target(name)
    for seed, data in target.seeds().items():
        path = FUZZ / "corpus" / name / f"seed-{seed}"
        assert path.exists(), path
        target.test_one_input(data)


@pytest.mark.parametrize("name", TARGETS)
def test_short_fuzz_run_finds_nothing(name, tmp_path):
    work = tmp_path / "corpus"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, str(FUZZ / f"{name}.py"), f"-runs={RUNS}", f"-max_total_time={SECONDS}",
         "-timeout=10", "-max_len=4096", "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/",
         str(work), str(FUZZ / "corpus" / name)],
        capture_output=True, text=True, timeout=120)
    crashes = [p.name for p in tmp_path.iterdir() if p.name != "corpus"]
    assert proc.returncode == 0 and not crashes, (crashes, proc.stderr[-3000:])
    assert "Done" in proc.stderr or "DONE" in proc.stderr


# --- findings, as unit tests (each also has a regression-* input in its target's corpus) -------


def test_packed_set_base_past_the_ring_is_a_driver_fault():
    """virtq_packed finding: SET_VRING_BASE's position >= the queue size raised IndexError at the
    next pop; now the queue breaks with a DriverFault at once (and again if the size shrinks)."""
    from pyvirtio.errors import DriverFault, QueueBroken
    from pyvirtio.memory import GuestMemory
    from pyvirtio.virtq import PackedDeviceQueue, PackedRingLayout

    mem = GuestMemory.anonymous(1 << 16)
    lay = PackedRingLayout.contiguous(0x1000, 4)
    q = PackedDeviceQueue(8)
    q.set_size(4)
    q.set_addresses(lay.desc_table, lay.avail_ring, lay.used_ring)
    q.activate(mem)
    with pytest.raises(DriverFault):
        q.set_base(4)
    with pytest.raises(QueueBroken):
        q.pop_descriptor_chain(mem)
    q.reset()
    q.set_size(8)
    q.set_addresses(lay.desc_table, lay.avail_ring, lay.used_ring)
    q.set_base(6)
    q.set_size(4)
    with pytest.raises(DriverFault):
        q.activate(mem)
