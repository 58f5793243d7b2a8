"""The host program's side of ``pyvirtio serve vsock`` (the hybrid convention, :mod:`.hybrid`).

    from pyvirtio import vsock
    sock = vsock.connect("/tmp/vm.vsock", 5000)       # a stream to the guest's port 5000
    server = vsock.listen("/tmp/vm.vsock", 6000)      # the guest's connections to host port 6000
    conn, _ = server.accept()

    reader, writer = await vsock.open_connection("/tmp/vm.vsock", 5000)
    server = await vsock.start_server(handle, "/tmp/vm.vsock", 6000)

The same works against a :class:`~pyvirtio.devices.vsock.VsockDevice` served in this process
(its :class:`~pyvirtio.vsock.hybrid.HybridHost` listens on the same paths).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Awaitable, Callable

from ..limits import VSOCK_HANDSHAKE_LINE


class VsockRefused(ConnectionRefusedError):
    """The guest refused the connection (nothing listens on that port), or the daemon is gone."""


def _ok_port(line: bytes, port: int) -> int:
    word, _, rest = line.strip().partition(b" ")
    if word != b"OK" or not rest.isdigit():
        raise VsockRefused(f"guest port {port}: unexpected answer {line!r}")
    return int(rest)


def connect(uds_path: str, port: int, *, timeout: float | None = 10.0) -> socket.socket:
    """A stream socket to the guest's ``port``; its ``hostport`` attribute is not kept (the
    socket is a plain one), see :func:`connect_port` for it.  Raises :class:`VsockRefused`."""
    return connect_port(uds_path, port, timeout=timeout)[0]


def connect_port(uds_path: str, port: int, *, timeout: float | None = 10.0) -> tuple[socket.socket, int]:
    """(socket, the host-side port the guest sees) for a stream to the guest's ``port``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(uds_path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise VsockRefused(f"{uds_path}: {exc.strerror}") from None
        sock.sendall(b"CONNECT %d\n" % port)
        line = bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not line.endswith(b"\n"):  # one byte at a time: what follows is the guest's
            if deadline is not None:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
            b = sock.recv(1)
            if not b or len(line) >= VSOCK_HANDSHAKE_LINE:
                raise VsockRefused(f"guest port {port}: connection refused")
            line += b
        hostport = _ok_port(bytes(line), port)
        sock.settimeout(None)
        return sock, hostport
    except BaseException:
        sock.close()
        raise


def listen_path(uds_path: str, port: int) -> str:
    return f"{uds_path}_{port}"


def listen(uds_path: str, port: int, backlog: int = 16) -> socket.socket:
    """A listening socket for the guest's connections to host port ``port`` (``UDS_port``)."""
    path = listen_path(uds_path, port)
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_connection(uds_path: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio streams to the guest's ``port``."""
    reader, writer = await asyncio.open_unix_connection(uds_path)
    try:
        writer.write(b"CONNECT %d\n" % port)
        await writer.drain()
        try:
            line = await reader.readuntil(b"\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise VsockRefused(f"guest port {port}: connection refused") from None
        _ok_port(line, port)
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def start_server(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                       uds_path: str, port: int) -> asyncio.AbstractServer:
    """An asyncio server for the guest's connections to host port ``port``."""
    path = listen_path(uds_path, port)
    if os.path.exists(path):
        os.unlink(path)
    return await asyncio.start_unix_server(handler, path=path)


__all__ = ["VsockRefused", "connect", "connect_port", "listen", "listen_path", "open_connection",
           "start_server"]
