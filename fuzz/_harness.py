"""What every fuzz target shares: the input reader (and its mirror for writing seeds), the
finding rule, and ``main()`` that runs a target under atheris.

The invariant of every target: any exception that is not a typed pyvirtio error
(:class:`pyvirtio.errors.VirtioError` and its subclasses) is a finding; so is a hang (libFuzzer's
``-timeout``), and so is an fd the target's code left open.  Each target bounds its own work per
input (a fixed number of steps, small rings, small memory), so a slow input means a loop.

Inputs are read with :class:`Reader`, a thin layer over ``atheris.FuzzedDataProvider`` that only
consumes from the front (``ConsumeUInt``/``ConsumeBytes``), so :class:`Writer` can write the
same format: the corpora are seeded with the byte sequences valid sessions produce.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import types

import atheris


class Reader:
    """Fields read from the front of a fuzz input; past its end every field reads as zero."""

    def __init__(self, data: bytes):
        self.fdp = atheris.FuzzedDataProvider(data)

    def more(self) -> bool:
        return self.fdp.remaining_bytes() > 0

    def u8(self) -> int:
        return self.fdp.ConsumeUInt(1)

    def u16(self) -> int:
        return self.fdp.ConsumeUInt(2)

    def u32(self) -> int:
        return self.fdp.ConsumeUInt(4)

    def u64(self) -> int:
        return self.fdp.ConsumeUInt(8)

    def pick(self, n: int) -> int:
        """One of ``n`` choices (one byte)."""
        return self.u8() % n

    def flag(self) -> bool:
        return bool(self.u8() & 1)

    def blob(self, limit: int = 0xFFFF) -> bytes:
        """A length (u16, capped at ``limit``) and that many bytes."""
        return self.fdp.ConsumeBytes(min(self.u16(), limit))


class Writer:
    """The mirror of :class:`Reader`: builds an input that reads back as the given fields."""

    def __init__(self) -> None:
        self.out = bytearray()

    def u8(self, v: int) -> "Writer":
        self.out += (v & 0xFF).to_bytes(1, "little")
        return self

    def u16(self, v: int) -> "Writer":
        self.out += (v & 0xFFFF).to_bytes(2, "little")
        return self

    def u32(self, v: int) -> "Writer":
        self.out += (v & 0xFFFFFFFF).to_bytes(4, "little")
        return self

    def u64(self, v: int) -> "Writer":
        self.out += (v & (2**64 - 1)).to_bytes(8, "little")
        return self

    pick = u8

    def flag(self, v: bool) -> "Writer":
        return self.u8(int(v))

    def blob(self, data: bytes) -> "Writer":
        self.u16(len(data))
        self.out += data
        return self

    def bytes(self) -> bytes:
        return bytes(self.out)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class FdLeak(AssertionError):
    """The code under test left an fd open that it was handed or made."""


def check_fds(before: int) -> None:
    """An fd still open once the input's objects are gone (cycles collected too: an mmap keeps
    a dup of its fd until it is freed, and an exception's traceback can hold a view of it)."""
    after = open_fds()
    if after > before:
        gc.collect()
        after = open_fds()
    if after > before:  # fewer is not a leak: another thread of the process may close its own
        raise FdLeak(f"{after - before:+d} fds open after one input")


def _instrument(prefixes: tuple[str, ...]) -> None:
    """Coverage instrumentation of every function already loaded from ``prefixes`` modules."""
    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and isinstance(obj.__code__, types.CodeType) \
                and getattr(obj, "__module__", None) \
                and obj.__module__.startswith(prefixes):
            try:
                atheris.instrument_func(obj)
            except Exception:  # pragma: no cover - a function atheris cannot patch stays plain
                pass


def main(test_one_input, *, extra_modules: tuple[str, ...] = ()) -> None:
    """Run ``test_one_input`` under libFuzzer (``sys.argv`` carries its options and corpus).
    Log lines are off: a refusal is logged by design, and a finding is an exception."""
    logging.disable(logging.CRITICAL)
    _instrument(("pyvirtio", "__main__", "_regs") + extra_modules)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
