"""Image safety for ``pyvirtio serve blk``: open_image's refusals, its O_DIRECT alignment, and its
QEMU-compatible OFD locks — in one process, then against real qemu-storage-daemon processes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time

import pytest

from pyvirtio.devices import blk_image
from pyvirtio.devices.blk_image import ImageError, held_lock_bytes, open_image
from pyvirtio.errors import UsageError
from pyvirtio.testing.env import require

MiB = 1 << 20
TIMEOUT = 20  # seconds, for every subprocess


@pytest.fixture
def disk_dir():
    """A directory on a disk-backed file system (O_DIRECT needs one; /tmp may be tmpfs)."""
    path = tempfile.mkdtemp(prefix="pyvirtio-blk-image-", dir="/var/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_image(directory, name="disk.img", size=MiB, head=b""):
    path = os.path.join(str(directory), name)
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(head)
    return path


def other_holds(path):
    """The QEMU lock bytes that descriptions other than a fresh one hold on ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return held_lock_bytes(fd)
    finally:
        os.close(fd)


def lock_bytes_like_qemu(path, offsets):
    """Hold shared OFD locks on ``offsets`` as a QEMU process would; returns the fd to close."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    for off in offsets:
        fcntl.fcntl(fd, blk_image.F_OFD_SETLK, struct.pack("@hhqqi", fcntl.F_RDLCK, 0, off, 1, 0))
    return fd


# --- opening ------------------------------------------------------------------------------------


def test_writable_image_takes_what_qemus_virtio_blk_takes(tmp_path):
    path = make_image(tmp_path)
    img = open_image(path, read_only=False)
    try:
        assert (img.path, img.size, img.read_only, img.direct, img.align) == (path, MiB, False,
                                                                                False, 1)
        assert fcntl.fcntl(img.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert os.pwrite(img.fd, b"x", 0) == 1
        assert other_holds(path) == [100, 101, 201]  # perm read+write, write not shared
    finally:
        img.close()
    assert img.fd == -1 and other_holds(path) == []
    img.close()  # idempotent


def test_read_only_image_shares_read_but_not_write(tmp_path):
    path = make_image(tmp_path)
    with open_image(path, read_only=True) as img:
        assert other_holds(path) == [100, 201]
        with pytest.raises(OSError):
            os.pwrite(img.fd, b"x", 0)
    assert other_holds(path) == []


def test_image_error_is_a_usage_error_naming_the_image(tmp_path):
    with pytest.raises(ImageError) as info:
        open_image(str(tmp_path / "missing.img"), read_only=True)
    assert isinstance(info.value, UsageError)
    assert info.value.path == str(tmp_path / "missing.img")
    assert str(info.value).startswith(f"{tmp_path}/missing.img: cannot open read-only: ")
    assert "\n" not in str(info.value)


# --- checks -------------------------------------------------------------------------------------


def test_empty_image_is_refused(tmp_path):
    with pytest.raises(ImageError, match=r"disk.img: is empty \(0 bytes\)$"):
        open_image(make_image(tmp_path, size=0), read_only=True)


def test_size_not_a_multiple_of_512_is_refused(tmp_path):
    with pytest.raises(ImageError, match=r"disk.img: size 1000 bytes is not a multiple of 512$"):
        open_image(make_image(tmp_path, size=1000), read_only=True)


def test_refusal_releases_the_locks(tmp_path):
    path = make_image(tmp_path, size=1000)
    with pytest.raises(ImageError):
        open_image(path, read_only=False)
    assert other_holds(path) == []


@pytest.mark.parametrize("head,name", [
    (b"QFI\xfb\0\0\0\3", "qcow2"),
    (b"KDMV\1\0\0\0", "vmdk"),
    (b"# Disk DescriptorFile\n", "vmdk"),
    (b"<<< Oracle VM VirtualBox Disk Image >>>\n".ljust(64, b"\0") + struct.pack("<I", 0xBEDA107F),
     "vdi"),
    (b"vhdxfile", "vhdx"),
    (b"conectix", "vpc"),
    (b"QED\0", "qed"),
    (b"LUKS\xba\xbe\0\2", "LUKS"),
])
def test_known_format_magic_is_refused_unless_raw_is_said(tmp_path, head, name):
    path = make_image(tmp_path, head=head)
    with pytest.raises(ImageError) as info:
        open_image(path, read_only=True)
    assert str(info.value) == (f"{path}: looks like a {name}{' (VHD)' if name == 'vpc' else ''} "
                               "image; pyvirtio serves raw images only (pass --format=raw to "
                               "serve it as raw anyway)")
    with open_image(path, read_only=True, image_format="raw") as img:
        assert img.size == MiB


def test_a_raw_image_with_data_is_accepted(tmp_path):
    path = make_image(tmp_path, head=b"\xeb\x63\x90" + bytes(509) + b"QFI\xfb")  # magic not at 0
    with open_image(path, read_only=True) as img:
        assert img.size == MiB


def test_other_formats_are_refused(tmp_path):
    with pytest.raises(ImageError, match="format 'qcow2' is not supported; pyvirtio serves raw"):
        open_image(make_image(tmp_path), read_only=True, image_format="qcow2")


def test_neither_file_nor_block_device_is_refused():
    with pytest.raises(ImageError, match="^/dev/null: is neither a regular file nor a block dev"):
        open_image("/dev/null", read_only=True)


@pytest.fixture
def loop_device(disk_dir):
    """A 4 MiB loop block device (root and losetup needed; skipped without them)."""
    losetup = shutil.which("losetup")
    if os.geteuid() != 0 or losetup is None:
        pytest.skip("a loop device needs root and losetup")
    backing = make_image(disk_dir, size=4 * MiB)
    r = subprocess.run([losetup, "--find", "--show", backing], capture_output=True, text=True,
                       timeout=TIMEOUT)
    if r.returncode != 0:
        pytest.skip(f"losetup: {r.stderr.strip()}")
    dev = r.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run([losetup, "-d", dev], timeout=TIMEOUT)


def test_block_device_is_sized_by_lseek_and_locked(loop_device):
    assert os.stat(loop_device).st_size == 0  # which is why the size comes from lseek
    with open_image(loop_device, read_only=False) as img:
        assert img.size == 4 * MiB and other_holds(loop_device) == [100, 101, 201]
    with open_image(loop_device, read_only=True, direct=True) as img:
        assert img.align in (512, 1024, 2048, 4096)  # BLKSSZGET


# --- O_DIRECT -----------------------------------------------------------------------------------


def test_direct_on_a_disk_file_system_probes_a_working_alignment(disk_dir):
    path = make_image(disk_dir, head=b"hello")
    with open_image(path, read_only=False, direct=True) as img:
        assert img.direct and img.align in (512, 1024, 2048, 4096)
        assert os.get_blocking(img.fd) and fcntl.fcntl(img.fd, fcntl.F_GETFL) & os.O_DIRECT
        assert blk_image.read_aligned(img.fd, 0, img.align)[:5] == b"hello"
        with mmap.mmap(-1, 8192) as buf:  # a misaligned offset is what O_DIRECT refuses
            with pytest.raises(OSError) as info:
                os.preadv(img.fd, [memoryview(buf)[:img.align]], 1)
            assert info.value.errno == errno.EINVAL


def test_alignment_falls_back_to_4096_when_every_probe_is_refused(disk_dir, monkeypatch):
    path = make_image(disk_dir)
    monkeypatch.setattr(blk_image, "_read_ok", lambda fd, buf: False)
    with open_image(path, read_only=True, direct=True) as img:
        assert img.align == 4096


def test_direct_on_tmpfs_is_refused_if_the_kernel_refuses():
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    path = make_image("/dev/shm", name=f"pyvirtio-blk-image-{os.getpid()}.img")
    try:
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
        except OSError:
            pass
        else:
            pytest.skip("this kernel's tmpfs accepts O_DIRECT (Linux >= 6.6)")
        with pytest.raises(ImageError) as info:
            open_image(path, read_only=False, direct=True)
        assert str(info.value).startswith(f"{path}: its file system refuses O_DIRECT (--direct)")
    finally:
        os.unlink(path)


def test_a_file_system_that_refuses_o_direct_gets_one_line(tmp_path, monkeypatch):
    real_open = os.open

    def no_direct(path, flags, *a):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_open(path, flags, *a)

    path = make_image(tmp_path)
    monkeypatch.setattr(blk_image.os, "open", no_direct)
    with pytest.raises(ImageError) as info:
        open_image(path, read_only=False, direct=True)
    assert str(info.value) == (f"{path}: its file system refuses O_DIRECT (--direct); put the "
                               "image on a disk-backed file system (not tmpfs) or drop --direct")


# --- locks within one process (OFD locks belong to open file descriptions, not processes) -------


def test_two_writers_conflict_in_one_process(tmp_path):
    path = make_image(tmp_path)
    with open_image(path, read_only=False):
        with pytest.raises(ImageError) as info:
            open_image(path, read_only=False)
        assert str(info.value) == (f'{path}: Failed to get "write" lock: another process (QEMU, '
                                   "qemu-storage-daemon or pyvirtio) is using it")
        assert other_holds(path) == [100, 101, 201]  # the loser left nothing behind
    with open_image(path, read_only=False):  # released on close
        pass


def test_reader_and_writer_exclude_each_other(tmp_path):
    path = make_image(tmp_path)
    with open_image(path, read_only=True):
        with pytest.raises(ImageError, match='Failed to get "write" lock'):
            open_image(path, read_only=False)
    with open_image(path, read_only=False):
        with pytest.raises(ImageError, match='Failed to get shared "write" lock'):
            open_image(path, read_only=True)


def test_readers_coexist(tmp_path):
    path = make_image(tmp_path)
    with open_image(path, read_only=True), open_image(path, read_only=True):
        assert other_holds(path) == [100, 201]


def test_locking_off_neither_takes_nor_checks(tmp_path):
    path = make_image(tmp_path)
    with open_image(path, read_only=False):
        with open_image(path, read_only=False, lock=False) as img:
            assert not img.locked
    with open_image(path, read_only=False, lock=False):
        assert other_holds(path) == []


def test_a_qsd_style_writer_blocks_us_and_a_qsd_style_reader_does_not(tmp_path):
    """qemu-storage-daemon's export holds 100 [+ 101] and shares everything."""
    path = make_image(tmp_path)
    fd = lock_bytes_like_qemu(path, [100, 101])
    try:
        with pytest.raises(ImageError, match='Failed to get shared "write" lock'):
            open_image(path, read_only=False)
        with pytest.raises(ImageError, match='Failed to get shared "write" lock'):
            open_image(path, read_only=True)
    finally:
        os.close(fd)
    fd = lock_bytes_like_qemu(path, [100])
    try:
        with open_image(path, read_only=False):
            pass
    finally:
        os.close(fd)


def test_a_file_system_without_ofd_locks_says_how_to_go_on(tmp_path, monkeypatch):
    def no_locks(fd, cmd, arg=0):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    path = make_image(tmp_path)
    monkeypatch.setattr(blk_image.fcntl, "fcntl", no_locks)
    with pytest.raises(ImageError, match=r"cannot lock the image \(.*\); pass --locking=off"):
        open_image(path, read_only=False)


# --- the program, against itself and qemu-storage-daemon ----------------------------------------

QSD = "qemu-storage-daemon"


def serve_argv(sock, img, *flags):
    return [sys.executable, "-m", "pyvirtio.cli", "serve", "blk", f"--socket-path={sock}",
            f"--blk-file={img}", *flags]


def run_serve(sock, img, *flags):
    return subprocess.run(serve_argv(sock, img, *flags), capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def one_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@contextlib.contextmanager
def running(argv, sock):
    """A back-end that listens on ``sock``; always ended (SIGTERM, then SIGKILL) and reaped."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (os.path.exists(sock) and stat.S_ISSOCK(os.stat(sock).st_mode)):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = proc.communicate(timeout=TIMEOUT)[0]
                raise AssertionError(f"{argv[0]} did not listen (exit {proc.returncode}): {out}")
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.communicate(timeout=TIMEOUT)


def qsd_argv(sock, img, writable):
    return [QSD, "--blockdev", f"driver=file,node-name=f0,filename={img}",
            "--export", f"type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path={sock},"
                        f"writable={'on' if writable else 'off'}"]


def run_qsd(sock, img, writable):
    return subprocess.run(qsd_argv(sock, img, writable), capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)


@pytest.fixture
def qsd():
    require(shutil.which(QSD) is not None, QSD)


def test_second_writable_serve_exits_with_one_line(tmp_path):
    img = make_image(tmp_path)
    with running(serve_argv(tmp_path / "a.sock", img), str(tmp_path / "a.sock")):
        r = run_serve(tmp_path / "b.sock", img)
        assert r.returncode == 1
        assert one_line(r) == (f'pyvirtio serve: error: --blk-file={img}: Failed to get "write" '
                               "lock: another process (QEMU, qemu-storage-daemon or pyvirtio) is "
                               "using it")
        assert not os.path.exists(tmp_path / "b.sock")


def test_serve_refuses_an_image_qsd_writes(qsd, tmp_path):
    img = make_image(tmp_path)
    with running(qsd_argv(tmp_path / "q.sock", img, True), str(tmp_path / "q.sock")):
        for flags in ((), ("--read-only",)):
            r = run_serve(tmp_path / "p.sock", img, *flags)
            assert r.returncode == 1 and 'Failed to get shared "write" lock' in one_line(r)
        p_sock = str(tmp_path / "p.sock")
        with running(serve_argv(p_sock, img, "--locking=off"), p_sock):
            pass  # QEMU's locking=off: the caller takes the risk


def test_qsd_refuses_an_image_serve_holds(qsd, tmp_path):
    img = make_image(tmp_path)
    for i, flags in enumerate(((), ("--read-only",))):
        sock = tmp_path / f"p{i}.sock"  # a fresh path: the last daemon's file cannot fool running()
        with running(serve_argv(sock, img, *flags), str(sock)):
            r = run_qsd(tmp_path / "q.sock", img, writable=True)
            assert r.returncode != 0
            assert 'Failed to get "write" lock' in r.stderr, r.stderr


def test_read_only_serve_and_read_only_qsd_coexist(qsd, tmp_path):
    img = make_image(tmp_path)
    p_sock, q_sock = str(tmp_path / "p.sock"), str(tmp_path / "q.sock")
    with running(serve_argv(p_sock, img, "--read-only"), p_sock):
        with running(qsd_argv(q_sock, img, False), q_sock) as q:
            assert q.poll() is None
    with running(qsd_argv(q_sock, img, False), q_sock):
        with running(serve_argv(p_sock, img, "--read-only"), p_sock) as p:
            assert p.poll() is None
        w_sock = str(tmp_path / "w.sock")
        with running(serve_argv(w_sock, img), w_sock) as w:  # qsd's reader shares write
            assert w.poll() is None


# --- the program's flags ------------------------------------------------------------------------


def test_format_other_than_raw_is_refused(tmp_path):
    r = run_serve(tmp_path / "s.sock", make_image(tmp_path), "--format=qcow2")
    assert r.returncode == 2
    assert one_line(r) == "pyvirtio serve: error: --format=qcow2: pyvirtio serves raw images only"


def test_qcow2_image_is_refused_and_format_raw_serves_it(tmp_path):
    img = make_image(tmp_path, head=b"QFI\xfb\0\0\0\3")
    r = run_serve(tmp_path / "s.sock", img)
    assert r.returncode == 1 and "looks like a qcow2 image" in one_line(r)
    assert "--format=raw" in r.stderr
    sock = str(tmp_path / "s.sock")
    with running(serve_argv(sock, img, "--format=raw", "--direct", "--aio=threads"), sock) as p:
        assert p.poll() is None


@pytest.mark.parametrize("flag", ["--aio=posix", "--locking=maybe"])
def test_bad_choice_is_one_line(tmp_path, flag):
    r = run_serve(tmp_path / "s.sock", make_image(tmp_path), flag)
    assert r.returncode == 2 and "invalid choice" in one_line(r)


# --- the same bytes as QEMU's own virtio-blk (a plain -drive) -----------------------------------

QEMU = "qemu-system-x86_64"


def qemu_drive_argv(img, read_only):
    return [QEMU, "-M", "q35", "-accel", "tcg", "-S", "-display", "none", "-nodefaults",
            "-device", "virtio-blk-pci,drive=d0",
            "-drive", f"if=none,id=d0,file={img},format=raw,"
                      f"readonly={'on' if read_only else 'off'}"]


@pytest.fixture
def qemu():
    require(shutil.which(QEMU) is not None, QEMU)


@pytest.mark.parametrize("read_only,expected", [(False, [100, 101, 201]), (True, [100, 201])])
def test_we_take_the_bytes_qemus_virtio_blk_takes(qemu, tmp_path, read_only, expected):
    img = make_image(tmp_path)
    proc = subprocess.Popen(qemu_drive_argv(img, read_only), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT  # QEMU takes its bytes in steps: wait for all
        while other_holds(img) != expected and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        qemu_bytes = other_holds(img)  # and no more
    finally:
        proc.kill()
        proc.communicate(timeout=TIMEOUT)
    with open_image(img, read_only=read_only):
        assert other_holds(img) == qemu_bytes == expected


def test_qemu_refuses_an_image_we_hold(qemu, tmp_path):
    img = make_image(tmp_path)
    with open_image(img, read_only=True):
        r = subprocess.run(qemu_drive_argv(img, False), capture_output=True, text=True,
                           timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and 'Failed to get "write" lock' in r.stderr, r.stderr


def test_a_real_qcow2_file_is_named_as_qcow2_not_as_a_bad_size(tmp_path):
    """qemu-img's fresh qcow2 is 196,616 bytes: the format is what the user must hear about."""
    require(shutil.which("qemu-img") is not None, "qemu-img")
    img = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "64M"], check=True, timeout=30)
    with pytest.raises(ImageError, match="looks like a qcow2 image"):
        open_image(str(img), read_only=True)
