import pytest

from pyvirtio.bench.virtqueue import format_table, run_all, run_one


def test_virtqueue_bench_moves_chains_in_every_configuration():
    for descriptors, event_idx, indirect in ((1, False, False), (4, True, False), (4, True, True)):
        r = run_one(descriptors, event_idx, indirect, duration=0.05)
        assert r.chains > 0 and r.chains % r.batch == 0  # every added chain came back
        assert r.kicks >= 1 and r.interrupts >= 1
        # Each side's time is part of the loop's: each side alone is faster than the pair.
        assert 0 < r.device_seconds < r.seconds and 0 < r.driver_seconds < r.seconds
        assert r.device_seconds + r.driver_seconds <= r.seconds
        assert r.device_chains_per_second > r.chains_per_second < r.driver_chains_per_second
    table = format_table([r])
    assert "chains/s" in table and "device/s" in table and "driver/s" in table


def test_the_batch_path_moves_chains_and_is_reported_beside_the_general_path():
    for packed, event_idx in ((False, False), (False, True), (True, False), (True, True)):
        r = run_one(1, event_idx, packed=packed, duration=0.05, path="batch")
        assert r.path == "batch" and r.chains > 0 and r.chains % r.batch == 0
        assert r.kicks >= 1 and r.interrupts >= 1
        assert 0 < r.device_seconds < r.seconds and 0 < r.driver_seconds < r.seconds
        assert r.as_dict()["path"] == "batch"
    chain = run_one(1, False, duration=0.05)
    assert chain.path == "chain" and chain.as_dict()["path"] == "chain"
    lines = format_table([chain, r]).splitlines()
    assert "path" in lines[0].split()
    assert lines[1].split()[4] == "chain" and lines[2].split()[4] == "batch"
    for bad in (dict(descriptors=4, event_idx=False), dict(descriptors=4, event_idx=True, packed=True),
                dict(descriptors=1, event_idx=True, indirect=True)):
        with pytest.raises(ValueError):
            run_one(**bad, duration=0.01, path="batch")


def test_run_all_has_the_batch_rows_after_the_general_ones():
    results = run_all(duration=0.005)
    paths = [(r.packed, r.descriptors, r.event_idx, r.path) for r in results if r.path == "batch"]
    assert paths == [(False, 1, False, "batch"), (False, 1, True, "batch"), (True, 1, False, "batch"),
                     (True, 1, True, "batch")]
    assert len(results) == 16 and all(r.path == "chain" for r in results[:12])
