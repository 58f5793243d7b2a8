"""``pyvirtio`` as a new user meets it: every bad input of issue 14 gets one line on stderr and
the documented exit status (2 usage error, 1 runtime failure), never a traceback; every
subcommand answers ``--help``; logging flags work before and after the subcommand."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time

import pytest

from pyvirtio import cli
from pyvirtio.commands.values import SUN_PATH_MAX
from pyvirtio.devices.rng import RngDevice

LONG_SOCKET = "/tmp/" + "x" * 120 + ".sock"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``pyvirtio ARGV`` in this process: (exit status, stdout, stderr)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def spawn(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyvirtio.cli", *argv], capture_output=True,
                          text=True, timeout=60, **kw)


# --- bad numbers, bad flags: usage errors, exit status 2 ----------------------------------------

USAGE_ERRORS = [
    (["probe", "--socket-path=/tmp/none.sock", "--timeout=-1"], "argument --timeout: '-1' is not a positive"),
    (["probe", "--socket-path=/tmp/none.sock", "--timeout=nan"], "argument --timeout: 'nan' is not a positive"),
    (["probe", "--socket-path=/tmp/none.sock", "--timeout=inf"], "argument --timeout: 'inf' is not a positive"),
    (["probe", "--socket-path=/tmp/none.sock", "--timeout=0"], "argument --timeout: '0' is not a positive"),
    (["bench", "blk", "--socket-path=/tmp/none.sock", "--timeout=-1"], "argument --timeout: '-1'"),
    (["bench", "blk", "--socket-path=/tmp/none.sock", "--runtime=nan"], "argument --runtime: 'nan'"),
    (["bench", "blk", "--socket-path=/tmp/none.sock", "--bs=1000"], "--bs=1000: a positive multiple of 512"),
    (["bench", "virtqueue", "--duration=-1"], "argument --duration: '-1' is not a positive"),
    (["bench", "virtqueue", "--runtime=-1"], "argument --runtime: '-1' is not a positive"),
    (["check", "--socket-path=/tmp/none.sock", "--timeout=-1"], "argument --timeout: '-1'"),
    (["check", "--socket-path=/tmp/none.sock", "--only=zzz"], "--only=zzz: no check id starts with 'zzz'"),
    (["check"], "--socket-path=PATH is required"),
    (["probe", f"--socket-path={LONG_SOCKET}"], f"holds at most {SUN_PATH_MAX}"),
    (["check", f"--socket-path={LONG_SOCKET}"], f"holds at most {SUN_PATH_MAX}"),
    (["bench", "blk", f"--socket-path={LONG_SOCKET}"], f"holds at most {SUN_PATH_MAX}"),
    (["serve", "rng", f"--socket-path={LONG_SOCKET}"], f"holds at most {SUN_PATH_MAX}"),
    (["serve", "blk", f"--socket-path={LONG_SOCKET}", "--blk-file=x"], f"holds at most {SUN_PATH_MAX}"),
    (["probe", "--sock=/tmp/none.sock"], "--socket-path"),  # no abbreviations
    (["bench", "virtqueue", "--dur=1"], "unrecognized arguments: --dur=1"),
    (["--verb", "loopback-demo"], "unrecognized arguments"),
    (["serve", "rng", "--socket=/tmp/none.sock"], "unrecognized arguments: --socket=/tmp/none.sock"),
    (["probe", "--socket-path=/tmp/none.sock", "--type=nonsense"], "--type"),
    (["serve", "rng"], "give exactly one of --socket-path=PATH and --fd=FDNUM"),
    (["serve"], "say which back-end to serve"),
    (["serve", "blk", "--socket-path=/tmp/none.sock"], "--blk-file=FILE is required"),
    (["serve", "blk", "--socket-path=/tmp/none.sock", "--blk-file=x", "--num-queues=0"], "--num-queues=0"),
    (["serve", "rng", "--socket-path=/tmp/none.sock", "--socket-mode=999"], "argument --socket-mode"),
    (["serve", "net", "--socket-path=/tmp/none.sock"], "choose exactly one network back-end"),
    (["serve", "net", "--socket-path=/tmp/none.sock", "--null", "--mtu=5"], "mtu 5"),
    (["serve", "net", "--socket-path=/tmp/none.sock", "--null", "--queue-pairs=x"], "argument --queue-pairs"),
    (["demo", "--image-size=2"], "--image-size must be at least 8"),
    (["demo", "--timeout=-5"], "argument --timeout"),
    (["--log-level=loud", "loopback-demo"], "argument --log-level: 'loud' is not one of debug"),
    (["loopback-demo", "--log-level=loud"], "argument --log-level: 'loud'"),
    (["no-such-command"], "invalid choice"),
]


@pytest.mark.parametrize("argv,message", USAGE_ERRORS, ids=[" ".join(a)[:60] for a, _ in USAGE_ERRORS])
def test_usage_error_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    line = one_line(err)
    assert code == 2 and message in line and line.startswith("pyvirtio"), line
    assert out == ""


def test_no_command_prints_help_and_exit_2(capsys):
    code, out, err = run(capsys)
    assert code == 2 and "usage: pyvirtio" in err and out == ""


# --- runtime failures: exit status 1 -------------------------------------------------------------

def test_absent_back_end_is_a_runtime_failure(capsys, tmp_path):
    for argv in (["probe"], ["check"], ["bench", "blk", "--no-progress"]):
        code, _, err = run(capsys, *argv, f"--socket-path={tmp_path / 'none.sock'}")
        assert code == 1 and "no such socket" in one_line(err)


def test_missing_image_is_a_runtime_failure(capsys, tmp_path):
    code, _, err = run(capsys, "serve", "blk", f"--socket-path={tmp_path / 's.sock'}",
                       f"--blk-file={tmp_path / 'none.img'}")
    assert code == 1 and "no such file" in one_line(err)


def test_net_back_end_error_names_the_flag(capsys, tmp_path):
    code, _, err = run(capsys, "serve", "net", f"--socket-path={tmp_path / 's.sock'}",
                       "--tap=pvtest0", "--tap-netns=pyvirtio-no-such-netns")
    line = one_line(err)
    assert code == 1 and "--tap=pvtest0 --tap-netns=pyvirtio-no-such-netns: No such file" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_tap_without_privilege_says_why(tmp_path):
    """As an unprivileged user, a TAP is refused with EPERM: the error names the flag and the cause."""
    os.chmod(tmp_path, 0o777)
    argv = [shutil.which("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups",
            sys.executable, "-m", "pyvirtio.cli", "serve", "net",
            f"--socket-path={tmp_path / 's.sock'}", "--tap=pvtest1"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    line = one_line(r.stderr)
    assert r.returncode == 1 and line.startswith("pyvirtio serve: error: --tap=pvtest1: Operation not permitted")
    assert "CAP_NET_ADMIN" in line and "ip tuntap add dev pvtest1" in line


# --- a reader that goes away (| head) ------------------------------------------------------------

def _closed_reader(argv: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "pyvirtio.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the child writes anything: its first write gets EPIPE
    err = proc.stderr.read()
    proc.wait(timeout=60)
    return subprocess.CompletedProcess(argv, proc.returncode, "", err)


def test_check_json_into_a_closed_pipe_ends_quietly(server, tmp_path):
    path = str(tmp_path / "rng.sock")
    server.add(RngDevice(), socket_path=path)
    server.start()
    r = _closed_reader(["check", f"--socket-path={path}", "--json"])
    assert r.returncode == 1 and r.stderr == ""


def test_line_per_result_into_a_closed_pipe_ends_quietly():
    r = _closed_reader(["check", "--list"])
    assert r.returncode == 1 and r.stderr == ""


# --- --help everywhere, the exit codes documented -------------------------------------------------

def _commands() -> list[list[str]]:
    parser = cli.build_parser()

    def walk(p, path):
        for name, child in sorted(_choices(p).items()):
            yield path + [name]
            yield from walk(child, path + [name])
    return list(walk(parser, []))


def _choices(p) -> dict:
    for action in p._actions:  # noqa: SLF001
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            return action.choices
    return {}


COMMANDS = _commands()


def test_every_subcommand_is_listed():
    names = {" ".join(c) for c in COMMANDS}
    assert {"serve blk", "serve rng", "serve net", "serve console", "probe", "check",
            "bench blk", "bench virtqueue", "demo", "loopback-demo", "qtest-probe"} <= names


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_subcommand_has_help(capsys, argv):
    code, out, err = run(capsys, *argv, "--help")
    assert code == 0 and err == ""
    assert out.startswith(f"usage: pyvirtio {' '.join(argv)}") and "--log-level NAME" in out


def test_help_documents_the_exit_status(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "exit status:" in out
    for status in ("0  success", "1  runtime failure", "2  usage error"):
        assert status in out


def test_building_the_parser_imports_no_device_driver_or_numpy():
    """Every ``pyvirtio`` invocation builds the whole parser (``--version``, ``--help``, each
    daemon's start): the subcommands' modules import devices, drivers, the vhost-user package
    and numpy where a command runs, so a daemon carries only what it serves."""
    code = ("import sys, pyvirtio.cli as c; c.build_parser(); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('pyvirtio', 'numpy')))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60).stdout.split()
    heavy = ("numpy", "pyvirtio.virtq", "pyvirtio.device", "pyvirtio.drivers", "pyvirtio.driver",
             "pyvirtio.vhost_user", "pyvirtio.devices.blk", "pyvirtio.devices.net", "pyvirtio.bus")
    assert [m for m in loaded if m.split(".")[0] == "numpy" or m in heavy
            or any(m.startswith(h + ".") for h in heavy)] == []
    assert "pyvirtio.commands.serve" in loaded


def test_no_traceback_from_the_installed_entry_point():
    r = spawn("probe", "--socket-path=/tmp/none.sock", "--timeout=nan")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1


# --- logging flags ---------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,level", [
    ([], logging.WARNING),
    (["-v"], logging.INFO),
    (["-vv"], logging.DEBUG),
    (["-q"], logging.ERROR),
    (["--log-level=DEBUG"], logging.DEBUG),
    (["--quiet", "--log-level=info"], logging.INFO),
])
def test_logging_flags_before_and_after_the_subcommand(argv, level):
    parser = cli.build_parser()
    before = parser.parse_args([*argv, "serve", "rng"])
    after = parser.parse_args(["serve", "rng", *argv])
    assert cli.log_level(before) == cli.log_level(after) == level


def test_verbose_counts_on_both_sides():
    parser = cli.build_parser()
    assert cli.log_level(parser.parse_args(["-v", "probe", "--socket-path=x", "-v"])) == logging.DEBUG
    assert cli.log_level(parser.parse_args(["--log-level=error", "probe", "--socket-path=x",
                                            "--log-level=info"])) == logging.INFO


def test_entry_point_takes_logging_flags(tmp_path):
    """``pyvirtio-vhost-user-rng -v --print-capabilities`` (what the JSON descriptor's binary runs)."""
    code = ("import sys; from pyvirtio.cli import main_rng; "
            "sys.exit(main_rng(['--print-capabilities', '-vv', '--log-level=info']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == '{"type": "rng"}', r.stderr


def test_probe_leaves_no_warning_in_the_daemon_log(server, tmp_path, image, caplog, capsys):
    """A probe asks ring sizes from 32768 down (each refused with REPLY_ACK) and hangs up: none
    of that is a fault, so the daemon logs it below WARNING."""
    from pyvirtio.devices.blk import BlkDevice

    path = str(tmp_path / "blk.sock")
    disk = BlkDevice(image)
    server.add(disk, socket_path=path)
    server.start()
    caplog.set_level(logging.DEBUG, logger="pyvirtio")
    try:
        code, out, _ = run(capsys, "probe", f"--socket-path={path}")
        assert code == 0 and "max queue size" in out
        deadline = time.monotonic() + 10
        while not any("front-end gone" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the daemon never saw the probe hang up"
            time.sleep(0.02)
    finally:
        disk.close()
    daemon = [r for r in caplog.records if r.name.startswith("pyvirtio.vhost_user")]
    assert any("rejected SET_VRING_NUM" in r.getMessage() for r in daemon)
    assert any("front-end gone (hung up)" in r.getMessage() for r in daemon)
    assert [r.getMessage() for r in daemon if r.levelno >= logging.WARNING] == []
