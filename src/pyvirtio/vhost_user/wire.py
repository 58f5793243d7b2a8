"""The vhost-user wire format: the 12-byte header, the payload structs, and message framing.

Symmetric: every payload struct packs and unpacks itself (``pack()`` / ``unpack(data)``), so the
back-end connection, the test front-end and the tests share one codec.  Native byte order
(vhost-user.rst: "All numbers are in the machine native byte order").

:class:`Framer` turns a byte stream (plus the fds that came with it) into whole messages.
The rule for fds: the fds handed in with a chunk belong to the message that holds the chunk's
first byte.  An I/O shell that reads each header with its own ``recvmsg`` (as libvhost-user
does) gets exactly the fds the front-end sent with that message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ..spec import vhost_user as _spec
from .errors import BadPayloadSize, FramingError
from .protocol import (MAX_PAYLOAD_SIZE, MEMORY_BASELINE_NREGIONS, VERSION, VERSION_MASK,
                       HeaderFlag)

HEADER = _spec.HEADER  # request, flags, size
HEADER_SIZE = HEADER.size


@dataclass(frozen=True)
class Header:
    request: int
    flags: int
    size: int

    def pack(self) -> bytes:
        return HEADER.pack(self.request, self.flags, self.size)

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> "Header":
        return cls(*HEADER.unpack_from(data))

    @property
    def version(self) -> int:
        return self.flags & VERSION_MASK

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & HeaderFlag.NEED_REPLY)

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & HeaderFlag.REPLY)


@dataclass
class Message:
    """One whole message: its header fields, payload bytes and the fds that came with it.

    ``fds`` belong to whoever holds the message: a handler that keeps an fd takes it with
    :meth:`take_fd`; the dispatcher closes whatever is left."""

    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & HeaderFlag.NEED_REPLY)

    def take_fd(self, i: int = 0) -> int:
        fd = self.fds[i]
        self.fds[i] = -1
        return fd


def encode(request: int, payload: bytes = b"", *, flags: int = VERSION) -> bytes:
    """A whole message as bytes (header + payload)."""
    return HEADER.pack(int(request), flags, len(payload)) + payload


def encode_reply(request: int, payload: bytes = b"") -> bytes:
    return encode(request, payload, flags=VERSION | HeaderFlag.REPLY)


# --- payload structs ---------------------------------------------------------------------------


class _Payload:
    STRUCT: ClassVar[struct.Struct]
    __dataclass_fields__: ClassVar[dict[str, Any]]  # every payload is a dataclass (for fields())

    def pack(self) -> bytes:
        return self.STRUCT.pack(*(getattr(self, f.name) for f in fields(self)))

    @classmethod
    def unpack(cls, data: bytes | memoryview):
        if len(data) != cls.STRUCT.size:
            raise BadPayloadSize(f"{cls.__name__} payload is {len(data)} bytes, expected {cls.STRUCT.size}")
        return cls(*cls.STRUCT.unpack(data))

    @classmethod
    def size(cls) -> int:
        return cls.STRUCT.size


@dataclass(frozen=True)
class U64(_Payload):
    STRUCT: ClassVar = _spec.U64
    value: int


@dataclass(frozen=True)
class VringState(_Payload):
    """``{u32 index; u32 num}`` — SET_VRING_NUM/BASE, GET_VRING_BASE, SET_VRING_ENABLE."""

    STRUCT: ClassVar = _spec.VRING_STATE
    index: int
    num: int


@dataclass(frozen=True)
class VringAddr(_Payload):
    """``{u32 index; u32 flags; u64 desc; u64 used; u64 avail; u64 log}`` (front-end addresses)."""

    STRUCT: ClassVar = _spec.VRING_ADDR
    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


@dataclass(frozen=True)
class MemoryRegion(_Payload):
    """``{u64 guest_phys_addr; u64 memory_size; u64 userspace_addr; u64 mmap_offset}``."""

    STRUCT: ClassVar = _spec.MEMORY_REGION
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int


@dataclass(frozen=True)
class SingleMemoryRegion(_Payload):
    """ADD_MEM_REG / REM_MEM_REG: ``{u64 padding; region}``."""

    STRUCT: ClassVar = _spec.SINGLE_MEMORY_REGION
    padding: int
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int

    @property
    def region(self) -> MemoryRegion:
        return MemoryRegion(self.guest_phys_addr, self.memory_size, self.userspace_addr,
                            self.mmap_offset)

    @classmethod
    def of(cls, region: MemoryRegion) -> "SingleMemoryRegion":
        return cls(0, region.guest_phys_addr, region.memory_size, region.userspace_addr,
                   region.mmap_offset)


_MEM_HDR = _spec.MEMORY_HEADER


@dataclass(frozen=True)
class MemoryTable:
    """SET_MEM_TABLE: ``{u32 nregions; u32 padding; region[nregions]}``.

    Front-ends send ``8 + 32 * nregions`` bytes (QEMU) or the whole 8-slot array; both parse."""

    regions: tuple[MemoryRegion, ...]

    def pack(self) -> bytes:
        return _MEM_HDR.pack(len(self.regions), 0) + b"".join(r.pack() for r in self.regions)

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> "MemoryTable":
        if len(data) < _MEM_HDR.size:
            raise BadPayloadSize(f"memory table payload is {len(data)} bytes, shorter than its header")
        n, _pad = _MEM_HDR.unpack_from(data)
        rsize = MemoryRegion.size()
        if not 1 <= n <= MEMORY_BASELINE_NREGIONS:
            raise BadPayloadSize(f"memory table has {n} regions, not 1..{MEMORY_BASELINE_NREGIONS}")
        full = _MEM_HDR.size + MEMORY_BASELINE_NREGIONS * rsize
        if len(data) != _MEM_HDR.size + n * rsize and len(data) != full:
            raise BadPayloadSize(f"memory table of {n} regions is {len(data)} bytes, "
                                 f"expected {_MEM_HDR.size + n * rsize} or {full}")
        base = _MEM_HDR.size
        return cls(tuple(MemoryRegion.unpack(data[base + i * rsize:base + (i + 1) * rsize])
                         for i in range(n)))


_CONFIG_HDR = _spec.CONFIG_HEADER


@dataclass(frozen=True)
class ConfigSpace:
    """GET_CONFIG / SET_CONFIG: ``{u32 offset; u32 size; u32 flags; u8 payload[size]}``."""

    offset: int
    size: int
    flags: int
    data: bytes = b""

    HEADER_SIZE: ClassVar[int] = _CONFIG_HDR.size

    def pack(self) -> bytes:
        return _CONFIG_HDR.pack(self.offset, self.size, self.flags) + self.data

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> "ConfigSpace":
        if len(data) < _CONFIG_HDR.size:
            raise BadPayloadSize(f"config payload is {len(data)} bytes, shorter than its header")
        offset, size, flags = _CONFIG_HDR.unpack_from(data)
        if len(data) != _CONFIG_HDR.size + size:
            raise BadPayloadSize(f"config payload is {len(data)} bytes but announces {size} "
                                 f"config bytes after a {_CONFIG_HDR.size}-byte header")
        return cls(offset, size, flags, bytes(data[_CONFIG_HDR.size:]))


@dataclass(frozen=True)
class Inflight(_Payload):
    """GET/SET_INFLIGHT_FD: ``{u64 mmap_size; u64 mmap_offset; u16 num_queues; u16 queue_size}``
    (QEMU sends the C struct with its 4 trailing padding bytes: 24 bytes)."""

    STRUCT: ClassVar = _spec.INFLIGHT
    mmap_size: int
    mmap_offset: int
    num_queues: int
    queue_size: int


# --- framing -----------------------------------------------------------------------------------


class Framer:
    """Reassemble whole messages from stream chunks, keeping each message's fds with it."""

    def __init__(self, max_payload: int = MAX_PAYLOAD_SIZE):
        self.max_payload = max_payload
        self._buf = bytearray()
        self._fds: list[int] = []  # fds of the first incomplete message
        self._header: Header | None = None

    def want(self) -> int:
        """Bytes still missing from the message being assembled (header first, then payload)."""
        if self._header is None:
            return HEADER_SIZE - len(self._buf)
        return HEADER_SIZE + self._header.size - len(self._buf)

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    def push(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        """Add a chunk and the fds that came with it (they join the message holding the
        chunk's first byte, i.e. the first message not yet complete)."""
        self._fds.extend(fds)
        self._buf += data

    def next_message(self) -> Message | None:
        """The next whole message, or None until more bytes arrive.  Raises FramingError on a
        header the stream cannot recover from (the fds still held go to :meth:`take_all_fds`)."""
        if self._header is None:
            if len(self._buf) < HEADER_SIZE:
                return None
            self._header = self._check(Header.unpack(self._buf))
        end = HEADER_SIZE + self._header.size
        if len(self._buf) < end:
            return None
        h = self._header
        msg = Message(h.request, h.flags, bytes(self._buf[HEADER_SIZE:end]), self._fds)
        del self._buf[:end]
        self._fds, self._header = [], None
        return msg

    def feed(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> list[Message]:
        """:meth:`push` then collect every whole message."""
        self.push(data, fds)
        out = []
        while (msg := self.next_message()) is not None:
            out.append(msg)
        return out

    def _check(self, header: Header) -> Header:
        if header.version != VERSION:
            raise FramingError(f"header of request {header.request} has version "
                               f"{header.version}, not {VERSION} (flags {header.flags:#x})")
        if header.size > self.max_payload:
            raise FramingError(f"header of request {header.request} announces a "
                               f"{header.size}-byte payload, more than {self.max_payload}")
        return header

    def take_all_fds(self) -> list[int]:
        """Hand over the fds of the incomplete message (to close them)."""
        fds, self._fds = self._fds, []
        return fds
