"""Errors of the guest harness (all under :class:`pyvirtio.errors.VirtioError`)."""

from __future__ import annotations

from ..errors import VirtioError


class GuestError(VirtioError):
    """Root of the guest harness errors."""


class KernelPrepareError(GuestError):
    """The guest kernel could not be found, downloaded or unpacked."""


class InitramfsError(GuestError):
    """The initramfs could not be built (a module or a host file is missing …)."""


class GuestBootError(GuestError):
    """QEMU failed to start, or exited before the guest script reported its exit code."""

    def __init__(self, message: str, *, output: str = "", stderr: str = "",
                 returncode: int | None = None):
        self.output = output
        self.stderr = stderr
        self.returncode = returncode
        details = []
        if returncode is not None:
            details.append(f"qemu exit code {returncode}")
        if stderr.strip():
            details.append("qemu stderr:\n" + _tail(stderr, 20))
        if output.strip():
            details.append("serial output (tail):\n" + _tail(output, 40))
        super().__init__(message + ("\n" + "\n".join(details) if details else ""))


class GuestTimeout(GuestBootError, TimeoutError):
    """The guest did not finish in time; QEMU was killed."""


class GuestScriptError(GuestError):
    """The guest script exited with a non-zero code (raised by ``GuestResult.check()``)."""

    def __init__(self, result):
        self.result = result
        super().__init__(
            f"guest script exited with {result.exit_code}\n"
            "script output (tail):\n" + _tail("\n".join(result.lines), 40)
        )


def _tail(text: str, n: int) -> str:
    return "\n".join(text.splitlines()[-n:])
