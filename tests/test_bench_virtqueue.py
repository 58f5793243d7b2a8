from pyvirtio.bench.virtqueue import format_table, run_one


def test_virtqueue_bench_moves_chains_in_every_configuration():
    for descriptors, event_idx, indirect in ((1, False, False), (4, True, False), (4, True, True)):
        r = run_one(descriptors, event_idx, indirect, duration=0.05)
        assert r.chains > 0 and r.chains % r.batch == 0  # every added chain came back
        assert r.kicks >= 1 and r.interrupts >= 1
    assert "chains/s" in format_table([r])
