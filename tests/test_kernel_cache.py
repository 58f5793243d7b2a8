"""The guest kernel cache commands: sizes said before downloading, list, prune."""

from __future__ import annotations

import fcntl

from pyvirtio.cli import main
from pyvirtio.guest.kernel import cached_kernels, find_kernel_package, package_sizes, prune_kernels


def fake_kernel(cache, package: str, size: int = 1000) -> None:
    d = cache / "kernel" / package / "root"
    d.mkdir(parents=True)
    (d / "vmlinuz").write_bytes(bytes(size))


def test_list_and_prune_keep_the_current_kernel_and_one_being_prepared(tmp_path, capsys):
    for package in ("linux-image-1-amd64", "linux-image-2-amd64", "linux-image-3-amd64"):
        fake_kernel(tmp_path, package, 4096)
    assert [k[0] for k in cached_kernels(tmp_path)] == [
        "linux-image-1-amd64", "linux-image-2-amd64", "linux-image-3-amd64"]
    assert all(k[2] >= 4096 for k in cached_kernels(tmp_path))
    with open(tmp_path / "kernel" / "linux-image-2-amd64.lock", "a+") as busy:
        fcntl.flock(busy, fcntl.LOCK_EX)  # another process is preparing it right now
        removed = prune_kernels("linux-image-3-amd64", tmp_path)
    assert removed == ["linux-image-1-amd64"]
    assert [k[0] for k in cached_kernels(tmp_path)] == ["linux-image-2-amd64", "linux-image-3-amd64"]
    assert main(["kernel", f"--cache-dir={tmp_path}", "list"]) == 0
    out = capsys.readouterr().out
    assert "linux-image-2-amd64" in out and "MB" in out


def test_prune_command_keeps_what_apt_says_is_current(tmp_path, capsys):
    current = find_kernel_package(progress=lambda m: None)
    fake_kernel(tmp_path, current)
    fake_kernel(tmp_path, "linux-image-0.0.0-0-amd64")
    assert main(["kernel", f"--cache-dir={tmp_path}", "prune"]) == 0
    assert f"kept {current}; removed: linux-image-0.0.0-0-amd64" in capsys.readouterr().out
    assert [k[0] for k in cached_kernels(tmp_path)] == [current]


def test_the_download_size_is_known_before_downloading():
    size, unpacked = package_sizes(find_kernel_package(progress=lambda m: None))
    assert 10e6 < size < unpacked  # tens of MB to fetch, several times that unpacked


def test_an_empty_cache_says_how_to_fill_it(tmp_path, capsys):
    assert main(["kernel", f"--cache-dir={tmp_path}", "list"]) == 0
    assert "pyvirtio kernel prepare" in capsys.readouterr().out
