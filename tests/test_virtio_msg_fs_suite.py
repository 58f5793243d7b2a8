"""The fs driver suite (tests/test_fs_driver.py) again with pyvirtio's virtio-fs device on a
virtio-msg bus: the socket binding (memfds over a UNIX socket) and the in-process queue binding.
The same test bodies; only the ``share`` fixture is this file's, with the virtio-msg back-ends."""

from __future__ import annotations

import contextlib

import pytest

import test_fs_driver
from pyvirtio.virtio_msg.local import InProcessBusTransport, device_transport

globals().update({name: fn for name, fn in vars(test_fs_driver).items()
                  if name.startswith("test_")})  # the suite's tests, collected here too

pytestmark = pytest.mark.timeout(120)


@contextlib.contextmanager
def virtio_msg(share, tmp_path, binding):
    device = test_fs_driver._device(share)
    try:
        with device_transport(device, binding, str(tmp_path / "fs-vmsg.sock"),
                              memory_size=test_fs_driver.MEMORY) as t:
            yield t
    finally:
        device.close()


BACKENDS = {"pyvirtio-virtio-msg": lambda s, t: virtio_msg(s, t, "socket"),
            "pyvirtio-virtio-msg-queue": lambda s, t: virtio_msg(s, t, "queue")}


@pytest.fixture(autouse=True)
def over_virtio_msg(monkeypatch):
    """The tests that build their own loopback transport get the in-process bus instead."""
    import pyvirtio.loopback
    monkeypatch.setattr(pyvirtio.loopback, "LoopbackTransport", InProcessBusTransport)


@pytest.fixture(params=sorted(BACKENDS))
def share(request, tmp_path):
    """(client, host directory) as tests/test_fs_driver.py's, over virtio-msg."""
    yield from test_fs_driver.open_share(BACKENDS[request.param], tmp_path)
