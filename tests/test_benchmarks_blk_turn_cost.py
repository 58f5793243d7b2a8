"""benchmarks/blk_turn_cost.py: the three ways serve real reads through a vhost-user session in
this process, every read checked against the image, and a wrong answer ends the run."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("blk_turn_cost")


def test_every_way_serves_checked_reads_and_is_compared(script, capsys):
    assert script.main(["--turns", "50", "--blocks", "2", "--size", "4"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in script.WAYS}
    assert set(rows) == set(script.WAYS)
    for way, cells in rows.items():
        assert int(cells[1].replace(",", "")) > 0, (way, out)
    for pair in ("pyvirtio/core", "device/core", "pyvirtio/device"):
        assert pair in out


def test_a_read_with_the_wrong_data_or_no_answer_is_caught(script, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    rig = script.Rig(str(image), 1 << 20)
    try:
        for way in script.WAYS:  # each way answers right
            rig.post()
            rig.ways[way]()
            rig.check()
        rig.post()
        rig.pyvirtio_turn()
        rig.mem.write(rig.data, b"\0" * 16)  # the data is not what the image holds
        with pytest.raises(script.Mismatch, match="differs"):
            rig.check()
        rig.post()  # never served: no used element
        with pytest.raises(script.Mismatch, match="answered None"):
            rig.check()
    finally:
        rig.close()


def test_arguments_out_of_range_are_refused(script):
    with pytest.raises(SystemExit) as exc:
        script.main(["--turns", "0"])
    assert exc.value.code == 2


def test_a_baseline_checkout_is_timed_beside_this_one_in_the_same_process(script, capsys, tmp_path):
    """``--baseline SRC``: another checkout's package and its own rig, loaded under another name
    in this process (here this checkout's own src), serve checked reads too and are compared."""
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(script.__file__))), "src")
    assert script.main(["--turns", "50", "--blocks", "2", "--size", "4", "--baseline", src]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0] for line in out.splitlines() if line.split()}
    assert set(script.WAYS) | {"baseline"} <= rows
    assert "pyvirtio/baseline" in out
    with pytest.raises(SystemExit, match="not a checkout's src"):
        script.main(["--turns", "1", "--blocks", "1", "--size", "1", "--baseline", str(tmp_path)])
