"""A host-side load generator for vhost-user-blk back-ends (``pyvirtio bench blk``).

pyvirtio's block driver brings the device up over :class:`~pyvirtio.vhost_user.frontend.transport.
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

**Verification** (``verify=True``): before the timed phase every block the run will touch is
*stamped* through the same connection (written at the same depth): each 512-byte sector begins
and ends with the 64-bit word ``nonce ^ LBA`` (its own sector number; the nonce is a fresh random
number per run); the 496 bytes between are one random body.  Which blocks: the whole sequential range, or the distinct blocks of
the random offset table (at most 65,536) — and at most ``STAMP_LIMIT`` bytes unless ``size`` is
given.  In the timed phase a read poisons the first and last word of its buffer before it is
submitted and, when it completes, the first word of every sector and the buffer's last word are
compared with the expected ones: one strided ``memoryview`` comparison against a slice of a
precomputed table (a C loop; no copy, no allocation) and one integer; a mismatch raises
:class:`DataMismatch` naming the block, the sector, what was expected and what was found.  So a
misplaced block or sector, a stale one (another run's nonce), a missing or short copy fails the
run; a corruption inside a sector's body, or a sector torn in the middle of a block, does not
(only those words are compared).  Writes write the
stamp of their block, and after a write run every touched block is read back and checked.
"""

from __future__ import annotations

import os
import random
import select
import struct
import time
from array import array
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from ..drivers.blk import BlkDriver
from ..errors import DeviceFault, RequestError, UsageError
from ..limits import MAX_CHAIN_SEGMENTS
from ..spec import blk as spec
from ..spec.blk import BlkFeature as F
from ..spec.ids import DeviceType
from ..spec.features import Feature

SECTOR = spec.SECTOR_SIZE
_HDR = spec.BLK_REQ_HEADER
RW_MODES = ("randread", "randwrite", "read", "write")
RING_LAYOUTS = ("auto", "split", "packed")
PERCENTILES = (1.0, 5.0, 10.0, 50.0, 90.0, 95.0, 99.0, 99.9, 99.99)
_RANDOM_TABLE = 1 << 16
STAMP_LIMIT = 4 << 30  # bytes --verify stamps without an explicit --size
#: Data descriptors one request may have: a chain's limit, less the header and the status byte.
MAX_SEGMENTS = MAX_CHAIN_SEGMENTS - 2
_WORDS = SECTOR // 8  # 64-bit words per sector


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
    size: int | None = None  # bytes of the disk to use (default: all of it)
    seed: int = 1
    timeout: float = 5.0
    verify: bool = False  # stamp the blocks first and check every read (module docstring)
    #: "split" hides VIRTIO_F_RING_PACKED from the back-end; "packed" fails unless it is
    #: negotiated; "auto" takes what the back-end offers (packed if it can)
    ring: str = "auto"
    #: bytes per data descriptor: each request's buffer described in bs / seg_size descriptors,
    #: as a guest's scattered pages are (Linux: one per page); None: one descriptor
    seg_size: int | None = None

    @property
    def segments(self) -> int:
        """Data descriptors per request."""
        return self.bs // self.seg_size if self.seg_size else 1

    def check(self) -> None:
        if self.ring not in RING_LAYOUTS:
            raise UsageError(f"--ring={self.ring}: one of {', '.join(RING_LAYOUTS)}")
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
        if self.seg_size is not None and (self.seg_size <= 0 or self.seg_size % SECTOR
                                          or self.bs % self.seg_size):
            raise UsageError(f"--seg-size={self.seg_size}: a positive multiple of {SECTOR} that "
                             f"divides --bs={self.bs}")
        if self.segments > MAX_SEGMENTS:
            raise UsageError(f"--seg-size={self.seg_size}: {self.segments} segments per request, "
                             f"at most {MAX_SEGMENTS}")


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
    verify: bool = False
    stamped_blocks: int = 0  # blocks written before the timed phase (verify)
    stamp_seconds: float = 0.0
    verified: int = 0  # completed requests whose data was checked (reads, and the read-back)
    ring: str = "split"  # the ring layout negotiated
    segments: int = 1  # data descriptors per request
    #: every timed request's completion latency (ns), for --plot; not in as_dict()
    samples: array | None = field(default=None, repr=False, compare=False)

    @property
    def iops(self) -> float:
        return self.ios / self.seconds if self.seconds else 0.0

    @property
    def bytes_per_second(self) -> float:
        return self.iops * self.bs

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("samples", None)
        d.update(iops=round(self.iops, 1), mib_per_second=round(self.bytes_per_second / (1 << 20), 2),
                 mb_per_second=round(self.bytes_per_second / 1e6, 2))
        return d


class DataMismatch(DeviceFault):
    """A read under ``verify`` returned data other than the stamp of the block it asked for."""

    def __init__(self, message: str, block: int):
        self.block = block
        super().__init__(message)


class Stamp:
    """The verify pattern of one run (see the module docstring) for ``blocks`` (sorted block
    numbers) of ``bs`` bytes.

    The expected words of every stamped sector, ``nonce ^ lba``, are precomputed once, block after
    block (8 bytes per sector: 16 MiB for 1 GiB stamped), so a block's are a zero-copy slice.
    Words are native-endian: the disk is written and read on one machine."""

    def __init__(self, bs: int, blocks):
        self.per_block = k = bs // SECTOR
        self.nonce = nonce = struct.unpack("=Q", os.urandom(8))[0]
        contiguous = isinstance(blocks, range) and blocks.start == 0 and blocks.step == 1
        self.slot_of = None if contiguous else {b: i for i, b in enumerate(blocks)}
        self.words = memoryview(array("Q", (nonce ^ (b * k + i) for b in blocks for i in range(k))))
        self.poison_word = nonce ^ 0xFFFF_FFFF_FFFF_FFFF  # the stamp of no sector

    def expected(self, block: int) -> memoryview:
        first = (block if self.slot_of is None else self.slot_of[block]) * self.per_block
        return self.words[first:first + self.per_block]

    def fill(self, q: memoryview, block: int) -> None:
        """Stamp ``q`` (the data buffer cast to ``"Q"``, its body already written) as ``block``:
        the first and the last word of every sector."""
        w = self.expected(block)
        q[0::_WORDS] = w
        q[_WORDS - 1::_WORDS] = w

    def poison(self, q: memoryview, block: int) -> None:
        """Spoil the first and the last word, so a read that writes nothing (or stops short)
        cannot pass on what the buffer held before."""
        q[0] = q[-1] = self.poison_word

    def check(self, q: memoryview, block: int) -> bool:
        """Every sector's first word, and the buffer's last word (a copy that stopped short)."""
        w = self.expected(block)
        return q[0::_WORDS] == w and q[-1] == w[-1]

    def mismatch(self, q: memoryview, block: int) -> DataMismatch:
        """Name the first wrong sector of ``block``: what was expected and what was found."""
        want = self.expected(block)
        bad = next((i for i in range(self.per_block) if q[i * _WORDS] != want[i]), None)
        where, found = (bad, q[bad * _WORDS]) if bad is not None else (self.per_block - 1, q[-1])
        first = block * self.per_block
        part = "first" if bad is not None else "last"
        return DataMismatch(
            f"verify: block {block} (bytes {first * SECTOR}-{(first + self.per_block) * SECTOR - 1}), "
            f"sector {where} (LBA {first + where}), its {part} 8 bytes: expected "
            f"{self._describe(want[where])}, found {self._describe(found)}", block)

    def _describe(self, word: int) -> str:
        raw = struct.pack("=Q", word).hex()
        if word == self.poison_word:
            return f"{raw}, the poison written before the read: no data was copied there"
        lba = word ^ self.nonce
        if lba < 1 << 48:
            return (f"{raw}, the stamp of block {lba // self.per_block} sector "
                    f"{lba % self.per_block} (LBA {lba})")
        return f"{raw} (no stamp of this run)"


class _Slot:
    """One request's buffers, reused for every request the slot carries."""

    __slots__ = ("hdr", "out_bufs", "in_bufs", "status", "t0", "data", "block", "reading",
                 "read_bufs", "write_bufs")

    def __init__(self, hdr_view, read_bufs, write_bufs, status_view, data_view):
        self.hdr, self.status, self.data = hdr_view, status_view, data_view
        self.read_bufs, self.write_bufs = read_bufs, write_bufs
        self.out_bufs, self.in_bufs = read_bufs
        self.t0 = self.block = 0
        self.reading = True

    def use(self, reading: bool) -> None:
        self.reading = reading
        self.out_bufs, self.in_bufs = self.read_bufs if reading else self.write_bufs


class _Queue:
    __slots__ = ("dq", "vq", "free", "kick_fd", "call_fd", "inflight")

    def __init__(self, dq, kick_fd: int, call_fd: int):
        self.dq, self.vq = dq, dq.vq
        self.free: list[_Slot] = []
        self.kick_fd, self.call_fd = kick_fd, call_fd
        self.inflight = 0


def bench_driver_class(iodepth: int, segments: int = 1) -> type[BlkDriver]:
    """A BlkDriver asking for queues deep enough for ``iodepth`` requests (header, ``segments``
    data descriptors and status each when the back-end lacks INDIRECT_DESC), whose indirect
    tables take a whole request."""
    per_request = segments + 2
    size = 1 << max(per_request * iodepth - 1, 1).bit_length()
    return type("BenchBlkDriver", (BlkDriver,), {"queue_size": min(size, 1024),
                                                 "max_indirect": max(32, per_request)})


def run(cfg: BlkBenchConfig, progress: Callable[[float, int, int], None] | None = None,
        stamped: Callable[[], None] | None = None) -> BlkBenchResult:
    """Run one benchmark.  ``progress(elapsed, ios_so_far, interval_ios)`` about once a second;
    ``stamped()`` once the verify stamps are written, before the timed phase."""
    from ..vhost_user.frontend.transport import VhostUserTransport

    cfg.check()
    memory = cfg.queues * cfg.iodepth * (cfg.bs + 4096) + (8 << 20)
    t = VhostUserTransport(cfg.socket_path, device_type=DeviceType.BLOCK, memory_size=memory,
                           max_queue_size=1024, timeout=cfg.timeout, split_only=cfg.ring == "split")
    driver = None
    try:
        driver = bench_driver_class(cfg.iodepth, cfg.segments).probe(t, max_queues=cfg.queues)
        packed = driver.has_feature(Feature.RING_PACKED)
        if cfg.ring == "packed" and not packed:
            raise UsageError("--ring=packed: the back-end does not offer VIRTIO_F_RING_PACKED")
        result = _Bench(cfg, t, driver).run(progress, stamped)
        result.ring = "packed" if packed else "split"
        result.segments = cfg.segments
        return result
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
        self.writing = cfg.rw.endswith("write")
        if (self.writing or cfg.verify) and driver.read_only:
            raise UsageError(f"--rw={cfg.rw}{' --verify' if cfg.verify else ''}: the device is "
                             "read-only (VIRTIO_BLK_F_RO)")
        capacity = driver.capacity * SECTOR
        self.capacity = capacity
        span = min(cfg.size or capacity, capacity)
        self.blocks = span // cfg.bs
        if self.blocks < 1:
            raise UsageError(f"--bs={cfg.bs} is larger than the {span}-byte area")
        size_max = driver.config.get("size_max") if driver.has_feature(F.SIZE_MAX) else 0
        if size_max and (cfg.seg_size or cfg.bs) > size_max:
            what = f"--seg-size={cfg.seg_size}" if cfg.seg_size else f"--bs={cfg.bs}"
            raise UsageError(f"{what}: the device takes at most {size_max} bytes per segment "
                             "(VIRTIO_BLK_F_SIZE_MAX)")
        seg_max = driver.config.get("seg_max") if driver.has_feature(F.SEG_MAX) else 0
        if seg_max and cfg.segments > seg_max:
            raise UsageError(f"--seg-size={cfg.seg_size}: {cfg.segments} segments per request, the "
                             f"device takes at most {seg_max} (VIRTIO_BLK_F_SEG_MAX)")
        self.rtype = spec.BlkReqType.OUT if self.writing else spec.BlkReqType.IN
        self.per_block = cfg.bs // SECTOR
        self.queues = [_Queue(dq, *transport.ring_fds(dq.index)) for dq in driver.queues[:cfg.queues]]
        for q in self.queues:
            for _ in range(cfg.iodepth):
                q.free.append(self._slot())
        rnd = random.Random(cfg.seed)
        self.table = array("Q", (rnd.randrange(self.blocks)
                                 for _ in range(min(_RANDOM_TABLE, max(self.blocks, 1) * 4))))
        self.random = cfg.rw.startswith("rand")
        self.touched = self.touched_blocks() if cfg.verify else []
        self.stamp = Stamp(cfg.bs, self.touched) if cfg.verify else None
        self.pos = 0
        self.lat = array("q")
        self.kicks = self.wakeups = self.verified = 0
        self.checking = False  # compare completed reads with their stamps
        self.idle_polls = 0  # one-second polls in a row with nothing completed
        self.max_inflight = 0
        self.poller = select.poll()
        for q in self.queues:
            self.poller.register(q.call_fd, select.POLLIN)

    def _slot(self) -> _Slot:
        t, mem, bs = self.t, self.mem, self.cfg.bs
        hdr = t.alloc(_HDR.size, 16)
        data = t.alloc(bs, 4096)
        status = t.alloc(1, 1)
        if self.cfg.verify:
            mem.write(data, os.urandom(SECTOR) * (bs // SECTOR))  # the body; stamps come per request
        elif self.writing:
            mem.write(data, os.urandom(min(bs, 1 << 16)) * (bs // min(bs, 1 << 16)))
        seg = self.cfg.seg_size or bs
        segments = [(data + off, seg) for off in range(0, bs, seg)]
        read_bufs = ([(hdr, _HDR.size)], segments + [(status, 1)])
        write_bufs = ([(hdr, _HDR.size)] + segments, [(status, 1)])
        slot = _Slot(mem.view(hdr, _HDR.size), read_bufs, write_bufs, mem.view(status, 1),
                     mem.view(data, bs).cast("Q"))
        slot.use(not self.writing)
        return slot

    def _next_block(self) -> int:
        self.pos += 1
        if self.random:
            return self.table[self.pos % len(self.table)]
        return self.pos % self.blocks

    def touched_blocks(self) -> Sequence[int]:
        """The blocks the timed phase can touch: the sequential range, or the random table's."""
        blocks = sorted(set(self.table)) if self.random else range(self.blocks)
        if self.cfg.size is None and len(blocks) * self.cfg.bs > STAMP_LIMIT:
            raise UsageError(f"--verify would stamp {len(blocks) * self.cfg.bs / (1 << 30):.1f} GiB "
                             f"first; give --size (at most {STAMP_LIMIT >> 30} GiB without it)")
        return blocks

    # the loop

    def run(self, progress, stamped=None) -> BlkBenchResult:
        cfg = self.cfg
        stamp_seconds, touched = 0.0, self.touched
        if self.stamp is not None:
            t0 = time.perf_counter()
            self.sweep(touched, reading=False)
            stamp_seconds = time.perf_counter() - t0
            if stamped is not None:
                stamped()
        seconds = self._timed(progress)
        result = BlkBenchResult(cfg.socket_path, cfg.rw, cfg.bs, cfg.iodepth, len(self.queues),
                                seconds, len(self.lat), self.kicks, self.wakeups, self.capacity,
                                self.max_inflight, latency_summary(self.lat), cfg.verify,
                                len(touched), stamp_seconds)
        result.samples = self.lat
        if self.stamp is not None and self.writing:
            self.sweep(touched, reading=True)  # the writes landed where they were sent
        result.verified = self.verified
        return result

    def sweep(self, blocks, *, reading: bool) -> None:
        """Write the stamp of (or read back and check) every block of ``blocks``, at depth."""
        stamp = self.stamp
        if stamp is None:
            raise UsageError("sweep: no stamps (the benchmark runs without --verify)")
        saved = self.lat, self.kicks, self.wakeups, self.checking
        self.checking, self.lat = reading, array("q")
        it = iter(blocks)
        more = True
        for q in self.queues:
            q.vq.disable_cb(self.mem)
        while True:
            for q in self.queues:
                while more and q.free:
                    block = next(it, None)
                    if block is None:
                        more = False
                        break
                    self._add(q, q.free.pop(), block, reading, 0, stamp)
                self._kick(q)
            if not self._harvest():
                if not any(q.inflight for q in self.queues):
                    break
                self._sleep(self.poller)
        for q in self.queues:
            for slot in q.free:
                slot.use(not self.writing)
        self.lat, self.kicks, self.wakeups, self.checking = saved

    def _add(self, q: _Queue, slot: _Slot, block: int, reading: bool, now: int, stamp: Stamp) -> None:
        if reading != slot.reading:
            slot.use(reading)
        slot.block = block
        if reading:
            stamp.poison(slot.data, block)
        else:
            stamp.fill(slot.data, block)
        _HDR.pack_into(slot.hdr, 0, spec.BlkReqType.IN if reading else spec.BlkReqType.OUT, 0,
                       block * self.per_block)
        slot.t0 = now
        q.vq.add(self.mem, slot.out_bufs, slot.in_bufs, slot)
        q.inflight += 1

    def _kick(self, q: _Queue) -> None:
        if q.vq.kick_prepare(self.mem):
            os.eventfd_write(q.kick_fd, 1)
            self.kicks += 1

    def _timed(self, progress) -> float:
        cfg = self.cfg
        clock = time.perf_counter_ns
        self.checking = self.stamp is not None and not self.writing
        start = clock()
        end = start + int(cfg.runtime * 1e9)
        next_report, last_ios = start + 1_000_000_000, 0
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
                self._sleep(self.poller)
            if progress is not None and now >= next_report:
                ios = len(self.lat)
                progress((now - start) / 1e9, ios, ios - last_ios)
                last_ios, next_report = ios, now + 1_000_000_000
        self.checking = False
        return (clock() - start) / 1e9

    def _submit(self, q: _Queue, now: int) -> None:
        if not q.free:
            return
        mem, add, rtype, pack = self.mem, q.vq.add, self.rtype, _HDR.pack_into
        per_block, stamp = self.per_block, self.stamp
        prepare = None if stamp is None else (stamp.fill if self.writing else stamp.poison)
        free = q.free
        while free:
            slot = free.pop()
            block = self._next_block()
            if prepare is not None:
                prepare(slot.data, block)
                slot.block = block
            pack(slot.hdr, 0, rtype, 0, block * per_block)
            slot.t0 = now
            add(mem, slot.out_bufs, slot.in_bufs, slot)
            q.inflight += 1
        self._kick(q)

    def _harvest(self) -> int:
        mem, lat, clock = self.mem, self.lat, time.perf_counter_ns
        check = self.stamp.check if self.checking and self.stamp is not None else None
        n = 0
        for q in self.queues:
            get_buf = q.vq.get_buf
            while (item := get_buf(mem)) is not None:
                slot = item[0]
                if slot.status[0] != spec.BlkStatus.OK:
                    raise _request_failed("read" if slot.reading else "write", slot.status[0],
                                          slot.block if self.stamp is not None else None)
                if check is not None:
                    if not check(slot.data, slot.block):
                        assert self.stamp is not None  # check is self.stamp.check
                        raise self.stamp.mismatch(slot.data, slot.block)
                    self.verified += 1
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


def _request_failed(op: str, status: int, block: int | None = None) -> RequestError:
    try:
        name = spec.BlkStatus(status).name
    except ValueError:
        name = str(status)
    where = "" if block is None else f" of block {block}"
    return RequestError(f"a {op} request{where} failed with status {name}", status)


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
        f"blk: rw={r.rw}, bs={r.bs}B, ioengine=pyvirtio-vhost-user, iodepth={r.iodepth}, queues={r.queues}, "
        f"ring={r.ring}" + (f", {r.segments} data descriptors per request" if r.segments > 1 else ""),
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
    if r.verify:
        lines.append(f"  verify: on; {r.stamped_blocks} blocks stamped in {r.stamp_seconds:.2f}s, "
                     f"{r.verified} reads checked, no mismatch")
    return "\n".join(lines)


def progress_line(cfg: BlkBenchConfig, elapsed: float, ios: int, interval_ios: int) -> str:
    pct = min(100.0, 100 * elapsed / cfg.runtime)
    eta = max(0.0, cfg.runtime - elapsed)
    mib = interval_ios * cfg.bs / (1 << 20)
    op = "w" if cfg.rw.endswith("write") else "r"
    return (f"Jobs: 1 ({cfg.queues} queue(s), depth {cfg.iodepth}): [{cfg.rw}][{pct:.1f}%]"
            f"[{op}={mib:.1f}MiB/s][{op}={_si(interval_ios)} IOPS][eta {int(eta // 60):02d}m:{int(eta % 60):02d}s]")


__all__ = ["BlkBenchConfig", "BlkBenchResult", "run", "format_result", "progress_line",
           "parse_size", "latency_summary", "RW_MODES", "bench_driver_class", "DataMismatch", "Stamp",
           "STAMP_LIMIT"]
