"""A pytest plugin: a booted Linux guest with vhost-user devices, in a few lines of a test.

Installed with pyvirtio (entry point ``pytest11``: ``pyvirtio``), so any project's tests can
use its fixtures::

    def test_my_disk(pyvirtio_serve, pyvirtio_guest):
        disk = pyvirtio_serve("blk", size=64 << 20)        # pyvirtio serve blk on a fresh image
        guest = pyvirtio_guest(disk)                         # QEMU + a Debian kernel, booted
        result = guest.run("cat /sys/block/vda/size")
        assert result.exit_code == 0 and result.output.strip() == str(64 << 20 >> 9)

Fixtures:

``pyvirtio_kernel`` (session)
    The guest kernel bundle (:func:`pyvirtio.guest.prepare_kernel`: downloaded once into
    ``~/.cache/pyvirtio``).  Without QEMU the test is skipped — or fails when ``CI`` is set.
``pyvirtio_serve(kind, *, size=..., image=None, **options)``
    Starts ``pyvirtio serve KIND`` (blk, rng, net) in a child process on a socket in the test's
    temporary directory and returns its :class:`~pyvirtio.bench.peers.Peer` (``socket_path``,
    ``kind``); ``blk`` gets a fresh sparse image of ``size`` bytes unless ``image`` is given.
    Stopped at the end of the test.
``pyvirtio_guest(*backends, qemu_args=(), memory_mb=512, timeout=180)``
    Boots a guest with each back-end attached as QEMU's vhost-user device of its kind (any
    vhost-user back-end: a Peer from ``pyvirtio_serve``, or ``(kind, socket_path)`` for one the
    test started itself, e.g. qemu-storage-daemon) and returns a :class:`Guest`:
    ``guest.run(command, timeout=60)`` runs a shell command in the guest and returns a
    :class:`CommandResult` (``exit_code``, ``output``: stdout and stderr together).  The guest is
    shut down at the end of the test.

How commands reach the guest: a second serial port (ttyS1) on a UNIX socket; the guest's script
reads one line per command (an id and the base64 of the command), runs it with ``sh``, and
answers with the id, the exit status and the base64 of the output.
"""

from __future__ import annotations

import base64
import itertools
import shutil
import socket
import time
from dataclasses import dataclass
from typing import Any, Union

import pytest

#: QEMU's device for each kind of vhost-user back-end.
_QEMU_DEVICE = {
    "blk": "vhost-user-blk-pci,chardev={id}",
    "rng": "vhost-user-rng-pci,chardev={id}",
}

_GUEST_LOOP = r"""
stty -F /dev/ttyS1 raw -echo 2>/dev/null
exec 3<>/dev/ttyS1
echo "__PYVIRTIO_READY" >&3
while read -r id cmd <&3; do
  [ "$id" = "__QUIT" ] && break
  echo "$cmd" | base64 -d > /tmp/pyvirtio-cmd.sh
  sh /tmp/pyvirtio-cmd.sh > /tmp/pyvirtio-out 2>&1 </dev/null
  rc=$?
  echo "__R $id $rc $(base64 -w 0 /tmp/pyvirtio-out)" >&3
done
"""


@dataclass
class CommandResult:
    exit_code: int
    output: str

    def check(self) -> "CommandResult":
        if self.exit_code != 0:
            raise AssertionError(f"guest command failed with {self.exit_code}: {self.output[-2000:]}")
        return self


class Guest:
    """A booted guest that runs commands (see the module docstring)."""

    def __init__(self, process, channel: socket.socket):
        self.process = process  # pyvirtio.guest.qemu.GuestProcess
        self._channel = channel
        self._buffer = b""
        self._ids = itertools.count(1)

    def _line(self, deadline: float) -> str:
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the guest in time")
            self._channel.settimeout(left)
            chunk = self._channel.recv(65536)
            if not chunk:
                raise ConnectionError("the guest closed its command channel")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace").strip("\r")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._line(deadline) != "__PYVIRTIO_READY":
            pass

    def run(self, command: str, timeout: float = 60.0) -> CommandResult:
        """Run ``command`` with the guest's ``sh``; its exit status and output."""
        ident = next(self._ids)
        encoded = base64.b64encode(command.encode()).decode()
        self._channel.sendall(f"{ident} {encoded}\n".encode())
        deadline = time.monotonic() + timeout
        while True:
            parts = self._line(deadline).split(" ", 3)
            if len(parts) >= 3 and parts[0] == "__R" and parts[1] == str(ident):
                output = base64.b64decode(parts[3]).decode(errors="replace") if len(parts) > 3 else ""
                return CommandResult(int(parts[2]), output)

    def close(self) -> None:
        try:
            self._channel.sendall(b"__QUIT x\n")
        except OSError:
            pass
        self._channel.close()
        try:
            self.process.wait(timeout=30)
        except Exception:
            pass
        self.process.close()


Backend = Union[Any, tuple]  # a Peer (socket_path, kind) or (kind, socket_path)


def _attach(backend: Backend, n: int) -> list[str]:
    if isinstance(backend, tuple):
        kind, path = backend
    else:
        kind, path = backend.kind, backend.socket_path
    ident = f"pvdev{n}"
    args = ["-chardev", f"socket,id={ident},path={path}"]
    if kind == "net":
        return args + ["-netdev", f"vhost-user,id=net{n},chardev={ident}",
                       "-device", f"virtio-net-pci,netdev=net{n}"]
    if kind not in _QEMU_DEVICE:
        raise ValueError(f"no QEMU vhost-user device for {kind!r} (one of blk, rng, net)")
    return args + ["-device", _QEMU_DEVICE[kind].format(id=ident)]


@pytest.fixture(scope="session")
def pyvirtio_kernel():
    from .testing.env import require
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 (Debian: qemu-system-x86)")
    from .guest import prepare_kernel
    return prepare_kernel(progress=None)


@pytest.fixture
def pyvirtio_serve(tmp_path) -> Any:
    from .bench.peers import start_pyvirtio
    peers: list = []

    def serve(kind: str, *, size: int = 64 << 20, image: str | None = None, **options):
        path = str(tmp_path / f"{kind}{len(peers)}.sock")
        if kind == "blk" and image is None:
            image = str(tmp_path / f"disk{len(peers)}.img")
            with open(image, "wb") as f:
                f.truncate(size)
        if kind == "blk":
            options["blk_file"] = image
        peer = start_pyvirtio(kind, path, **options)
        peers.append(peer)
        return peer

    yield serve
    for peer in peers:
        peer.close()


@pytest.fixture
def pyvirtio_guest(pyvirtio_kernel, tmp_path) -> Any:
    from .guest.qemu import start_guest
    guests: list[Guest] = []

    def boot(*backends: Backend, qemu_args=(), memory_mb: int = 512, timeout: float = 180,
             modules=()) -> Guest:
        channel_path = str(tmp_path / f"guest{len(guests)}-cmd.sock")
        args = ["-chardev", f"socket,id=pvcmd,path={channel_path},server=on,wait=off",
                "-serial", "chardev:pvcmd"]
        for n, backend in enumerate(backends):
            args += _attach(backend, n)
        process = start_guest(pyvirtio_kernel, _GUEST_LOOP, qemu_args=[*args, *qemu_args],
                              memory_mb=memory_mb, timeout=timeout, modules=modules)
        deadline = time.monotonic() + 30
        channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                channel.connect(channel_path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline or not process.running():
                    channel.close()
                    process.close()
                    raise RuntimeError(f"the guest did not start: {process.output[-2000:]}")
                time.sleep(0.05)
        guest = Guest(process, channel)
        guests.append(guest)
        guest.wait_ready(timeout=min(timeout, 120))
        return guest

    yield boot
    for guest in guests:
        guest.close()


