"""benchmarks/blk_qd1_floor.py: the flat queue-depth-1 loop serves real requests, every read
checked (``--verify``), beside qemu-storage-daemon and ``pyvirtio serve blk``; and it stops, with
a line saying why, on a chain it does not serve instead of answering it wrongly."""

from __future__ import annotations

import shutil

import pytest

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


def test_the_floor_stops_on_a_chain_it_does_not_serve(script, tmp_path):
    """A packed ring, or a chain of another shape, ends the loop with FloorStop (the serve
    wrapper prints it), never a wrong answer: here the bench's packed ring."""
    import sys

    from pyvirtio.bench.blk import BlkBenchConfig, run
    from pyvirtio.bench.peers import fill_image, start_pyvirtio
    from pyvirtio.errors import VirtioError

    image = str(tmp_path / "floor.img")
    fill_image(image, 8 << 20)
    peer = start_pyvirtio("blk", str(tmp_path / "f.sock"), blk_file=image,
                          program=[sys.executable, script.__file__, "--serve-floor"],
                          extra_args=["--log-level=warning"])
    try:
        with pytest.raises((VirtioError, OSError, TimeoutError)):
            run(BlkBenchConfig(peer.socket_path, runtime=0.3, iodepth=1, ring="packed", timeout=2))
    finally:
        peer.close()
    assert "floor: stopped: the floor serves split rings only" in peer.log()
