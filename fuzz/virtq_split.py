# Invariant: any exception that is not a typed pyvirtio error (pyvirtio.errors.VirtioError
# subclasses) is a finding; a hang is a finding.  Input: a split ring's configuration, then up to
# 300 calls on its driver side and its device side (pyvirtio.virtq) over one guest memory with a
# hole, mixed with raw writes into the rings (either side turned hostile at any point).
"""Fuzz target: the split virtqueue, both sides, over fuzzed memory."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _virtq  # noqa: E402
from _harness import main  # noqa: E402


def test_one_input(data: bytes) -> None:
    _virtq.run("split", data)


def seeds() -> dict[str, bytes]:
    return _virtq.seeds()


if __name__ == "__main__":
    main(test_one_input, extra_modules=("_virtq",))
