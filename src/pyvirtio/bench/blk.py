"""A host-side load generator for vhost-user-blk back-ends (``pyvirtio bench blk``).

pyvirtio's block driver brings the device up over :class:`~pyvirtio.vhost_user.transport.
VhostUserTransport`; then this module drives the rings itself, the way a fast guest driver does:

* **real concurrency**: ``iodepth`` requests stay in flight on every queue; a completed slot is
  refilled at once;
* **zero copy, no per-request allocation**: each slot owns guest buffers allocated once (header,
  data, status byte) and its descriptor lists are built once; a request only rewrites the
  header's sector (``struct.pack_into``) and hands the same buffers to ``SplitDriverQueue.add``;
  data is never read or copied by the generator;
* **batching and event-index suppression**: every free slot is refilled before one
  ``kick_prepare`` per queue decides (EVENT_IDX's avail_event) whether to kick; completions are
  harvested with used-buffer notifications off, and only before sleeping are they re-enabled
  (``enable_cb``, which reports work that raced in), as Linux's virtio-blk does;
* offsets come from a precomputed table (random) or a counter (sequential).

Latency is submit-to-harvest per request (``perf_counter_ns``), so at high depth it includes the
time a completion waits for the loop to come round — as fio's clat does for a busy job.
"""

from __future__ import annotations

import os
import random
import select
import time
from array import array
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from ..drivers.blk import BlkDriver
from ..errors import RequestError, UsageError
from ..spec import blk as spec
from ..spec.blk import BlkFeature as F
from ..spec.ids import DeviceType

SECTOR = spec.SECTOR_SIZE
_HDR = spec.BLK_REQ_HEADER
RW_MODES = ("randread", "randwrite", "read", "write")
PERCENTILES = (1.0, 5.0, 10.0, 50.0, 90.0, 95.0, 99.0, 99.9, 99.99)
_RANDOM_TABLE = 1 << 16


def parse_size(text: str) -> int:
    """``4k``, ``1M``, ``512``, ``1MiB`` → bytes (binary units, as fio's ``bs``)."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    scale = units.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in units else t
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise UsageError(f"not a size: {text!r} (e.g. 4k, 1M)") from None
    return value


@dataclass
class BlkBenchConfig:
    socket_path: str
    rw: str = "randread"
    bs: int = 4096
    iodepth: int = 32  # requests in flight per queue
    runtime: float = 10.0
    queues: int = 1
    size: Optional[int] = None  # bytes of the disk to use (default: all of it)
    seed: int = 1
    timeout: float = 5.0

    def check(self) -> None:
        if self.rw not in RW_MODES:
            raise UsageError(f"--rw={self.rw}: one of {', '.join(RW_MODES)}")
        if self.bs <= 0 or self.bs % SECTOR:
            raise UsageError(f"--bs={self.bs}: a positive multiple of {SECTOR}")
        if not 1 <= self.iodepth <= 1024:
            raise UsageError(f"--iodepth={self.iodepth}: 1..1024")
        if not 1 <= self.queues <= 64:
            raise UsageError(f"--queues={self.queues}: 1..64")
        if self.runtime <= 0:
            raise UsageError(f"--runtime={self.runtime}: must be positive")


@dataclass
class BlkBenchResult:
    socket_path: str
    rw: str
    bs: int
    iodepth: int
    queues: int
    seconds: float
    ios: int
    kicks: int
    wakeups: int
    capacity: int  # bytes
    max_inflight: int = 0  # the most requests that were ever in flight at once
    lat_ns: dict = field(default_factory=dict)  # min, max, mean, p1 … p99.99

    @property
    def iops(self) -> float:
        return self.ios / self.seconds if self.seconds else 0.0

    @property
    def bytes_per_second(self) -> float:
        return self.iops * self.bs

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(iops=round(self.iops, 1), mib_per_second=round(self.bytes_per_second / (1 << 20), 2),
                 mb_per_second=round(self.bytes_per_second / 1e6, 2))
        return d


class _Slot:
    """One request's buffers, reused for every request the slot carries."""

    __slots__ = ("hdr", "out_bufs", "in_bufs", "status", "t0")

    def __init__(self, hdr_view, out_bufs, in_bufs, status_view):
        self.hdr, self.out_bufs, self.in_bufs, self.status = hdr_view, out_bufs, in_bufs, status_view
        self.t0 = 0


class _Queue:
    __slots__ = ("dq", "vq", "free", "kick_fd", "call_fd", "inflight")

    def __init__(self, dq, kick_fd: int, call_fd: int):
        self.dq, self.vq = dq, dq.vq
        self.free: list[_Slot] = []
        self.kick_fd, self.call_fd = kick_fd, call_fd
        self.inflight = 0


def bench_driver_class(iodepth: int) -> type[BlkDriver]:
    """A BlkDriver asking for queues deep enough for ``iodepth`` requests (3 descriptors each
    when the back-end lacks INDIRECT_DESC)."""
    size = 1 << max(3 * iodepth - 1, 1).bit_length()
    return type("BenchBlkDriver", (BlkDriver,), {"queue_size": min(size, 1024)})


def run(cfg: BlkBenchConfig, progress: Optional[Callable[[float, int, int], None]] = None) -> BlkBenchResult:
    """Run one benchmark.  ``progress(elapsed, ios_so_far, interval_ios)`` about once a second."""
    from ..vhost_user.transport import VhostUserTransport

    cfg.check()
    memory = cfg.queues * cfg.iodepth * (cfg.bs + 4096) + (8 << 20)
    t = VhostUserTransport(cfg.socket_path, device_type=DeviceType.BLOCK, memory_size=memory,
                           max_queue_size=1024, timeout=cfg.timeout)
    driver = None
    try:
        driver = bench_driver_class(cfg.iodepth).probe(t, max_queues=cfg.queues)
        return _Bench(cfg, t, driver).run(progress)
    finally:
        if driver is not None:
            try:
                driver.remove()
            except Exception:  # the back-end may be gone; the error that got us here matters
                pass
        t.close()


class _Bench:
    def __init__(self, cfg: BlkBenchConfig, transport, driver: BlkDriver):
        self.cfg, self.t, self.driver, self.mem = cfg, transport, driver, transport.memory
        if len(driver.queues) < cfg.queues:
            raise UsageError(f"--queues={cfg.queues}: the back-end has {len(driver.queues)} "
                             f"request queue(s)")
        if cfg.rw.endswith("write") and driver.read_only:
            raise UsageError(f"--rw={cfg.rw}: the device is read-only (VIRTIO_BLK_F_RO)")
        capacity = driver.capacity * SECTOR
        self.capacity = capacity
        span = min(cfg.size or capacity, capacity)
        self.blocks = span // cfg.bs
        if self.blocks < 1:
            raise UsageError(f"--bs={cfg.bs} is larger than the {span}-byte area")
        size_max = driver.config.get("size_max") if driver.has_feature(F.SIZE_MAX) else 0
        if size_max and cfg.bs > size_max:
            raise UsageError(f"--bs={cfg.bs}: the device takes at most {size_max} bytes per segment "
                             "(VIRTIO_BLK_F_SIZE_MAX)")
        self.rtype = spec.BlkReqType.OUT if cfg.rw.endswith("write") else spec.BlkReqType.IN
        self.queues = [_Queue(dq, *transport.ring_fds(dq.index)) for dq in driver.queues[:cfg.queues]]
        for q in self.queues:
            for _ in range(cfg.iodepth):
                q.free.append(self._slot())
        rnd = random.Random(cfg.seed)
        self.table = array("Q", (rnd.randrange(self.blocks) * (cfg.bs // SECTOR)
                                 for _ in range(min(_RANDOM_TABLE, max(self.blocks, 1) * 4))))
        self.random = cfg.rw.startswith("rand")
        self.pos = 0
        self.lat = array("q")
        self.kicks = self.wakeups = 0
        self.idle_polls = 0  # one-second polls in a row with nothing completed
        self.max_inflight = 0

    def _slot(self) -> _Slot:
        t, mem, bs = self.t, self.mem, self.cfg.bs
        hdr = t.alloc(_HDR.size, 16)
        data = t.alloc(bs, 4096)
        status = t.alloc(1, 1)
        if self.rtype == spec.BlkReqType.OUT:
            mem.write(data, os.urandom(min(bs, 1 << 16)) * (bs // min(bs, 1 << 16)))
            out_bufs, in_bufs = [(hdr, _HDR.size), (data, bs)], [(status, 1)]
        else:
            out_bufs, in_bufs = [(hdr, _HDR.size)], [(data, bs), (status, 1)]
        return _Slot(mem.view(hdr, _HDR.size), out_bufs, in_bufs, mem.view(status, 1))

    def _next_sector(self) -> int:
        self.pos += 1
        if self.random:
            return self.table[self.pos % len(self.table)]
        return (self.pos % self.blocks) * (self.cfg.bs // SECTOR)

    # the loop

    def run(self, progress) -> BlkBenchResult:
        cfg = self.cfg
        clock = time.perf_counter_ns
        start = clock()
        end = start + int(cfg.runtime * 1e9)
        next_report, last_ios = start + 1_000_000_000, 0
        poller = select.poll()
        for q in self.queues:
            poller.register(q.call_fd, select.POLLIN)
        mem = self.mem
        for q in self.queues:
            q.vq.disable_cb(mem)
        submitting = True
        while True:
            now = clock()
            if submitting and now >= end:
                submitting = False
            if submitting:
                for q in self.queues:
                    self._submit(q, now)
                inflight = sum(q.inflight for q in self.queues)
                if inflight > self.max_inflight:
                    self.max_inflight = inflight
            if not self._harvest():
                if not any(q.inflight for q in self.queues):
                    break
                self._sleep(poller)
            if progress is not None and now >= next_report:
                ios = len(self.lat)
                progress((now - start) / 1e9, ios, ios - last_ios)
                last_ios, next_report = ios, now + 1_000_000_000
        seconds = (clock() - start) / 1e9
        return BlkBenchResult(cfg.socket_path, cfg.rw, cfg.bs, cfg.iodepth, len(self.queues),
                              seconds, len(self.lat), self.kicks, self.wakeups, self.capacity,
                              self.max_inflight, latency_summary(self.lat))

    def _submit(self, q: _Queue, now: int) -> None:
        if not q.free:
            return
        mem, add, rtype, pack = self.mem, q.vq.add, self.rtype, _HDR.pack_into
        free = q.free
        while free:
            slot = free.pop()
            pack(slot.hdr, 0, rtype, 0, self._next_sector())
            slot.t0 = now
            add(mem, slot.out_bufs, slot.in_bufs, slot)
            q.inflight += 1
        if q.vq.kick_prepare(mem):
            os.eventfd_write(q.kick_fd, 1)
            self.kicks += 1

    def _harvest(self) -> int:
        mem, lat, clock = self.mem, self.lat, time.perf_counter_ns
        n = 0
        for q in self.queues:
            get_buf = q.vq.get_buf
            while (item := get_buf(mem)) is not None:
                slot = item[0]
                if slot.status[0] != spec.BlkStatus.OK:
                    raise _request_failed(self.cfg.rw, slot.status[0])
                lat.append(clock() - slot.t0)
                q.free.append(slot)
                q.inflight -= 1
                n += 1
        if n:
            self.idle_polls = 0
        return n

    def _sleep(self, poller) -> None:
        """Re-enable notifications (a True answer means work raced in: do not sleep), wait on
        the call eventfds, then turn notifications off again for the next harvest."""
        mem = self.mem
        raced = False
        for q in self.queues:
            if q.inflight and q.vq.enable_cb(mem):
                raced = True
        if not raced:
            ready = poller.poll(1000)
            if not ready:
                self.t.client.check_alive()  # raises BackendHungUp if it went away
                self.idle_polls += 1
                if self.idle_polls >= max(1, int(self.cfg.timeout)):
                    raise RequestError(f"no request completed for {self.idle_polls}s "
                                       "(the back-end stopped answering)", spec.BlkStatus.IOERR)
            for fd, _ in ready:
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    pass
            self.wakeups += 1
        for q in self.queues:
            q.vq.disable_cb(mem)


def _request_failed(rw: str, status: int) -> RequestError:
    try:
        name = spec.BlkStatus(status).name
    except ValueError:
        name = str(status)
    return RequestError(f"a {rw} request failed with status {name}", status)


def latency_summary(lat_ns) -> dict:
    if not lat_ns:
        return {}
    ordered = sorted(lat_ns)
    n = len(ordered)
    out = {"min": ordered[0], "max": ordered[-1], "mean": sum(ordered) / n}
    for p in PERCENTILES:
        out[f"p{p:g}"] = ordered[min(n - 1, int(p / 100 * n))]
    return out


# --- fio-like text -------------------------------------------------------------------------------


def _si(value: float) -> str:
    for unit in ("", "k", "M"):
        if value < 1000 or unit == "M":
            return f"{value:.0f}" if not unit else f"{value:.1f}{unit}"
        value /= 1000
    return str(value)


def format_result(r: BlkBenchResult) -> str:
    mib = r.bytes_per_second / (1 << 20)
    mb = r.bytes_per_second / 1e6
    total = r.ios * r.bs / (1 << 20)
    op = "write" if r.rw.endswith("write") else "read"
    lines = [
        f"blk: rw={r.rw}, bs={r.bs}B, ioengine=pyvirtio-vhost-user, iodepth={r.iodepth}, queues={r.queues}",
        f"  {r.socket_path}: {r.capacity / (1 << 20):.1f} MiB",
        f"  {op}: IOPS={_si(r.iops)}, BW={mib:.1f}MiB/s ({mb:.1f}MB/s)({total:.1f}MiB/{r.seconds * 1000:.0f}msec)",
    ]
    lat = r.lat_ns
    if lat:
        lines.append(f"    clat (usec): min={lat['min'] / 1e3:.0f}, max={lat['max'] / 1e3:.0f}, "
                     f"avg={lat['mean'] / 1e3:.2f}")
        lines.append("    clat percentiles (usec):")
        cells = [f"{p:5.2f}th=[{lat[f'p{p:g}'] / 1e3:6.0f}]" for p in PERCENTILES]
        for i in range(0, len(cells), 3):
            lines.append("     | " + ", ".join(cells[i:i + 3]) + ("," if i + 3 < len(cells) else ""))
    per_kick = r.ios / r.kicks if r.kicks else float("inf")
    per_wake = r.ios / r.wakeups if r.wakeups else float("inf")
    lines.append(f"  notifications: {r.kicks} kicks ({per_kick:.1f} requests each), "
                 f"{r.wakeups} wake-ups ({per_wake:.1f} completions each)")
    return "\n".join(lines)


def progress_line(cfg: BlkBenchConfig, elapsed: float, ios: int, interval_ios: int) -> str:
    pct = min(100.0, 100 * elapsed / cfg.runtime)
    eta = max(0.0, cfg.runtime - elapsed)
    mib = interval_ios * cfg.bs / (1 << 20)
    op = "w" if cfg.rw.endswith("write") else "r"
    return (f"Jobs: 1 ({cfg.queues} queue(s), depth {cfg.iodepth}): [{cfg.rw}][{pct:.1f}%]"
            f"[{op}={mib:.1f}MiB/s][{op}={_si(interval_ios)} IOPS][eta {int(eta // 60):02d}m:{int(eta % 60):02d}s]")


__all__ = ["BlkBenchConfig", "BlkBenchResult", "run", "format_result", "progress_line",
           "parse_size", "latency_summary", "RW_MODES", "bench_driver_class"]
