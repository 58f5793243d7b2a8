"""Conformance suites that any implementation can be pointed at.

* :mod:`.device_model` — ``check_device(factory)``: the device-independent rules of VIRTIO 1.3
  chapters 2 and 3 that every device class passes, in process (Trio's ``check_two_way_stream``);
* :mod:`.vhost_user` — a vhost-user back-end, over its socket (``pyvirtio check``);
* :mod:`.session` — the hand-driven front-end those checks use.
"""
