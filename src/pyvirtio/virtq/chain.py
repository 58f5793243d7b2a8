"""A descriptor chain as the device sees it: device-readable buffers, then device-writable ones."""

from __future__ import annotations

import ctypes

from ..errors import UsageError


class DescriptorChain:
    """One available buffer popped from a virtqueue.

    ``readable`` and ``writable`` are zero-copy views into guest memory, in chain order (a buffer
    that crosses guest memory regions gives several views).  ``head_index`` is what goes back in
    the used ring.  ``written`` counts what :meth:`write` stored so far.  ``descriptors`` is how
    many descriptors the chain had (direct or in its indirect table, not the one pointing at the
    table): what blk's ``seg_max`` is measured against.
    """

    __slots__ = ("head_index", "readable", "writable", "readable_len", "writable_len", "written",
                 "descriptors", "addresses")

    def __init__(self, head_index, readable, writable, readable_len, writable_len, descriptors=0,
                 addresses=None):
        self.head_index = head_index
        self.descriptors = descriptors or len(readable) + len(writable)
        self.readable = readable
        self.writable = writable
        self.readable_len = readable_len
        self.writable_len = writable_len
        self.written = 0
        #: The host address of each view of ``readable + writable``, in that order (what the
        #: kernel is handed for I/O straight into guest memory), or None if one has none (a
        #: read-only buffer) or the chain was not made by a walk
        self.addresses = addresses

    def readable_addresses(self) -> list[int] | None:
        """The host addresses of :attr:`readable`'s views (None: unknown)."""
        return self.addresses[:len(self.readable)] if self.addresses is not None else None

    def writable_addresses(self) -> list[int] | None:
        """The host addresses of :attr:`writable`'s views (None: unknown)."""
        return self.addresses[len(self.readable):] if self.addresses is not None else None

    def __repr__(self) -> str:
        return (f"DescriptorChain(head={self.head_index}, readable={self.readable_len}, "
                f"writable={self.writable_len})")

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        """Copy device-readable bytes ``[offset, offset+length)`` out of the chain."""
        if length is None:
            length = self.readable_len - offset
        if offset < 0 or length < 0 or offset + length > self.readable_len:
            raise UsageError("read past the chain's device-readable bytes")
        return b"".join(bytes(v) for v in _slice_views(self.readable, offset, length))

    def readable_views(self, offset: int = 0, length: int | None = None) -> list[memoryview]:
        """Zero-copy views of the chain's device-readable bytes from ``offset`` (``length`` bytes,
        or to their end)."""
        if length is None:
            length = self.readable_len - offset
        return _slice_views(self.readable, offset, length)

    def writable_views(self, offset: int = 0, length: int | None = None) -> list[memoryview]:
        """Zero-copy views of the chain's device-writable bytes from ``offset`` (``length`` bytes,
        or to their end)."""
        if length is None:
            length = self.writable_len - offset
        return _slice_views(self.writable, offset, length)

    def write(self, data, offset: int | None = None) -> int:
        """Copy ``data`` into the device-writable buffers at ``offset`` (default: after the last
        write).  Returns the bytes written; raises UsageError rather than overflow the chain."""
        if offset is None:
            offset = self.written
        n = len(data)
        if offset < 0 or offset + n > self.writable_len:
            raise UsageError(f"write of {n} bytes at {offset} overflows {self.writable_len} writable bytes")
        pos = 0
        src = memoryview(data).cast("B")
        for view in _slice_views(self.writable, offset, n):
            view[:] = src[pos:pos + len(view)]
            pos += len(view)
        self.written = max(self.written, offset + n)
        return n


def _slice_views(views: list[memoryview], offset: int, length: int) -> list[memoryview]:
    out = []
    for view in views:
        size = len(view)
        if offset >= size:
            offset -= size
            continue
        take = min(size - offset, length)
        if take <= 0:
            break
        out.append(view[offset:offset + take])
        length -= take
        offset = 0
        if not length:
            break
    if length > 0:
        raise UsageError("range runs past the chain's buffers")
    return out


def view_addresses(addresses: list[int] | None, views: list[memoryview]) -> list[int] | None:
    """``addresses`` extended by the host address of each of ``views`` — looked up (ctypes): the
    walks call this only for a view they did not slice themselves — or None if ``addresses`` is
    None or a view has none (read-only)."""
    if addresses is None:
        return None
    try:
        for view in views:
            addresses.append(ctypes.addressof(ctypes.c_char.from_buffer(view)))
    except (TypeError, ValueError):
        return None
    return addresses


def append_table(fields: tuple[int, ...], nr: int, gpa: int, end: int, buf: memoryview, at: int,
                 readable: list, writable: list, addrs: list[int] | None) -> tuple[int, int] | None:
    """An indirect table read at once (``fields``:
    :func:`~pyvirtio.virtq.layout.descriptor_table_fields`, split or packed: addr and len are
    items ``4i`` and ``4i + 1``), whose first ``nr`` descriptors are device-readable and the
    rest device-writable (as the ring's own check of the table's shape found), added to a walk:
    when none is empty and every buffer lies inside the walk's window (:func:`walk_window`:
    ``gpa``, ``end``, ``buf``, ``at``), their views are sliced in one go and appended to
    ``readable`` and ``writable``, their host addresses to ``addrs`` (unless None), and
    (readable bytes, writable bytes) returned.  Else None, nothing appended: the walk's loop
    takes the table.  The window is tested against the largest offset plus the largest length:
    it may send a table the loop accepts to the loop, never the other way."""
    lengths = fields[1::4]
    if 0 in lengths:
        return None
    starts = fields[0::4]
    if min(starts) < gpa or max(starts) - gpa + max(lengths) > end:
        return None
    offs = [a - gpa for a in starts] if gpa else list(starts)
    views = [buf[o:o + n] for o, n in zip(offs, lengths)]
    readable += views[:nr]
    writable += views[nr:]
    if addrs is not None:
        addrs += [at + o for o in offs]
    return sum(lengths[:nr]), sum(lengths[nr:])


_EMPTY = memoryview(bytearray(0))


def walk_window(mem) -> tuple[int, int, memoryview, int]:
    """``mem.window()`` (:meth:`pyvirtio.memory.GuestMemory.window`) as a walk uses it:
    ``(gpa, size, buf, host address)``, or an empty window — nothing inside it, so every buffer
    goes through ``mem.views`` — when there is none or its buffer has no host address."""
    window = mem.window()
    if window is None or window[3] is None:
        return 0, -1, _EMPTY, 0
    return window[0], window[1], window[2], window[3]
