"""Ring fuzzing shared by ``virtq_split.py`` and ``virtq_packed.py``: a driver-side queue and a
device-side queue over one guest memory (two regions with a hole between them), driven by a
sequence of API calls from both sides (rust-vmm's "fuzzing as replay"), with raw writes into the
rings between the calls — so each side meets an honest peer, a hostile one, and any mix."""

from __future__ import annotations

from _harness import Reader, Writer

from pyvirtio.errors import VirtioError
from pyvirtio.memory import GuestMemory
from pyvirtio.virtq import (PackedDeviceQueue, PackedDriverQueue, PackedRingLayout,
                            SplitDeviceQueue, SplitDriverQueue, SplitRingLayout, vector)

RING = 0x1000
INDIRECT = 0x4000
DATA = 0x8000
LOW_END = 0x10000
HIGH = 0x20000
HIGH_SIZE = 0x1000
MAX_OPS = 300
MAX_HELD = 64

(DRV_ADD, DRV_KICK_PREPARE, DRV_GET_BUF, DRV_ENABLE_CB, DRV_DISABLE_CB, DEV_POP, DEV_ADD_USED,
 DEV_NEEDS_NOTIFICATION, DEV_ENABLE, DEV_DISABLE, SCRIBBLE, DEV_POP_DIRECT, DEV_DRAIN,
 DEV_SET_BASE, DEV_RESTART, CHAIN_IO) = range(16)
N_OPS = 16


def memory() -> GuestMemory:
    return GuestMemory.from_buffers((0, bytearray(LOW_END)), (HIGH, bytearray(HIGH_SIZE)))


def _queues(kind: str, r: Reader, mem: GuestMemory):
    mode = r.u8()
    event_idx, indirect, drv_indirect = bool(mode & 1), bool(mode & 2), bool(mode & 4)
    in_order = bool(mode & 8)  # VIRTIO_F_IN_ORDER: both sides (packed devices batch used entries)
    if kind == "split":
        size = 1 << (r.u8() % 6)
        layout = SplitRingLayout.contiguous(RING, size)
        drv = SplitDriverQueue(layout, event_idx=event_idx, indirect_area=INDIRECT if drv_indirect else None,
                               max_indirect=4 if drv_indirect else 0, in_order=in_order)
        dev = SplitDeviceQueue(32)
    else:
        size = r.u8() % 32 + 1
        layout = PackedRingLayout.contiguous(RING, size)
        drv = PackedDriverQueue(layout, event_idx=event_idx, indirect_area=INDIRECT if drv_indirect else None,
                                max_indirect=4 if drv_indirect else 0, in_order=in_order)
        dev = PackedDeviceQueue(32)
    dev.in_order = in_order
    drv.setup(mem)
    _configure(dev, layout, event_idx, indirect, mem)
    return drv, dev, layout, (event_idx, indirect)


def _configure(dev, layout, event_idx, indirect, mem) -> None:
    dev.set_size(layout.size)
    dev.set_addresses(layout.desc_table, layout.avail_ring, layout.used_ring)
    dev.set_features(event_idx, indirect)
    dev.activate(mem)


def _buffer(r: Reader) -> tuple[int, int]:
    where = r.pick(8)
    if where < 5:
        addr = DATA + r.u16() % (LOW_END - DATA)
    elif where < 7:
        addr = HIGH + r.u16() % HIGH_SIZE
    else:
        addr = r.u64()
    length = r.u16() if r.flag() else r.u32()
    return addr, length


def _echo(chain) -> int:
    data = chain.read(0, min(chain.readable_len, 256))[:chain.writable_len]
    return chain.write(data) if data else 0


def run(kind: str, data: bytes) -> None:
    r = Reader(data)
    mem = memory()
    try:
        drv, dev, layout, features = _queues(kind, r, mem)
    except VirtioError:
        return
    held: list = []
    token = 0
    for _ in range(MAX_OPS):
        if not r.more():
            break
        op = r.pick(N_OPS)
        try:
            if op == DRV_ADD:
                outs = [_buffer(r) for _ in range(r.pick(4))]
                ins = [_buffer(r) for _ in range(r.pick(4))]
                token += 1
                drv.add(mem, outs, ins, token)
            elif op == DRV_KICK_PREPARE:
                drv.kick_prepare(mem)
            elif op == DRV_GET_BUF:
                drv.get_buf(mem)
            elif op == DRV_ENABLE_CB:
                drv.enable_cb(mem)
            elif op == DRV_DISABLE_CB:
                drv.disable_cb(mem)
            elif op == DEV_POP:
                chain = dev.pop_descriptor_chain(mem)
                if chain is not None and len(held) < MAX_HELD:
                    held.append(chain)
            elif op == DEV_ADD_USED:
                pick = r.u8()
                head = held.pop(pick % len(held)).head_index if held and pick < 0xF0 else r.u16()
                dev.add_used(mem, head, r.u32())
            elif op == DEV_NEEDS_NOTIFICATION:
                dev.needs_notification(mem)
            elif op == DEV_ENABLE:
                dev.enable_notification(mem)
            elif op == DEV_DISABLE:
                dev.disable_notification(mem)
            elif op == SCRIBBLE:
                at = RING + r.u16() % (LOW_END - RING)
                blob = r.blob(64)
                mem.write(at, blob[:LOW_END - at])
            elif op == DEV_POP_DIRECT:  # the batch pop (split and packed); flag: return it at once
                limit = r.u8()
                if limit & 1 and vector.ENABLED:  # odd limits: the numpy batch
                    batch = vector.pop_readable(dev, mem, limit)
                    if batch is not None:
                        assert 0 < len(batch) <= limit
                        assert len(batch.heads) == len(batch.offsets) == len(batch.lengths)
                        assert int(batch.offsets.min()) >= 0
                        assert int((batch.offsets + batch.lengths).max()) <= batch.region.size
                        assert [len(v) for v in batch.views()] == batch.lengths.tolist()
                        if r.flag():
                            vector.add_used(dev, mem, batch.heads)
                    continue
                heads, lengths, views = dev.pop_direct(mem, limit)
                assert len(heads) == len(lengths) == len(views)
                assert all(len(v) == n for v, n in zip(views, lengths))
                if r.flag():
                    dev.add_used_heads(mem, heads)
            elif op == DEV_DRAIN:
                dev.drain(mem, _echo)
            elif op == DEV_SET_BASE:
                dev.set_base(r.u16())
                dev.sync_used_from_ring(mem)
            elif op == DEV_RESTART:
                held.clear()
                dev.reset()
                _configure(dev, layout, *features, mem)
                dev.set_base(r.u16())
                dev.sync_used_from_ring(mem)
            elif op == CHAIN_IO and held:
                chain = held[r.u8() % len(held)]
                off = r.u16()
                chain.read(off, r.u16())
                chain.write(r.blob(512), off if r.flag() else None)
        except VirtioError:
            pass


def seeds() -> dict[str, bytes]:
    """Honest sessions: the driver adds, kicks and collects; the device pops, echoes, completes."""
    out = {}
    for name, mode, size_code in (("plain", 0, 3), ("event-idx", 1, 4), ("indirect", 7, 2),
                                  ("wrap", 1, 1)):
        w = Writer().u8(mode).u8(size_code)
        for i in range(40 if name == "wrap" else 12):
            w.pick(DRV_ADD).pick(1).pick(0).u16(0x100 * (i % 8)).flag(True).u16(16)
            w.pick(1).pick(0).u16(0x4000 + 0x100 * (i % 8)).flag(True).u16(32)
            w.pick(DRV_KICK_PREPARE).pick(DEV_POP).pick(CHAIN_IO).u8(0).u16(0).u16(16).blob(b"x" * 8).flag(False)
            w.pick(DEV_ADD_USED).u8(0).u32(8).pick(DEV_NEEDS_NOTIFICATION).pick(DRV_GET_BUF)
            if i % 3 == 2:
                w.pick(DRV_DISABLE_CB).pick(DEV_DRAIN).pick(DRV_ENABLE_CB).pick(DEV_ENABLE)
        out[name] = w.bytes()
    for name, mode in (("direct", 1), ("direct-in-order", 9)):  # transmit-like: pop_direct batches
        w = Writer().u8(mode).u8(3)
        for i in range(30):
            w.pick(DRV_ADD).pick(1).pick(0).u16(0x80 * (i % 16)).flag(True).u16(60).pick(0)
            if i % 3 == 2:
                w.pick(DRV_KICK_PREPARE).pick(DEV_POP_DIRECT).u8(8 + i % 2).flag(True)
                w.pick(DEV_NEEDS_NOTIFICATION).pick(DRV_GET_BUF).pick(DRV_GET_BUF).pick(DRV_GET_BUF)
        out[name] = w.bytes()
    return out
