# Invariant: any exception that is not a typed pyvirtio error (pyvirtio.errors.VirtioError
# subclasses) is a finding; a hang is a finding.  Input: request chains (any layout, direct or
# indirect: header, data, status in any number of descriptors, or raw descriptors) put on a
# BlkDevice's request queue over a 64 KiB temp image, kicked (BlkDevice.handle_chain through
# process_queue), with completions reaped (host_ready) and everything finished at the end.
"""Fuzz target: the virtio-blk request parser and executor (VIRTIO 1.3, 5.2.6)."""

from __future__ import annotations

import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _device  # noqa: E402
from _harness import main  # noqa: E402

from pyvirtio.devices.blk import BlkDevice  # noqa: E402
from pyvirtio.spec import blk as spec  # noqa: E402

IMAGE_SIZE = 64 << 10
# The image is a memory file named through /proc: nothing is left on disk when the fuzzer ends
# the process without running exit handlers (as libFuzzer does at -max_total_time).
_image_fd = os.memfd_create("pyvirtio-fuzz-blk", os.MFD_CLOEXEC)
os.ftruncate(_image_fd, IMAGE_SIZE)
IMAGE = f"/proc/{os.getpid()}/fd/{_image_fd}"


def test_one_input(data: bytes) -> None:
    dev = BlkDevice(IMAGE, queue_max_size=16, aio="threads", locking=False)
    try:
        _device.bring_up(dev)
        _device.run(dev, [0], data, kick=lambda mem, q: dev.process_queue(mem, dev.queues[q]),
                    host=lambda mem: dev.host_ready(mem, 0, []))
        dev.quiesce(None, None, timeout=5.0)
    finally:
        dev.close()


def seeds() -> dict[str, bytes]:
    """The requests the blk tests send: read, write, flush, get-id, discard, write-zeroes,
    an unsupported type, a read past the end."""
    T = spec.BlkReqType

    def hdr(t, sector=0):
        return struct.pack("<IIQ", t, 0, sector)

    seg = struct.pack("<QII", 1, 2, 0)
    reqs = {
        "read": ([hdr(T.IN, 1)], [512, 1]),
        "write": ([hdr(T.OUT, 2), b"\xab" * 1024], [1]),
        "flush": ([hdr(T.FLUSH)], [1]),
        "get-id": ([hdr(T.GET_ID)], [20, 1]),
        "discard": ([hdr(T.DISCARD), seg], [1]),
        "write-zeroes": ([hdr(T.WRITE_ZEROES), seg], [1]),
        "unsupported": ([hdr(77)], [1]),
        "read-past-end": ([hdr(T.IN, IMAGE_SIZE // 512)], [512, 1]),
    }
    out = {}
    for name, (readable, writable) in reqs.items():
        s = _device.Seed([0])
        s.chain(0, readable, writable).kick(0).host()
        s.chain(0, [b"".join(readable)], writable, indirect=True).kick(0).host()
        out[name] = s.bytes()
    return out


if __name__ == "__main__":
    main(test_one_input, extra_modules=("_device",))
