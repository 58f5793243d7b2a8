"""benchmarks/blk_vhost_user.py's choice of tests and back-ends (``--tests``, ``--backends``)."""

from __future__ import annotations


import pytest


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("blk_vhost_user")


def test_no_choice_keeps_every_test_and_back_end(script):
    assert script.select(None, None) == (script.TESTS, script.BACKENDS)


def test_words_keep_the_tests_whose_name_holds_one(script):
    tests, backends = script.select("1M,qd1", "pyvirtio,qsd-file")
    assert [name for name, _ in tests] == ["4k randread qd1", "1M read qd8"]
    assert backends == ("qsd-file", "pyvirtio")  # the script's own order, whatever order was given


def test_a_word_in_no_test_name_or_an_unknown_back_end_is_refused(script):
    with pytest.raises(ValueError, match="'2M' is in no test name"):
        script.select("1M,2M", None)
    with pytest.raises(ValueError, match="unknown qsd-aio"):
        script.select(None, "pyvirtio,qsd-aio")
    with pytest.raises(ValueError, match="none given"):
        script.select(None, ",")


def test_the_command_line_refuses_them_with_exit_2(script, capsys):
    with pytest.raises(SystemExit) as exc:
        script.main(["--tests", "2M"])
    assert exc.value.code == 2
    assert "--tests: '2M' is in no test name" in capsys.readouterr().err


def test_interleave_runs_the_round_hook_before_each_round():
    from pyvirtio.bench.peers import interleave

    seen = []
    runs = interleave(["a", "b"], [("t", {})], 3, lambda name, params: seen.append(name) or {},
                      each_round=lambda rnd: seen.append(rnd))
    assert seen == [0, "a", "b", 1, "b", "a", 2, "a", "b"]
    assert [(r["round"], r["backend"]) for r in runs] == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]


@pytest.mark.timeout(180)
def test_relaunch_starts_every_back_end_anew_each_round(script, monkeypatch, tmp_path, capsys):
    """``--relaunch``: each round runs against back-ends started for it (real qemu-storage-daemon
    and pyvirtio serve blk), and the report says so."""
    import json
    import shutil

    from pyvirtio.testing.env import require

    require(shutil.which("qemu-storage-daemon") is not None, "qemu-storage-daemon")
    started = []
    for name in ("start_qsd", "start_pyvirtio"):
        real = getattr(script, name)

        def counted(*args, _real=real, **kwargs):
            peer = _real(*args, **kwargs)
            started.append(peer.process.pid)
            return peer
        monkeypatch.setattr(script, name, counted)
    out = tmp_path / "runs.json"
    assert script.main(["--rounds", "3", "--runtime", "0.3", "--size", "8M", "--tests", "qd1",
                        "--backends", "qsd-file,pyvirtio", "--relaunch", "--json", str(out)]) == 0
    assert len(started) == 6 and len(set(started)) == 6  # two back-ends, three rounds
    runs = json.loads(out.read_text())
    assert sorted((r["round"], r["backend"]) for r in runs) == [
        (rnd, b) for rnd in range(3) for b in ("pyvirtio", "qsd-file")]
    assert all(r["iops"] > 0 for r in runs)
    assert "every back-end started anew each round" in capsys.readouterr().out
