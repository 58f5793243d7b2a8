"""The host side of a network device: where transmitted frames go, where received frames come from.

A :class:`NetBackend` is part of the I/O shell.  The device (sans-I/O) only calls the methods
below; none of them blocks:

* :meth:`~NetBackend.recv_into` reads **one** frame into a list of writable views (guest memory
  when it can: ``os.readv`` on a TAP fd lands straight in the guest's receive buffers);
* :meth:`~NetBackend.send` takes one frame as a list of views (the guest's transmit buffers; a TAP
  back-end hands them to ``os.writev`` as they are);
* :meth:`~NetBackend.poll_fds` says which fds the device's worker must watch, given what the
  device wants (frames to read; room to write), and :meth:`~NetBackend.service` lets the back-end
  do its own housekeeping (accept a connection, clear an eventfd) when one of them fires.

``vnet_hdr`` says whether frames to and from the back-end start with the 12-byte
``virtio_net_hdr``; only such back-ends can take the checksum and segmentation offloads they list
in ``offload_features``.  ``can_wait`` says whether frames wait in the back-end (a kernel queue,
a TCP window, a switch inbox) while the device is not reading; the device drops received frames
only for back-ends that cannot wait.
"""

from __future__ import annotations

import select
from typing import TYPE_CHECKING, Sequence

from ..errors import DriverFault, Scope
from ..spec.net import NET_HDR_SIZE

if TYPE_CHECKING:
    from ..virtq.vector import ReadableBatch

#: poll(2) events, as :meth:`NetBackend.poll_fds` returns them (the engine polls with these).
READ = select.POLLIN
WRITE = select.POLLOUT
#: The largest frame a back-end passes (a 64 KiB GSO frame plus headers); larger ones are errors.
MAX_FRAME = 65536 + 64
VNET_HDR_SIZE = NET_HDR_SIZE
#: iovecs one readv/writev/sendmsg takes (Linux's UIO_MAXIOV); more is EINVAL/EMSGSIZE.  A chain
#: maps to at most ``limits.MAX_CHAIN_SEGMENTS`` (= this) buffers, but a back-end that adds its
#: own iovec (a length prefix) or gathers several chains must check with :func:`fit_iov`.
IOV_MAX = 1024

Views = Sequence[memoryview]


class BuffersRefused(DriverFault):
    """The back-end's read refused the receive buffers it was handed (readv EINVAL or EFAULT):
    they can never take a frame, so the device returns them empty and goes on."""

    scope = Scope.REQUEST


class NetBackend:
    """Base class with the defaults of a back-end that has no fd, no header and no offloads."""

    kind = "backend"
    vnet_hdr = False
    offload_features = 0
    can_wait = True

    def __init__(self) -> None:
        self.stats = {"rx_frames": 0, "tx_frames": 0, "tx_dropped": 0}
        self.closed = False

    def describe(self) -> str:
        return self.kind

    # --- what the device's worker watches -----------------------------------------------------------

    def poll_fds(self, read: bool, write: bool) -> list[tuple[int, int]]:
        """``(fd, READ|WRITE)`` pairs to watch while the device wants to ``read`` frames and/or
        waits for room to ``write``.  Empty when there is nothing to watch."""
        return []

    def service(self) -> None:
        """Called by the device's worker when a watched fd fired (or it was woken), before the
        device reads or writes."""

    # --- data path ---------------------------------------------------------------------------------

    def recv_into(self, views: Views) -> int | None:
        """Read one waiting frame into ``views``; returns its whole length (more than the views
        hold if it was truncated), or None when no frame is waiting.  Raises
        :class:`BuffersRefused` when the views can never take a frame (the frame stays)."""
        return None

    def send(self, views: Views) -> bool:
        """Send one frame.  True: taken (sent, queued, or dropped on purpose).  False: would block;
        nothing was taken — offer the same frame again once ``poll_fds(write=True)`` fires."""
        raise NotImplementedError

    def send_batch(self, views: Views, skip: int) -> int:
        """Send a batch of frames, one per view, each after ``skip`` bytes (the virtio-net header,
        for a back-end without ``vnet_hdr``).  Returns how many were taken, from the first; the
        back-end would block on the next one (offer it again, as for :meth:`send`)."""
        for i, view in enumerate(views):
            if not self.send([view[skip:]]):
                return i
        return len(views)

    def send_readable(self, batch: ReadableBatch, skip: int) -> int:
        """:meth:`send_batch` for a batch the device popped as arrays
        (:class:`pyvirtio.virtq.vector.ReadableBatch`: heads, offsets and lengths of buffers in
        one guest memory region).  The default makes a view per frame; a back-end that can take
        the frames without one (``--null``: one strided copy) overrides it."""
        return self.send_batch(batch.views(), skip)

    @property
    def link_up(self) -> bool:
        """Whether the back-end has a peer (a stream back-end without one reports link down)."""
        return not self.closed

    def set_offloads(self, features: int) -> None:
        """The virtio-net features the driver negotiated; a vnet_hdr back-end enables the
        matching offloads (frames it may now pass with partial checksums or GSO)."""

    def close(self) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def copy_into(views: Views, data) -> int:
    """Copy ``data`` into ``views`` in order; returns the bytes copied (at most their room)."""
    src = memoryview(data).cast("B")
    pos, n = 0, len(src)
    for view in views:
        if pos >= n:
            break
        take = min(len(view), n - pos)
        view[:take] = src[pos:pos + take]
        pos += take
    return pos


def fit_iov(views: Views, reserve: int = 0) -> Views:
    """``views`` as they are, or joined into one buffer when they and ``reserve`` more iovecs
    would not fit one system call (a frame is at most MAX_FRAME bytes: the copy is cheap)."""
    if len(views) + reserve <= IOV_MAX:
        return views
    return [memoryview(join_views(views))]


def join_views(views: Views) -> bytes:
    if len(views) == 1:
        return bytes(views[0])
    return b"".join(views)
