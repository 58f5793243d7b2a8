"""Start and stop a QEMU process for qtest: TCG, no default devices, CPUs parked.

QEMU's own virtio devices are the reference the transports are tested against.  The guest CPU
never does anything; every guest action (configuration cycles, MMIO, port I/O, RAM) is a qtest
request from this process, and QEMU's device models run in its main loop between requests.
Debian's QEMU has no ``-accel qtest``; the TCG accelerator is used instead.

**Running, not stopped.**  ``-S`` (start stopped) would do for most devices, but QEMU's
virtio-rng hands out no entropy while the VM is not running (its backend callback drops the data
when the run state is not RUNNING), so an entropy request never completes.  The VM is therefore
started *running* on a 64 KiB firmware image whose reset vector is ``cli; hlt`` — the CPU halts
on its first instruction and stays halted, with interrupts off, for the life of the process.
``running=False`` gives the classic ``-S`` start.  ``-qtest-log none`` keeps QEMU from logging
every request to stderr.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Sequence

from ..errors import TransportError
from .client import QtestClient

DEFAULT_MEMORY = "256M"
#: Firmware that parks the boot CPU: ``cli; hlt; jmp $-2`` at the reset vector (0xFFFF0 in the
#: last 64 KiB), everything else zero.  QEMU wants x86 BIOS images in 64 KiB multiples.
HALT_BIOS_SIZE = 0x10000
HALT_BIOS_RESET_VECTOR = 0xFFF0
HALT_BIOS_CODE = bytes((0xFA, 0xF4, 0xEB, 0xFD))


def write_halt_bios(path: str) -> str:
    image = bytearray(HALT_BIOS_SIZE)
    image[HALT_BIOS_RESET_VECTOR:HALT_BIOS_RESET_VECTOR + len(HALT_BIOS_CODE)] = HALT_BIOS_CODE
    with open(path, "wb") as f:
        f.write(image)
    return path


def qemu_binary() -> str:
    return os.environ.get("PYVIRTIO_QEMU", "qemu-system-x86_64")


def qemu_available() -> bool:
    return shutil.which(qemu_binary()) is not None


class QemuStartError(TransportError):
    """QEMU did not start or did not open its qtest socket."""


def split_machine(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """Take ``-M``/``-machine`` out of ``args``: returns (its value or None, the other args)."""
    rest, machine, it = [], None, iter(args)
    for arg in it:
        if arg in ("-M", "-machine", "--machine"):
            machine = next(it, None)
        elif arg.startswith(("-machine=", "--machine=")):
            machine = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return machine, rest


def machine_type(machine: str) -> str:
    """``microvm,ioapic2=off`` -> ``microvm``; ``type=q35,...`` -> ``q35``."""
    for part in machine.split(","):
        if "=" not in part:
            return part
        key, value = part.split("=", 1)
        if key == "type":
            return value
    return machine


class QemuQtest:
    """One QEMU process and its qtest connection (``.client``).  Use as a context manager."""

    def __init__(self, args: Sequence[str] = (), *, machine: str = "q35", memory: str = DEFAULT_MEMORY,
                 qemu: str | None = None, running: bool = True, startup_timeout: float = 20.0,
                 request_timeout: float = 30.0):
        self.machine = machine
        self.running = running
        self.args = list(args)
        self.memory = memory
        self.qemu = qemu or qemu_binary()
        self.startup_timeout = startup_timeout
        self.request_timeout = request_timeout
        self.proc: subprocess.Popen | None = None
        self.client: QtestClient | None = None
        self._tmp: str | None = None

    @property
    def argv(self) -> list[str]:
        tmp = self._tmp or "TMP"
        start = ["-bios", os.path.join(tmp, "halt.bin")] if self.running else ["-S"]
        return [self.qemu, "-M", self.machine, "-accel", "tcg", *start, "-display", "none", "-nodefaults",
                "-m", self.memory, "-qtest", f"unix:{os.path.join(tmp, 'qtest.sock')},server=on,wait=off",
                "-qtest-log", "none", *self.args]

    @property
    def log_path(self) -> str | None:
        return os.path.join(self._tmp, "qemu.log") if self._tmp else None

    def start(self) -> "QemuQtest":
        if shutil.which(self.qemu) is None:
            raise QemuStartError(f"{self.qemu} not found")
        tmp = self._tmp = tempfile.mkdtemp(prefix="pyvirtio-qtest-")
        sock_path = os.path.join(tmp, "qtest.sock")
        write_halt_bios(os.path.join(tmp, "halt.bin"))
        with open(os.path.join(tmp, "qemu.log"), "wb") as log:  # log_path
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise QemuStartError(f"QEMU exited with status {self.proc.returncode}: {self.log_tail()}")
            if os.path.exists(sock_path):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(sock_path)
                    break
                except OSError:
                    s.close()
            if time.monotonic() > deadline:
                self.close()
                raise QemuStartError(f"QEMU did not open {sock_path} within {self.startup_timeout}s")
            time.sleep(0.02)
        self.client = QtestClient(s, timeout=self.request_timeout)
        try:
            self.client.mem_read(0, 1)  # answered once QEMU's main loop runs, i.e. the machine is built
        except TransportError as exc:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            status = self.proc.returncode
            tail = self.log_tail()
            self.close()
            raise QemuStartError(f"QEMU did not start (exit status {status}): {tail or exc}") from exc
        return self

    def log_tail(self, limit: int = 2000) -> str:
        log_path = self.log_path
        if log_path is None:  # not started
            return ""
        try:
            with open(log_path, "rb") as f:
                return f.read()[-limit:].decode(errors="replace").strip()
        except OSError:
            return ""

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "QemuQtest":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
