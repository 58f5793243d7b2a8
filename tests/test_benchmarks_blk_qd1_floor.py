"""benchmarks/blk_qd1_floor.py: the flat queue-depth-1 loop serves real requests, every read
checked (``--verify``), beside qemu-storage-daemon and ``pyvirtio serve blk``; and it stops, with
a line saying why, on a ring it does not serve, handing it to pyvirtio's own worker instead of
answering it wrongly; chains it does not serve go to pyvirtio's own path (tests/guest: a guest's
boot and fio through it)."""

from __future__ import annotations

import shutil
import sys

import pytest

from pyvirtio.bench.blk import BlkBenchConfig, run
from pyvirtio.testing.env import require

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("blk_qd1_floor")


def test_the_three_back_ends_serve_checked_reads_and_are_compared(script, capsys):
    require(shutil.which("qemu-storage-daemon") is not None, "qemu-storage-daemon")
    assert script.main(["--rounds", "2", "--runtime", "0.5", "--size", "8M", "--relaunch"]) == 0
    out = capsys.readouterr().out
    assert "every back-end started anew each round" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in script.BACKENDS}
    assert set(rows) == set(script.BACKENDS)
    for name, cells in rows.items():
        assert int(cells[1].replace(",", "")) > 0, (name, out)  # IOPS: the run completed (verify passed)
    for pair in ("floor/qsd-file", "pyvirtio/qsd-file", "pyvirtio/floor"):
        assert pair in out


@pytest.fixture
def floor(script, tmp_path):
    """``pyvirtio serve blk`` with the flat loop (``--serve-floor``) on a fresh 8 MiB image;
    stopped after the test (its log stays readable)."""
    from pyvirtio.bench.peers import fill_image, start_pyvirtio

    image = str(tmp_path / "floor.img")
    fill_image(image, 8 << 20)
    peer = start_pyvirtio("blk", str(tmp_path / "f.sock"), blk_file=image,
                          program=[sys.executable, script.__file__, "--serve-floor"],
                          extra_args=["--log-level=warning"])
    try:
        yield peer
    finally:
        peer.close()


def test_a_ring_the_floor_does_not_serve_goes_to_pyvirtios_own_worker(floor):
    """A packed ring ends the flat loop (FloorStop, and a line saying so) and pyvirtio's own
    worker loop serves it: the checked reads complete, never a wrong answer."""
    result = run(BlkBenchConfig(floor.socket_path, runtime=0.3, iodepth=1, ring="packed", timeout=5,
                                verify=True))
    floor.close()
    assert result.ios > 0 and result.verified == result.ios
    assert "floor: stopped: the floor serves split rings only; pyvirtio's own worker serves the ring" in floor.log()


def test_chains_the_flat_loop_does_not_serve_go_to_pyvirtios_path(floor):
    """Reads over two data descriptors are not the floor's shape: each is left on the ring and
    served by pyvirtio's own path, its data checked; the loop keeps serving the ring."""
    for seg_size in (4096, None):  # two data descriptors, then the floor's one
        result = run(BlkBenchConfig(floor.socket_path, runtime=0.3, iodepth=1, ring="split", timeout=5,
                                    verify=True, seg_size=seg_size, bs=8192))
        assert result.ios > 0 and result.verified == result.ios, seg_size
        assert result.segments == (2 if seg_size else 1)
    floor.close()
    assert "floor: stopped" not in floor.log()
