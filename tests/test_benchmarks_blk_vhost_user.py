"""benchmarks/blk_vhost_user.py's choice of tests and back-ends (``--tests``, ``--backends``)."""

from __future__ import annotations

import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "blk_vhost_user.py")


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("blk_vhost_user_script", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
