"""Fetch and cache a Debian Linux kernel for guests, and find its fastest boot image.

``prepare_kernel()`` downloads the kernel package that ``linux-image-amd64`` depends on
(``apt-get download``), unpacks it with ``dpkg -x`` into the cache, extracts the ELF
kernel compressed inside the bzImage (it carries a PVH entry note, so QEMU can boot it
directly with ``-kernel``, skipping the real-mode set-up and the self-decompression),
boots both images once to check and time them, and remembers the result.

Everything is idempotent; concurrent callers serialise on a ``flock`` and each step
builds into a temporary name that is renamed into place, so a crash leaves no half
state behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import GuestError, KernelPrepareError

META_PACKAGE = "linux-image-amd64"
STATE_FILE = "pyvirtio-kernel.json"
STATE_VERSION = 1

XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b\x08"
XEN_ELFNOTE_PHYS32_ENTRY = 18
PVH_MARGIN = 1.25  # keep the PVH ELF unless it measured 25 % slower than the bzImage


@dataclass(frozen=True)
class KernelBundle:
    """A kernel ready to boot.

    ``boot_image`` is what ``boot_guest`` passes to ``-kernel``: the PVH ELF when it was
    verified to boot and is faster, else the bzImage.
    """

    version: str  # e.g. "6.1.0-56-amd64"
    vmlinuz: Path  # the bzImage
    elf: Path | None  # PVH-bootable ELF (verified), or None
    modules_dir: Path  # .../lib/modules/<version>
    root: Path  # the dpkg -x tree
    boot_image: Path
    package: str = ""
    boot_times: dict = field(default_factory=dict, compare=False)  # {"bzimage": s, "pvh": s}

    @property
    def config(self) -> Path:
        return self.root / "boot" / f"config-{self.version}"

    def with_image(self, image: Path) -> "KernelBundle":
        return dataclasses.replace(self, boot_image=Path(image))


def default_cache_dir() -> Path:
    env = os.environ.get("PYVIRTIO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pyvirtio"


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, **kw)
    except FileNotFoundError as exc:
        raise KernelPrepareError(f"{cmd[0]} is not installed (needs a Debian host)") from exc


def find_kernel_package(progress: Callable[[str], None] = print) -> str:
    """The versioned image package ``linux-image-amd64`` depends on.  Runs
    ``apt-get update`` only if ``apt-cache`` knows nothing."""
    for attempt in range(2):
        res = _run(["apt-cache", "depends", META_PACKAGE])
        m = re.search(r"Depends:\s*(linux-image-\S+)", res.stdout)
        if m:
            return m.group(1)
        if attempt == 0:
            progress("apt-cache knows no kernel package; running apt-get update")
            _run(["apt-get", "update"])
    raise KernelPrepareError(
        f"cannot find the package behind {META_PACKAGE} "
        f"(apt-cache said: {res.stdout.strip()} {res.stderr.strip()})")


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def package_sizes(package: str) -> tuple[int, int]:
    """(download bytes, unpacked bytes) of ``package`` as apt knows them; (0, 0) if unknown."""
    res = _run(["apt-cache", "show", "--no-all-versions", package])
    size = re.search(r"^Size:\s*(\d+)", res.stdout, re.M)
    installed = re.search(r"^Installed-Size:\s*(\d+)", res.stdout, re.M)  # KiB
    return (int(size.group(1)) if size else 0, int(installed.group(1)) * 1024 if installed else 0)


def _download_and_unpack(package: str, kdir: Path, progress) -> None:
    root = kdir / "root"
    if (root / ".complete").exists():
        return
    with tempfile.TemporaryDirectory(dir=kdir, prefix="dl-") as tmp:
        size, unpacked = package_sizes(package)
        progress(f"downloading {package}" + (f" ({size / 1e6:.0f} MB; {unpacked / 1e6:.0f} MB "
                                              "unpacked)" if size else ""))
        res = _run(["apt-get", "download", package], cwd=tmp)
        if res.returncode != 0:
            progress("apt-get download failed; running apt-get update and retrying")
            _run(["apt-get", "update"])
            res = _run(["apt-get", "download", package], cwd=tmp)
            if res.returncode != 0:
                raise KernelPrepareError(f"apt-get download {package} failed: {res.stderr}")
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise KernelPrepareError(f"apt-get download {package} produced {debs}")
        progress(f"unpacking {debs[0].name}")
        dest = Path(tmp) / "root"
        res = _run(["dpkg", "-x", str(debs[0]), str(dest)])
        if res.returncode != 0:
            raise KernelPrepareError(f"dpkg -x failed: {res.stderr}")
        (dest / ".complete").write_text(debs[0].name + "\n")
        if root.exists():  # a stale, incomplete tree from a crash
            shutil.rmtree(root)
        os.rename(dest, root)


def _find_files(root: Path) -> tuple[Path, Path, str]:
    vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise KernelPrepareError(f"no boot/vmlinuz-* in {root}")
    version = vmlinuz[-1].name[len("vmlinuz-"):]
    mods = root / "lib" / "modules" / version
    if not mods.is_dir():
        raise KernelPrepareError(f"no modules directory {mods}")
    return vmlinuz[-1], mods, version


# --------------------------------------------------------------------------- PVH ELF

def has_pvh_note(elf: bytes) -> bool:
    """True if ``elf`` is an ELF64 with a Xen ``PHYS32_ENTRY`` note (PVH entry point)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    try:
        phoff, = struct.unpack_from("<Q", elf, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
        for i in range(phnum):
            p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from(
                "<IIQQQQ", elf, phoff + i * phentsize)
            if p_type != 4:  # PT_NOTE
                continue
            pos, end = p_offset, p_offset + p_filesz
            while pos + 12 <= end:
                namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
                name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
                pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
                if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                    return True
    except struct.error:
        return False
    return False


def extract_elf(vmlinuz: bytes) -> bytes | None:
    """The PVH-capable ELF kernel compressed inside a bzImage, or None."""
    for magic in (XZ_MAGIC, GZIP_MAGIC):
        start = 0
        while (pos := vmlinuz.find(magic, start)) >= 0:
            start = pos + 1
            try:
                if magic == XZ_MAGIC:
                    out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(vmlinuz[pos:])
                else:
                    out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(vmlinuz[pos:])
            except (lzma.LZMAError, zlib.error, EOFError):
                continue
            if has_pvh_note(out):
                return out
    return None


def _ensure_elf(vmlinuz: Path, kdir: Path, progress) -> Path | None:
    dest = kdir / "vmlinux-pvh"
    nope = kdir / "vmlinux-pvh.none"
    if dest.exists():
        return dest
    if nope.exists():
        return None
    progress("extracting the ELF kernel from the bzImage")
    elf = extract_elf(vmlinuz.read_bytes())
    if elf is None:
        nope.write_text("no PVH ELF inside the bzImage\n")
        return None
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(elf)
    os.rename(tmp, dest)
    return dest


# --------------------------------------------------------------------------- verification

def qemu_version(qemu: str | None = None) -> str | None:
    from .qemu import qemu_binary
    exe = shutil.which(qemu or qemu_binary())
    if exe is None:
        return None
    res = subprocess.run([exe, "--version"], capture_output=True, text=True)
    return res.stdout.splitlines()[0] if res.stdout else None


def time_boot(bundle: KernelBundle, image: Path, *, rounds: int = 1,
              timeout: float = 120) -> float:
    """Seconds from starting QEMU to its exit, for a guest that runs ``true``
    (best of ``rounds``).  Raises :class:`GuestError` if the image does not boot."""
    from .qemu import boot_guest
    best = float("inf")
    for _ in range(rounds):
        res = boot_guest(bundle.with_image(image), "echo pyvirtio-boot-ok", timeout=timeout,
                         default_modules=False, shared_memory=False, memory_mb=256)
        if res.exit_code != 0 or res.lines != ["pyvirtio-boot-ok"]:
            raise GuestError(f"test boot of {image} failed: {res.output[-2000:]}")
        best = min(best, res.duration)
    return best


def _verify(bundle: KernelBundle, progress) -> dict:
    state: dict = {"version": STATE_VERSION, "qemu": qemu_version(), "times": {}}
    try:
        state["times"]["bzimage"] = time_boot(bundle, bundle.vmlinuz)
    except GuestError as exc:
        raise KernelPrepareError(f"the bzImage does not boot under QEMU: {exc}") from exc
    progress(f"bzImage boots in {state['times']['bzimage']:.2f} s")
    if bundle.elf is not None:
        try:
            state["times"]["pvh"] = time_boot(bundle, bundle.elf)
            progress(f"PVH ELF boots in {state['times']['pvh']:.2f} s")
        except GuestError as exc:
            progress(f"PVH ELF does not boot, using the bzImage: {str(exc)[:300]}")
            state["pvh_error"] = str(exc)[:2000]
    return state


def prepare_kernel(cache_dir: str | os.PathLike | None = None,
                   progress: Callable[[str], None] | None = print, *,
                   package: str | None = None, verify: bool = True) -> KernelBundle:
    """Download (once), unpack and check a Debian kernel; return a :class:`KernelBundle`.

    ``cache_dir`` defaults to ``$PYVIRTIO_CACHE`` or ``~/.cache/pyvirtio``.  With
    ``verify`` (and QEMU installed) both boot images are booted once and timed; the
    result is cached next to the kernel and redone only when the QEMU version changes.
    """
    progress = progress or (lambda _msg: None)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    kroot = cache / "kernel"
    try:
        package = package or find_kernel_package(progress)
    except KernelPrepareError:
        # Offline and apt knows nothing: fall back to the newest kernel in the cache.
        cached = sorted(p.parent.parent.name for p in kroot.glob("*/root/.complete"))
        if not cached:
            raise
        package = cached[-1]
        progress(f"apt unavailable; using cached {package}")
    kdir = kroot / package
    kdir.mkdir(parents=True, exist_ok=True)
    with _locked(kroot / f"{package}.lock"):
        _download_and_unpack(package, kdir, progress)
        vmlinuz, mods, version = _find_files(kdir / "root")
        elf = _ensure_elf(vmlinuz, kdir, progress)
        bundle = KernelBundle(version=version, vmlinuz=vmlinuz, elf=elf, modules_dir=mods,
                              root=kdir / "root", boot_image=vmlinuz, package=package)
        if not verify:
            return dataclasses.replace(bundle, boot_image=elf or vmlinuz)
        qv = qemu_version()
        if qv is None:
            progress("QEMU is not installed: boot images not verified")
            return dataclasses.replace(bundle, boot_image=elf or vmlinuz)
        state_path = kdir / STATE_FILE
        state = None
        if state_path.exists():
            with contextlib.suppress(ValueError, OSError):
                state = json.loads(state_path.read_text())
        if (not state or state.get("version") != STATE_VERSION or state.get("qemu") != qv
                or "bzimage" not in state.get("times", {})):
            progress(f"verifying the boot images of {version} under QEMU")
            state = _verify(bundle, progress)
            tmp = state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=1) + "\n")
            os.rename(tmp, state_path)
    times = state.get("times", {})
    pvh_ok = elf is not None and "pvh" in times
    # PVH skips the real-mode setup and the self-decompression; it is normally about twice
    # as fast.  A small margin keeps one noisy measurement from switching images.
    use_elf = pvh_ok and times["pvh"] <= times["bzimage"] * PVH_MARGIN
    return dataclasses.replace(bundle, elf=elf if pvh_ok else None,
                               boot_image=elf if use_elf and elf else vmlinuz,
                               boot_times=dict(times))


def cached_kernels(cache_dir: str | os.PathLike | None = None) -> list[tuple[str, Path, int]]:
    """The kernel packages unpacked in the cache: (package, directory, bytes on disk)."""
    kroot = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "kernel"
    out = []
    for d in sorted(p for p in kroot.glob("linux-image-*") if p.is_dir()):
        total = sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and not f.is_symlink())
        out.append((d.name, d, total))
    return out


def prune_kernels(keep: str, cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Remove every cached kernel package but ``keep``; one being prepared right now (its lock
    is held) is left alone.  Returns the packages removed."""
    removed = []
    for package, directory, _ in cached_kernels(cache_dir):
        if package == keep:
            continue
        lock_path = directory.parent / f"{package}.lock"
        with open(lock_path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            shutil.rmtree(directory, ignore_errors=True)
            os.unlink(lock_path)
        removed.append(package)
    return removed
