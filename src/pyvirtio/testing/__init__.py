"""Test doubles shipped with pyvirtio, for its own tests and for anyone building on it.

* :mod:`.mock_driver` — :class:`MockSplitDriver`, a split ring written by hand from the driver
  side (any legal or hostile ring), and :func:`make_device_queue` to bind a device queue to it.
* :mod:`.mock_device` — ``MockDevice``, a scriptable device for driver tests.
* :mod:`.conformance` — ``check_device(factory)``, the device-independent rules every device passes.
"""

from .mock_driver import MockRequest, MockSplitDriver, make_device_queue

__all__ = ["MockRequest", "MockSplitDriver", "make_device_queue"]
