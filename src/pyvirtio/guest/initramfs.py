"""Build a guest initramfs in pure Python: host binaries with their shared libraries, busybox,
the kernel modules (:mod:`.modules`), the ``/init`` script (:mod:`.init`), written as ``newc``
cpio (:mod:`.cpio`).

The initrd handed to QEMU is a concatenation (the kernel unpacks each part in turn)::

    [uncompressed cpio: host binaries + libraries]   (optional, big, cheap to build)
    gzip(cpio: /bin/busybox + kernel modules)         (cached per module set)
    gzip(cpio: /init + the caller's script + extra files)
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
import subprocess
from pathlib import Path
from typing import Iterable, Mapping, Union

from .cpio import CpioWriter, pad4
from .errors import InitramfsError
from .init import GUEST_DIR, GUEST_MODULE_DIR, init_script
from .modules import DEFAULT_MODULES, module_index, read_module_bytes

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


def is_static(path: Path) -> bool:
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
    if not is_static(bb):
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
        head += extra_cpio + b"\0" * pad4(len(extra_cpio))
    return head + base + top, list(order)
