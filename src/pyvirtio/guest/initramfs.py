"""Build a guest initramfs in pure Python: a ``newc`` cpio writer, kernel module
dependency resolution, host binaries with their shared libraries, and the ``/init`` script.

The initrd handed to QEMU is a concatenation (the kernel unpacks each part in turn)::

    [uncompressed cpio: host binaries + libraries]   (optional, big, cheap to build)
    gzip(cpio: /bin/busybox + kernel modules)         (cached per module set)
    gzip(cpio: /init + the caller's script + extra files)
"""

from __future__ import annotations

import functools
import gzip
import lzma
import os
import shlex
import stat
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping, Union

from .errors import InitramfsError

# --------------------------------------------------------------------------- cpio (newc)

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_LEN = 110  # 6 magic + 13 fields * 8 hex digits


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


@dataclass(frozen=True)
class CpioEntry:
    name: str  # path inside the archive, no leading "/"
    mode: int  # full st_mode (type bits + permissions)
    data: bytes = b""  # file contents, or the link target of a symlink
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    nlink: int = 1
    ino: int = 0
    rdevmajor: int = 0
    rdevminor: int = 0
    devmajor: int = 0
    devminor: int = 0


class CpioWriter:
    """Collects entries and writes a ``newc`` (SVR4, no CRC) cpio archive.

    Parent directories are created implicitly (mode 0755).  A later entry with the
    same path replaces the earlier one.  Timestamps are 0, so output is reproducible.
    """

    def __init__(self) -> None:
        self._entries: dict[str, CpioEntry] = {}

    @staticmethod
    def _norm(path: str | os.PathLike) -> str:
        p = PurePosixPath("/", os.fspath(path))
        parts = [x for x in p.parts[1:] if x not in ("", ".")]
        if any(x == ".." for x in parts):
            raise InitramfsError(f"'..' not allowed in archive path {path!r}")
        return "/".join(parts) or "."

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._entries:
                self._entries[d] = CpioEntry(d, stat.S_IFDIR | 0o755, nlink=2)

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        name = self._norm(path)
        self._parents(name)
        self._entries[name] = CpioEntry(name, stat.S_IFDIR | (mode & 0o7777), nlink=2)

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        name = self._norm(path)
        self._parents(name)
        self._entries[name] = CpioEntry(name, stat.S_IFREG | (mode & 0o7777), bytes(data))

    def add_symlink(self, path: str, target: str) -> None:
        name = self._norm(path)
        self._parents(name)
        self._entries[name] = CpioEntry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        name = self._norm(path)
        self._parents(name)
        self._entries[name] = CpioEntry(name, stat.S_IFCHR | (mode & 0o7777),
                                        rdevmajor=major, rdevminor=minor)

    def __contains__(self, path: str) -> bool:
        return self._norm(path) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def to_bytes(self) -> bytes:
        out = bytearray()
        ino = 1
        for e in self._entries.values():
            _write_entry(out, e, ino)
            ino += 1
        _write_entry(out, CpioEntry(TRAILER, 0, nlink=1), 0)
        # Keep the archive a multiple of 512 bytes (like GNU cpio); the kernel skips the
        # zero padding before the next concatenated archive.
        out += b"\0" * ((512 - len(out) % 512) % 512)
        return bytes(out)


def _write_entry(out: bytearray, e: CpioEntry, ino: int) -> None:
    name = e.name.encode() + b"\0"
    fields = (ino, e.mode, e.uid, e.gid, e.nlink, e.mtime, len(e.data), e.devmajor,
              e.devminor, e.rdevmajor, e.rdevminor, len(name), 0)
    out += NEWC_MAGIC + b"".join(b"%08X" % f for f in fields) + name
    out += b"\0" * _pad4(_HEADER_LEN + len(name))
    out += e.data
    out += b"\0" * _pad4(len(e.data))


def read_newc(data: bytes, offset: int = 0) -> tuple[list[CpioEntry], int]:
    """Parse one ``newc`` archive starting at ``offset``.

    Returns the entries (without the trailer) and the offset just after the trailer
    entry.  Raises :class:`InitramfsError` on a malformed archive.
    """
    entries: list[CpioEntry] = []
    pos = offset
    while True:
        if pos % 4:
            raise InitramfsError(f"cpio header at {pos} is not 4-byte aligned")
        hdr = data[pos:pos + _HEADER_LEN]
        if len(hdr) < _HEADER_LEN or hdr[:6] != NEWC_MAGIC:
            raise InitramfsError(f"bad newc magic at offset {pos}: {hdr[:6]!r}")
        try:
            f = [int(hdr[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        except ValueError as exc:
            raise InitramfsError(f"bad newc header at offset {pos}") from exc
        ino, mode, uid, gid, nlink, mtime, fsize, dmaj, dmin, rmaj, rmin, nsize, _ = f
        npos = pos + _HEADER_LEN
        raw_name = data[npos:npos + nsize]
        if len(raw_name) != nsize or not raw_name.endswith(b"\0"):
            raise InitramfsError(f"bad name at offset {npos}")
        name = raw_name[:-1].decode()
        dpos = npos + nsize + _pad4(_HEADER_LEN + nsize)
        body = data[dpos:dpos + fsize]
        if len(body) != fsize:
            raise InitramfsError(f"truncated data for {name!r}")
        pos = dpos + fsize + _pad4(fsize)
        if name == TRAILER:
            return entries, pos
        entries.append(CpioEntry(name, mode, bytes(body), uid, gid, mtime, nlink, ino,
                                 rmaj, rmin, dmaj, dmin))


def read_initrd(data: bytes) -> list[CpioEntry]:
    """Parse a concatenation of plain and gzip/xz-compressed ``newc`` archives
    (what the kernel accepts as an initrd); later entries come later in the list."""
    entries: list[CpioEntry] = []
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            pos += 1
            continue
        if data[pos:pos + 6] == NEWC_MAGIC:
            part, pos = read_newc(data, pos)
            entries += part
        elif data[pos:pos + 2] == b"\x1f\x8b":
            d = _GzipMember(data, pos)
            entries += read_initrd(d.payload)
            pos = d.end
        elif data[pos:pos + 6] == b"\xfd7zXZ\x00":
            dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            payload = dec.decompress(data[pos:])
            entries += read_initrd(payload)
            pos = len(data) - len(dec.unused_data)
        else:
            raise InitramfsError(f"unknown initrd part at offset {pos}: {data[pos:pos+6]!r}")
    return entries


class _GzipMember:
    def __init__(self, data: bytes, pos: int):
        import zlib
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.payload = d.decompress(data[pos:])
        self.end = len(data) - len(d.unused_data)


# --------------------------------------------------------------------------- file sets

Content = Union[bytes, str, os.PathLike]


class FileSet:
    """Files to put into the guest: ``guest path -> (bytes, mode)`` and symlinks.

    ``add_host_binary`` copies an executable with every shared library ``ldd`` lists and
    the dynamic loader, at the same paths as on the host.
    """

    def __init__(self, files: Mapping[str, Content | tuple[Content, int]] | None = None):
        self._files: dict[str, tuple[bytes, int]] = {}
        self._links: dict[str, str] = {}
        for path, val in (files or {}).items():
            if isinstance(val, tuple):
                self.add_file(path, val[0], val[1])
            else:
                self.add_file(path, val)

    def add_file(self, guest_path: str, data: Content, mode: int | None = None) -> None:
        if isinstance(data, str):
            data = data.encode()
        elif not isinstance(data, (bytes, bytearray, memoryview)):
            host = Path(data)
            if mode is None:
                mode = host.stat().st_mode & 0o7777
            data = host.read_bytes()
        self._files[guest_path] = (bytes(data), 0o644 if mode is None else mode)

    def add_symlink(self, guest_path: str, target: str) -> None:
        self._links[guest_path] = target

    def add_host_binary(self, host_path: str | os.PathLike,
                        guest_path: str | None = None) -> list[str]:
        """Add an executable and its shared libraries (from ``ldd``) plus the loader.

        Returns the guest paths added.  Libraries keep the path ``ldd`` printed
        (``/lib/x86_64-linux-gnu/…``, ``/lib64/ld-linux-x86-64.so.2``), stored as regular
        files with the symlinks on the host resolved.
        """
        host = Path(host_path)
        if not host.is_absolute():
            import shutil
            found = shutil.which(str(host_path))
            if not found:
                raise InitramfsError(f"host binary {host_path!r} not found in PATH")
            host = Path(found)
        if not host.exists():
            raise InitramfsError(f"host binary {host} does not exist")
        added = [guest_path or str(host)]
        self.add_file(added[0], host.resolve(), 0o755)
        for lib in ldd(host):
            if lib not in self._files:
                self.add_file(lib, Path(lib).resolve(), 0o755)
                added.append(lib)
        return added

    def write_into(self, cpio: CpioWriter) -> None:
        for path, (data, mode) in self._files.items():
            cpio.add_file(path, data, mode)
        for path, target in self._links.items():
            cpio.add_symlink(path, target)

    def to_cpio(self) -> bytes:
        """An uncompressed ``newc`` archive of these files."""
        w = CpioWriter()
        self.write_into(w)
        return w.to_bytes()

    def __len__(self) -> int:
        return len(self._files) + len(self._links)

    def __iter__(self):
        return iter([*self._files, *self._links])


def ldd(binary: str | os.PathLike) -> list[str]:
    """Absolute paths of the shared libraries (and loader) ``binary`` needs."""
    try:
        out = subprocess.run(["ldd", os.fspath(binary)], capture_output=True, text=True,
                             check=False).stdout
    except FileNotFoundError as exc:
        raise InitramfsError("ldd is not installed") from exc
    libs: list[str] = []
    for line in out.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" ", 1)[0]
            if target.startswith("/"):
                libs.append(target)
            elif target == "not":
                raise InitramfsError(f"{binary}: library not found: {line}")
        elif line.startswith("/"):
            libs.append(line.split(" ", 1)[0])  # the dynamic loader
    return libs


# --------------------------------------------------------------------------- kernel modules

DEFAULT_MODULES: tuple[str, ...] = (
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
    "virtio_mmio", "virtio_blk", "virtio-rng", "virtio_console", "failover",
    "net_failover", "virtio_net",
)
# ext2 is served by ext4 on Debian (CONFIG_EXT4_USE_FOR_EXT2=y; CONFIG_EXT2_FS unset).
EXT4_MODULES: tuple[str, ...] = ("crc16", "mbcache", "jbd2", "crc32c_generic", "ext4")
VIRTIOFS_MODULES: tuple[str, ...] = ("fuse", "virtiofs")
VSOCK_MODULES: tuple[str, ...] = ("vsock", "vmw_vsock_virtio_transport_common",
                                  "vmw_vsock_virtio_transport")

_MOD_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def module_key(name: str) -> str:
    """Kernel module names treat '-' and '_' alike."""
    return name.replace("-", "_")


def _strip_suffix(filename: str) -> str | None:
    for s in _MOD_SUFFIXES:
        if filename.endswith(s):
            return filename[: -len(s)]
    return None


def read_module_bytes(path: Path) -> bytes:
    """A module's ELF bytes; ``.ko.xz``/``.ko.gz`` are decompressed (busybox insmod
    cannot load compressed modules)."""
    raw = path.read_bytes()
    name = path.name
    if name.endswith(".xz"):
        return lzma.decompress(raw)
    if name.endswith(".gz"):
        return gzip.decompress(raw)
    if name.endswith(".zst"):
        try:
            return subprocess.run(["zstd", "-dc", str(path)], capture_output=True,
                                  check=True).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            raise InitramfsError(f"cannot decompress {path} (needs the zstd tool)") from exc
    return raw


def modinfo(elf: bytes) -> list[tuple[str, str]]:
    """The ``key=value`` pairs of a module's ``.modinfo`` section (in order)."""
    section = _elf_section(elf, ".modinfo")
    if section is None:  # not a parsable ELF64: scan the bytes
        section = elf
    pairs = []
    for item in section.split(b"\0"):
        if b"=" in item:
            k, _, v = item.partition(b"=")
            if k and all(32 < c < 127 for c in k):
                pairs.append((k.decode("ascii"), v.decode("utf-8", "replace")))
    return pairs


def _elf_section(elf: bytes, wanted: str) -> bytes | None:
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:  # ELF64 little endian only
        return None
    try:
        shoff, = struct.unpack_from("<Q", elf, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
        def sh(i):
            name, _typ, _flags, _addr, off, size = struct.unpack_from(
                "<IIQQQQ", elf, shoff + i * shentsize)
            return name, off, size
        _, stroff, strsize = sh(shstrndx)
        strtab = elf[stroff:stroff + strsize]
        for i in range(shnum):
            name, off, size = sh(i)
            end = strtab.find(b"\0", name)
            if strtab[name:end].decode("ascii", "replace") == wanted:
                return elf[off:off + size]
    except struct.error:
        return None
    return None


@dataclass
class ModuleInfo:
    name: str  # canonical (underscored) name
    path: Path
    depends: tuple[str, ...]
    softdeps_pre: tuple[str, ...]
    aliases: tuple[str, ...]


class ModuleIndex:
    """Finds modules under ``/lib/modules/<version>`` and orders them for insmod."""

    def __init__(self, modules_dir: str | os.PathLike):
        self.modules_dir = Path(modules_dir)
        if not self.modules_dir.is_dir():
            raise InitramfsError(f"modules directory {self.modules_dir} does not exist")
        self._paths: dict[str, Path] | None = None
        self._info: dict[str, ModuleInfo] = {}
        self._alias_index: dict[str, list[str]] | None = None
        self._full_alias_index: dict[str, list[str]] | None = None
        builtin = self.modules_dir / "modules.builtin"
        self.builtin: frozenset[str] = frozenset(
            module_key(_strip_suffix(Path(line.strip()).name) or line.strip())
            for line in (builtin.read_text().splitlines() if builtin.exists() else ())
            if line.strip())

    @property
    def paths(self) -> dict[str, Path]:
        if self._paths is None:
            paths: dict[str, Path] = {}
            for dirpath, _dirs, files in os.walk(self.modules_dir):
                for f in files:
                    stem = _strip_suffix(f)
                    if stem is not None:
                        paths.setdefault(module_key(stem), Path(dirpath) / f)
            self._paths = paths
        return self._paths

    def info(self, name: str) -> ModuleInfo:
        key = module_key(name)
        if key not in self._info:
            path = self.paths.get(key)
            if path is None:
                raise InitramfsError(f"kernel module {name!r} not found under {self.modules_dir}")
            pairs = modinfo(read_module_bytes(path))
            deps: list[str] = []
            soft: list[str] = []
            aliases: list[str] = []
            for k, v in pairs:
                if k == "depends":
                    deps += [module_key(d) for d in v.split(",") if d]
                elif k == "softdep":
                    # "pre: a b post: c"
                    mode = None
                    for tok in v.split():
                        if tok.endswith(":"):
                            mode = tok[:-1]
                        elif mode == "pre":
                            soft.append(tok)
                elif k == "alias":
                    aliases.append(v)
            self._info[key] = ModuleInfo(key, path, tuple(deps), tuple(soft), tuple(aliases))
        return self._info[key]

    def resolve_alias(self, name: str) -> str | None:
        """A module providing ``name`` (a module name or an alias such as
        ``crypto-crc32c``); generic implementations are preferred."""
        key = module_key(name)
        if key in self.paths:
            return key
        if key in self.builtin:
            return None
        # Soft dependencies name crypto aliases ("crypto-crc32c"): index the crypto and
        # lib directories first, everything else only when that finds nothing.
        if self._alias_index is None:
            self._alias_index = self._aliases(lambda rel: "crypto" in rel or "lib" in rel[:2])
        cands = self._alias_index.get(name, [])
        if not cands:
            if self._full_alias_index is None:
                self._full_alias_index = self._aliases(lambda rel: True)
            cands = self._full_alias_index.get(name, [])
        if not cands:
            return None
        return sorted(cands, key=lambda m: (not m.endswith("_generic"), m))[0]

    def _aliases(self, want) -> dict[str, list[str]]:
        index: dict[str, list[str]] = {}
        for mod, path in self.paths.items():
            if want(path.relative_to(self.modules_dir).parts):
                for a in self.info(mod).aliases:
                    index.setdefault(a, []).append(mod)
        return index

    def load_order(self, names: Iterable[str]) -> list[ModuleInfo]:
        """The modules ``names`` plus their dependencies (``depends=`` and the ``pre:``
        soft dependencies), each after everything it depends on; built-in modules are
        dropped.  The requested order is kept where dependencies allow."""
        order: list[ModuleInfo] = []
        done: set[str] = set()
        visiting: list[str] = []

        def visit(key: str, required: bool) -> None:
            if key in done or key in self.builtin and key not in self.paths:
                return
            if key in visiting:
                raise InitramfsError("module dependency cycle: " + " -> ".join(visiting + [key]))
            try:
                mi = self.info(key)
            except InitramfsError:
                if required:
                    raise
                return
            visiting.append(key)
            for d in mi.depends:
                visit(d, True)
            for s in mi.softdeps_pre:
                provider = self.resolve_alias(s)
                if provider is not None and provider != key:
                    visit(provider, False)
            visiting.pop()
            done.add(key)
            order.append(mi)

        for n in names:
            visit(module_key(n), True)
        return order


@functools.lru_cache(maxsize=8)
def _module_index(modules_dir: str) -> ModuleIndex:
    return ModuleIndex(modules_dir)


def module_index(modules_dir: str | os.PathLike) -> ModuleIndex:
    return _module_index(os.fspath(modules_dir))


# --------------------------------------------------------------------------- /init

SCRIPT_PREFIX = "@@pyv@@ "
BOOTED_MARK = "PYVIRTIO-GUEST-BOOTED"
EXIT_MARK = "PYVIRTIO-GUEST-EXIT"
INSMOD_FAIL_MARK = "PYVIRTIO-GUEST-INSMOD-FAILED"
GUEST_DIR = "/pyvirtio"
GUEST_MODULE_DIR = "/lib/modules/pyvirtio"

INIT_TEMPLATE = r"""#!/bin/busybox sh
# /init generated by pyvirtio.guest
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /mnt /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /tmp
exec </dev/null >/dev/console 2>&1
echo "@BOOTED@"
for m in @MODULES@; do
    insmod "@MODDIR@/$m.ko" || echo "@INSMODFAIL@ $m"
done
cd /
mkfifo /run/pyvirtio-out
awk '{ print "@PREFIX@" $0; fflush() }' </run/pyvirtio-out &
awkpid=$!
# The script runs in its own session, so whatever it leaves running in the background
# (which would keep the output pipe open) is killed at once with its process group.
setsid sh @GUESTDIR@/script.sh </dev/null >/run/pyvirtio-out 2>&1 &
spid=$!
wait $spid
rc=$?
kill -9 -$spid 2>/dev/null
# Then anything that escaped (its own setsid): every user process but this one and
# awk, again until none is left.
while :; do
    n=0
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        [ "$pid" = 1 ] || [ "$pid" = "$awkpid" ] || [ -z "$(cat $p/cmdline 2>/dev/null)" ] ||
            { kill -9 "$pid" 2>/dev/null && n=1; }
    done
    [ $n = 0 ] && break
done
wait $awkpid
echo "@EXIT@ $rc"
sync
@POWEROFF@
"""


def init_script(module_names: Iterable[str], poweroff: str = "poweroff -f") -> str:
    mods = " ".join(shlex.quote(m) for m in module_names)
    return (INIT_TEMPLATE
            .replace("@BOOTED@", BOOTED_MARK)
            .replace("@MODULES@", mods)
            .replace("@MODDIR@", GUEST_MODULE_DIR)
            .replace("@INSMODFAIL@", INSMOD_FAIL_MARK)
            .replace("@PREFIX@", SCRIPT_PREFIX)
            .replace("@GUESTDIR@", GUEST_DIR)
            .replace("@EXIT@", EXIT_MARK)
            .replace("@POWEROFF@", poweroff))


# --------------------------------------------------------------------------- assembly

BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")


def find_busybox() -> Path:
    """The static busybox of the host (Debian package busybox-static)."""
    env = os.environ.get("PYVIRTIO_BUSYBOX")
    for cand in ([env] if env else []) + list(BUSYBOX_PATHS):
        p = Path(cand)
        if p.exists():
            return p
    raise InitramfsError("busybox not found: install busybox-static (or set PYVIRTIO_BUSYBOX)")


def _is_static(path: Path) -> bool:
    data = path.read_bytes()[:1 << 20]
    if data[:4] != b"\x7fELF":
        return False
    e_phoff, = struct.unpack_from("<Q", data, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(e_phnum):
        p_type, = struct.unpack_from("<I", data, e_phoff + i * e_phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


@functools.lru_cache(maxsize=8)
def _base_archive(modules_dir: str, modules: tuple[str, ...], busybox: str,
                  busybox_mtime: float) -> tuple[bytes, tuple[str, ...]]:
    # ``busybox_mtime`` is read by nobody: it is part of the cache key, so an upgraded busybox
    # is not served from a stale cached archive.
    w = CpioWriter()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run",
              "mnt", "root", "etc", "lib/modules/pyvirtio", GUEST_DIR.lstrip("/")):
        w.add_dir(d)
    w.add_chardev("dev/console", 5, 1)
    w.add_chardev("dev/null", 1, 3, 0o666)
    bb = Path(busybox)
    if not _is_static(bb):
        raise InitramfsError(f"{bb} is not statically linked (install busybox-static)")
    w.add_file("bin/busybox", bb.read_bytes(), 0o755)
    w.add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    w.add_file("etc/group", b"root:x:0:\n")
    order = module_index(modules_dir).load_order(modules) if modules else []
    for mi in order:
        w.add_file(f"{GUEST_MODULE_DIR}/{mi.name}.ko", read_module_bytes(mi.path), 0o644)
    return gzip.compress(w.to_bytes(), compresslevel=6, mtime=0), tuple(m.name for m in order)


@functools.lru_cache(maxsize=4)
def _host_binaries_archive(paths: tuple[str, ...]) -> bytes:
    fs = FileSet()
    for p in paths:
        fs.add_host_binary(p)
    return fs.to_cpio()


def build_initrd(modules_dir: str | os.PathLike | None, script: str, *,
                 modules: Iterable[str] = DEFAULT_MODULES,
                 extra_files: FileSet | Mapping[str, Content | tuple[Content, int]] | None = None,
                 host_binaries: Iterable[str | os.PathLike] = (),
                 extra_cpio: bytes | None = None,
                 busybox: str | os.PathLike | None = None,
                 poweroff: str = "poweroff -f") -> tuple[bytes, list[str]]:
    """Build the whole initrd for one boot.

    ``script`` is the guest shell script (run by busybox ``sh``).  ``modules`` are module
    names (dependencies are added and ordered).  ``extra_files`` go into the compressed
    part; ``host_binaries`` (collected with their ``ldd`` libraries) and ``extra_cpio``
    form an uncompressed archive placed first.  Returns ``(initrd bytes, module load
    order)``.
    """
    bb = Path(busybox) if busybox else find_busybox()
    mods = tuple(dict.fromkeys(modules))
    if mods and modules_dir is None:
        raise InitramfsError("modules requested but no modules directory given")
    base, order = _base_archive(os.fspath(modules_dir) if modules_dir else "", mods,
                                str(bb), bb.stat().st_mtime)
    w = CpioWriter()
    w.add_file("init", init_script(order, poweroff).encode(), 0o755)
    w.add_file(f"{GUEST_DIR}/script.sh", script.encode(), 0o755)
    if extra_files is not None:
        fs = extra_files if isinstance(extra_files, FileSet) else FileSet(extra_files)
        fs.write_into(w)
    top = gzip.compress(w.to_bytes(), compresslevel=1, mtime=0)
    head = b""
    hb = tuple(os.fspath(p) for p in host_binaries)
    if hb:
        head += _host_binaries_archive(hb)
    if extra_cpio:
        head += extra_cpio + b"\0" * _pad4(len(extra_cpio))
    return head + base + top, list(order)
