"""``pyvirtio demo`` refuses early, naming the apt packages, when QEMU or busybox-static is missing
(the full run boots a guest: tests/guest/test_guest_vhost_user_demo.py)."""

from __future__ import annotations

import pytest

from pyvirtio import cli
from pyvirtio.guest import initramfs


def test_missing_qemu_names_the_package(monkeypatch, capsys):
    monkeypatch.setenv("PYVIRTIO_QEMU", "qemu-system-x86_64-not-installed")
    assert cli.main(["demo"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apt-get install -y qemu-system-x86" in err[0]


def test_missing_or_dynamic_busybox_names_busybox_static(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("PYVIRTIO_BUSYBOX", raising=False)
    monkeypatch.setattr(initramfs, "BUSYBOX_PATHS", (str(tmp_path / "none"),))
    assert cli.main(["demo"]) == 1
    assert "busybox-static" in capsys.readouterr().err
    fake = tmp_path / "busybox"  # present but not a static ELF
    fake.write_bytes(b"#!/bin/sh\n")
    monkeypatch.setattr(initramfs, "BUSYBOX_PATHS", (str(fake),))
    assert cli.main(["demo"]) == 1
    assert "apt-get install -y busybox-static" in capsys.readouterr().err


def test_bad_demo_flags(capsys):
    assert cli.main(["demo", "--image-size=2"]) == 2
    assert "--image-size must be at least 8" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--bogus"])
    assert exc.value.code == 2
