import subprocess
import sys


def test_loopback_demo_runs_and_reports_identical_data():
    out = subprocess.run([sys.executable, "-m", "pyvirtio.cli", "loopback-demo"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "identical" in out.stdout and "bound to BlkDriver" in out.stdout and "bound to RngDriver" in out.stdout


def test_unknown_flag_exits_nonzero_with_usage():
    out = subprocess.run([sys.executable, "-m", "pyvirtio.cli", "loopback-demo", "--bogus"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unrecognized arguments" in out.stderr
