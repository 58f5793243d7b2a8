"""Media for the SCSI tests and benchmarks: a disk image of known bytes and an ISO 9660 image
made on the host with ``xorriso`` (Rock Ridge + Joliet), with the files it holds and their
SHA-256 so a guest or a driver can check what it reads back.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ISO_BLOCK = 2048


def xorriso_available() -> bool:
    """Whether ``xorriso`` (Debian package xorriso) is on PATH."""
    return shutil.which("xorriso") is not None


def make_disk(path: str | os.PathLike, size: int, seed: int = 1) -> bytes:
    """Write ``size`` pseudo-random bytes (deterministic for ``seed``) to ``path``; returns them."""
    data = random.Random(seed).randbytes(size)
    Path(path).write_bytes(data)
    return data


@dataclass
class IsoImage:
    """An ISO made by :func:`make_iso`: its path, volume id, and each file's relative path with
    its SHA-256."""

    path: str
    volume_id: str
    files: dict[str, str]

    @property
    def blocks(self) -> int:
        """The image's size in 2048-byte blocks."""
        return os.path.getsize(self.path) // ISO_BLOCK


def make_iso(path: str | os.PathLike, files: dict[str, bytes], volume_id: str = "PYVIRTIO") -> IsoImage:
    """Build an ISO 9660 image holding ``files`` (relative path -> bytes) with xorriso; raises
    RuntimeError with xorriso's message if it fails."""
    path = Path(path)
    tree = path.with_suffix(".tree")
    shutil.rmtree(tree, ignore_errors=True)
    for name, data in files.items():
        target = tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    proc = subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-V", volume_id,
                           "-o", str(path), str(tree)], capture_output=True, text=True)
    shutil.rmtree(tree, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"xorriso failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return IsoImage(str(path), volume_id, {n: hashlib.sha256(d).hexdigest() for n, d in files.items()})


def sample_files(seed: int = 7) -> dict[str, bytes]:
    """A few files of assorted sizes (empty, small text, sizes off block boundaries, a nested
    directory) to put on an ISO."""
    rnd = random.Random(seed)
    return {"README.TXT": b"pyvirtio virtio-scsi test medium\n",
            "empty.bin": b"",
            "data/odd.bin": rnd.randbytes(2048 * 3 + 17),
            "data/big.bin": rnd.randbytes(300_000),
            "data/deep/nested.txt": b"nested " * 100}
