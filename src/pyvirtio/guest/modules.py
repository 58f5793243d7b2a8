"""Kernel modules for the guest: the index of a ``/lib/modules/VERSION`` tree (names, aliases,
dependencies read from each module's ``.modinfo``), the load order for a set of names, and the
module sets the tests boot with."""

from __future__ import annotations

import functools
import gzip
import lzma
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import InitramfsError

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
