"""``pyvirtio descriptors``: QEMU's vhost-user.json descriptions, installed with real paths and
found the way management software finds them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pyvirtio.cli import main
from pyvirtio.commands.descriptors import discover, search_dirs


def test_install_into_a_directory_points_at_existing_programs(tmp_path, capsys):
    assert main(["descriptors", "install", f"--dir={tmp_path}"]) == 0
    written = capsys.readouterr().out.split()
    assert sorted(os.path.basename(p) for p in written) == [
        "50-pyvirtio-blk.json", "50-pyvirtio-console.json", "50-pyvirtio-fs.json", "50-pyvirtio-net.json",
        "50-pyvirtio-rng.json", "50-pyvirtio-scsi.json"]
    for path in written:
        desc = json.loads(open(path).read())
        assert os.path.isabs(desc["binary"]) and os.access(desc["binary"], os.X_OK)
        assert desc["type"] in ("block", "net", "rng", "console", "fs", "scsi")


def test_user_install_goes_where_qemu_looks_and_list_finds_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert search_dirs()[-1] == tmp_path / "qemu" / "vhost-user"
    assert main(["descriptors", "install"]) == 0
    capsys.readouterr()
    found = [e for e in discover() if e["file"].startswith(str(tmp_path))]
    assert {e["type"] for e in found} == {"block", "net", "rng", "console", "fs", "scsi"}
    assert all(e["runnable"] for e in found)
    assert main(["descriptors", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {e["file"] for e in found} <= {e["file"] for e in listed}


def test_a_later_directory_overrides_an_earlier_one_and_bad_files_are_named(tmp_path, capsys):
    system, user = tmp_path / "sys", tmp_path / "user"
    for d in (system, user):
        d.mkdir()
    (system / "10-x.json").write_text(json.dumps({"type": "block", "binary": "/nonexistent/a"}))
    (user / "10-x.json").write_text(json.dumps({"type": "block", "binary": sys.executable}))
    (user / "20-bad.json").write_text("{not json")
    entries = discover([system, user])
    assert [os.path.basename(e["file"]) for e in entries] == ["10-x.json", "20-bad.json"]
    assert entries[0]["binary"] == sys.executable and entries[0]["runnable"]
    assert "error" in entries[1]
    assert main(["descriptors", "list", f"--dir={system}", f"--dir={user}"]) == 0
    out = capsys.readouterr().out
    assert "20-bad.json: unreadable" in out and sys.executable in out


def test_bad_use_is_a_usage_error():
    run = subprocess.run([sys.executable, "-m", "pyvirtio", "descriptors", "install", "--user",
                          "--system"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "not allowed with" in run.stderr
    run = subprocess.run([sys.executable, "-m", "pyvirtio", "descriptors"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and "install or list" in run.stderr
