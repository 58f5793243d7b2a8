#!/usr/bin/env python3
"""How far pyvirtio's blk request path is from the least Python can do, at queue depth 1.

An experiment, not a back-end to use: ``pyvirtio serve blk`` with its queue worker replaced, once
the ring is started, by one flat loop (:func:`floor_loop`) that serves a split ring's requests
the way the real path does at queue depth 1 — poll the kick eventfd, read the kick, walk the
chain, do the I/O with one system call straight into guest memory, write the status and the used
element, publish the used index, re-arm kicks (EVENT_IDX's avail_event), decide the notification
from used_event and write the call eventfd (after the same ``poll(0)`` guard pyvirtio uses) — with
no engine, no device object, no ring core between the poll and the system calls.  Per request
it checks what a guest controls on this path: the head and every next index inside the ring or
the indirect table, the indirect table's size, each descriptor's direction (header
driver-written, data and status device-written for a read), lengths (header 16 bytes, status 1),
every address inside guest memory (``GuestMemory.view`` raises), the request inside the disk.
Anything else — a chain of another shape or type (a flush, a request split over several data
descriptors), one it would refuse or answer with an error, a transfer that fails (an O_DIRECT
buffer not aligned) — it leaves where it is and hands to pyvirtio's own path, which serves it
(and names the fault); a packed or a broken ring, pyvirtio's own worker loop takes over.  Each
pass holds the worker's lock and leaves the ring's indices where the control path reads them,
as the real worker does, and a ring the front-end restarts (a guest's firmware, then its
kernel) is served again.  It does not do what the real path also does for the requests it
serves: inflight tracking (``bench blk`` does not negotiate it; QEMU does), statistics, fault
rules, many requests in flight.  The vhost-user control path is pyvirtio's, unchanged.
``blk_guest_fio.py --floor`` serves a guest's disk with it.

Starts qemu-storage-daemon (file, its default ``aio=threads``), ``pyvirtio serve blk`` and the
floor on three images written alike, runs ``pyvirtio bench blk``'s engine (4 KiB random reads,
queue depth 1, split ring, ``--verify``: every read checked against a stamp) against each,
interleaved, order reversed every other round; reports IOPS, the CPU per request (user part too)
and the same-round ratios floor/qsd, pyvirtio/qsd and pyvirtio/floor.

    python benchmarks/blk_qd1_floor.py [--rounds 6] [--runtime 3] [--size 64M] [--baseline SRC]

``--baseline SRC`` adds a fourth back-end, ``baseline``: ``pyvirtio serve blk`` imported from
another checkout's ``src`` (an A/B of a change to the request path, in the same rounds).
``--relaunch`` starts every back-end anew before each round: one launch of a process runs
steadily faster or slower than the next on this machine (two runs of the same A/B, the changed
code in one slot and then the other, favoured whichever back-end sat in the ``baseline`` slot
by 2-7 %, its user CPU per request ~2 us lower both times), so an A/B of one launch each
compares launches as much as code.
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import sys
import tempfile
import time

from pyvirtio.bench.blk import BlkBenchConfig, parse_size, run
from pyvirtio.bench.peers import (CpuSampler, fill_image, interleave, relauncher, same_round_ratios, start_pyvirtio,
                                   start_qsd)
from pyvirtio.errors import GuestMemoryError
from pyvirtio.fence import mb
from pyvirtio.spec.blk import BLK_REQ_HEADER, BlkReqType, BlkStatus
from pyvirtio.spec.ring import VIRTQ_DESC, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from pyvirtio.virtq.split_device import SplitDeviceQueue

BACKENDS = ("qsd-file", "pyvirtio", "floor")
# The spec's values as plain ints: the loop compares them per request, without enum lookups.
_NEXT, _WRITE, _INDIRECT = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT
_IN, _OUT = int(BlkReqType.IN), int(BlkReqType.OUT)
_OK = int(BlkStatus.OK)


class FloorStop(Exception):
    """The floor cannot serve this ring (a packed one, a broken one): the loop ends and
    pyvirtio's own worker loop takes the ring over."""


class _Other(Exception):
    """A chain the flat loop does not serve (another shape or request type, a descriptor it
    would have to refuse, a transfer that failed): pyvirtio's own path serves it instead."""


def floor_loop(worker, wake_fd: int) -> bool:
    """Serve queue 0 of the worker's vhost-user connection in one flat loop (module docstring)
    until the worker is stopped (True) or the front-end changes the ring (False: called again
    for the new one — a guest's firmware and then its kernel each start the ring).  A chain of
    any other shape, or one it would refuse, is left where it is and served by pyvirtio's own
    path (:func:`_by_pyvirtio`), which also names any fault; each pass holds the worker's lock,
    as the real worker's turns do, so the control path sees the ring between passes."""
    host, lock = worker.host, worker.lock
    wake = select.poll()
    wake.register(wake_fd, select.POLLIN)
    while True:  # until the front-end has started the ring
        conn = host.conn
        ring = conn.vrings[0] if conn.vrings else None
        if ring is not None and ring.active and ring.kick_fd >= 0 and conn.memory.regions:
            break
        if wake.poll(20):
            os.read(wake_fd, 8)
        if worker._stopping:
            return True
    q, mem, device = ring.queue, conn.memory, conn.device
    if not isinstance(q, SplitDeviceQueue):
        raise FloorStop("the floor serves split rings only")
    fd, size, call_fd, kick_fd, generation = device.fd, q.size, ring.call_fd, ring.kick_fd, mem.generation
    capacity = device.capacity * 512
    try:
        avail = mem.view(q.avail_ring, 6 + 2 * size).cast("H")
        used16 = mem.view(q.used_ring, 6 + 8 * size).cast("H")
        used32 = mem.view(q.used_ring + 4, 8 * size).cast("I")
        table = mem.view(q.desc_table, 16 * size)
    except GuestMemoryError as exc:  # pyvirtio's worker breaks the ring and says why
        raise FloorStop(f"ring outside guest memory ({exc})") from None
    view, unpack, header = mem.view, VIRTQ_DESC.unpack_from, BLK_REQ_HEADER.unpack_from
    mask = size - 1
    poller = select.poll()
    poller.register(kick_fd, select.POLLIN)
    poller.register(wake_fd, select.POLLIN)
    guard = select.poll()  # as pyvirtio's _signal: never block on a full eventfd
    guard.register(call_fd, select.POLLOUT)
    again = False  # a request made available before the last kick was read: no poll first
    while True:
        for ready, revents in (() if again else poller.poll()):
            if ready == wake_fd:
                os.read(wake_fd, 8)
                if worker._stopping:
                    return True
            elif revents & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                return False  # the kick fd went away: the ring is being stopped
        if again and worker._stopping:  # a busy ring never polls: the stop is looked at here
            return True
        with lock:
            if not (ring.active and conn.memory is mem and mem.generation == generation
                    and ring.kick_fd == kick_fd and ring.call_fd == call_fd and ring.queue is q):
                return False  # the front-end changed the ring since: start again from it
            next_avail, used, signalled = q.next_avail, q.next_used, q.signalled_used
            while True:
                while avail[1] != next_avail:
                    try:
                        head = avail[2 + (next_avail & mask)]
                        if head >= size:
                            raise _Other
                        a0, l0, f0, n0 = unpack(table, 16 * head)
                        descs, count = table, size
                        if f0 & _INDIRECT:
                            if f0 & (_WRITE | _NEXT) or l0 % 16 or not 48 <= l0 <= 16 * size:
                                raise _Other
                            descs, count = view(a0, l0), l0 >> 4
                            a0, l0, f0, n0 = unpack(descs, 0)
                        if f0 & (_WRITE | _INDIRECT) or not f0 & _NEXT or l0 != 16 or n0 >= count:
                            raise _Other
                        a1, l1, f1, n1 = unpack(descs, 16 * n0)
                        if not f1 & _NEXT or n1 >= count:
                            raise _Other
                        a2, l2, f2, _ = unpack(descs, 16 * n1)
                        if f1 & _INDIRECT or l1 == 0 or l1 % 512 or f2 & (_NEXT | _INDIRECT) or not f2 & _WRITE or l2 != 1:
                            raise _Other
                        kind, _, sector = header(view(a0, 16))
                        data, status = view(a1, l1), view(a2, 1)
                        offset = sector * 512
                        if offset + l1 > capacity:
                            raise _Other
                        if kind == _IN and f1 & _WRITE:
                            if os.preadv(fd, [data], offset) != l1:
                                raise _Other
                            written = l1
                        elif kind == _OUT and not f1 & _WRITE and not device.read_only:
                            if os.pwritev(fd, [data], offset) != l1:
                                raise _Other
                            written = 0
                        else:
                            raise _Other
                    except (_Other, OSError, GuestMemoryError):
                        # Nothing of this chain was answered: pyvirtio's path takes it from here.
                        q.next_avail, q.next_used, q.signalled_used = next_avail, used, signalled
                        _by_pyvirtio(host)
                        if q.broken:
                            raise FloorStop("queue 0 broken by the driver (pyvirtio's path said why)")
                        next_avail, used, signalled = q.next_avail, q.next_used, q.signalled_used
                        continue
                    status[0] = _OK
                    i = used & mask
                    used32[2 * i] = head
                    used32[2 * i + 1] = written + 1
                    next_avail = (next_avail + 1) & 0xFFFF
                    used = (used + 1) & 0xFFFF
                    used16[1] = used
                used16[2 + 4 * size] = next_avail  # avail_event: kick for the next one
                mb()
                if avail[1] == next_avail:
                    break
            if used != signalled:
                old, signalled = signalled, used
                used_event = avail[2 + size]
                # vring_need_event (pyvirtio.virtq.event), inline: the loop makes no call it can avoid
                if ((used - used_event - 1) & 0xFFFF) < ((used - old) & 0xFFFF) and guard.poll(0):
                    os.eventfd_write(call_fd, 1)
            # What the control path reads of the ring (GET_VRING_BASE, a stop) is up to date.
            q.next_avail, q.next_used, q.signalled_used = next_avail, used, signalled
        try:  # the kick, read after its request was answered (as pyvirtio's worker does)
            os.read(kick_fd, 8)
        except BlockingIOError:
            pass
        # The driver may have made its next request available, and kicked, after the pass's last
        # look and before that read (which took its kick too): look again before sleeping.
        again = avail[1] != next_avail


def _by_pyvirtio(host) -> None:
    """Serve queue 0 the general way (the worker's lock held) until nothing it started is in
    flight: the requests the flat loop does not serve, and every fault, go there."""
    if host.process(0):
        host.notify(0)
    while True:
        fds = host.host_fds(0)
        if not fds:
            return
        waiting = select.poll()
        for fd, mask in fds:
            waiting.register(fd, mask)
        for index in host.host_ready(0, waiting.poll(1000)):
            host.notify(index)
        if host.process(0):  # kicks stay off while requests are in flight: look again
            host.notify(0)


def serve_floor(argv: list[str]) -> int:
    """``pyvirtio serve blk ...`` with queue 0's worker running :func:`floor_loop`."""
    import pyvirtio.engine as engine
    from pyvirtio.cli import main as cli

    general = engine.GroupWorker._run

    def run(worker, wake_fd: int) -> None:
        if worker.group != 0 or not hasattr(worker.host, "conn"):
            return general(worker, wake_fd)
        try:
            while not floor_loop(worker, wake_fd):
                pass
            return
        except FloorStop as exc:
            print(f"floor: stopped: {exc}; pyvirtio's own worker serves the ring", file=sys.stderr, flush=True)
        general(worker, wake_fd)

    engine.GroupWorker._run = run
    return cli(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-floor"]:
        return serve_floor(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=6, help="rounds (default 6)")
    p.add_argument("--runtime", type=float, default=3.0, help="seconds per run (default 3)")
    p.add_argument("--size", default="64M", help="disk size (default 64M)")
    p.add_argument("--baseline", metavar="SRC",
                   help="also serve with pyvirtio imported from this directory (another checkout's src)")
    p.add_argument("--relaunch", action="store_true",
                   help="start every back-end anew before each round (the rounds then sample "
                        "launches, not one launch of each)")
    args = p.parse_args(argv)
    size = parse_size(args.size)
    names = BACKENDS + (("baseline",) if args.baseline else ())
    with tempfile.TemporaryDirectory(prefix="pyvirtio-bench-floor-") as tmp:
        images = {name: os.path.join(tmp, f"{name}.img") for name in names}
        for path in images.values():
            fill_image(path, size)
        starts = {
            "qsd-file": lambda: start_qsd(os.path.join(tmp, "qsd.sock"), images["qsd-file"]),
            "pyvirtio": lambda: start_pyvirtio("blk", os.path.join(tmp, "pv.sock"), blk_file=images["pyvirtio"]),
            "floor": lambda: start_pyvirtio("blk", os.path.join(tmp, "floor.sock"), blk_file=images["floor"],
                                            program=[sys.executable, os.path.abspath(__file__), "--serve-floor"]),
            "baseline": lambda: start_pyvirtio("blk", os.path.join(tmp, "base.sock"),
                                               blk_file=images["baseline"], src=args.baseline),
        }
        peers: dict = {}
        try:  # a peer that fails to start stops the ones already started
            for name in names:
                peers[name] = starts[name]()
            runs = measure(peers, args.rounds, args.runtime,
                           relauncher(peers, starts, names) if args.relaunch else None)
        finally:
            for peer in peers.values():
                peer.close()
    report(runs, args.rounds, args.runtime, names, args.relaunch)
    return 0


def measure(peers: dict, rounds: int, runtime: float, each_round=None) -> list[dict]:
    def run_one(name, params):
        with CpuSampler(peers[name].process.pid) as cpu:
            r = run(BlkBenchConfig(peers[name].socket_path, runtime=runtime, ring="split", verify=True,
                                   **params)).as_dict()
            end = time.monotonic()
        start, per_io = end - r["seconds"], 1e6 / max(1, r["ios"])
        r["cpu_us_per_io"] = cpu.between(start, end) * per_io
        r["user_us_per_io"] = cpu.user_between(start, end) * per_io
        return r

    def log(r):
        print(f"round {r['round'] + 1}/{rounds} {r['backend']:<9} {r['iops']:>9,.0f} IOPS",
              file=sys.stderr, flush=True)

    tests = [("4k randread qd1", dict(rw="randread", bs=4096, iodepth=1))]
    return interleave(list(peers), tests, rounds, run_one, log, each_round=each_round)


def report(runs: list[dict], rounds: int, runtime: float, names: tuple[str, ...] = BACKENDS,
           relaunch: bool = False) -> None:
    med = statistics.median
    started = "; every back-end started anew each round" if relaunch else ""
    print(f"\n4 KiB random read, queue depth 1, --verify; {rounds} rounds x {runtime:g} s{started}; medians\n")
    print(f"{'back-end':<10} {'IOPS':>9} {'p50 us':>8} {'CPU us/io':>10} {'user':>6}")
    for name in names:
        rs = [r for r in runs if r["backend"] == name]
        print(f"{name:<10} {med(r['iops'] for r in rs):>9,.0f} {med(r['lat_ns']['p50'] for r in rs) / 1e3:>8.0f} "
              f"{med(r['cpu_us_per_io'] for r in rs):>10.1f} {med(r['user_us_per_io'] for r in rs):>6.1f}")
    print("\nIOPS ratios, median of same-round ratios (range over rounds):")
    pairs = [("floor", "qsd-file"), ("pyvirtio", "qsd-file"), ("pyvirtio", "floor")]
    if "baseline" in names:
        pairs += [("baseline", "qsd-file"), ("pyvirtio", "baseline")]
    for a, b in pairs:
        ratios = same_round_ratios(runs, "4k randread qd1", a, b)
        print(f"  {a}/{b} {med(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    sys.exit(main())
