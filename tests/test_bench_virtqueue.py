from pyvirtio.bench.virtqueue import format_table, run_one


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
