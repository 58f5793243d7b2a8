"""The qtest wire protocol (QEMU softmmu/qtest.c), sans-I/O.

Requests are text lines (``readl 0xfeb00000``, ``b64write ADDR LEN DATA`` …); each gets exactly
one reply line, ``OK [VALUE]`` or ``FAIL reason``, in order.  Once ``irq_intercept_in`` is on,
QEMU also sends asynchronous ``IRQ raise N`` / ``IRQ lower N`` lines at any moment — between
replies, before a reply, while no request is outstanding.  :class:`QtestParser` is fed bytes and
hands back :class:`Reply` and :class:`IrqEvent` objects in arrival order; the I/O shell
(:mod:`.client`) matches replies to requests.

Formatting helpers check arguments QEMU would ``g_assert`` on (a port above 0xffff, a zero-length
read), so a caller's mistake is a :class:`~pyvirtio.errors.UsageError` here rather than an
aborted QEMU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ..errors import PeerProtocolError, UsageError

MAX_LINE = 64 << 20  # a b64read of 16 MiB plus slack


@dataclass(frozen=True)
class Reply:
    ok: bool
    words: tuple[str, ...]  # after OK / FAIL

    @property
    def value(self) -> int:
        if not self.words:
            raise PeerProtocolError("qtest reply carries no value")
        return int(self.words[0], 0)


@dataclass(frozen=True)
class IrqEvent:
    raised: bool
    line: int


Event = Union[Reply, IrqEvent]


class QtestParser:
    """Bytes in, events out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        events: list[Event] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_LINE:
                    raise PeerProtocolError("qtest line too long")
                return events
            line = bytes(self._buf[:nl]).decode("ascii", "replace").strip()
            del self._buf[:nl + 1]
            if line:
                events.append(parse_line(line))


def parse_line(line: str) -> Event:
    words = line.split()
    if words[0] == "IRQ":
        if len(words) != 3 or words[1] not in ("raise", "lower"):
            raise PeerProtocolError(f"malformed qtest IRQ line {line!r}")
        return IrqEvent(words[1] == "raise", int(words[2]))
    if words[0] in ("OK", "FAIL"):
        return Reply(words[0] == "OK", tuple(words[1:]))
    raise PeerProtocolError(f"unexpected qtest line {line[:80]!r}")


_WIDTH = {1: "b", 2: "w", 4: "l", 8: "q"}


def mem_read(addr: int, size: int) -> str:
    _check_addr(addr)
    return f"read{_width(size)} {addr:#x}"


def mem_write(addr: int, size: int, value: int) -> str:
    _check_addr(addr)
    return f"write{_width(size)} {addr:#x} {value & ((1 << (8 * size)) - 1):#x}"


def port_in(port: int, size: int) -> str:
    _check_port(port, size)
    return f"in{_width(size)} {port:#x}"


def port_out(port: int, size: int, value: int) -> str:
    _check_port(port, size)
    return f"out{_width(size)} {port:#x} {value & ((1 << (8 * size)) - 1):#x}"


def b64read(addr: int, length: int) -> str:
    _check_addr(addr)
    if length <= 0:
        raise UsageError("qtest reads need a positive length (QEMU asserts on 0)")
    return f"b64read {addr:#x} {length:#x}"


def b64write(addr: int, data_b64: str, length: int) -> str:
    _check_addr(addr)
    if length <= 0:
        raise UsageError("qtest writes need a positive length")
    return f"b64write {addr:#x} {length:#x} {data_b64}"


def _width(size: int) -> str:
    try:
        return _WIDTH[size]
    except KeyError:
        raise UsageError(f"qtest accesses are 1, 2, 4 or 8 bytes, not {size}") from None


def _check_addr(addr: int) -> None:
    if not 0 <= addr < 1 << 64:
        raise UsageError(f"address {addr:#x} is not a 64-bit physical address")


def _check_port(port: int, size: int) -> None:
    if not 0 <= port <= 0xFFFF or size == 8:
        raise UsageError(f"port access {port:#x}/{size} is outside the 64 KiB x86 I/O space")
