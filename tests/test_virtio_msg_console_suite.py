"""The console suites (tests/test_console_loopback.py, tests/test_console_driver.py) again, with the
device on a virtio-msg bus (in-process queue binding) instead of loopback: the same tests, the
same assertions — the console driver runs unchanged over virtio-msg."""

from __future__ import annotations

import pytest

import test_console_driver
import test_console_loopback
from pyvirtio.virtio_msg.local import InProcessBusTransport

SUITES = (test_console_loopback, test_console_driver)
# These expect loopback's synchronous config interrupt (the handler runs inside resize()); over
# virtio-msg EVENT_CONFIG arrives when the driver waits: the console size is tested that way in
# tests/test_config_change_transports.py (virtio-msg columns).
SKIP = {"test_resize_raises_a_config_interrupt_and_the_driver_sees_the_size",
        "test_resize_without_multiport_is_config_only"}

for _suite in SUITES:  # the suites' tests, collected here too
    globals().update({name: fn for name, fn in vars(_suite).items()
                      if name.startswith("test_") and name not in SKIP})

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True)
def over_virtio_msg(monkeypatch):
    for suite in SUITES:
        monkeypatch.setattr(suite, "LoopbackTransport", InProcessBusTransport)
