"""The net device suite (tests/test_net_device.py) again, with the device on a virtio-msg bus
(in-process queue binding) instead of loopback: the same tests, the same assertions — the net
driver runs unchanged over virtio-msg."""

from __future__ import annotations

import pytest

import test_net_device
from pyvirtio.virtio_msg.local import InProcessBusTransport
from test_net_device import probe  # noqa: F401 - the suite's fixture

SKIP = {
    # It names the loopback engine's worker thread; virtio-msg's device side has its own.
    "test_frames_for_another_pair_are_signalled_from_the_worker",
    # These expect loopback's synchronous config interrupt (the handler runs inside set_link());
    # over virtio-msg EVENT_CONFIG arrives when the driver waits: the link change is tested that
    # way in tests/test_config_change_transports.py (virtio-msg columns).
    "test_link_down_and_up_are_config_interrupts",
    "test_backend_losing_its_peer_takes_the_link_down",
    "test_announce_is_requested_and_acked",
}
globals().update({name: fn for name, fn in vars(test_net_device).items()
                  if name.startswith("test_") and name not in SKIP})  # collected here too

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True)
def over_virtio_msg(monkeypatch):
    monkeypatch.setattr(test_net_device, "LoopbackTransport", InProcessBusTransport)
