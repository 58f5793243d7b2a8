"""Boot a Linux guest under QEMU (TCG) with caller-given devices and a shell script.

``boot_guest`` runs a guest to completion and returns a :class:`GuestResult`;
``start_guest`` returns a :class:`GuestProcess` at once, whose script output can be
followed line by line while the guest runs (``expect``, ``iter_lines``).

The guest's ``/init`` prints ``PYVIRTIO-GUEST-BOOTED``, loads the modules, runs the
script with every output line prefixed (so kernel messages on the same serial console
cannot be mistaken for script output), then prints ``PYVIRTIO-GUEST-EXIT <rc>`` and
powers off.
"""

from __future__ import annotations

import atexit
import codecs
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterable, Iterator, Mapping, Sequence

from .errors import GuestBootError, GuestScriptError, GuestTimeout
from .init import BOOTED_MARK, EXIT_MARK, INSMOD_FAIL_MARK, SCRIPT_PREFIX
from .initramfs import FileSet, build_initrd
from .modules import DEFAULT_MODULES

if TYPE_CHECKING:  # annotations only: kernel boots its test guests through this module
    from .kernel import KernelBundle

DEFAULT_APPEND = "console=ttyS0 quiet panic=-1"
EXIT_GRACE = 15.0  # seconds QEMU may take to power off after the script ended


def qemu_binary() -> str:
    return os.environ.get("PYVIRTIO_QEMU", "qemu-system-x86_64")


def qemu_available() -> bool:
    return shutil.which(qemu_binary()) is not None


@dataclass
class GuestResult:
    """What one guest run produced."""

    exit_code: int | None  # the guest script's exit status
    output: str  # everything on the serial console
    lines: list[str]  # the lines the script printed (stdout and stderr), in order
    qemu_returncode: int | None
    duration: float  # seconds from starting QEMU to its exit
    boot_time: float | None = None  # seconds from starting QEMU to /init running
    modules: list[str] = field(default_factory=list)  # modules loaded, in order
    insmod_failures: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def check(self) -> "GuestResult":
        """Raise :class:`GuestScriptError` unless the script exited with 0."""
        if self.exit_code != 0:
            raise GuestScriptError(self)
        return self

    def values(self, sep: str = "=") -> dict[str, str]:
        """``key=value`` lines of the script output as a dict (later ones win)."""
        out = {}
        for line in self.lines:
            k, s, v = line.partition(sep)
            if s and k and " " not in k.strip():
                out[k.strip()] = v.strip()
        return out


_live: "weakref.WeakSet[GuestProcess]" = weakref.WeakSet()


@atexit.register
def _kill_all() -> None:
    for g in list(_live):
        g.kill()


class GuestProcess:
    """A running guest.  Use as a context manager (the guest is killed on exit)."""

    def __init__(self, command: list[str], *, workdir: str, timeout: float | None,
                 console_log: str | os.PathLike | IO | None, modules: list[str],
                 echo: bool = False):
        self.command = command
        self.modules = modules
        self._workdir = workdir
        self._cond = threading.Condition()
        self._serial: list[str] = []  # complete serial lines
        self._partial = ""
        self._lines: list[str] = []  # script lines
        self._expect_pos = 0
        self.exit_code: int | None = None
        self.boot_time: float | None = None
        self.insmod_failures: list[str] = []
        self.timed_out = False
        self._stderr = bytearray()
        self._own_log: IO | None = None
        self._log: IO | None = None
        if console_log is not None:
            if isinstance(console_log, (str, os.PathLike)):
                self._own_log = self._log = open(console_log, "w", encoding="utf-8",
                                                 errors="replace")
            else:
                self._log = console_log
        self._echo = echo
        self.start_time = time.monotonic()
        self.end_time: float | None = None
        try:
            self.popen = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            self._cleanup()
            raise GuestBootError(f"cannot start {command[0]}: {exc}") from exc
        _live.add(self)
        self._reader = threading.Thread(target=self._read_serial, daemon=True,
                                        name=f"guest-serial-{self.popen.pid}")
        self._err_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self._err_reader.start()
        self._watchdog = None
        self.deadline = None if timeout is None else self.start_time + timeout
        if timeout is not None:
            self._watchdog = threading.Timer(timeout, self._on_timeout)
            self._watchdog.daemon = True
            self._watchdog.start()
        self._grace: threading.Timer | None = None

    # -- readers
    def _read_serial(self) -> None:
        assert self.popen.stdout is not None  # stdout=PIPE
        fd = self.popen.stdout.fileno()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            text = decoder.decode(chunk)
            if self._log is not None:
                try:
                    self._log.write(text)
                    self._log.flush()
                except (OSError, ValueError):
                    pass
            if self._echo:
                sys.stderr.write(text)
            self._feed(text)
        with self._cond:
            if self._partial:
                self._line(self._partial)
                self._partial = ""
            self._cond.notify_all()

    def _feed(self, text: str) -> None:
        with self._cond:
            data = self._partial + text
            *complete, self._partial = data.split("\n")
            for line in complete:
                self._line(line.rstrip("\r"))
            if complete:
                self._cond.notify_all()

    def _line(self, line: str) -> None:
        # Called with the lock held.
        self._serial.append(line)
        i = line.find(SCRIPT_PREFIX)
        if i >= 0:
            self._lines.append(line[i + len(SCRIPT_PREFIX):])
            return
        if self.boot_time is None and BOOTED_MARK in line:
            self.boot_time = time.monotonic() - self.start_time
        m = re.search(re.escape(INSMOD_FAIL_MARK) + r" (\S+)", line)
        if m:
            self.insmod_failures.append(m.group(1))
        m = re.search(re.escape(EXIT_MARK) + r" (\d+)", line)
        if m and self.exit_code is None:
            self.exit_code = int(m.group(1))
            self._grace = threading.Timer(EXIT_GRACE, self.kill)
            self._grace.daemon = True
            self._grace.start()

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None  # stderr=PIPE
        fd = self.popen.stderr.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self._stderr += chunk

    def _on_timeout(self) -> None:
        if self.popen.poll() is None:
            self.timed_out = True
            self.kill()

    # -- state
    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self._serial + ([self._partial] if self._partial else []))

    @property
    def lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)

    @property
    def stderr(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def _remaining(self, timeout: float | None) -> float | None:
        limits = []
        if timeout is not None:
            limits.append(timeout)
        if self.deadline is not None:
            limits.append(self.deadline - time.monotonic())
        return max(0.0, min(limits)) if limits else None

    def _timeout_error(self, what: str) -> GuestTimeout:
        self.kill()
        self._join()
        return GuestTimeout(f"guest timed out {what} (QEMU killed; pid {self.pid})",
                            output=self.output, stderr=self.stderr,
                            returncode=self.popen.returncode)

    # -- following the script
    def expect(self, pattern: str | re.Pattern, timeout: float | None = None) -> re.Match:
        """Wait for the next script line matching ``pattern`` (``re.search``) after the
        previous match; return the match.  On timeout the guest is killed and
        :class:`GuestTimeout` raised; if the guest ends first, :class:`GuestBootError`."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        remaining = self._remaining(timeout)
        end = None if remaining is None else time.monotonic() + remaining
        with self._cond:
            while True:
                while self._expect_pos < len(self._lines):
                    line = self._lines[self._expect_pos]
                    self._expect_pos += 1
                    m = rx.search(line)
                    if m:
                        return m
                if not self._reader.is_alive():
                    break
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(timeout=None if left is None else min(left, 1.0))
        if self._reader.is_alive() or self.timed_out:
            raise self._timeout_error(f"waiting for {rx.pattern!r}")
        self._join()
        raise GuestBootError(f"guest ended before printing a line matching {rx.pattern!r}",
                             output=self.output, stderr=self.stderr,
                             returncode=self.popen.returncode)

    def iter_lines(self, timeout: float | None = None) -> Iterator[str]:
        """Yield the script's lines as they come, until the guest ends."""
        pos = 0
        remaining = self._remaining(timeout)
        end = None if remaining is None else time.monotonic() + remaining
        while True:
            with self._cond:
                while pos >= len(self._lines) and self._reader.is_alive():
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._cond.wait(timeout=None if left is None else min(left, 1.0))
                new = self._lines[pos:]
                alive = self._reader.is_alive()
            pos += len(new)
            yield from new
            if not new:
                if not alive:
                    return
                if end is not None and time.monotonic() >= end:
                    raise self._timeout_error("while streaming lines")

    # -- ending
    def wait(self, timeout: float | None = None) -> GuestResult:
        """Wait for QEMU to exit; return the :class:`GuestResult`.

        Raises :class:`GuestTimeout` (QEMU killed) after ``timeout`` or the guest's
        deadline, and :class:`GuestBootError` if QEMU exited without the script's exit
        code (crash, kernel panic, bad QEMU arguments).  A non-zero script exit code is
        not an error here (see ``GuestResult.check``)."""
        try:
            self.popen.wait(timeout=self._remaining(timeout))
        except subprocess.TimeoutExpired:
            raise self._timeout_error("waiting for QEMU to exit") from None
        self._join()
        if self.timed_out:
            raise GuestTimeout(f"guest timed out (QEMU killed; pid {self.pid})",
                               output=self.output, stderr=self.stderr,
                               returncode=self.popen.returncode)
        result = self.result()
        if result.exit_code is None:
            raise GuestBootError("QEMU exited before the guest script finished",
                                 output=result.output, stderr=self.stderr,
                                 returncode=result.qemu_returncode)
        return result

    def result(self) -> GuestResult:
        end = self.end_time or time.monotonic()
        return GuestResult(exit_code=self.exit_code, output=self.output, lines=self.lines,
                           qemu_returncode=self.popen.returncode,
                           duration=end - self.start_time, boot_time=self.boot_time,
                           modules=list(self.modules),
                           insmod_failures=list(self.insmod_failures),
                           command=list(self.command))

    def kill(self) -> None:
        """Kill QEMU (idempotent)."""
        if self.popen.poll() is None:
            try:
                self.popen.kill()
            except OSError:
                pass

    def _join(self) -> None:
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if self.end_time is None:
            self.end_time = time.monotonic()
        for t in (self._watchdog, self._grace):
            if t is not None:
                t.cancel()
        self._reader.join(timeout=10)
        self._err_reader.join(timeout=10)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._own_log is not None:
            self._own_log.close()
            self._own_log = None
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = ""
        _live.discard(self)

    def close(self) -> None:
        self.kill()
        self._join()
        for f in (self.popen.stdout, self.popen.stderr):
            if f is not None:
                f.close()

    def __enter__(self) -> "GuestProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def qemu_command(bundle: KernelBundle, initrd: str | os.PathLike, *,
                 qemu_args: Sequence[str] = (), memory_mb: int = 512, cpus: int = 1,
                 shared_memory: bool = True, append: str = "", machine: str | None = None,
                 kernel: str | os.PathLike | None = None) -> list[str]:
    """The QEMU command line ``start_guest`` runs."""
    cmd = [qemu_binary(), "-accel", "tcg", "-nographic", "-no-reboot", "-nodefaults",
           "-serial", "stdio", "-m", f"{memory_mb}M", "-smp", str(cpus)]
    if machine:
        cmd += ["-machine", machine]
    if shared_memory:
        cmd += ["-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on",
                "-numa", "node,memdev=mem"]
    cmd += ["-kernel", os.fspath(kernel or bundle.boot_image), "-initrd", os.fspath(initrd),
            "-append", (DEFAULT_APPEND + " " + append).strip()]
    cmd += [str(a) for a in qemu_args]
    return cmd


def start_guest(bundle: KernelBundle, script: str, *, qemu_args: Sequence[str] = (),
                memory_mb: int = 512, cpus: int = 1, shared_memory: bool = True,
                timeout: float | None = 120,
                extra_files: FileSet | Mapping | None = None,
                modules: Iterable[str] | None = None, default_modules: bool = True,
                host_binaries: Iterable[str | os.PathLike] = (),
                console_log: str | os.PathLike | IO | None = None, append: str = "",
                machine: str | None = None, kernel: str | os.PathLike | None = None,
                echo: bool | None = None) -> GuestProcess:
    """Start a guest running ``script`` and return at once.

    ``qemu_args`` adds devices (``-device …``, ``-chardev …``, ``-drive …``).  ``modules``
    adds kernel modules to the default virtio set (``default_modules=False`` drops that
    set).  ``extra_files`` maps guest paths to bytes (or ``(bytes, mode)``);
    ``host_binaries`` copies host programs with their libraries into the guest.
    ``timeout`` (seconds, from now) kills the guest.  ``echo`` copies the serial output
    to stderr (default: ``$PYVIRTIO_GUEST_ECHO``).
    """
    mods = list(DEFAULT_MODULES) if default_modules else []
    mods += list(modules or ())
    initrd, order = build_initrd(bundle.modules_dir, script, modules=mods,
                                 extra_files=extra_files, host_binaries=host_binaries)
    workdir = tempfile.mkdtemp(prefix="pyvirtio-guest-")
    initrd_path = Path(workdir) / "initrd.img"
    initrd_path.write_bytes(initrd)
    cmd = qemu_command(bundle, initrd_path, qemu_args=qemu_args, memory_mb=memory_mb,
                       cpus=cpus, shared_memory=shared_memory, append=append,
                       machine=machine, kernel=kernel)
    if echo is None:
        echo = os.environ.get("PYVIRTIO_GUEST_ECHO", "") not in ("", "0")
    return GuestProcess(cmd, workdir=workdir, timeout=timeout, console_log=console_log,
                        modules=order, echo=echo)


def boot_guest(bundle: KernelBundle, script: str, *, qemu_args: Sequence[str] = (),
               memory_mb: int = 512, cpus: int = 1, shared_memory: bool = True,
               timeout: float | None = 120,
               extra_files: FileSet | Mapping | None = None,
               modules: Iterable[str] | None = None, default_modules: bool = True,
               host_binaries: Iterable[str | os.PathLike] = (),
               console_log: str | os.PathLike | IO | None = None, append: str = "",
               machine: str | None = None, kernel: str | os.PathLike | None = None,
               echo: bool | None = None) -> GuestResult:
    """Boot a guest, run ``script`` in it, and return what happened (see
    :func:`start_guest` for the arguments).  Raises :class:`GuestTimeout` or
    :class:`GuestBootError`; a failing script only sets ``exit_code``."""
    with start_guest(bundle, script, qemu_args=qemu_args, memory_mb=memory_mb, cpus=cpus,
                     shared_memory=shared_memory, timeout=timeout, extra_files=extra_files,
                     modules=modules, default_modules=default_modules,
                     host_binaries=host_binaries, console_log=console_log, append=append,
                     machine=machine, kernel=kernel, echo=echo) as guest:
        return guest.wait()
