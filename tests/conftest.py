"""Shared fixtures: a real Linux guest kernel and a helper to boot it (and a loader for the
scripts of ``benchmarks/``); every test leaves the stop signals' handlers as it found them.

``guest_kernel`` prepares a Debian kernel once per session (cached in $PYVIRTIO_CACHE or
~/.cache/pyvirtio).  Without QEMU or busybox the guest tests are skipped — except when
``CI`` is set, where a missing tool is a failure.  Tests that use these fixtures get the
``guest`` marker automatically (deselect with ``-m "not guest"``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import sys

import pytest
from pyvirtio.signals import STOP_SIGNALS
from pyvirtio.testing.env import require


@pytest.fixture(autouse=True)
def _stop_signal_handlers():
    """A daemon run in-process (``main(["serve", ...])``) keeps its handlers after it returns (a
    late signal must still stop it while it closes): put back what the test found, so that no
    later test, nor Ctrl-C, calls into a finished daemon."""
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        if signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


def pytest_collection_modifyitems(items):
    for item in items:
        if {"guest_kernel", "boot"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.guest)


@pytest.fixture(scope="session")
def guest_kernel():
    from pyvirtio.guest import prepare_kernel
    from pyvirtio.guest.initramfs import BUSYBOX_PATHS
    from pyvirtio.guest.qemu import qemu_binary

    missing = [name for name, ok in (
        (qemu_binary(), shutil.which(qemu_binary())),
        ("busybox-static", any(os.path.exists(p) for p in BUSYBOX_PATHS)
         or os.environ.get("PYVIRTIO_BUSYBOX")),
    ) if not ok]
    require(not missing, "guest tests", "need " + ", ".join(missing))
    return prepare_kernel(progress=lambda m: print(f"[guest] {m}", file=sys.stderr))


@pytest.fixture
def boot(guest_kernel, tmp_path):
    """``boot(script, **kw)`` runs a guest to completion (``boot_guest``);
    ``boot.start(script, **kw)`` starts one in the background (``start_guest``), killed at
    teardown.  Serial output goes to ``tmp_path/console-N.log``."""
    from pyvirtio.guest import boot_guest, start_guest

    counter = itertools.count()
    started = []

    def _kw(kw):
        kw.setdefault("console_log", tmp_path / f"console-{next(counter)}.log")
        return kw

    def _boot(script, **kw):
        return boot_guest(guest_kernel, script, **_kw(kw))

    def _start(script, **kw):
        g = start_guest(guest_kernel, script, **_kw(kw))
        started.append(g)
        return g

    _boot.start = _start
    _boot.kernel = guest_kernel
    yield _boot
    for g in started:
        g.close()


@pytest.fixture
def image(tmp_path):
    """A fresh 32 MiB sparse raw disk image (tests that need another size define their own)."""
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(32 << 20)
    return str(path)


@pytest.fixture
def server():
    """A pyvirtio vhost-user daemon in this process: ``server.add(...)``, then ``server.start()``
    runs its loop in a thread; shut down and closed after the test."""
    import threading

    from pyvirtio.vhost_user.backend.server import VhostUserServer

    srv = VhostUserServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    srv.start = thread.start
    yield srv
    srv.shutdown()
    if thread.is_alive():
        thread.join(10)
    srv.close()


@pytest.fixture(scope="session")
def benchmark_script():
    """Load a script of ``benchmarks/`` by name (``benchmark_script("blk_vhost_user")``) as a
    module, once per session: the benchmarks are programs, not a package."""
    import importlib.util

    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "benchmarks")
    loaded: dict = {}

    def load(name: str):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(f"{name}_script", os.path.join(here, f"{name}.py"))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]
    return load
