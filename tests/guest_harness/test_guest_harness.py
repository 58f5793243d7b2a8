"""The guest harness: cpio writer, module ordering, kernel image handling, real boots."""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirtio.errors import VirtioError
from pyvirtio.guest import (EXT4_MODULES, CpioWriter, FileSet, GuestBootError, GuestError,
                            GuestScriptError, GuestTimeout, InitramfsError, ModuleIndex,
                            build_initrd, read_initrd, read_newc)
from pyvirtio.guest.init import init_script
from pyvirtio.guest.initramfs import ldd
from pyvirtio.guest.modules import modinfo
from pyvirtio.guest.kernel import extract_elf, has_pvh_note

# --------------------------------------------------------------------------- cpio writer


def _headers(data: bytes):
    """Walk newc headers by hand (independently of read_newc)."""
    pos = 0
    while True:
        assert pos % 4 == 0
        assert data[pos:pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        nsize, fsize = f[11], f[6]
        name = data[pos + 110:pos + 110 + nsize]
        assert name.endswith(b"\0")
        dpos = pos + 110 + nsize
        dpos += (-dpos) % 4
        assert dpos % 4 == 0
        yield name[:-1].decode(), f, dpos
        pos = dpos + fsize
        pos += (-pos) % 4
        if name == b"TRAILER!!!\0":
            return pos


def test_cpio_newc_layout():
    w = CpioWriter()
    w.add_file("/bin/hello", b"#!/bin/sh\necho hi\n", 0o755)
    w.add_file("odd", b"x" * 5)
    w.add_symlink("/bin/sh", "busybox")
    w.add_chardev("/dev/console", 5, 1)
    data = w.to_bytes()
    assert data.startswith(b"070701")
    assert len(data) % 512 == 0
    names = []
    gen = _headers(data)
    for name, f, _ in gen:
        names.append(name)
    assert names[-1] == "TRAILER!!!"
    # Parents are created implicitly, before their children.
    assert names.index("bin") < names.index("bin/hello")
    assert names.index("dev") < names.index("dev/console")
    # inode numbers are unique
    inos = [f[0] for name, f, _ in _headers(data) if name != "TRAILER!!!"]
    assert len(set(inos)) == len(inos)
    # only zero padding after the trailer
    end = data.index(b"TRAILER!!!\0") + 11
    assert set(data[end:]) <= {0}


def test_cpio_round_trip():
    w = CpioWriter()
    w.add_file("a/b/c.txt", b"hello")
    w.add_file("a/x", bytes(range(256)) * 3, 0o600)
    w.add_symlink("a/link", "b/c.txt")
    w.add_chardev("dev/null", 1, 3, 0o666)
    w.add_dir("empty", 0o700)
    entries, end = read_newc(w.to_bytes())
    by = {e.name: e for e in entries}
    assert by["a/b/c.txt"].data == b"hello"
    assert stat.S_ISREG(by["a/b/c.txt"].mode) and by["a/b/c.txt"].mode & 0o777 == 0o644
    assert by["a/x"].data == bytes(range(256)) * 3 and by["a/x"].mode & 0o777 == 0o600
    assert stat.S_ISLNK(by["a/link"].mode) and by["a/link"].data == b"b/c.txt"
    assert stat.S_ISCHR(by["dev/null"].mode)
    assert (by["dev/null"].rdevmajor, by["dev/null"].rdevminor) == (1, 3)
    assert stat.S_ISDIR(by["empty"].mode) and by["empty"].mode & 0o777 == 0o700
    assert stat.S_ISDIR(by["a/b"].mode)


def test_cpio_later_entry_replaces_and_rejects_dotdot():
    w = CpioWriter()
    w.add_file("f", b"1")
    w.add_file("/f", b"2")
    entries, _ = read_newc(w.to_bytes())
    assert [e.data for e in entries if e.name == "f"] == [b"2"]
    with pytest.raises(InitramfsError):
        w.add_file("../etc/passwd", b"")
    assert issubclass(InitramfsError, VirtioError)


_names = st.lists(st.text(alphabet="abcdefghij-_.0123", min_size=1, max_size=12)
                  .filter(lambda s: s not in (".", "..")), min_size=1, max_size=3)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_names.map(lambda p: "/".join(p)), st.binary(max_size=700),
                       min_size=1, max_size=8))
def test_cpio_round_trip_property(files):
    w = CpioWriter()
    expected = {}
    for path, data in files.items():
        # A path that is a parent of another one must stay a directory.
        if any(other.startswith(path + "/") for other in files):
            continue
        if any(path.startswith(d + "/") for d in expected):
            continue
        w.add_file(path, data)
        expected[path] = data
    raw = w.to_bytes()
    entries, end = read_newc(raw)
    assert set(raw[end:]) <= {0}
    got = {e.name: e.data for e in entries if stat.S_ISREG(e.mode)}
    assert got == expected
    list(_headers(raw))  # every header aligned and well formed


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_cpio_readable_by_gnu_cpio(tmp_path):
    w = CpioWriter()
    w.add_file("bin/tool", b"\x7fELF fake", 0o755)
    w.add_file("etc/conf", b"k=v\n")
    w.add_symlink("bin/alias", "tool")
    res = subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"],
                         input=w.to_bytes(), cwd=tmp_path, capture_output=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "bin/tool").read_bytes() == b"\x7fELF fake"
    assert os.stat(tmp_path / "bin/tool").st_mode & 0o777 == 0o755
    assert (tmp_path / "etc/conf").read_text() == "k=v\n"
    assert os.readlink(tmp_path / "bin/alias") == "tool"


def test_read_initrd_concatenation():
    a, b = CpioWriter(), CpioWriter()
    a.add_file("big/lib.so", b"L" * 1000)
    b.add_file("init", b"#!/bin/sh\n", 0o755)
    b.add_file("big/lib.so", b"override")
    data = a.to_bytes() + gzip.compress(b.to_bytes()) + lzma.compress(b.to_bytes())
    entries = read_initrd(data)
    assert [e.data for e in entries if e.name == "big/lib.so"] == [b"L" * 1000, b"override",
                                                                   b"override"]


# --------------------------------------------------------------------------- modules


def _fake_ko(modinfo_pairs: dict[str, str]) -> bytes:
    """A minimal ELF64 relocatable with a .modinfo and a .shstrtab section."""
    info = b"".join(f"{k}={v}".encode() + b"\0" for k, v in modinfo_pairs.items())
    shstr = b"\0.modinfo\0.shstrtab\0"
    ehdr_len = 64
    info_off = ehdr_len
    shstr_off = info_off + len(info)
    shoff = (shstr_off + len(shstr) + 7) // 8 * 8
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    body = ehdr + info + shstr
    body += bytes(shoff - len(body))
    sh = bytes(64)  # null section
    sh += struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, info_off, len(info), 0, 0, 1, 0)
    sh += struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0)
    return body + sh


def _fake_tree(tmp_path: Path, mods: dict[str, dict[str, str]], builtin=()) -> Path:
    root = tmp_path / "lib/modules/9.9.9"
    for name, info in mods.items():
        sub = root / "kernel" / ("crypto" if "crypto" in info.get("alias", "") else "drivers")
        sub.mkdir(parents=True, exist_ok=True)
        raw = _fake_ko({"license": "GPL", **info, "name": name.replace("-", "_")})
        if name.endswith(".xz"):
            (sub / f"{name[:-3]}.ko.xz").write_bytes(lzma.compress(raw))
        else:
            (sub / f"{name}.ko").write_bytes(raw)
    (root / "modules.builtin").write_text("".join(f"kernel/x/{b}.ko\n" for b in builtin))
    return root


def test_modinfo_parses_elf_section():
    pairs = modinfo(_fake_ko({"depends": "a,b", "softdep": "pre: crypto-x", "vermagic": "6"}))
    assert ("depends", "a,b") in pairs and ("softdep", "pre: crypto-x") in pairs
    # not an ELF: falls back to scanning the bytes
    assert ("depends", "q") in modinfo(b"junk\0depends=q\0more")


def test_module_load_order(tmp_path):
    root = _fake_tree(tmp_path, {
        "virtio_ring": {"depends": ""},
        "virtio": {"depends": ""},
        "virtio_pci": {"depends": "virtio_ring,virtio"},
        "virtio-rng": {"depends": "virtio_ring,virtio"},
        "jbd2.xz": {"depends": "", "softdep": "pre: crypto-crc32c"},
        "ext4": {"depends": "jbd2,mbcache", "softdep": "pre: crypto-crc32c"},
        "mbcache": {"depends": ""},
        "crc32c-intel": {"depends": "", "alias": "crypto-crc32c"},
        "crc32c_generic": {"depends": "", "alias": "crypto-crc32c"},
        "uses_builtin": {"depends": "virtio,crc16"},
    }, builtin=["crc16"])
    ix = ModuleIndex(root)
    order = [m.name for m in ix.load_order(["virtio_pci", "virtio-rng", "ext4"])]
    assert order.index("virtio_ring") < order.index("virtio_pci")
    assert order.index("virtio") < order.index("virtio_pci")
    assert order.index("jbd2") < order.index("ext4")
    assert order.index("mbcache") < order.index("ext4")
    # soft dependency resolved through the alias, generic implementation preferred
    assert "crc32c_generic" in order and "crc32c_intel" not in order
    assert order.index("crc32c_generic") < order.index("jbd2")
    assert order.count("virtio") == 1 and "virtio_rng" in order
    # built-in dependencies are skipped
    assert [m.name for m in ix.load_order(["uses_builtin"])] == ["virtio", "uses_builtin"]
    # compressed module is found and decompressed
    assert ix.info("jbd2").path.name == "jbd2.ko.xz"


def test_module_errors(tmp_path):
    root = _fake_tree(tmp_path, {"a": {"depends": "b"}, "b": {"depends": "a"},
                                 "c": {"depends": "missing"}})
    ix = ModuleIndex(root)
    with pytest.raises(InitramfsError, match="cycle"):
        ix.load_order(["a"])
    with pytest.raises(InitramfsError, match="missing"):
        ix.load_order(["c"])
    with pytest.raises(InitramfsError):
        ix.load_order(["nope"])


def test_build_initrd_contents(tmp_path):
    root = _fake_tree(tmp_path, {"virtio": {"depends": ""},
                                 "virtio_blk.xz": {"depends": "virtio"}})
    fs = FileSet({"/etc/motd": "hi\n", "/usr/local/bin/tool": (b"#!/bin/sh\n", 0o755)})
    data, order = build_initrd(root, "echo body", modules=["virtio_blk"], extra_files=fs,
                               extra_cpio=FileSet({"/first": b"1"}).to_cpio())
    assert order == ["virtio", "virtio_blk"]
    assert data.startswith(b"070701")  # the uncompressed part comes first
    by = {e.name: e for e in read_initrd(data)}
    assert by["pyvirtio/script.sh"].data == b"echo body"
    assert by["init"].mode & 0o111
    assert by["bin/busybox"].data[:4] == b"\x7fELF"
    assert by["lib/modules/pyvirtio/virtio_blk.ko"].data[:4] == b"\x7fELF"  # decompressed
    assert by["usr/local/bin/tool"].mode & 0o777 == 0o755
    assert by["first"].data == b"1"
    init = by["init"].data.decode()
    assert "for m in virtio virtio_blk;" in init


def test_init_script_is_valid_shell():
    script = init_script(["virtio", "virtio_blk"])
    res = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True)
    assert res.returncode == 0, res.stderr


def test_add_host_binary_collects_libraries():
    fs = FileSet()
    added = fs.add_host_binary("ls")
    assert added[0].endswith("/ls")
    libs = ldd(shutil.which("ls"))
    assert any("ld-linux" in lib for lib in libs)
    assert set(libs) <= set(added)
    by = {e.name: e for e in read_newc(fs.to_cpio())[0]}
    loader = next(lib for lib in libs if "ld-linux" in lib)
    assert by[loader.lstrip("/")].data[:4] == b"\x7fELF"  # symlink resolved to the file


def test_pvh_note_detection():
    assert not has_pvh_note(b"\x7fELF" + bytes(100))
    assert extract_elf(b"no kernel in here" * 10) is None


# --------------------------------------------------------------------------- real kernel


def test_real_kernel_bundle(guest_kernel):
    k = guest_kernel
    assert k.vmlinuz.exists() and k.modules_dir.is_dir()
    assert k.boot_image in (k.vmlinuz, k.elf)
    assert "bzimage" in k.boot_times
    if k.elf is not None:
        head = k.elf.read_bytes()[:1 << 25]
        assert has_pvh_note(head)
    order = [m.name for m in ModuleIndex(k.modules_dir).load_order(
        ["virtio_net", "virtio_blk", "virtio-rng", "virtio_pci"] + list(EXT4_MODULES))]
    for dep, mod in [("virtio_ring", "virtio_net"), ("failover", "net_failover"),
                     ("net_failover", "virtio_net"), ("virtio_pci_modern_dev", "virtio_pci"),
                     ("jbd2", "ext4"), ("mbcache", "ext4"), ("crc16", "ext4")]:
        assert order.index(dep) < order.index(mod)


# --------------------------------------------------------------------------- real boots

BLK_RNG_SCRIPT = r"""
set -e
echo "size_sectors=$(cat /sys/block/vda/size)"
echo "size_bytes=$(blockdev --getsize64 /dev/vda)"
echo "host_pattern=$(dd if=/dev/vda bs=512 skip=8 count=1 2>/dev/null | head -c 16)"
echo guest-wrote-this-block > /tmp/pat
dd if=/tmp/pat of=/dev/vda bs=512 seek=2048 conv=sync,fsync 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
echo "readback=$(dd if=/dev/vda bs=512 skip=2048 count=1 2>/dev/null | head -n1)"
echo "rng_current=$(cat /sys/class/misc/hw_random/rng_current)"
echo "rng_bytes=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
echo "rng_bytes2=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
echo "mods=$(cut -d' ' -f1 /proc/modules | sort | tr '\n' ,)"
echo oops >&2
"""


@pytest.fixture
def disk(tmp_path):
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(32 << 20)
        f.seek(8 * 512)
        f.write(b"HOST-PATTERN-0123456789")
    return img


def _drive(img, slot=None):
    dev = "virtio-blk-pci,drive=d0" + (f",addr={slot}" if slot else "")
    return ["-device", dev, "-drive", f"if=none,id=d0,file={img},format=raw"]


@pytest.mark.timeout(900)
def test_boot_blk_and_rng(boot, disk):
    res = boot(BLK_RNG_SCRIPT, qemu_args=["-device", "virtio-rng-pci", *_drive(disk)])
    res.check()
    v = res.values()
    assert v["size_sectors"] == str((32 << 20) // 512)
    assert v["size_bytes"] == str(32 << 20)
    assert v["host_pattern"] == "HOST-PATTERN-012"
    assert v["readback"] == "guest-wrote-this-block"
    assert v["rng_current"].startswith("virtio_rng")
    assert len(v["rng_bytes"]) == 64 and v["rng_bytes"] != v["rng_bytes2"]
    assert {"virtio_blk", "virtio_rng", "virtio_pci"} <= set(v["mods"].split(","))
    assert "oops" in res.lines  # stderr is captured too
    assert res.insmod_failures == []
    assert res.qemu_returncode == 0
    assert res.boot_time is not None and 0 < res.boot_time < res.duration
    with open(disk, "rb") as f:
        f.seek(2048 * 512)
        assert f.read(22) == b"guest-wrote-this-block"


@pytest.mark.timeout(300)
def test_exit_code_and_leftover_background_job(boot):
    res = boot("echo one\n(sleep 1000; echo never) &\necho two\nexit 7",
               shared_memory=False)
    assert res.exit_code == 7 and not res.ok
    assert res.lines == ["one", "two"]
    with pytest.raises(GuestScriptError):
        res.check()


@pytest.mark.timeout(300)
def test_extra_files_and_modules(boot, disk):
    script = r"""
set -e
sh /opt/helper.sh
mke2fs -q /dev/vda
mount -t ext2 /dev/vda /mnt
echo data-on-ext2 > /mnt/file
umount /mnt
mount -t ext2 /dev/vda /mnt
echo "file=$(cat /mnt/file)"
echo "fstype=$(grep ' /mnt ' /proc/mounts | cut -d' ' -f3)"
"""
    res = boot(script, qemu_args=_drive(disk), modules=EXT4_MODULES,
               extra_files={"/opt/helper.sh": (b"echo helper-ran\n", 0o755)})
    res.check()
    assert "helper-ran" in res.lines
    assert res.values()["file"] == "data-on-ext2"
    assert res.values()["fstype"] in ("ext2", "ext4")
    assert "ext4" in res.modules and res.insmod_failures == []


@pytest.mark.timeout(300)
def test_start_guest_interaction(boot, disk):
    """The host acts while the guest runs: it answers through the shared disk image."""
    script = r"""
echo READY
i=0
while [ $i -lt 600 ]; do
    echo 3 > /proc/sys/vm/drop_caches
    if [ "$(dd if=/dev/vda bs=512 skip=100 count=1 2>/dev/null | head -c 2)" = GO ]; then
        echo GOT-GO; exit 0
    fi
    i=$((i+1)); sleep 0.1
done
exit 1
"""
    with boot.start(script, qemu_args=_drive(disk), timeout=200) as g:
        m = g.expect(r"^READY$", timeout=150)
        assert m and g.running()
        with open(disk, "r+b") as f:
            f.seek(100 * 512)
            f.write(b"GO")
        g.expect("GOT-GO", timeout=60)
        res = g.wait()
    assert res.exit_code == 0
    assert res.lines == ["READY", "GOT-GO"]


@pytest.mark.timeout(300)
def test_timeout_kills_qemu(boot):
    t0 = time.monotonic()
    with pytest.raises(GuestTimeout) as info:
        boot("sleep 1000", timeout=8, shared_memory=False)
    assert time.monotonic() - t0 < 30
    assert isinstance(info.value, GuestError) and isinstance(info.value, TimeoutError)
    assert info.value.returncode is not None  # QEMU is gone


@pytest.mark.timeout(300)
def test_wait_timeout_while_running(boot):
    g = boot.start("echo started; sleep 1000", shared_memory=False)
    g.expect("^started$", timeout=120)
    with pytest.raises(GuestTimeout) as info:
        g.wait(timeout=1)
    assert not g.running()
    assert "started" in info.value.output


@pytest.mark.timeout(300)
def test_bad_qemu_arguments_raise_boot_error(boot):
    with pytest.raises(GuestBootError) as info:
        boot("true", qemu_args=["-device", "no-such-device-xyz"])
    assert not isinstance(info.value, GuestTimeout)
    assert "no-such-device-xyz" in str(info.value)


@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("fio") is None, reason="fio not installed")
def test_host_binary_fio(boot):
    res = boot("fio --version", host_binaries=["/usr/bin/fio"], memory_mb=1024)
    res.check()
    assert res.lines and res.lines[0].startswith("fio-")
