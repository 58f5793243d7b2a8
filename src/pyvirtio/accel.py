"""The optional accelerated ring cores: the virtqueue modules (and the queue counters) compiled
with mypyc.

Why: the split and packed ring cores run per descriptor; compiled by mypyc (which ships with mypy)
from the very same typed source they do the same work — every index, descriptor and buffer checked
— with less interpreter overhead (``benchmarks/README.md``, "Accelerated ring cores").

How: ``pyvirtio accelerate`` (:func:`build`) copies the installed package to a temporary
directory, compiles :data:`MODULES` there with ``python -m mypyc`` and keeps only the extension
modules, under ``$PYVIRTIO_ACCEL_DIR`` (default ``$PYVIRTIO_CACHE/accel`` or
``~/.cache/pyvirtio/accel``) in a directory named by :func:`build_key`: a hash of this install's
location, the Python version and the compiled modules' source.  Importing :mod:`pyvirtio` calls
:func:`activate`, which puts a finder for those extension modules first on ``sys.meta_path`` only
when a build for exactly this source exists — edit one of the modules and the pure Python
source is used again until the next ``pyvirtio accelerate``.  Nothing is written into the
installed package, and an install without a compiler is the pure-Python pyvirtio, unchanged.

Fallback and escape hatch: ``PYVIRTIO_PURE=1`` in the environment ignores any build;
``pyvirtio accelerate --remove`` deletes this install's builds.  ``pyvirtio --version`` and
``pyvirtio bench virtqueue`` say which cores run (:func:`describe`).

Left out of the compiled set: ``memory.py`` (``qtest.memory.QtestMemory`` subclasses
``GuestMemory`` and overrides its ``generation`` attribute with a property, which compiled callers
would bypass), ``fence.py`` (ctypes: nothing for mypyc to speed up) and the modules above the
rings.  A method patched onto a compiled class at run time is seen by callers that look it up by
name (interpreted code, ``drain_queue``'s untyped queue), not by compiled callers of a typed one.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from types import ModuleType

# Everything else is imported where it is used: ``import pyvirtio`` runs :func:`activate`, which
# must cost next to nothing when there is no build (hashlib alone takes milliseconds to import).

#: What is compiled: the ring cores, together (mypyc calls across modules of one build directly;
#: a core compiled alone, calling into interpreted neighbours, measured slower).
MODULES = tuple(f"pyvirtio.virtq.{name}" for name in (
    "base", "chain", "batch", "drain", "event", "layout",
    "split_device", "split_driver", "packed_device", "packed_driver")) + (
    "pyvirtio.stats",)  # the per-queue counters the device side bumps per chain: +10% there

#: What the compiled modules import from pyvirtio: part of a build's name too, since mypyc may
#: copy a constant's value (``limits``, ``spec.ring``) or a class's layout into the build.
DEPENDENCIES = tuple(f"pyvirtio.{name}" for name in (
    "errors", "fence", "limits", "memory", "spec.ring", "virtq.__init__"))

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_MANIFEST = "manifest.json"
_finder: "_Finder | None" = None


class AccelError(Exception):
    """The accelerated build cannot be made here (no compiler, no mypyc, a failed build)."""


def accel_root() -> str:
    """Where builds live: ``$PYVIRTIO_ACCEL_DIR``, else ``$PYVIRTIO_CACHE/accel``, else
    ``~/.cache/pyvirtio/accel``."""
    explicit = os.environ.get("PYVIRTIO_ACCEL_DIR")
    if explicit:
        return explicit
    cache = os.environ.get("PYVIRTIO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pyvirtio")
    return os.path.join(cache, "accel")


def _source(module: str) -> str:
    return os.path.join(_PACKAGE_DIR, *module.split(".")[1:]) + ".py"


def build_key() -> str:
    """The name of this install's build: its location, the interpreter's ABI and the source of
    every compiled module and of what they import (a build is used only for exactly the source
    it was made from)."""
    import hashlib
    import sysconfig

    h = hashlib.sha256()
    h.update(_PACKAGE_DIR.encode())
    h.update(sys.implementation.cache_tag.encode())
    h.update(str(sysconfig.get_config_var("EXT_SUFFIX")).encode())
    for module in MODULES + DEPENDENCIES:
        with open(_source(module), "rb") as f:
            h.update(module.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()[:24]


def build_dir() -> str:
    return os.path.join(accel_root(), build_key())


class _Finder:
    """Finds the compiled modules (and mypyc's shared library of the build) in the build dir."""

    def __init__(self, files: dict[str, str]):
        self.files = files

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        import importlib.machinery
        import importlib.util

        loader = importlib.machinery.ExtensionFileLoader(fullname, file)
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def activate() -> bool:
    """Use this install's build if there is one (called when :mod:`pyvirtio` is imported)."""
    global _finder
    if _finder is not None:
        return True
    if os.environ.get("PYVIRTIO_PURE") or not os.path.isdir(accel_root()):
        return False
    import json

    try:
        directory = build_dir()
        with open(os.path.join(directory, _MANIFEST)) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError):
        return False
    if not set(MODULES) <= set(files) or any(name in sys.modules for name in MODULES):
        return False  # an incomplete build, or the pure modules already imported
    _finder = _Finder({name: os.path.join(directory, rel) for name, rel in files.items()})
    sys.meta_path.insert(0, _finder)
    return True


def active() -> bool:
    """Whether this process found this install's build (:func:`activate`)."""
    return _finder is not None


def compiled_modules() -> list[str]:
    """The ring-core modules that run compiled (imports them)."""
    import importlib
    import importlib.machinery

    out = []
    for name in MODULES:
        module = importlib.import_module(name)
        if str(getattr(module, "__file__", "")).endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            out.append(name)
    return out


def describe() -> str:
    """One line: which ring cores run (``accelerated: yes (mypyc, 10 modules)`` or ``no``)."""
    import importlib.util

    n = len(compiled_modules())
    pure = os.environ.get("PYVIRTIO_PURE")
    # pyvirtio.virtq.vector (the transmit batch as numpy arrays) runs where numpy is installed
    vector = "; vectorised batches: " + ("yes (numpy)" if not pure and importlib.util.find_spec("numpy")
                                         else "no")
    if not n:
        reason = " (PYVIRTIO_PURE is set)" if pure else ""
        return f"accelerated: no, pure Python{reason}{vector}"
    where = f" from {build_dir()}" if _finder is not None else ""
    return f"accelerated: yes (mypyc, {n} of {len(MODULES)} modules{where}){vector}"


def missing_tools() -> list[str]:
    """What a build needs and this machine lacks (empty: it can build)."""
    import importlib.util
    import shutil
    import sysconfig

    missing = []
    if importlib.util.find_spec("mypyc") is None:
        missing.append("mypyc (pip install mypy)")
    cc = (sysconfig.get_config_var("CC") or "gcc").split()[0]
    if shutil.which(cc) is None:
        missing.append(f"a C compiler ({cc}: apt-get install gcc)")
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        missing.append(f"the Python headers ({include}/Python.h: apt-get install python3-dev)")
    return missing


def build(progress: Callable[[str], None] | None = None) -> str:
    """Compile :data:`MODULES` for this install; returns the build directory.  Raises
    :class:`AccelError` when tools are missing or the build fails (with mypyc's last lines)."""
    import importlib.machinery
    import json
    import shutil
    import subprocess
    import tempfile

    missing = missing_tools()
    if missing:
        raise AccelError("cannot build the accelerated modules: missing " + ", ".join(missing))
    dest = build_dir()
    os.makedirs(accel_root(), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyvirtio-accel-") as tmp:
        shutil.copytree(_PACKAGE_DIR, os.path.join(tmp, "pyvirtio"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        sources = [os.path.relpath(_source(m), os.path.dirname(_PACKAGE_DIR)) for m in MODULES]
        if progress:
            progress(f"compiling {len(MODULES)} modules with mypyc (about a minute)")
        r = subprocess.run([sys.executable, "-m", "mypyc", *sources], cwd=tmp, capture_output=True,
                           text=True, env={**os.environ, "PYVIRTIO_PURE": "1"})
        if r.returncode:
            tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
            raise AccelError(f"mypyc failed (exit {r.returncode}):\n{tail}")
        stage = tempfile.mkdtemp(prefix=".build-", dir=accel_root())
        files = {}
        for root, dirs, names in os.walk(tmp):
            if root == tmp:
                dirs[:] = [d for d in dirs if d != "build"]  # mypyc's C files and object copies
            for name in names:
                if not name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
                    continue
                rel = os.path.relpath(os.path.join(root, name), tmp)
                module = rel.split(".", 1)[0].replace(os.sep, ".")
                os.makedirs(os.path.dirname(os.path.join(stage, rel)) or stage, exist_ok=True)
                shutil.copy2(os.path.join(tmp, rel), os.path.join(stage, rel))
                files[module] = rel
    if not set(MODULES) <= set(files):
        shutil.rmtree(stage, ignore_errors=True)
        raise AccelError(f"mypyc built {sorted(files)}, not all of {list(MODULES)}")
    with open(os.path.join(stage, _MANIFEST), "w") as f:
        json.dump({"files": files, "package": _PACKAGE_DIR, "python": sys.version.split()[0]}, f, indent=1)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(stage, dest)
    return dest


def remove() -> list[str]:
    """Delete every build made for this install (any source version); returns what went."""
    import json
    import shutil

    root, gone = accel_root(), list[str]()
    if not os.path.isdir(root):
        return gone
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        try:
            with open(os.path.join(path, _MANIFEST)) as f:
                package = json.load(f).get("package")
        except (OSError, ValueError):
            package = None
        if package == _PACKAGE_DIR or name.startswith(".build-"):
            shutil.rmtree(path, ignore_errors=True)
            gone.append(path)
    return gone
