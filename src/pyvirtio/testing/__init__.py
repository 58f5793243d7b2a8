"""Test doubles shipped with pyvirtio, for its own tests and for anyone building on it.

* :mod:`.mock_driver` — :class:`MockSplitDriver`, a split ring written by hand from the driver
  side (any legal or hostile ring), and :func:`make_device_queue` to bind a device queue to it.
* :mod:`.mock_device` — ``MockDevice``, a scriptable device for driver tests.
* :mod:`.env` — :func:`~pyvirtio.testing.env.require`, skip a test (or fail it on CI) when the
  machine lacks what it needs.

The device-model conformance checks (``check_device``) live in :mod:`pyvirtio.conformance.device_model`.
"""

from .mock_driver import MockRequest, MockSplitDriver, make_device_queue

__all__ = ["MockRequest", "MockSplitDriver", "make_device_queue"]
