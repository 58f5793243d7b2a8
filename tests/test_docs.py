"""The guides under docs/ are run: every ```python block of a page, in order, in one fresh
interpreter (a page is one program).  A guide that stops working fails here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pyvirtio.qtest import qemu_available
from pyvirtio.testing.env import require

DOCS = Path(__file__).resolve().parent.parent / "docs"
SRC = Path(__file__).resolve().parent.parent / "src"
PAGES = sorted(DOCS.glob("*.md"))


def _code(page: Path) -> str:
    return "\n".join(re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M))


def test_there_are_guides():
    names = {p.name for p in PAGES}
    assert {"write-a-device.md", "write-a-driver.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_guide_runs(page, tmp_path):
    code = _code(page)
    assert code.strip(), f"{page.name} has no python block"
    if "QemuMachine" in code:
        require(qemu_available(), "qemu-system-x86_64")
    script = tmp_path / f"{page.stem}.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{page.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
