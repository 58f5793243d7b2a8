"""benchmarks/blk_guest_fio.py: the guest script it generates, and its --pin argument (the guest
run itself is a benchmark, not a test: its rows are in benchmarks/README.md)."""

from __future__ import annotations

import argparse
import os

import pytest

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("blk_guest_fio")


def test_pin_takes_two_cpu_lists_of_this_machine(script):
    cpus = sorted(os.sched_getaffinity(0))
    first, last = cpus[0], cpus[-1]
    assert script.parse_pin(f"{first}:{last}") == ({first}, {last})
    assert script.parse_pin(f"{first}-{last}:{first},{last}") == (set(range(first, last + 1)), {first, last})
    for bad in (f"{first}", f"{first}:", ":1", "a:b", f"{first}:{last + 1000}", "2-1:0", "-1:0"):
        with pytest.raises(argparse.ArgumentTypeError):
            script.parse_pin(bad)


def test_a_wrong_pin_is_a_usage_error_before_anything_starts(script, capsys):
    with pytest.raises(SystemExit) as exc:
        script.main(["--pin", "0"])
    assert exc.value.code == 2
    assert "QEMU:BACKENDS" in capsys.readouterr().err


def test_the_guest_script_alternates_the_disks_round_by_round(script):
    text = script.guest_script(2, 1, [2])
    runs = [line for line in text.splitlines() if "fio --name" in line]
    assert len(runs) == 4
    assert "/dev/vda" in runs[0] and "/dev/vdb" in runs[1]  # round 0: qsd first
    assert "/dev/vdb" in runs[2] and "/dev/vda" in runs[3]  # round 1: pyvirtio first
    assert all("--rw=randread --bs=4k --iodepth=1" in line for line in runs)


def test_a_baseline_is_a_third_disk_in_every_round_and_in_the_report(script, capsys):
    disks = script.served_disks(["baseline"])
    assert disks[2] == ("baseline", "vdc", "0x6")
    assert script.served_disks(["floor"])[2] == ("floor", "vdc", "0x7")  # named in slot order
    assert [d[1] for d in script.served_disks(["floor", "baseline"])] == ["vda", "vdb", "vdc", "vdd"]
    text = script.guest_script(2, 1, [2], disks)
    assert text.splitlines()[0].startswith("for d in vda vdb vdc;")
    runs = [line for line in text.splitlines() if "fio --name" in line]
    assert [line.split("/dev/")[1][:3] for line in runs] == ["vda", "vdb", "vdc", "vdc", "vdb", "vda"]
    results = {(2, "qsd"): {0: 100.0, 1: 100.0}, (2, "pyvirtio"): {0: 90.0, 1: 110.0},
               (2, "baseline"): {0: 80.0, 1: 100.0}}
    args = argparse.Namespace(direct=True, pin=None, cpus=1, rounds=2, runtime=1, size=64, baseline="/src")
    script.report(results, {}, args, {}, 1.0)
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("randread 4k qd1")][0]
    # pyvirtio/qsd 0.9 and 1.1; pyvirtio/baseline 1.125 and 1.1; baseline/qsd 0.8 and 1.0
    assert "1.00 [0.90, 1.10]" in row and "| 90.0, 1.11 [1.10, 1.12], 0.90 [0.80, 1.00]" in row
