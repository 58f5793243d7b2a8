"""The wheel as a user gets it: built from a copy of this tree (``pip wheel --no-deps``, the
build back-end from the configured package index), installed into a fresh venv, and run there:
``pyvirtio --version``, ``python -m pyvirtio``, the ``pyvirtio-vhost-user-*`` entry points;
LICENSE, ``py.typed`` and the metadata inside the wheel."""

from __future__ import annotations

import email
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import pyvirtio

ROOT = Path(__file__).resolve().parent.parent
VERSION = pyvirtio.__version__


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    tree = work / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(ROOT / "src", tree / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, tree / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"),
                        str(tree)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (built,) = (work / "dist").glob("pyvirtio-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=300)
    r = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                        "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return env


def test_wheel_holds_license_py_typed_and_main(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = f"pyvirtio-{VERSION}.dist-info"
        licenses = [n for n in names if n.startswith(dist_info) and n.endswith("/LICENSE")]
        assert licenses and b"MIT License" in z.read(licenses[0])
        assert "pyvirtio/py.typed" in names and "pyvirtio/__main__.py" in names
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
        assert "[pytest11]" in entry_points and "pyvirtio-vhost-user-console" in entry_points
        meta = email.message_from_bytes(z.read(f"{dist_info}/METADATA"))
    assert meta["License-Expression"] == "MIT"
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers and "Operating System :: POSIX :: Linux" in classifiers


def test_installed_commands_run_from_the_fresh_venv(venv):
    bin_dir = venv / "bin"
    r = subprocess.run([str(bin_dir / "pyvirtio"), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"pyvirtio {VERSION}", r.stderr
    r = subprocess.run([str(bin_dir / "python"), "-m", "pyvirtio", "--version"], capture_output=True,
                       text=True, timeout=60, cwd="/")
    assert r.returncode == 0 and r.stdout.strip() == f"pyvirtio {VERSION}", r.stderr
    r = subprocess.run([str(bin_dir / "python"), "-m", "pyvirtio"], capture_output=True, text=True,
                       timeout=60, cwd="/")
    assert r.returncode == 2 and "usage: pyvirtio" in r.stderr and "exit status:" in r.stderr
    r = subprocess.run([str(bin_dir / "pyvirtio-vhost-user-rng"), "--print-capabilities"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == '{"type": "rng"}', r.stderr
    # descriptors for management software name this venv's programs, which exist
    out = venv.parent / "descriptors"
    r = subprocess.run([str(bin_dir / "pyvirtio"), "descriptors", "install", f"--dir={out}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for path in r.stdout.split():
        binary = json.loads(open(path).read())["binary"]
        assert binary.startswith(str(bin_dir)) and os.access(binary, os.X_OK), (path, binary)


def test_the_installed_package_is_the_wheel_not_this_tree(venv):
    r = subprocess.run([str(venv / "bin" / "python"), "-c", "import pyvirtio; print(pyvirtio.__file__)"],
                       capture_output=True, text=True, timeout=60, cwd="/")
    location = Path(r.stdout.strip())
    assert location.is_relative_to(venv) and (location.parent / "py.typed").is_file()
