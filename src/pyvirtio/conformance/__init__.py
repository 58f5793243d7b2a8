"""Conformance suites that any implementation can be pointed at.

* :mod:`.vhost_user` — a vhost-user back-end, over its socket (``pyvirtio check``);
* :mod:`.session` — the hand-driven front-end those checks use.

(The device-model checks every pyvirtio device passes live in :mod:`pyvirtio.testing.conformance`.)
"""
