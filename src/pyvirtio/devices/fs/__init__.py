"""virtio-fs: a host directory shared with the guest (VIRTIO 1.3, 5.11).

* :mod:`.device` -- the virtio device: hiprio and request queues, a thread pool for requests.
* :mod:`.server` and :mod:`.ops` -- the FUSE server core: request bytes in, reply bytes out.
* :mod:`.passthrough` and :mod:`.inodes` -- the back-end: the shared directory through O_PATH
  handles, node ids and file handles.
* :mod:`.wire` -- FUSE request parsing and reply building; :mod:`.sysc` -- libc calls the os
  module lacks.
"""

from .device import FsDevice
from .passthrough import PassthroughFs
from .server import FuseServer

__all__ = ["FsDevice", "FuseServer", "PassthroughFs"]
