"""The virtio-fs driver and its path layer against real back-ends: one test body per check, run
against QEMU's C virtiofsd (the reference, over our vhost-user front-end) and against
pyvirtio's own device (in-process over loopback, over our vhost-user back-end, and on our PCI
and MMIO models), and against QEMU's own vhost-user-fs-pci over qtest (QEMU's PCI function and config
space; virtiofsd serves the rings).

virtiofsd runs here as root in a container with its defaults (``-o source=DIR``, sandbox
``namespace``: it forks into new mount/pid/net namespaces and pivot_roots into the share); no
``--sandbox``/``-o`` option is needed.  ``-o xattr`` is added: xattrs are off by default.

Every check compares with what the host sees in the shared directory (os.lstat, os.listdir,
the bytes on disk) and, where the back-ends could differ, asserts what virtiofsd does, so our
device must do the same.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat

import pytest

from pyvirtio.bench.peers import start_virtiofsd, virtiofsd_path
from pyvirtio.drivers.fs import FsDriver, FuseError
from pyvirtio.drivers.fs_client import FsClient
from pyvirtio.spec import fuse as F
from pyvirtio.spec.ids import DeviceType
from pyvirtio.testing.env import require

MiB = 1 << 20
MEMORY = 16 * MiB


@contextlib.contextmanager
def virtiofsd(share, tmp_path):
    """QEMU's virtiofsd on ``share`` (xattrs on: they are off by default), our front-end."""
    from pyvirtio.vhost_user.frontend.transport import VhostUserTransport
    require(virtiofsd_path() is not None, "virtiofsd", "not installed (qemu-system-common)")
    sock = str(tmp_path / "virtiofsd.sock")
    with start_virtiofsd(sock, str(share), options=["xattr"]) as peer:
        t = VhostUserTransport(sock, device_type=DeviceType.FS, memory_size=MEMORY)
        try:
            yield t
        finally:
            t.close()
        assert peer.alive or peer.process.returncode == 0, peer.log()[-2000:]


def _device(share):
    from pyvirtio.devices.fs import FsDevice
    return FsDevice(str(share), tag="pyvirtio-test", xattr=True, num_request_queues=2)


@contextlib.contextmanager
def pyvirtio_loopback(share, tmp_path):
    """Our device in-process, the driver over loopback (both sides in this process)."""
    from pyvirtio.loopback import LoopbackTransport
    device = _device(share)
    t = LoopbackTransport(device, memory_size=MEMORY)
    try:
        yield t
    finally:
        t.close()
        device.close()


@contextlib.contextmanager
def pyvirtio_vhost_user(share, tmp_path):
    """Our device behind our vhost-user back-end (a thread here), our front-end."""
    from pyvirtio.bench.peers import InProcessBackend
    from pyvirtio.vhost_user.frontend.transport import VhostUserTransport
    sock = str(tmp_path / "fs.sock")
    device = _device(share)
    with InProcessBackend(device, sock):
        t = VhostUserTransport(sock, device_type=DeviceType.FS, memory_size=MEMORY)
        try:
            yield t
        finally:
            t.close()
    device.close()


@contextlib.contextmanager
def pyvirtio_pci_model(share, tmp_path):
    """Our device on pyvirtio's PCI model (found by a bus scan), the driver over PCI."""
    from pyvirtio.pci import scan_pci
    from pyvirtio.platform.machine import InProcessMachine
    device = _device(share)
    with InProcessMachine(ram_size=MEMORY) as machine:
        machine.add_pci(device)
        (t,) = scan_pci(machine).transports
        yield t
    device.close()


@contextlib.contextmanager
def pyvirtio_mmio_model(share, tmp_path):
    """Our device behind pyvirtio's virtio-mmio window, found from the kernel command line."""
    from pyvirtio.mmio import discover_mmio, parse_kernel_cmdline
    from pyvirtio.platform.machine import InProcessMachine
    device = _device(share)
    with InProcessMachine(ram_size=MEMORY) as machine:
        machine.add_mmio(device)
        (t,) = discover_mmio(machine, parse_kernel_cmdline(machine.kernel_cmdline())).transports
        yield t
    device.close()


@contextlib.contextmanager
def qemu_virtiofsd(share, tmp_path):
    """QEMU's own vhost-user-fs-pci (its virtio-pci function and config space: the tag and
    the request-queue count QEMU holds) over qtest, its rings served by virtiofsd."""
    from pyvirtio.qtest import QemuMachine, qemu_available
    require(qemu_available(), "qemu-system-x86_64")
    require(virtiofsd_path() is not None, "virtiofsd", "not installed (qemu-system-common)")
    sock = str(tmp_path / "virtiofsd.sock")
    with start_virtiofsd(sock, str(share), options=["xattr"]):
        with QemuMachine(["-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa",
                          "node,memdev=mem", "-chardev", f"socket,id=fs,path={sock}",
                          "-device", "vhost-user-fs-pci,chardev=fs,tag=qemu-tag"], memory="256M") as qemu:
            (t,) = qemu.discover().transports
            yield t


BACKENDS = {"virtiofsd": virtiofsd, "pyvirtio-loopback": pyvirtio_loopback,
            "pyvirtio-vhost-user": pyvirtio_vhost_user, "pyvirtio-pci-model": pyvirtio_pci_model,
            "pyvirtio-mmio-model": pyvirtio_mmio_model, "qemu-pci-virtiofsd": qemu_virtiofsd}


@pytest.fixture(params=sorted(BACKENDS))
def share(request, tmp_path):
    """(client, host directory): a shared directory with a few host files, a probed driver."""
    yield from open_share(BACKENDS[request.param], tmp_path)


def open_share(backend, tmp_path):
    """The ``share`` fixture's body for any back-end factory (tests/test_virtio_msg_fs_suite.py
    uses it with the virtio-msg ones)."""
    root = tmp_path / "share"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello\n")
    (root / "sub").mkdir()
    (root / "sub" / "inner.bin").write_bytes(bytes(range(256)) * 40)
    os.symlink("/etc/passwd", root / "escape")
    (tmp_path / "outside.txt").write_text("outside the share\n")
    with backend(root, tmp_path) as transport:
        fs = FsDriver.probe(transport)
        try:
            yield FsClient(fs), root
        finally:
            fs.drain_forgets()
            fs.remove()


def test_init_negotiates_protocol_7(share, request):
    client, _ = share
    out = client.fs.init_out
    assert out.major == 7 and 31 <= out.minor <= F.FUSE_KERNEL_MINOR_VERSION
    assert client.fs.max_write >= 4096 and client.fs.max_read >= 4096
    backend = request.node.callspec.params["share"]
    if backend == "virtiofsd":  # no config space over vhost-user
        assert (client.fs.tag, len(client.fs.requestqs)) == ("", 1)
    elif backend == "qemu-pci-virtiofsd":  # QEMU's config space
        assert (client.fs.tag, len(client.fs.requestqs)) == ("qemu-tag", 1)
    else:
        assert (client.fs.tag, len(client.fs.requestqs)) == ("pyvirtio-test", 2)


def test_lists_reads_and_writes(share):
    client, root = share
    assert client.listdir() == sorted(os.listdir(root))
    assert client.listdir("sub") == ["inner.bin"]
    assert client.read_file("hello.txt") == b"hello\n"
    assert client.read_file("sub/inner.bin") == (root / "sub" / "inner.bin").read_bytes()
    big = os.urandom(3 * MiB + 123)  # many READs/WRITEs in flight, a short last piece
    assert client.write_file("sub/big.bin", big) == len(big)
    assert hashlib.sha256((root / "sub" / "big.bin").read_bytes()).digest() == hashlib.sha256(big).digest()
    assert client.read_file("sub/big.bin") == big
    assert client.write_file("empty", b"") == 0 and client.read_file("empty") == b""
    client.write_file("hello.txt", b"short")  # O_TRUNC
    assert (root / "hello.txt").read_bytes() == b"short"
    client.append_file("hello.txt", b"+more")
    assert client.read_file("hello.txt") == b"short+more"
    assert client.listdir() == sorted(os.listdir(root))
    host_walk = [("" if d == str(root) else os.path.relpath(d, root), sorted(ds), sorted(fs))
                 for d, ds, fs in os.walk(root)]
    assert list(client.walk()) == host_walk


def test_host_changes_are_seen(share):
    client, root = share
    (root / "later.txt").write_bytes(b"from the host")
    assert client.read_file("later.txt") == b"from the host"
    (root / "later.txt").write_bytes(b"changed")
    assert client.read_file("later.txt") == b"changed"
    os.unlink(root / "later.txt")
    assert not client.exists("later.txt")


def _same_stat(attr: F.FuseAttr, st: os.stat_result) -> None:
    assert (attr.ino, attr.mode, attr.nlink, attr.size, attr.uid, attr.gid) == \
        (st.st_ino, st.st_mode, st.st_nlink, st.st_size, st.st_uid, st.st_gid)
    assert attr.mtime * 10**9 + attr.mtimensec == st.st_mtime_ns


def test_metadata_matches_the_host(share):
    client, root = share
    for path in ("", "hello.txt", "sub", "sub/inner.bin", "escape"):
        _same_stat(client.stat(path), os.lstat(root / path))
    client.makedirs("a/b/c")
    client.write_file("a/masked", b"", mode=0o666)  # the umask (022) applied, as the kernel does
    assert stat.S_IMODE(os.lstat(root / "a" / "masked").st_mode) == 0o644
    client.unlink("a/masked")
    assert (root / "a" / "b" / "c").is_dir()
    client.write_file("a/f", b"0123456789")
    client.rename("a/f", "a/b/g")
    assert not (root / "a" / "f").exists() and (root / "a" / "b" / "g").read_bytes() == b"0123456789"
    client.rename("a/b", "moved")  # a directory
    assert sorted(os.listdir(root / "moved")) == ["c", "g"]
    client.link("moved/g", "hard")
    assert os.lstat(root / "hard").st_ino == os.lstat(root / "moved" / "g").st_ino
    assert client.stat("hard").nlink == 2
    client.symlink("moved/g", "soft")
    assert os.readlink(root / "soft") == "moved/g" and client.readlink("soft") == "moved/g"
    client.truncate("hard", 4)
    assert (root / "moved" / "g").read_bytes() == b"0123"
    client.chmod("hard", 0o600)
    assert stat.S_IMODE(os.lstat(root / "hard").st_mode) == 0o600
    client.utime("hard", 1_000_000_000 * 10**9 + 5, 1_200_000_000 * 10**9 + 7)
    st = os.lstat(root / "hard")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000 * 10**9 + 5, 1_200_000_000 * 10**9 + 7)
    _same_stat(client.stat("hard"), st)
    client.unlink("hard")
    client.remove("moved")
    client.rmdir("a")
    client.unlink("soft")
    assert sorted(os.listdir(root)) == ["escape", "hello.txt", "sub"]
    client.fsync("hello.txt")
    vfs, host = client.statvfs(), os.statvfs(root)
    assert (vfs.bsize, vfs.namelen, vfs.blocks) == (host.f_bsize, host.f_namemax, host.f_blocks)


def test_errors_are_typed_with_errno(share):
    client, root = share
    with pytest.raises(FileNotFoundError) as info:
        client.read_file("missing")
    assert isinstance(info.value, FuseError) and info.value.errno == errno.ENOENT
    with pytest.raises(FileExistsError):
        client.mkdir("sub")
    with pytest.raises(FuseError) as info:
        client.rmdir("sub")  # not empty
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(IsADirectoryError):
        client.unlink("sub")
    with pytest.raises(NotADirectoryError):
        client.rmdir("hello.txt")
    with pytest.raises(FileExistsError):
        client.rename("hello.txt", "sub/inner.bin", flags=F.RENAME_NOREPLACE)
    assert sorted(os.listdir(root)) == ["escape", "hello.txt", "sub"]


def test_no_way_out_of_the_share(share):
    """``..`` of the root is the root; a name with a slash is refused; a symlink is text the
    daemon never follows; nothing outside the share is touched."""
    client, root = share
    fs = client.fs
    root_ino = fs.getattr(F.FUSE_ROOT_ID).ino
    assert root_ino == os.stat(root).st_ino
    for name in ("..", "."):
        entry = fs.lookup(F.FUSE_ROOT_ID, name)
        assert entry.attr.ino == root_ino, name
        fs.forget(entry.nodeid, 1)
    assert client.stat("../../..").ino == root_ino
    assert client.listdir("..") == client.listdir()
    for name in ("../outside.txt", "sub/../hello.txt", "/etc/passwd"):
        with pytest.raises(FuseError) as info:
            fs.lookup(F.FUSE_ROOT_ID, name)
        assert info.value.errno in (errno.EINVAL, errno.ENOENT), name
    for make in (lambda: fs.mkdir(F.FUSE_ROOT_ID, "../x"), lambda: fs.mkdir(F.FUSE_ROOT_ID, ".."),
                 lambda: fs.create(F.FUSE_ROOT_ID, "../x"), lambda: fs.symlink(F.FUSE_ROOT_ID, "a/b", "t"),
                 lambda: fs.unlink(F.FUSE_ROOT_ID, "../outside.txt")):
        with pytest.raises(FuseError) as info:
            make()
        assert info.value.errno == errno.EINVAL
    assert client.readlink("escape") == "/etc/passwd"
    with pytest.raises(NotADirectoryError):  # a lookup through a symlink does not follow it
        client.stat("escape/x")
    assert (root.parent / "outside.txt").read_text() == "outside the share\n"
    assert not (root.parent / "x").exists()


def test_many_requests_in_flight(share):
    client, root = share
    fs = client.fs
    entry = fs.lookup(F.FUSE_ROOT_ID, "sub")
    inner = fs.lookup(entry.nodeid, "inner.bin")
    fh = fs.open(inner.nodeid).fh
    calls = [fs.submit_read(inner.nodeid, fh, i * 100, 100) for i in range(64)]
    calls += [fs.submit(F.FuseOpcode.GETATTR, inner.nodeid, [F.FUSE_GETATTR_IN.pack(0, 0, 0)],
                        F.FUSE_ATTR_OUT_SIZE) for _ in range(32)]
    data = (root / "sub" / "inner.bin").read_bytes()
    replies = [fs.wait(c) for c in reversed(calls)][::-1]  # collected in another order
    assert replies[:64] == [data[i * 100:i * 100 + 100] for i in range(64)]
    fs.release(inner.nodeid, fh)
    fs.batch_forget([(inner.nodeid, 1), (entry.nodeid, 1)])


def test_readdir_plain_and_plus_agree(share):
    client, root = share
    for i in range(300):  # more than one READDIR reply's worth
        (root / "sub" / f"file-{i:03d}").write_bytes(b"")
    plain = client.scandir("sub", plus=False)
    assert all(d.entry is None for d in plain)
    names = sorted(os.listdir(root / "sub"))
    assert sorted(d.name for d in plain) == names
    if client.fs.has_init_flag(F.FuseInitFlag.DO_READDIRPLUS):
        plus = client.scandir("sub", plus=True)
        assert sorted(d.name for d in plus) == names
        for d in plus:
            assert d.entry.attr.ino == os.lstat(root / "sub" / d.name).st_ino


def test_forget_storm_then_still_served(share):
    client, _ = share
    fs = client.fs
    entries = [fs.lookup(F.FUSE_ROOT_ID, "hello.txt") for _ in range(200)]
    node = entries[0].nodeid
    assert {e.nodeid for e in entries} == {node}
    for _ in range(100):
        fs.forget(node, 1)
    fs.batch_forget([(node, 100)])
    fs.drain_forgets()
    assert client.read_file("hello.txt") == b"hello\n"


def test_xattrs(share):
    client, root = share
    client.setxattr("hello.txt", "user.pyvirtio", b"value-1")
    assert os.getxattr(root / "hello.txt", "user.pyvirtio") == b"value-1"
    assert client.getxattr("hello.txt", "user.pyvirtio") == b"value-1"
    assert "user.pyvirtio" in client.listxattr("hello.txt")
    client.removexattr("hello.txt", "user.pyvirtio")
    assert "user.pyvirtio" not in os.listxattr(root / "hello.txt")
    with pytest.raises(FuseError) as info:
        client.getxattr("hello.txt", "user.pyvirtio")
    assert info.value.errno == errno.ENODATA


def test_path_layer_forgets_every_lookup(tmp_path):
    """Every lookup the path layer makes (LOOKUP, CREATE, MKDIR, READDIRPLUS entries ...) is
    forgotten: afterwards our device holds the root inode only."""
    import time
    from pyvirtio.loopback import LoopbackTransport
    root = tmp_path / "share"
    (root / "d").mkdir(parents=True)
    for i in range(20):
        (root / "d" / f"f{i}").write_bytes(b"x" * i)
    device = _device(root)
    t = LoopbackTransport(device, memory_size=MEMORY)
    try:
        fs = FsDriver.probe(t)
        client = FsClient(fs)
        assert len(client.scandir("d", plus=True)) == 20
        client.write_file("d/new", b"new")
        client.read_file("d/f7")
        client.makedirs("a/b")
        client.rename("d/new", "a/b/moved")
        client.link("a/b/moved", "hard")
        client.symlink("hard", "soft")
        client.stat("soft")
        client.remove("a")
        fs.drain_forgets()
        deadline = time.monotonic() + 5
        while len(device.backend.inodes) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(device.backend.inodes) == 1
        fs.remove()
    finally:
        t.close()
        device.close()


def test_less_common_requests(share, request):
    """MKNOD (a FIFO), ACCESS, FLUSH, FSYNC, GETATTR by handle, FALLOCATE, LSEEK (SEEK_DATA/
    SEEK_HOLE), COPY_FILE_RANGE, RENAME2 EXCHANGE, FSYNCDIR: as on the host."""
    client, root = share
    fs = client.fs
    fifo = fs.mknod(F.FUSE_ROOT_ID, "fifo", stat.S_IFIFO | 0o640)
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode) and stat.S_ISFIFO(fifo.attr.mode)
    if "virtiofsd" in request.node.callspec.params["share"]:
        with pytest.raises(FuseError) as info:  # virtiofsd leaves permission checks to the guest
            fs.access(fifo.nodeid, os.R_OK)
        assert info.value.errno == errno.ENOSYS
    else:
        fs.access(fifo.nodeid, os.R_OK | os.W_OK)
    entry, opened = fs.create(F.FUSE_ROOT_ID, "sparse", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    node, fh = entry.nodeid, opened.fh
    fs.fallocate(node, fh, 0, 1 << 20)
    assert fs.getattr(node, fh).size == os.stat(root / "sparse").st_size == 1 << 20
    fs.write(node, fh, 0, b"A" * 4096)
    fs.write(node, fh, 8 << 20, b"Z")
    assert fs.lseek(node, fh, 0, os.SEEK_DATA) == 0
    host = os.open(root / "sparse", os.O_RDONLY)
    try:
        assert fs.lseek(node, fh, 0, os.SEEK_HOLE) == os.lseek(host, 0, os.SEEK_HOLE)
    finally:
        os.close(host)
    fs.flush(node, fh)
    fs.fsync(node, fh, datasync=True)
    copy, copy_opened = fs.create(F.FUSE_ROOT_ID, "copy", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    copied = fs.copy_file_range(node, fh, 0, copy.nodeid, copy_opened.fh, 100, 4096)
    assert copied == 4096 and (root / "copy").read_bytes() == bytes(100) + b"A" * 4096
    fs.release(copy.nodeid, copy_opened.fh)
    fs.release(node, fh)
    fs.rename(F.FUSE_ROOT_ID, "copy", F.FUSE_ROOT_ID, "hello.txt", F.RENAME_EXCHANGE)
    assert (root / "copy").read_bytes() == b"hello\n"
    dh = fs.opendir(F.FUSE_ROOT_ID).fh
    fs.fsyncdir(F.FUSE_ROOT_ID, dh)
    fs.releasedir(F.FUSE_ROOT_ID, dh)
    fs.batch_forget([(fifo.nodeid, 1), (node, 1), (copy.nodeid, 1)])
