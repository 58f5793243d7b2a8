"""One error tree for pyvirtio.

``VirtioError`` is the root.  Every error says whose fault it was:

* ``DriverFault`` — the driver side (a guest's ring, a guest's register write) broke a rule;
* ``DeviceFault`` — the device side (a back-end's used ring, a reply, a config) broke a rule;
* ``PeerProtocolError`` — a vhost-user peer sent something the protocol forbids;
* ``UsageError`` — our own API was misused by the caller (a bug in the calling program);
* ``GuestMemoryError`` — an address outside every mapped region;
* ``CliError`` — what the ``pyvirtio`` command reports in one line, with its exit status.

and how far the damage reaches (``scope``): the request, the queue, the device or the connection.
Cores raise these; the I/O shell decides what to do (log, mark broken, reset, reconnect).
"""

from __future__ import annotations

from enum import Enum


class Scope(Enum):
    """How much an error breaks."""

    REQUEST = "request"  # only this request fails; the queue goes on
    QUEUE = "queue"  # the virtqueue is broken until reset
    DEVICE = "device"  # the whole device needs a reset (DEVICE_NEEDS_RESET)
    CONNECTION = "connection"  # the transport connection must be dropped


class VirtioError(Exception):
    """Root of every error pyvirtio raises on purpose."""

    scope: Scope = Scope.DEVICE


class UsageError(VirtioError):
    """The calling program misused a pyvirtio API (our caller's bug, not the peer's)."""


class GuestMemoryError(VirtioError):
    """An access outside every guest memory region (or wrapping past 2**64)."""

    scope = Scope.QUEUE

    def __init__(self, addr: int, length: int, why: str = "outside guest memory"):
        self.addr = addr
        self.length = length
        super().__init__(f"guest memory access [{addr:#x}, +{length:#x}) {why}")


class DriverFault(VirtioError):
    """The driver (a guest) broke a rule of the spec: its fault, not ours."""

    scope = Scope.QUEUE


class DeviceFault(VirtioError):
    """The device (a back-end) broke a rule of the spec: its fault, not ours."""

    scope = Scope.QUEUE


class QueueBroken(VirtioError):
    """A call on a virtqueue that an earlier fault marked broken."""

    scope = Scope.QUEUE


class QueueFull(UsageError):
    """The driver tried to add more descriptors than the ring has free."""

    scope = Scope.REQUEST


class DeviceStatusError(VirtioError):
    """A status transition the spec forbids."""


class FeatureNegotiationError(VirtioError):
    """The two sides could not agree on features (FEATURES_OK refused, VERSION_1 missing …)."""


class ConfigGenerationError(DeviceFault):
    """The config generation counter never settled while reading the config space."""

    scope = Scope.DEVICE


class RequestError(VirtioError):
    """A device answered a request with a failure status (IOERR, UNSUPP …)."""

    scope = Scope.REQUEST

    def __init__(self, message: str, status: int):
        self.status = status
        super().__init__(message)


class PeerProtocolError(VirtioError):
    """A transport peer (vhost-user front-end or back-end) broke the protocol."""

    scope = Scope.CONNECTION


class PeerDisconnected(PeerProtocolError):
    """The peer hung up."""


class TransportError(VirtioError):
    """The transport itself failed (socket, eventfd, mmap)."""

    scope = Scope.CONNECTION


class CliError(VirtioError):
    """A runtime failure the ``pyvirtio`` command reports in one line: a missing file, a socket
    in use (exit status 1)."""

    exit_code = 1


class CliUsageError(CliError):
    """The command line itself is wrong: a bad value, flags that do not go together (exit 2)."""

    exit_code = 2
