"""Devices as files on the driver side (the 2007 thread's option (d), UNIX-like access), over any
transport.

- :class:`BlockFile`: a block device as a raw binary file (``io.RawIOBase``): ``readinto``,
  ``write``, ``seek``/``tell`` at any offset and length, ``flush`` → VIRTIO_BLK_T_FLUSH.  Wrap it
  in ``io.BufferedReader`` / ``BufferedWriter`` / ``BufferedRandom`` as a disk's ``open()`` would.
- :class:`EntropyStream`: the entropy device as a readable stream, as ``/dev/hwrng``.
- :class:`PortStream` (:func:`open_port`): a console port as a pipe-like byte stream.
- :func:`open`: ``open(transport_or_driver, mode, buffering, encoding ...)`` as the built-in
  ``open`` does it: raw, buffered or text, by the device's class.

The rules are those of the file a kernel would give:

- A block device neither grows nor shrinks: a read at or past the end is short or ``b""``; a write
  that would pass the end writes nothing and raises ``OSError(ENOSPC)``; ``truncate`` raises
  ``io.UnsupportedOperation``.  Reads and writes of any offset and length work: the edge blocks
  of an unaligned write are read, merged and written back whole (read-modify-write; like any
  disk, not atomic against another writer of the same block).  Requests are at most
  ``max_request`` bytes (and at most the device's ``size_max``, VIRTIO 1.3, 5.2.4: each request
  carries its data in one segment, so any ``seg_max`` fits) with up to ``depth`` in flight.
- ``flush`` sends FLUSH when something was written since the last one and the device offers
  VIRTIO_BLK_F_FLUSH; without it the device has no volatile cache to flush (5.2.5.1: it is
  write-through) and ``flush`` does nothing.  ``close`` flushes.  ``io.BufferedWriter.flush``
  only hands its buffer to the raw file (Python's io calls the raw ``flush`` on ``close`` only):
  call ``f.raw.flush()`` to make writes durable before that.
- A read-only device (VIRTIO_BLK_F_RO): ``writable()`` is False and ``write`` raises
  ``OSError(EROFS)``.
- An entropy read returns what the device gave (1..n bytes, 5.4.6.1); ``BufferedReader.read(n)``
  returns exactly ``n``.  The stream has no end, so ``read()`` / ``readall`` are refused.
- A port read waits for at least one byte and returns ``b""`` (end of file) when no host program
  has the port open, as Linux's ``/dev/vportNpM`` does; ``write`` queues every byte (waiting
  while the ring is full or no host program is attached); ``flush`` waits until the device has
  taken them.  Not seekable.
- None of them has a file descriptor: ``fileno()`` raises ``io.UnsupportedOperation``.
- A request the device fails, a device that does not answer, a broken queue: ``OSError(EIO)``
  whose message names the device's status.  Misuse raises what ``io`` raises (``ValueError`` on a
  closed file, ``io.UnsupportedOperation``).
- ``close`` releases the object.  It resets the device (``driver.remove()``) only when it bound
  the driver itself (:func:`open` given a transport, or ``owns_driver=True``).

Not thread-safe (as ``io.FileIO``): one thread per object, or a buffered wrapper's lock.
"""

from __future__ import annotations

import contextlib
import errno
import io
import operator
from collections import deque
from typing import Callable, Iterable, Iterator

from .driver import VirtioDriver
from .drivers.blk import SECTOR, BlkDriver, BlkRequest
from .drivers.console import ConsoleDriver
from .drivers.console_port import ConsolePort
from .drivers.rng import RngDriver
from .errors import DeviceFault, RequestError, UsageError, VirtioError
from .spec.blk import BlkFeature, BlkStatus
from .transport import DriverTransport

#: Bytes per block request at most (before the device's ``size_max``).
DEFAULT_MAX_REQUEST = 128 << 10
#: Block requests in flight at once per call.
DEFAULT_DEPTH = 4
#: Bytes asked of the entropy device per request at most.
ENTROPY_REQUEST = 4096


@contextlib.contextmanager
def _device_errors(what: str) -> Iterator[None]:
    """Turn the device's failures into ``OSError(EIO)``; our own misuse stays what it is."""
    try:
        yield
    except UsageError:
        raise
    except RequestError as exc:
        status = BlkStatus(exc.status).name if exc.status in BlkStatus._value2member_map_ else exc.status
        raise OSError(errno.EIO, f"{what}: the device answered status {status} ({exc})") from exc
    except VirtioError as exc:
        raise OSError(errno.EIO, f"{what}: {type(exc).__name__}: {exc}") from exc


class _DeviceIO(io.RawIOBase):
    """What the three have in common: no file descriptor, and a driver to remove on close when
    this object bound it (``owner``)."""

    def __init__(self, owner: VirtioDriver | None):
        super().__init__()
        self._owner = owner

    def fileno(self) -> int:
        """Always ``io.UnsupportedOperation``: the device is reached through a transport, not a
        file descriptor."""
        raise io.UnsupportedOperation(f"{type(self).__name__} has no file descriptor")

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def close(self) -> None:
        """Flush, close, and remove the driver if this object bound it."""
        if self.closed:
            return
        try:
            super().close()
        finally:
            self._release()

    def _release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.remove()


def _down(n: int, unit: int) -> int:
    return n - n % unit


def _up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


class BlockFile(_DeviceIO):
    """A block device as a raw binary file.  ``mode`` is ``"r"``, ``"w"`` or ``"r+"`` (``b``
    allowed; a device is never created, truncated or appended to); the default ``"r+"`` is
    read-only on a read-only device, while an explicit ``"w"`` or ``"r+"`` there raises
    ``OSError(EROFS)``."""

    def __init__(self, driver: BlkDriver, mode: str | None = None, *, owns_driver: bool = False,
                 max_request: int = DEFAULT_MAX_REQUEST, depth: int = DEFAULT_DEPTH):
        reading, writing, _ = _parse_mode((mode or "r+").replace("b", "") + "b")
        if writing and driver.read_only and mode is not None:
            raise OSError(errno.EROFS, f"{driver.transport.describe()}: the device is read-only (VIRTIO_BLK_F_RO)")
        super().__init__(driver if owns_driver else None)
        self.driver = driver
        self.name = driver.transport.describe()
        self._reading, self._writing = reading, writing and not driver.read_only
        self.mode = "rb+" if self._reading and self._writing else "rb" if self._reading else "wb"
        bs = driver.block_size
        self.unit = bs if bs > 0 and bs % SECTOR == 0 else SECTOR
        limit = max_request
        if driver.has_feature(BlkFeature.SIZE_MAX) and driver.config["size_max"]:
            limit = min(limit, driver.config["size_max"])
        self.max_request = max(self.unit, _down(limit, self.unit))
        self.depth = max(1, depth)
        self._pos = 0
        self._dirty = False

    @property
    def size(self) -> int:
        """The device's size in bytes (its capacity now)."""
        return self.driver.capacity * SECTOR

    def readable(self) -> bool:
        """Whether the file was opened for reading."""
        self._check_open()
        return self._reading

    def writable(self) -> bool:
        """Whether the file was opened for writing and the device is not read-only."""
        self._check_open()
        return self._writing

    def seekable(self) -> bool:
        """Always True."""
        self._check_open()
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to ``offset`` from the start, the current position or the end (the device's size);
        a position past the end is allowed (reads there return ``b""``)."""
        self._check_open()
        offset = operator.index(offset)
        if whence not in (io.SEEK_SET, io.SEEK_CUR, io.SEEK_END):
            raise ValueError(f"invalid whence ({whence})")
        base = (0, self._pos, self.size)[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, f"seek to {base + offset}: a negative position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        """The current position."""
        self._check_open()
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        """Always ``io.UnsupportedOperation``: a block device has a fixed size."""
        raise io.UnsupportedOperation("a block device has a fixed size: it cannot be truncated")

    def readinto(self, buffer) -> int:
        """Read up to ``len(buffer)`` bytes at the position; short at the end, 0 past it."""
        self._check_open()
        if not self._reading:
            raise io.UnsupportedOperation("File not open for reading")
        view = memoryview(buffer).cast("B")
        start = self._pos
        n = max(0, min(len(view), self.size - start))
        if n:
            with _device_errors(f"{self.name}: read of {n} bytes at {start}"):
                self._read(start, view[:n])
            self._pos = start + n
        return n

    def readall(self) -> bytes:
        """Everything from the position to the end of the device."""
        out = bytearray(max(0, self.size - self.tell()))
        return bytes(out[:self.readinto(out)]) if out else b""

    def write(self, buffer) -> int:
        """Write all of ``buffer`` at the position (unaligned edges: read-modify-write); refused
        whole with ``OSError(ENOSPC)`` when it would pass the end."""
        self._check_open()
        if not self._writing:
            if self._reading and self.driver.read_only:
                raise OSError(errno.EROFS, f"{self.name}: the device is read-only (VIRTIO_BLK_F_RO)")
            raise io.UnsupportedOperation("File not open for writing")
        data = memoryview(buffer).cast("B")
        start, end = self._pos, self._pos + len(data)
        if end > self.size:
            raise OSError(errno.ENOSPC, f"{self.name}: a write of {len(data)} bytes at {start} passes "
                                        f"the end of the device ({self.size} bytes); a disk does not grow")
        if data:
            with _device_errors(f"{self.name}: write of {len(data)} bytes at {start}"):
                self._write(start, data)
            self._pos, self._dirty = end, True
        return len(data)

    def flush(self) -> None:
        """Make what was written durable: FLUSH, if anything was written since the last one and
        the device offers VIRTIO_BLK_F_FLUSH (without it, the device is write-through)."""
        super().flush()
        if self._dirty and self.driver.has_feature(BlkFeature.FLUSH):
            with _device_errors(f"{self.name}: flush"):
                self.driver.flush()
        self._dirty = False

    # --- requests ---------------------------------------------------------------------------------

    def _chunks(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """(offset, length) of the aligned requests covering [start, end)."""
        first, last = _down(start, self.unit), _up(end, self.unit)
        for at in range(first, last, self.max_request):
            yield at, min(self.max_request, last - at)

    def _read(self, start: int, dest: memoryview) -> None:
        end = start + len(dest)

        def job(at: int, length: int) -> tuple[Callable[[], BlkRequest], Callable[[bytes], None]]:
            def done(data: bytes) -> None:
                lo, hi = max(at, start), min(at + length, end)
                dest[lo - start:hi - start] = data[lo - at:hi - at]
            return lambda: self.driver.submit_read(at // SECTOR, length), done

        self._run(job(at, length) for at, length in self._chunks(start, end))

    def _write(self, start: int, data: memoryview) -> None:
        end = start + len(data)

        def job(at: int, length: int) -> tuple[Callable[[], BlkRequest], Callable[[bytes], None]]:
            if start <= at and at + length <= end:  # whole blocks of the caller's data
                payload = bytes(data[at - start:at - start + length])
            else:  # an edge: the blocks around the caller's bytes, read first
                payload = bytes(self._merge(at, length, start, data))
            return lambda: self.driver.submit_write(at // SECTOR, payload), lambda _: None

        self._run(job(at, length) for at, length in self._chunks(start, end))

    def _merge(self, at: int, length: int, start: int, data: memoryview) -> bytearray:
        """The blocks of [at, at + length) with the caller's bytes over the device's (only the
        first and last block can be partly covered)."""
        buf = bytearray(length)
        end, unit = start + len(data), self.unit
        if at < start:
            buf[:unit] = self.driver.read(at // SECTOR, unit)
        if at + length > end and (length > unit or at >= start):
            buf[-unit:] = self.driver.read((at + length - unit) // SECTOR, unit)
        lo, hi = max(at, start), min(at + length, end)
        buf[lo - at:hi - at] = data[lo - start:hi - start]
        return buf

    def _run(self, jobs: Iterable[tuple[Callable[[], BlkRequest], Callable[[bytes], None]]]) -> None:
        """Submit the jobs with up to ``depth`` in flight, completing them in order; when one fails
        the rest in flight are waited for (their buffers freed) before the error goes up, unless
        the device stopped answering."""
        inflight: deque[tuple[BlkRequest, Callable[[bytes], None]]] = deque()
        try:
            for submit, done in jobs:
                if len(inflight) >= self.depth:
                    request, finish = inflight.popleft()
                    finish(self.driver.wait(request))
                inflight.append((submit(), done))
            while inflight:
                request, finish = inflight.popleft()
                finish(self.driver.wait(request))
        except DeviceFault:
            inflight.clear()  # the device does not answer: waiting for the rest would not help
            raise
        finally:
            for request, _ in inflight:
                with contextlib.suppress(VirtioError):
                    self.driver.wait(request)


class EntropyStream(_DeviceIO):
    """The entropy device as a readable stream (as ``/dev/hwrng``): ``readinto`` returns what
    one request brought (1 to ``len(buffer)`` bytes); ``io.BufferedReader(stream).read(n)`` is
    exactly ``n`` bytes."""

    def __init__(self, driver: RngDriver, *, owns_driver: bool = False):
        super().__init__(driver if owns_driver else None)
        self.driver = driver
        self.name = driver.transport.describe()
        self.mode = "rb"

    def readable(self) -> bool:
        """Always True."""
        self._check_open()
        return True

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` with what one request brings (at most :data:`ENTROPY_REQUEST`)."""
        self._check_open()
        view = memoryview(buffer).cast("B")
        if not view:
            return 0
        with _device_errors(f"{self.name}: entropy request"):
            data = self.driver.requestq.call([], [min(len(view), ENTROPY_REQUEST)])
        if not data:  # 5.4.6.1: the device MUST place one or more random bytes
            raise OSError(errno.EIO, f"{self.name}: the entropy device returned no bytes")
        view[:len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        """Always ``io.UnsupportedOperation``: the stream has no end; read a size."""
        raise io.UnsupportedOperation("an entropy stream never ends: read(n) a size")


class PortStream(_DeviceIO):
    """A console port as a byte stream, a pipe's semantics: ``readinto`` waits for at least one
    byte (up to ``timeout``, then ``TimeoutError``) and returns 0 at end of file (no host program
    attached, or the port unplugged); ``write`` queues all; ``flush`` waits until the device took
    it.  ``close`` closes the port (PORT_OPEN 0) when ``close_port``; ``owner``, a driver to
    remove then too."""

    def __init__(self, port: ConsolePort, *, close_port: bool = True, timeout: float | None = None,
                 owner: ConsoleDriver | None = None):
        super().__init__(owner)
        self.port = port
        self.name = port.name if port.name is not None else f"port{port.id}"
        self.mode = "rb+"
        self.timeout = timeout
        self._close_port = close_port
        self._closing = False

    def readable(self) -> bool:
        """Always True."""
        self._check_open()
        return True

    def writable(self) -> bool:
        """Always True."""
        self._check_open()
        return True

    def readinto(self, buffer) -> int:
        """What the port has (at least one byte, waiting for it); 0 at end of file."""
        self._check_open()
        view = memoryview(buffer).cast("B")
        if not view:
            return 0
        with _device_errors(f"port {self.name}: read"):
            data = self.port.read(len(view), self.timeout)
        view[:len(data)] = data
        return len(data)

    def write(self, buffer) -> int:
        """Queue all of ``buffer`` for the device."""
        self._check_open()
        with _device_errors(f"port {self.name}: write"):
            return self.port.write(buffer, self.timeout)

    def flush(self) -> None:
        """Wait until the device has taken every byte written (up to ``timeout``)."""
        super().flush()
        if not self._closing:
            with _device_errors(f"port {self.name}: flush"):
                self.port.drain(self.timeout)

    def close(self) -> None:
        """Close the port (without waiting for the device to take what is queued)."""
        self._closing = True
        super().close()

    def _release(self) -> None:
        try:
            if self._close_port:
                self.port.close()
        finally:
            super()._release()


def open_port(console: ConsoleDriver, name: str, *, timeout: float | None = 5.0,
              stream_timeout: float | None = None) -> PortStream:
    """Open the port named ``name`` (waiting up to ``timeout`` for the device to announce it) as
    a :class:`PortStream`; closing the stream closes the port."""
    return PortStream(console.open_port(name, timeout=timeout), timeout=stream_timeout)


# --- open() -------------------------------------------------------------------------------------

_DRIVERS: tuple[type[VirtioDriver], ...] = (BlkDriver, RngDriver, ConsoleDriver)


def _parse_mode(mode: str) -> tuple[bool, bool, bool]:
    """(reading, writing, text) of an ``open`` mode; a device is never created, truncated or
    appended to, so ``a`` and ``x`` are refused."""
    chars = set(mode)
    if (len(chars) != len(mode) or chars - set("rwb+t") or len(chars & {"r", "w"}) != 1
            or {"b", "t"} <= chars):
        raise ValueError(f"invalid mode {mode!r}: r, w, r+ or w+, with b or t")
    return "r" in chars or "+" in chars, "w" in chars or "+" in chars, "b" not in chars


def _raw(driver: VirtioDriver, reading: bool, writing: bool, port: str | None, owned: bool) -> _DeviceIO:
    mode = "r+" if reading and writing else "r" if reading else "w"
    if isinstance(driver, BlkDriver):
        return BlockFile(driver, mode, owns_driver=owned)
    if isinstance(driver, RngDriver):
        if writing:
            raise ValueError("an entropy device is read-only: open it with mode 'rb'")
        return EntropyStream(driver, owns_driver=owned)
    if isinstance(driver, ConsoleDriver):
        handle = driver.console if port is None else driver.open_port(port)
        return PortStream(handle, owner=driver if owned else None)
    raise ValueError(f"{type(driver).__name__}: no file-like access for this device class")


def open(source: DriverTransport | VirtioDriver, mode: str = "rb", buffering: int = -1,
         encoding: str | None = None, errors: str | None = None, newline: str | None = None, *,
         port: str | None = None):
    """Open a block, entropy or console device as the built-in ``open`` opens a file: ``mode``
    ``r``/``w``/``r+``/``w+`` with ``b`` or ``t``; ``buffering`` 0 gives the raw object, 1 line
    buffering (text), above 1 the buffer size.  ``source`` is a bound driver (left bound on close)
    or a transport (the matching driver is bound here and removed on close).  A console opens
    the port named ``port``, else the console port."""
    reading, writing, text = _parse_mode(mode)
    if text and buffering == 0:
        raise ValueError("can't have unbuffered text I/O")
    owned = isinstance(source, DriverTransport)
    if isinstance(source, DriverTransport):
        cls = next((d for d in _DRIVERS if d.matches(source.device_type)), None)
        if cls is None:
            raise ValueError(f"{source.describe()}: no file-like access for device type {source.device_type}")
        driver: VirtioDriver = cls.probe(source)
    else:
        driver = source
    try:
        raw = _raw(driver, reading, writing, port, owned)
    except BaseException:
        if owned:
            driver.remove()
        raise
    if buffering == 0:
        return raw
    size = buffering if buffering > 1 else io.DEFAULT_BUFFER_SIZE
    buffered: io.BufferedIOBase
    if reading and writing:
        buffered = io.BufferedRandom(raw, size) if raw.seekable() else io.BufferedRWPair(raw, raw, size)
    elif reading:
        buffered = io.BufferedReader(raw, size)
    else:
        buffered = io.BufferedWriter(raw, size)
    if not text:
        return buffered
    return io.TextIOWrapper(buffered, encoding, errors, newline, line_buffering=buffering == 1)


__all__ = ["BlockFile", "EntropyStream", "PortStream", "open", "open_port", "DEFAULT_DEPTH",
           "DEFAULT_MAX_REQUEST", "ENTROPY_REQUEST"]
