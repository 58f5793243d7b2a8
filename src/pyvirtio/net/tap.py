"""``--tap=NAME``: a Linux TAP interface (``/dev/net/tun`` with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).

Frames to and from the kernel carry a 12-byte ``virtio_net_hdr`` (TUNSETVNETHDRSZ), so the
guest's checksum and segmentation offloads pass through untouched: the kernel finishes a partial
checksum or segments a 64 KiB TCP frame itself, and (after TUNSETOFFLOAD) hands the guest frames
with partial checksums or GSO when the guest negotiated it can take them.  Reads go straight into
the guest's receive buffers with ``os.readv``; writes hand the guest's transmit buffers to
``os.writev``.

The interface is created if it does not exist (and disappears when we close it, unless it was made
persistent by someone else).  ``netns`` creates it inside a named network namespace
(``/run/netns/NAME``) instead of ours.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import struct
import threading

from ..errors import UsageError
from ..limits import PeerLog
from ..spec.net import NetFeature as F
from .backend import READ, WRITE, BuffersRefused, NetBackend, Views, VNET_HDR_SIZE

log = logging.getLogger(__name__)

TUN_PATH = "/dev/net/tun"
# <linux/if_tun.h>
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
TUNGETFEATURES = 0x800454CF  # _IOR('T', 207, unsigned int)
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
TUNSETVNETHDRSZ = 0x400454D8  # _IOW('T', 216, int)
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
IFNAMSIZ = 16
CLONE_NEWNET = 0x40000000

#: virtio-net offloads a TAP can take with a vnet header.  HOST_*: the guest sends partial
#: checksums / GSO frames and the kernel finishes them.  GUEST_*: the kernel may send them.
TAP_OFFLOADS = sum(1 << f for f in (F.CSUM, F.HOST_TSO4, F.HOST_TSO6, F.HOST_ECN, F.GUEST_CSUM,
                                    F.GUEST_TSO4, F.GUEST_TSO6, F.GUEST_ECN))
#: Guest (receive) offload bits → TUNSETOFFLOAD flags.
_GUEST_TO_TUN = ((F.GUEST_CSUM, TUN_F_CSUM), (F.GUEST_TSO4, TUN_F_TSO4), (F.GUEST_TSO6, TUN_F_TSO6),
                 (F.GUEST_ECN, TUN_F_TSO_ECN))


def tun_offload_flags(features: int) -> int:
    """TUNSETOFFLOAD flags for the negotiated guest offloads (TSO needs checksum offload)."""
    if not features & (1 << F.GUEST_CSUM):
        return 0
    return sum(flag for bit, flag in _GUEST_TO_TUN if features & (1 << bit))


def tun_available() -> str | None:
    """None when a TAP can be created here, else the reason it cannot."""
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"{TUN_PATH}: {exc.strerror}"
    os.close(fd)
    return None


class TapBackend(NetBackend):
    kind = "tap"
    vnet_hdr = True

    def __init__(self, name: str, *, vnet_hdr: bool = True, netns: str | None = None):
        super().__init__()
        if not name or len(name.encode()) >= IFNAMSIZ:
            raise UsageError(f"TAP name {name!r} must have 1 to {IFNAMSIZ - 1} bytes")
        self.vnet_hdr = vnet_hdr
        self.fd = run_in_netns(netns, lambda: self._open(name)) if netns else self._open(name)
        self.name = self._ifname
        self.offload_features = TAP_OFFLOADS if vnet_hdr and self._probe_offloads() else 0
        self.stats.update(errors=0)
        self.log = PeerLog(log)

    def describe(self) -> str:
        return f"tap:{self.name}"

    def _open(self, name: str) -> int:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if self.vnet_hdr else 0)
            ifr = struct.pack(f"{IFNAMSIZ}sH22x", name.encode(), flags)
            ifr = fcntl.ioctl(fd, TUNSETIFF, ifr)
            self._ifname = ifr[:IFNAMSIZ].split(b"\0", 1)[0].decode()
            if self.vnet_hdr:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
        except OSError:
            os.close(fd)
            raise
        return fd

    def _probe_offloads(self) -> bool:
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, 0)
            return True
        except OSError as exc:
            log.info("tap %s: no offloads (%s)", self.name, exc)
            return False

    def set_offloads(self, features: int) -> None:
        if self.offload_features and self.fd >= 0:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, tun_offload_flags(features))

    def poll_fds(self, read: bool, write: bool) -> list[tuple[int, int]]:
        events = (READ if read else 0) | (WRITE if write else 0)
        return [(self.fd, events)] if events and self.fd >= 0 else []

    def recv_into(self, views: Views) -> int | None:
        try:
            n = os.readv(self.fd, views)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            self.stats["errors"] += 1
            if exc.errno in (errno.EINVAL, errno.EFAULT):  # the buffers, not the TAP: retire them
                raise BuffersRefused(f"tap {self.name}: readv refused {len(views)} buffers: "
                                     f"{exc.strerror}") from None
            self.log.warning("tap %s: read failed: %s", self.name, exc)
            return None
        self.stats["rx_frames"] += 1
        return n

    def send(self, views: Views) -> bool:
        try:
            os.writev(self.fd, views)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            # EIO: the interface is down; EINVAL: the kernel refused the header or frame.
            self.stats["tx_dropped"] += 1
            if exc.errno not in (errno.EIO,):
                self.stats["errors"] += 1
                self.log.info("tap %s: write failed: %s", self.name, exc)
            return True
        self.stats["tx_frames"] += 1
        return True

    def close(self) -> None:
        super().close()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def run_in_netns(netns: str, fn):
    """Run ``fn`` in a thread that joined network namespace ``netns`` (a name under
    ``/run/netns`` or a path) and return its result; setns only moves the calling thread, so
    ours stays where it is.  Sockets and TAPs created there stay in that namespace."""
    path = netns if "/" in netns else f"/run/netns/{netns}"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    result: dict = {}

    def run():
        try:
            nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(nsfd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {path}: {os.strerror(err)}")
            finally:
                os.close(nsfd)
            result["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=run, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
