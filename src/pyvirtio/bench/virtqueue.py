"""Descriptor chains per second through the split and packed ring cores.

The driver side adds a batch of chains, decides whether to kick; the device side drains them
(pop and check every descriptor, handle, add used in one batch, decide whether to interrupt); the
driver collects them.  Both sides work on their own mapping of one memfd (as two processes would),
over the loopback transport's memory.  Configurations: split or packed ring, 1 or 4 descriptors per
chain, EVENT_IDX on or off, direct or indirect descriptors.

The two sides take turns in one thread, and each side's turns are timed on their own: besides
the pair's rate (chains over the whole loop), each side's rate is chains over the time that side
spent — what one side would reach if the other cost nothing (as a guest driver or a device in
another process would, on its own core).

Two paths (``path``), each side measured on its own as above:

- ``chain``, the general path, for every configuration.  Driver, per chain: ``add`` (checks,
  free list, one descriptor store per buffer, avail entry and idx); per batch ``kick_prepare``;
  per chain ``get_buf`` (checks, free list).  Device: ``drain`` — per chain
  ``pop_descriptor_chain`` (checks, a walk of the chain, a memoryview per buffer, a
  DescriptorChain), the handler, then one used-ring store per batch.
- ``batch``, split and packed rings with 1 descriptor per chain only (the chain is one
  device-writable 512-byte buffer).  Driver: per batch ``add_single`` (checks over the batch, one slice store
  per descriptor field, one avail ring store, one idx store), ``kick_prepare``, ``collect`` (the
  used entries read with a slice, every id and length checked over the batch).  Device: per
  batch ``pop_single`` (avail idx, heads, flags and every buffer's bounds checked over the
  batch with C-level gathers and min/max; no DescriptorChain and no view per chain: the device
  gets the region buffer and offsets) and ``add_used_lengths``, in
  :func:`~pyvirtio.virtq.drain.drain_single` (the entropy device's path) (each chain's bytes written,
  here all of its buffer); a chain of another shape goes through the general path.  In both
  paths the handler touches no buffer (it reports the chain's writable bytes as written).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

from ..devices.rng import RngDevice
from ..loopback import LoopbackTransport
from ..virtq.drain import drain_single
from ..virtq import (PackedDeviceQueue, PackedDriverQueue, PackedRingLayout, SplitDeviceQueue,
                     SplitDriverQueue, SplitRingLayout, driver_queue)


@dataclass
class VirtqueueResult:
    descriptors: int
    packed: bool
    event_idx: bool
    indirect: bool
    batch: int
    chains: int
    seconds: float
    kicks: int
    interrupts: int
    device_seconds: float = 0.0  # in the device's drains
    driver_seconds: float = 0.0  # in the driver's adds, kick decisions and collection
    path: str = "chain"  # "chain": the general path; "batch": pop_single / add_single / collect

    @property
    def chains_per_second(self) -> float:
        return self.chains / self.seconds

    @property
    def device_chains_per_second(self) -> float:
        return self.chains / self.device_seconds if self.device_seconds else 0.0

    @property
    def driver_chains_per_second(self) -> float:
        return self.chains / self.driver_seconds if self.driver_seconds else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["chains_per_second"] = round(self.chains_per_second)
        d["device_chains_per_second"] = round(self.device_chains_per_second)
        d["driver_chains_per_second"] = round(self.driver_chains_per_second)
        return d


def run_one(descriptors: int, event_idx: bool, indirect: bool = False, *, packed: bool = False,
            size: int = 256, batch: int = 64, duration: float = 1.0,
            clock: Callable[[], float] = time.perf_counter, path: str = "chain") -> VirtqueueResult:
    """One configuration for ``duration`` seconds of ``clock`` (``time.thread_time``: this
    thread's CPU time, what a busy machine's other jobs do not inflate).  ``path="batch"``:
    the batch path (1 descriptor per chain, no indirect; see the module's docstring)."""
    if path not in ("chain", "batch"):
        raise ValueError(f"path {path!r} is not 'chain' or 'batch'")
    if path == "batch" and (descriptors != 1 or indirect):
        raise ValueError("the batch path takes 1-descriptor chains, no indirect")
    t = LoopbackTransport(RngDevice(), memory_size=8 << 20)
    try:
        mem, dmem = t.memory, t.device_memory
        layout_cls, drv_cls, dev_cls = ((PackedRingLayout, PackedDriverQueue, PackedDeviceQueue) if packed
                                        else (SplitRingLayout, SplitDriverQueue, SplitDeviceQueue))
        base = t.alloc(layout_cls.bytes_needed(size), 4096)
        layout = layout_cls.contiguous(base, size)
        ind = t.alloc(drv_cls.indirect_area_size(size, 8), 16) if indirect else None
        drv = driver_queue(layout, event_idx=event_idx, indirect_area=ind, max_indirect=8 if indirect else 0)
        drv.setup(mem)
        dev = dev_cls(size)
        dev.set_features(event_idx, indirect)
        dev.set_size(size)
        dev.set_addresses(layout.desc_table, layout.avail_ring, layout.used_ring)
        dev.activate(dmem)
        data = t.alloc(4096 * descriptors, 4096)
        n_out = descriptors // 2
        out_bufs = [(data + i * 512, 512) for i in range(n_out)]
        in_bufs = [(data + (n_out + i) * 512, 512) for i in range(descriptors - n_out)]
        handle = _written_len
        chains = kicks = interrupts = 0
        add, kick_prepare, get_bufs, drain = drv.add, drv.kick_prepare, drv.get_bufs, dev.drain
        if path == "batch":
            addrs, lengths = [in_bufs[0][0]] * batch, [in_bufs[0][1]] * batch
            tokens = list(range(1, batch + 1))
            add_single, get_bufs = drv.add_single, drv.collect
            split_dev = dev

            def add_batch():
                add_single(mem, addrs, lengths, tokens, writable=True)

            def drain_batch(dmem, handle, settle=None, notify=None):
                return drain_single(split_dev, dmem, _all_written, handle)
            drain = drain_batch
        else:
            def add_batch():
                for token in range(batch):
                    add(mem, out_bufs, in_bufs, token + 1)
        device_s = driver_s = 0.0
        start = clock()
        deadline = start + duration
        while True:
            t0 = clock()
            add_batch()
            if kick_prepare(mem):
                kicks += 1
            t1 = clock()
            if drain(dmem, handle):
                interrupts += 1
            t2 = clock()
            chains += len(get_bufs(mem))
            drv.enable_cb(mem)
            t3 = clock()
            device_s += t2 - t1
            driver_s += (t1 - t0) + (t3 - t2)
            if t3 >= deadline:
                break
        seconds = clock() - start
        return VirtqueueResult(descriptors, packed, event_idx, indirect, batch, chains, seconds, kicks,
                               interrupts, device_s, driver_s, path)
    finally:
        t.close()


def _written_len(chain) -> int:
    return chain.writable_len


def _all_written(heads, lengths, offsets, buf):
    return lengths  # the handler touches no buffer: every byte counted as written (as _written_len)


def run_all(duration: float = 1.0, clock: Callable[[], float] = time.perf_counter) -> list[VirtqueueResult]:
    results = []
    for packed in (False, True):
        for descriptors in (1, 4):
            for event_idx in (False, True):
                results.append(run_one(descriptors, event_idx, packed=packed, duration=duration, clock=clock))
            results.append(run_one(descriptors, True, indirect=True, packed=packed, duration=duration,
                                   clock=clock))
    for packed in (False, True):  # the batch path: 1-descriptor chains
        for event_idx in (False, True):
            results.append(run_one(1, event_idx, packed=packed, duration=duration, clock=clock, path="batch"))
    return results


def format_table(results: list[VirtqueueResult]) -> str:
    lines = [f"{'ring':>6} {'descs/chain':>11} {'event_idx':>9} {'indirect':>8} {'path':>5} {'chains/s':>10} "
             f"{'device/s':>10} {'driver/s':>10} {'kicks':>7} {'irqs':>7}"]
    for r in results:
        lines.append(f"{'packed' if r.packed else 'split':>6} {r.descriptors:>11} {str(r.event_idx):>9} {str(r.indirect):>8} "
                     f"{r.path:>5} {r.chains_per_second:>10,.0f} {r.device_chains_per_second:>10,.0f} "
                     f"{r.driver_chains_per_second:>10,.0f} {r.kicks:>7} {r.interrupts:>7}")
    lines.append("chains/s: the pair taking turns in one thread; device/s, driver/s: chains over the "
                 "time each side spent")
    lines.append("path chain: add / pop_descriptor_chain / get_buf per chain; path batch: add_single / "
                 "pop_single + add_used_lengths / collect per batch (1 descriptor)")
    return "\n".join(lines)
