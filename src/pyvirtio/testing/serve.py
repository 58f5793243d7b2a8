"""A ``pyvirtio serve`` process for tests: the real program, as QEMU users run it.

Guest tests start the daemon as a child process (its log in the test's directory), wait until the
files it creates exist (its socket, a control socket, a hybrid-vsock socket), and stop it with
SIGTERM, expecting a clean exit.  Test files subclass it for what their device adds (the QEMU
arguments, a ``ctl`` call).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

#: How long a daemon may take to create its files.
START_TIMEOUT = 20.0


class ServeProcess:
    """``pyvirtio -v serve ARGS...`` logging to ``tmp/NAME.log``; ready once every path in
    ``wait_for`` exists (AssertionError with the log if it exits or takes too long)."""

    def __init__(self, tmp: str | os.PathLike, name: str, args: Sequence[str],
                 wait_for: Sequence[str]):
        self.log = Path(tmp) / f"{name}.log"
        self._log = open(self.log, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "pyvirtio.cli", "-v", "serve", *args],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not all(os.path.exists(p) for p in wait_for):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{name} did not start:\n{self.log.read_text()}")
            time.sleep(0.02)

    def stop(self) -> int:
        """SIGTERM, then the exit status (killed after 20 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            self.proc.kill()
            self._log.close()


def worker_threads(pid: int) -> list[int]:
    """The thread ids of process ``pid`` other than its main thread."""
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)


def signal_thread(pid: int, tid: int, sig: int) -> None:
    """Send ``sig`` to thread ``tid`` of process ``pid`` (tgkill(2)): kill() lets the kernel pick
    the thread, almost always the main one; a daemon must stop whichever thread takes it."""
    import ctypes
    import platform
    number = {"x86_64": 234, "aarch64": 131}[platform.machine()]  # SYS_tgkill
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, pid, tid, sig) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"tgkill({pid}, {tid}, {sig}): {os.strerror(err)}")
