#!/usr/bin/env python3
"""What one queue-depth-1 turn of ``pyvirtio serve blk`` costs, layer by layer, without noise.

The cross-process benchmarks (``blk_vhost_user.py``, ``blk_qd1_floor.py``, the guest's fio) time
a driver in another process and two wake-ups per request: on this kind of machine their rounds
spread by ±15 %, more than most single changes to the request path are worth.  This one takes
the wake-ups out: a vhost-user session in this process (pyvirtio's ``Session``, its connection,
``BlkDevice`` on a page-cached image, the split ring core), set up by the test front-end over
the real protocol; its queue worker's thread is stopped and the script drives it, one turn at a
time: the driver (pyvirtio's split driver queue) makes a 4 KiB read available and kicks, the
clock runs for the back-end's turn only, then the driver takes the used element and the read's
data is compared with the image (every request; a mismatch ends the run).

Three ways to serve the same requests, blocks of each interleaved:

* ``pyvirtio`` — the queue worker's turn (``GroupWorker._serve_kick`` after a ``poll``: the engine,
  the session, the connection's ``process_ring``, blk's ``process_queue`` and drain, the ring
  core, the call eventfd), and the per-turn look at the device's host fds the worker loop makes;
* ``device`` — blk's ``process_queue`` called directly after the ``poll`` and the kick's read,
  the call eventfd written if it says so (no engine, no session, no connection);
* ``core`` — a flat loop over the split ring core: ``pop_descriptor_chain`` (the validated
  walk), the header unpacked, one ``preadv`` into guest memory, the status byte,
  ``add_used_batch``, ``enable_notification``, ``needs_notification``, the guarded call write.
  It checks less than blk does (request type, sizes, capacity): the bound below which no
  layering can go.

Each side makes the same system calls per request (``poll``, the kick's read, one ``preadv``,
``poll(0)`` and the call eventfd's write).  Reported: nanoseconds per turn (median of blocks;
wall clock, or the thread's CPU time with ``--cpu``) and pyvirtio/core, device/core.  A hot loop
in one process: a real request path runs colder (the CPU's caches hold another process's work
after every sleep) and costs two to four times this in user time — the ratios carry over, the
absolute figures do not.

``--baseline SRC`` adds a fourth way, ``baseline``: another checkout's ``src`` (an earlier commit)
and that checkout's own copy of this script, loaded in this same process — its package copied
under the name ``pyvirtio_baseline``, its rig serving its own session — and its ``pyvirtio`` way
interleaved with this checkout's, block by block: an A/B of a change to the request path that
is not at the mercy of one launch's speed against another's (across processes, two runs of one
A/B here differed by 9 %).  Both sides run what their own worker loop does with a lone kick.
Set ``PYVIRTIO_PURE=1`` to compare pure Python on both sides (an accelerated build of this
checkout would run only here).

    python benchmarks/blk_turn_cost.py [--turns 10000] [--blocks 8] [--cpu] [--baseline SRC]
"""

from __future__ import annotations

import argparse
import os
import random
import select
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time
import types

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.spec.blk import BLK_REQ_HEADER, BlkReqType, BlkStatus
from pyvirtio.vhost_user.backend.server import Endpoint, Session
from pyvirtio.vhost_user.testing import PairChannel, TestFrontend

WAYS = ("pyvirtio", "device", "core")
SECTOR = 512
BLOCK = 4096


class Mismatch(AssertionError):
    """A read came back with other bytes than the image holds there, or was not answered."""


class Rig:
    """One blk session driven turn by turn (module docstring)."""

    def __init__(self, image: str, size: int):
        self.image, self.size = image, size
        self.device = BlkDevice(image, locking=False)
        self._sock, theirs = socket.socketpair()
        self.session = Session(Endpoint(self.device, theirs, name="turn-cost"), theirs)
        self.worker = self.session.workers[0]
        self.worker.stop()  # its turns are taken here, one at a time
        self.front = TestFrontend(PairChannel(self.session.conn), memory_size=8 << 20)
        self.front.start(queues=1, size=128)
        ring = self.front.rings[0]
        self.queue, self.mem, self.kick, self.call = ring.queue, self.front.memory, ring.kick_fd, ring.call_fd
        alloc = self.front.alloc
        self.hdr, self.data, self.status = alloc.alloc(16, 16), alloc.alloc(BLOCK, BLOCK), alloc.alloc(1, 1)
        self.file = os.open(image, os.O_RDONLY)
        self.sector = 0
        # The back-end's side of the ring, as its worker sees it.
        conn = self.session.conn
        vring = conn.vrings[0]
        self.dq, self.dmem, self.call_fd = self.device.queues[0], conn.memory, vring.call_fd
        self.kick_fd = self.session.kick_fd(0)
        self.watched = {self.kick_fd: (select.POLLIN, 0)}
        self.poller = select.poll()
        self.poller.register(self.kick_fd, select.POLLIN)
        self.guard = select.poll()
        self.guard.register(self.call_fd, select.POLLOUT)
        self.ways = {"pyvirtio": self.pyvirtio_turn, "device": self.device_turn, "core": self.core_turn}

    # --- the driver (not timed) -----------------------------------------------------------------

    def post(self) -> None:
        """Make one 4 KiB read available at a random sector, and kick if the device asks."""
        self.sector = random.randrange(0, self.size // SECTOR - BLOCK // SECTOR + 1, BLOCK // SECTOR)
        os.pread(self.file, BLOCK, self.sector * SECTOR)  # cached: the read is copied at once
        self.mem.write(self.hdr, BLK_REQ_HEADER.pack(int(BlkReqType.IN), 0, self.sector))
        self.mem.write(self.status, b"\xff")
        self.queue.add(self.mem, [(self.hdr, 16)], [(self.data, BLOCK), (self.status, 1)], 1)
        if self.queue.kick_prepare(self.mem):
            os.eventfd_write(self.kick, 1)

    def check(self) -> None:
        """The used element, the status byte and the data: as the image holds them."""
        got = self.queue.get_buf(self.mem)
        if got is None or got[1] != BLOCK + 1:
            raise Mismatch(f"sector {self.sector}: answered {got}, expected {BLOCK + 1} bytes written")
        if self.mem.read(self.status, 1) != bytes([int(BlkStatus.OK)]):
            raise Mismatch(f"sector {self.sector}: status {self.mem.read(self.status, 1)!r}")
        if self.mem.read(self.data, BLOCK) != os.pread(self.file, BLOCK, self.sector * SECTOR):
            raise Mismatch(f"sector {self.sector}: the data differs from the image's")
        try:
            os.eventfd_read(self.call)
        except BlockingIOError:
            pass

    # --- the three ways to serve a turn (timed) -------------------------------------------------

    def pyvirtio_turn(self) -> None:
        events = self.poller.poll(0)
        if len(events) == 1:  # what the worker loop (GroupWorker._run) does with a lone kick
            self.worker._serve_kick(events[0][0], 0)
        else:
            self.worker._serve(events, self.watched, False)
        self.session.host_fds(0)  # the worker loop's look after each turn

    def device_turn(self) -> None:
        self.poller.poll(0)
        try:
            os.read(self.kick_fd, 8)
        except BlockingIOError:
            pass
        if self.device.process_queue(self.dmem, self.dq) and self.guard.poll(0):
            os.eventfd_write(self.call_fd, 1)

    def core_turn(self) -> None:
        dq, dmem, fd = self.dq, self.dmem, self.device.fd
        self.poller.poll(0)
        try:
            os.read(self.kick_fd, 8)
        except BlockingIOError:
            pass
        while True:
            while True:
                chain = dq.pop_descriptor_chain(dmem)
                if chain is None:
                    break
                _kind, _prio, sector = BLK_REQ_HEADER.unpack_from(chain.readable[0])
                n = os.preadv(fd, chain.writable[:-1], sector * SECTOR)
                chain.writable[-1][0] = 0
                dq.add_used_batch(dmem, [(chain.head_index, n + 1)])
            if not dq.enable_notification(dmem):
                break
        if dq.needs_notification(dmem) and self.guard.poll(0):
            os.eventfd_write(self.call_fd, 1)

    def close(self) -> None:
        os.close(self.file)
        self.session.close()
        self._sock.close()
        self.device.close()


def load_baseline(src: str, tmp: str) -> types.ModuleType:
    """Another checkout's package (``src``) and its own copy of this script, loaded beside this
    checkout's: the package copied into ``tmp`` as ``pyvirtio_baseline`` (its modules import
    each other relatively), the script compiled with its imports of ``pyvirtio`` renamed to
    that.  Returns that script's module.  Raises SystemExit when ``src`` is not such a checkout."""
    package = os.path.join(src, "pyvirtio")
    script = os.path.join(os.path.dirname(os.path.abspath(src)), "benchmarks", "blk_turn_cost.py")
    if not os.path.isfile(os.path.join(package, "__init__.py")) or not os.path.isfile(script):
        raise SystemExit(f"blk_turn_cost: --baseline {src}: not a checkout's src (no pyvirtio "
                         "package, or no benchmarks/blk_turn_cost.py beside it)")
    shutil.copytree(package, os.path.join(tmp, "pyvirtio_baseline"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, tmp)
    with open(script) as f:
        text = f.read().replace("from pyvirtio.", "from pyvirtio_baseline.")
    module = types.ModuleType("blk_turn_cost_baseline")
    module.__file__ = script
    sys.modules[module.__name__] = module
    exec(compile(text, script, "exec"), module.__dict__)
    return module


def measure(rig: Rig, turns: int, blocks: int, cpu: bool = False,
            baseline=None) -> dict[str, list[float]]:
    """ns per turn of each way, one figure per block; the blocks of the ways interleaved (with a
    ``baseline`` rig, its ``pyvirtio`` way as ``baseline``)."""
    clock = time.thread_time_ns if cpu else time.perf_counter_ns
    ways = [(way, rig, rig.ways[way]) for way in WAYS]
    if baseline is not None:
        ways.append(("baseline", baseline, baseline.ways["pyvirtio"]))
    out: dict[str, list[float]] = {way: [] for way, _, _ in ways}
    for _ in range(blocks):
        for way, served, turn in ways:
            spent = 0
            for _ in range(turns):
                served.post()
                start = clock()
                turn()
                spent += clock() - start
                served.check()
            out[way].append(spent / turns)
    return out


def report(results: dict[str, list[float]], turns: int, blocks: int, cpu: bool) -> None:
    med = statistics.median
    print(f"\n4 KiB reads from the page cache, one at a time; {blocks} blocks x {turns} turns per way; "
          f"{'thread CPU' if cpu else 'wall clock'} per turn\n")
    print(f"{'way':<10} {'ns/turn':>9} {'min':>9}")
    for way in results:
        print(f"{way:<10} {med(results[way]):>9,.0f} {min(results[way]):>9,.0f}")
    print("\nratios, median of same-block ratios (range over blocks):")
    pairs = [("pyvirtio", "core"), ("device", "core"), ("pyvirtio", "device")]
    for a, b in pairs + ([("pyvirtio", "baseline")] if "baseline" in results else []):
        ratios = [x / y for x, y in zip(results[a], results[b])]
        print(f"  {a}/{b} {med(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--turns", type=int, default=10000, help="turns per block (default 10000)")
    p.add_argument("--blocks", type=int, default=8, help="blocks of each way (default 8)")
    p.add_argument("--cpu", action="store_true", help="the thread's CPU time, not the wall clock")
    p.add_argument("--size", type=int, default=64, help="image size in MiB (default 64)")
    p.add_argument("--baseline", metavar="SRC",
                   help="also time another checkout's src, loaded in this process (module docstring)")
    args = p.parse_args(argv)
    if args.turns < 1 or args.blocks < 1 or args.size < 1:
        p.error("--turns, --blocks and --size must be at least 1")
    with tempfile.TemporaryDirectory(prefix="pyvirtio-bench-turn-") as tmp:
        image = os.path.join(tmp, "disk.img")
        with open(image, "wb") as f:
            f.write(os.urandom(args.size << 20))
        baseline = load_baseline(args.baseline, tmp).Rig(image, args.size << 20) if args.baseline else None
        rig = Rig(image, args.size << 20)
        try:
            results = measure(rig, args.turns, args.blocks, args.cpu, baseline)
        except Mismatch as exc:
            print(f"blk_turn_cost: {exc}", file=sys.stderr)
            return 1
        finally:
            rig.close()
            if baseline is not None:
                baseline.close()
    report(results, args.turns, args.blocks, args.cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
