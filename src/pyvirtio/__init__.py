"""pyvirtio: the standard virtual devices (virtio), in Python."""

__version__ = "0.1.0"


def version() -> str:
    """The installed distribution's version (the source tree's when it is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version
    try:
        return dist_version("pyvirtio")
    except PackageNotFoundError:
        return __version__


def _use_accelerated_cores() -> None:
    """Use this install's compiled ring cores if ``pyvirtio accelerate`` built them (pyvirtio.accel)."""
    from .accel import activate
    activate()


_use_accelerated_cores()
