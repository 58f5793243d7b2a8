"""pyvirtio.files: devices as files over every transport of the matrix (test_transport_matrix's
columns: our devices over loopback, the PCI and MMIO models and vhost-user; QEMU's own devices
over qtest; qemu-storage-daemon over vhost-user).  A block file is checked against a plain
``io.FileIO`` over the same image (a fixed set of offsets and lengths on every column; random
operations with hypothesis on loopback), through ``shutil.copyfileobj`` and the buffered
wrappers, read-only; entropy reads exactly ``n``; a console port round-trips text through
``io.TextIOWrapper`` against a host program on the port's socket.

Where a device cannot exist on a column the test is skipped by its factory
(qemu-storage-daemon exports block devices only).  FLUSH counts, request splitting and device
errors are checked on our own device in this process (QEMU does not count them for us).
"""

from __future__ import annotations

import contextlib
import errno
import io
import random
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirtio import files
from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.console import ConsoleDevice, PortSpec
from pyvirtio.devices.console_endpoints import UnixListenEndpoint
from pyvirtio.devices.rng import RngDevice
from pyvirtio.drivers.blk import BlkDriver
from pyvirtio.drivers.console import ConsoleDriver
from pyvirtio.drivers.rng import RngDriver
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec.blk import BlkFeature, BlkReqType

from test_transport_matrix import TRANSPORTS, DeviceSpec, transport_name  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(120)
README = Path(__file__).resolve().parent.parent / "README.md"
SECTORS = 2048  # a 1 MiB image
SIZE = SECTORS * 512


def _fill(path: str, seed: int) -> bytes:
    data = random.Random(seed).randbytes(SIZE)
    with io.FileIO(path, "w") as f:
        f.write(data)
    return data


def _image(path: str) -> bytes:
    with io.FileIO(path, "r") as f:
        return f.readall()


@pytest.fixture
def open_device(transport_name, tmp_path):
    """``open_device(kind, read_only=False)`` -> (transport, spec) on this column; a blk image is
    filled with random bytes first."""
    stack = contextlib.ExitStack()

    def _open(kind: str, read_only: bool = False):
        spec = DeviceSpec(kind, read_only=read_only)
        if kind == "blk":
            spec.image, spec.sectors = str(tmp_path / "disk.img"), SECTORS
            _fill(spec.image, 1)
        if kind == "console":
            spec.port_path = str(tmp_path / "port.sock")
        return stack.enter_context(TRANSPORTS[transport_name](spec, tmp_path)), spec

    with stack:
        yield _open


# --- every column ------------------------------------------------------------------------------

#: (offset, length): aligned, unaligned, one byte, crossing a 128 KiB request, at and past the end.
READS = [(0, 512), (1, 1), (511, 2), (1000, 3000), (4095, 8194), (131000, 140000), (SIZE - 700, 4096),
         (SIZE - 1, 1), (SIZE, 10), (SIZE + 5000, 1)]
WRITES = [(3, 5), (510, 4), (4096, 4096), (7000, 70000), (130000, 140001), (SIZE - 3, 3)]


def test_block_file_reads_and_writes_as_fileio_sees_the_image(open_device):
    t, spec = open_device("blk")
    disk = BlkDriver.probe(t)
    with files.BlockFile(disk) as f, io.FileIO(spec.image, "r") as ref:
        assert f.readable() and f.writable() and f.seekable() and f.size == SIZE
        for offset, length in READS:
            ref.seek(offset)
            assert f.seek(offset) == offset
            assert f.read(length) == ref.read(length), (offset, length)
            assert f.tell() == ref.tell()
        for i, (offset, length) in enumerate(WRITES):
            before = _image(spec.image)
            data = bytes([i + 1]) * length
            f.seek(offset)
            assert f.write(data) == length and f.tell() == offset + length
            after = _image(spec.image)
            assert after == before[:offset] + data + before[offset + length:], (offset, length)
        assert f.seek(-10, io.SEEK_END) == SIZE - 10 and f.seek(4, io.SEEK_CUR) == SIZE - 6
        before = _image(spec.image)
        with pytest.raises(OSError) as err:
            f.write(b"x" * 7)  # passes the end: refused whole
        assert err.value.errno == errno.ENOSPC and "does not grow" in str(err.value)
        assert f.tell() == SIZE - 6 and _image(spec.image) == before
        f.seek(0)
        assert f.readall() == before
    disk.remove()


def test_copyfileobj_through_the_buffered_wrappers(open_device, tmp_path):
    t, spec = open_device("blk")
    disk = BlkDriver.probe(t)
    source = tmp_path / "source.bin"
    payload = random.Random(2).randbytes(300_001)  # not a whole number of sectors
    source.write_bytes(payload)
    original = _image(spec.image)
    with open(source, "rb") as src, io.BufferedRandom(files.BlockFile(disk), 16384) as dst:
        dst.seek(777)
        shutil.copyfileobj(src, dst)
        dst.flush()
        dst.raw.flush()  # FLUSH: the BufferedRandom's flush only empties its buffer
    expected = original[:777] + payload + original[777 + len(payload):]
    assert _image(spec.image) == expected
    out = io.BytesIO()
    with io.BufferedReader(files.BlockFile(disk, "rb")) as src:
        shutil.copyfileobj(src, out)
    assert out.getvalue() == expected
    disk.remove()


def test_read_only_device(open_device):
    t, spec = open_device("blk", read_only=True)
    disk = BlkDriver.probe(t)
    assert disk.has_feature(BlkFeature.RO)
    with files.BlockFile(disk) as f:
        assert f.readable() and not f.writable()
        with pytest.raises(OSError) as err:
            f.write(b"x")
        assert err.value.errno == errno.EROFS
        with pytest.raises(io.UnsupportedOperation):
            io.BufferedRandom(f)
        assert io.BufferedReader(f).read(1000) == _image(spec.image)[:1000]
    for mode in ("r+b", "wb"):
        with pytest.raises(OSError) as err:
            files.open(disk, mode)
        assert err.value.errno == errno.EROFS
    disk.remove()


def test_entropy_reads_exactly_n(open_device):
    t, _ = open_device("rng")
    rng = RngDriver.probe(t)
    with files.open(rng, "rb") as f:
        assert isinstance(f, io.BufferedReader)
        for n in (1, 100, 5000, 20000):
            data = f.read(n)
            assert len(data) == n
        assert len(set(data)) > 200
        with pytest.raises(io.UnsupportedOperation):
            f.read()  # no end
    raw = files.EntropyStream(rng)
    buf = bytearray(64)
    assert 1 <= raw.readinto(buf) <= 64 and not raw.writable() and not raw.seekable()
    raw.close()
    rng.remove()


def _recv_line(sock: socket.socket) -> bytes:
    out = b""
    while not out.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, f"the port's host side closed after {out!r}"
        out += chunk
    return out


def test_console_port_text_round_trip(open_device):
    t, spec = open_device("console")
    console = ConsoleDriver.probe(t)
    host = socket.socket(socket.AF_UNIX)
    host.settimeout(10)
    host.connect(spec.port_path)
    stream = files.open_port(console, spec.port_name)
    stream.port.wait_connected(10)
    with io.TextIOWrapper(io.BufferedRWPair(stream, stream), encoding="utf-8", newline="") as f:
        f.write("grüße vom Gast\n")
        f.flush()
        assert _recv_line(host).decode() == "grüße vom Gast\n"
        host.sendall("ünïcödé from the host\r\nzweite Zeile\n".encode())
        assert f.readline() == "ünïcödé from the host\r\n"
        assert f.readline() == "zweite Zeile\n"
        host.close()  # the host hangs up: end of file (PORT_OPEN 0)
        assert f.read() == ""
    assert stream.closed and stream.port.closed
    console.remove()


# --- our device, in this process ---------------------------------------------------------------


class CountingBlk(BlkDevice):
    """A block device that counts the requests it gets, by type, with their data lengths."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, int]] = []

    def request(self, queue_index, rtype, sector, chain):
        length = chain.writable_len - 1 if rtype == BlkReqType.IN else chain.readable_len - 16
        self.seen.append((rtype, length))
        return super().request(queue_index, rtype, sector, chain)

    def count(self, rtype: int) -> int:
        return sum(1 for r, _ in self.seen if r == rtype)


@contextlib.contextmanager
def loopback_disk(tmp_path, flush: bool = True, **options):
    path = str(tmp_path / "disk.img")
    _fill(path, 3)
    device = CountingBlk(path, **options)
    if not flush:
        device.device_features &= ~(1 << BlkFeature.FLUSH)
    t = LoopbackTransport(device, memory_size=4 << 20)
    try:
        yield device, BlkDriver.probe(t), path
    finally:
        t.close()
        device.close()


def test_flush_reaches_the_device_once_per_dirty_flush(tmp_path):
    with loopback_disk(tmp_path) as (device, disk, _):
        f = files.BlockFile(disk)
        f.flush()
        assert device.count(BlkReqType.FLUSH) == 0  # nothing written yet
        f.write(b"abc")
        f.flush()
        f.flush()
        assert device.count(BlkReqType.FLUSH) == 1
        with io.BufferedWriter(f) as w:
            w.write(b"def")
            w.flush()  # only hands the bytes to the raw file
            assert device.count(BlkReqType.FLUSH) == 1
        assert device.count(BlkReqType.FLUSH) == 2  # closing flushed
        assert disk.queues, "the driver was not the file's: it stays bound"


def test_without_the_flush_feature_flush_does_nothing(tmp_path):
    with loopback_disk(tmp_path, flush=False) as (device, disk, path):
        assert not disk.has_feature(BlkFeature.FLUSH)
        with files.BlockFile(disk) as f:
            f.write(b"written through")
            f.flush()
        assert device.count(BlkReqType.FLUSH) == 0
        assert _image(path)[:15] == b"written through"


def test_large_requests_are_split_by_size_max_and_max_request(tmp_path):
    with loopback_disk(tmp_path, size_max=4096) as (device, disk, path):
        f = files.BlockFile(disk)
        assert f.max_request == 4096
        assert f.read(100_000) == _image(path)[:100_000]
        reads = [n for r, n in device.seen if r == BlkReqType.IN]
        assert len(reads) == 25 and max(reads) == 4096
        device.seen.clear()
        f.seek(10)
        f.write(b"\1" * 10_000)  # 10..10010: edge blocks 0 and 19 read, 3 writes of <= 4096
        assert [r for r, _ in device.seen].count(BlkReqType.IN) == 2
        assert [n for r, n in device.seen if r == BlkReqType.OUT] == [4096, 4096, 2048]
        small = files.BlockFile(disk, max_request=1000, depth=1)
        assert small.max_request == 512 and small.read(2048) == _image(path)[:2048]


def test_device_errors_are_eio_with_the_status(tmp_path):
    with loopback_disk(tmp_path) as (device, disk, _):
        device.faults.add("ioerr:sectors=100-100")
        f = files.BlockFile(disk)
        f.seek(100 * 512 - 10)
        with pytest.raises(OSError) as err:
            f.read(4096)
        assert err.value.errno == errno.EIO and "IOERR" in str(err.value)
        device.faults.clear()
        device.faults.add("flusherr")
        f.write(b"x")
        with pytest.raises(OSError) as err:
            f.flush()
        assert err.value.errno == errno.EIO and "flush" in str(err.value)
        device.faults.clear()
        f.seek(0)
        assert len(f.read(8192)) == 8192  # the queue goes on


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("seek"), st.integers(-SIZE, 2 * SIZE), st.sampled_from([0, 1, 2])),
    st.tuples(st.just("read"), st.integers(-1, 70_000)),
    st.tuples(st.just("write"), st.integers(0, 70_000), st.integers(0, 255))), max_size=12))
def test_block_file_behaves_as_fileio(tmp_path, ops):
    """Random seeks, reads and writes on a BlockFile and on io.FileIO over a copy of the image
    give the same results; afterwards the image and the copy are equal."""
    copy = str(tmp_path / "copy.img")
    with loopback_disk(tmp_path) as (_, disk, path), files.BlockFile(disk) as f:
        shutil.copyfile(path, copy)
        with io.FileIO(copy, "r+") as ref:
            for op in ops:
                if op[0] == "seek":
                    target = (0, ref.tell(), SIZE)[op[2]] + op[1]
                    if target < 0:
                        with pytest.raises(OSError):
                            f.seek(op[1], op[2])
                        continue
                    assert f.seek(op[1], op[2]) == ref.seek(op[1], op[2])
                elif op[0] == "read":
                    assert f.read(op[1]) == ref.read(op[1])
                elif ref.tell() + op[1] > SIZE:  # a disk does not grow; a file would
                    with pytest.raises(OSError):
                        f.write(bytes([op[2]]) * op[1])
                else:
                    assert f.write(bytes([op[2]]) * op[1]) == ref.write(bytes([op[2]]) * op[1])
                assert f.tell() == ref.tell()
        assert _image(path) == _image(copy)


def test_open_modes_and_what_is_refused(tmp_path):
    path = str(tmp_path / "disk.img")
    _fill(path, 4)
    device = BlkDevice(path)
    t = LoopbackTransport(device, memory_size=4 << 20)
    try:
        for bad in ("a", "x", "rw", "rbt", "r++", "q", "wb+b"):
            with pytest.raises(ValueError):
                files.open(t, bad)
        with files.open(t, "r+b", buffering=0) as raw:  # a transport: the driver is its own
            assert isinstance(raw, files.BlockFile)
            with pytest.raises(io.UnsupportedOperation):
                raw.fileno()
            with pytest.raises(io.UnsupportedOperation):
                raw.truncate(0)
            with pytest.raises(ValueError):
                raw.seek(0, 3)
        assert device.status == 0  # closing removed the driver: the device was reset
        with files.open(t, "w+", encoding="latin-1") as text:
            text.write("hello\n")
            text.seek(0)
            assert text.readline() == "hello\n"
        with pytest.raises(ValueError):
            files.open(t, "t", buffering=0)
        with files.open(t, "wb") as w:
            assert not w.readable()
            with pytest.raises(io.UnsupportedOperation):
                w.read(1)
    finally:
        t.close()
        device.close()


def test_short_entropy_requests_still_give_exactly_n():
    device = RngDevice()
    device.faults.add("short:bytes=3")
    t = LoopbackTransport(device, memory_size=1 << 20)
    try:
        raw = files.EntropyStream(RngDriver.probe(t), owns_driver=True)
        assert len(raw.read(100)) == 3  # as a read(2) of /dev/hwrng
        with pytest.raises(ValueError):
            files.open(raw.driver, "wb")
        with io.BufferedReader(raw) as f:
            assert len(f.read(1000)) == 1000
        assert device.status == 0
    finally:
        t.close()


def test_open_a_console_port_by_name_read_timeout_and_close(tmp_path):
    spec = DeviceSpec("console", port_path=str(tmp_path / "port.sock"))
    with TRANSPORTS["loopback"](spec, tmp_path) as t:
        host = socket.socket(socket.AF_UNIX)
        host.connect(spec.port_path)
        with files.open(t, "r+", encoding="utf-8", port=spec.port_name,
                        buffering=1) as f:  # a transport: the console driver is bound here
            assert isinstance(f, io.TextIOWrapper) and f.line_buffering
            f.write("line buffered\n")  # no flush: the newline sends it
            assert _recv_line(host) == b"line buffered\n"
        port_stream = files.PortStream(ConsoleDriver.probe(t).open_port(spec.port_name), timeout=0.3)
        port_stream.port.wait_connected(10)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            port_stream.read(10)
        assert time.monotonic() - started >= 0.25
        host.sendall(b"xy")
        assert port_stream.read(10) in (b"x", b"xy")
        with pytest.raises(io.UnsupportedOperation):
            port_stream.fileno()
        assert not port_stream.seekable()
        port_stream.close()
        assert port_stream.port.closed
        host.close()


def test_the_readme_example_runs(tmp_path):
    """README, "Devices as files": its block runs against our devices over loopback (the names it
    leaves to the reader bound here; a host program echoes the port upper-cased)."""
    code = re.search(r"### Devices as files\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    path, sock = str(tmp_path / "disk.img"), str(tmp_path / "port.sock")
    _fill(path, 5)
    devices = [BlkDevice(path), RngDevice(),
               ConsoleDevice(None, [PortSpec(UnixListenEndpoint(sock), "org.example.pipe")])]
    transports = [LoopbackTransport(d, memory_size=4 << 20) for d in devices]
    try:
        host = socket.socket(socket.AF_UNIX)
        host.connect(sock)
        names = {"disk": BlkDriver.probe(transports[0]), "rng_transport": transports[1],
                 "console": ConsoleDriver.probe(transports[2])}
        echo = threading.Thread(target=lambda: host.sendall(_recv_line(host).upper()), daemon=True)
        echo.start()
        exec(compile(code, "README.md", "exec"), names)
        assert len(names["key"]) == 32 and names["reply"] == "HELLO\n"
        assert _image(path)[1000:1022] == b"any offset, any length"
        host.close()
    finally:
        for t, d in zip(transports, devices):
            t.close()
            d.close()
