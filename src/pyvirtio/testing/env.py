"""Test-environment rules shared by every test that needs a real peer.

Tests that need QEMU, qemu-storage-daemon, DPDK or root skip with a reason when the peer is
missing on a developer's machine, but fail under CI (``CI`` set to anything but empty/0/false/no):
CI installs every peer, so a missing one there is a broken setup, not a reason to skip.
"""

from __future__ import annotations

import os


def in_ci() -> bool:
    """Whether the tests run under CI (``CI`` set to anything but empty, 0, false or no)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require(available: bool, what: str, why: str = "not found") -> None:
    """Skip (or, under CI, fail) unless ``available``; ``what`` names the missing peer and
    ``why`` says what is wrong with it."""
    if available:
        return
    import pytest

    if in_ci():
        pytest.fail(f"{what}: {why}; it is required when CI is set")
    pytest.skip(f"{what}: {why}")
