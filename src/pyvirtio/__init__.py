"""pyvirtio: the standard virtual devices (virtio), in Python."""

__version__ = "0.1.0"
