"""Conformance checks, part 1: bringing a device up — handshake, features, REPLY_ACK, the memory
table, and the rings (start, enable, GET/SET_VRING_BASE, suspension, several queues)."""

from __future__ import annotations

import os
import time

from ..spec import blk as spec_blk
from ..spec.ids import DeviceType
from ..vhost_user.frontend.connection import Expect
from ..vhost_user.frontend.errors import RequestNacked
from ..vhost_user.protocol import VERSION, FrontendReq as R, ProtocolFeature as PF
from ..vhost_user.frontend.transport import memory_region
from ..vhost_user.wire import VringState
from .framework import (NEED_REPLY, QUIET_PERIOD, REPLY, Context, Fail, Skip, check, complete,
                        expect, need, need_workload)
from .session import VERSION_1, Session

# --- handshake and features ----------------------------------------------------------------------


@check("init.sequence", "MUST", 'vu "Communication", "Ring states"; VIRTIO 3.1.1',
       "a QEMU-style initialisation brings the device up and a request completes")
def _init_sequence(ctx: Context) -> str:
    with ctx.session() as s:
        workload = need_workload(s)
        s.start()
        s.submit(1)
        complete(s)
        return f"{workload.describe} completed"


@check("reply.header", "MUST", 'vu "Header"',
       "replies carry version 1 and the REPLY flag, and nothing else")
def _reply_header(ctx: Context) -> str:
    with ctx.session(handshake=False) as s:
        msg = s.client.request(s.conn.raw(R.GET_FEATURES, expect=Expect.BODY))
        expect(msg.flags == VERSION | REPLY, f"GET_FEATURES reply flags {msg.flags:#x}")
        expect(len(msg.payload) == 8, f"GET_FEATURES reply is {len(msg.payload)} bytes, not 8")
        return f"GET_FEATURES reply flags {msg.flags:#x}, 8-byte payload"


@check("features.version-1", "MUST", "VIRTIO 1.3 §6.1",
       "the device offers VIRTIO_F_VERSION_1")
def _version_1(ctx: Context) -> str:
    with ctx.session(handshake=False) as s:
        features = s.client.get_features()
        expect(bool(features & VERSION_1), f"features {features:#x} lack VERSION_1 (legacy only)")
        return f"features {features:#x}"


@check("protocol.before-set-features", "MUST", 'vu "VHOST_USER_GET_PROTOCOL_FEATURES"',
       "GET/SET_PROTOCOL_FEATURES work before SET_FEATURES")
def _protocol_first(ctx: Context) -> str:
    with ctx.session(handshake=False) as s:
        s.client.get_features()
        if not s.conn.offers_protocol_features:
            raise Skip("VHOST_USER_F_PROTOCOL_FEATURES not offered")
        offered = s.client.get_protocol_features()
        s.client.set_protocol_features()
        s.client.get_features()  # still in step after SET_PROTOCOL_FEATURES
        return f"offered {offered:#x}, acked {s.conn.protocol_features:#x}"


@check("protocol.inband-deps", "SHOULD", 'vu "In-band notifications"',
       "INBAND_NOTIFICATIONS is only offered with BACKEND_REQ and REPLY_ACK")
def _inband(ctx: Context) -> str:
    with ctx.session() as s:
        offered = s.conn.backend_protocol_features or 0
        if not offered & (1 << PF.INBAND_NOTIFICATIONS):
            return "INBAND_NOTIFICATIONS not offered"
        both = (1 << PF.BACKEND_REQ) | (1 << PF.REPLY_ACK)
        expect(offered & both == both, f"offered {offered:#x} without BACKEND_REQ and REPLY_ACK")
        return "offered with BACKEND_REQ and REPLY_ACK"


@check("protocol.mq", "SHOULD", 'vu "Multiple queue support"',
       "back-ends should always implement the MQ protocol feature")
def _mq(ctx: Context) -> str:
    with ctx.session() as s:
        expect(s.conn.offers_protocol_features, "no protocol features at all")
        expect(s.has(PF.MQ), "MQ not offered")
        return f"MQ offered; GET_QUEUE_NUM answers {s.conn.queue_num}"


@check("owner", "MUST", 'vu "VHOST_USER_SET_OWNER"', "SET_OWNER is accepted")
def _owner(ctx: Context) -> str:
    with ctx.session(handshake=False) as s:
        s.client.get_features()
        if s.conn.offers_protocol_features:
            s.client.get_protocol_features()
            s.client.set_protocol_features()
        s.client.set_owner()
        acked = s.has(PF.REPLY_ACK)
        return "acknowledged with 0 (REPLY_ACK)" if acked else "accepted (no REPLY_ACK to confirm)"


@check("queue-num", "MUST", 'vu "VHOST_USER_GET_QUEUE_NUM"',
       "GET_QUEUE_NUM answers at least one queue")
def _queue_num(ctx: Context) -> str:
    with ctx.session() as s:
        need(s, PF.MQ)
        return f"{s.conn.queue_num} queues"


@check("queue-num.blk-config", "SHOULD", 'vu "Multiple queue support"; VIRTIO 1.3 §5.2.4',
       "a block device's GET_QUEUE_NUM agrees with num_queues in its config space")
def _queue_num_blk(ctx: Context) -> str:
    with ctx.session() as s:
        if s.device_type != DeviceType.BLOCK:
            raise Skip("not a block device")
        need(s, PF.MQ)
        need(s, PF.CONFIG)
        if not (s.conn.backend_features or 0) & (1 << spec_blk.BlkFeature.MQ):
            raise Skip("VIRTIO_BLK_F_MQ not offered")
        num = int.from_bytes(config_field(s, spec_blk.BlkConfigOffset.NUM_QUEUES, 2), "little")
        expect(num == s.conn.queue_num, f"config num_queues {num}, GET_QUEUE_NUM {s.conn.queue_num}")
        return f"both say {num}"


# --- REPLY_ACK -----------------------------------------------------------------------------------


@check("reply-ack.success", "MUST", 'vu "VHOST_USER_PROTOCOL_F_REPLY_ACK"',
       "a request with NEED_REPLY that succeeds is answered with u64 0")
def _ack_success(ctx: Context) -> str:
    with ctx.session() as s:
        need(s, PF.REPLY_ACK)
        value = s.client.request(s.conn.raw(R.SET_VRING_NUM, VringState(0, 64).pack(), flags=NEED_REPLY,
                                            expect=Expect.ACK))
        return f"SET_VRING_NUM 64 answered {value}"


@check("reply-ack.body", "MUST", 'vu "VHOST_USER_PROTOCOL_F_REPLY_ACK"',
       "NEED_REPLY on a request that has a reply body changes nothing (no extra ack)")
def _ack_body(ctx: Context) -> str:
    with ctx.session() as s:
        need(s, PF.REPLY_ACK)
        msg = s.client.request(s.conn.raw(R.GET_FEATURES, flags=NEED_REPLY, expect=Expect.BODY))
        expect(len(msg.payload) == 8, f"GET_FEATURES reply of {len(msg.payload)} bytes")
        s.client.get_protocol_features()  # an extra ack would arrive here as a GET_FEATURES reply
        return "one GET_FEATURES reply, then the next request's own"


@check("vring.num-max", "MUST", 'VIRTIO 1.3 §2.7; vu "VHOST_USER_PROTOCOL_F_REPLY_ACK"',
       "a queue size above the split-ring maximum (65536 > 32768) is refused")
def _num_max(ctx: Context) -> str:
    return _refused_size(ctx, 65536)


@check("vring.num-pow2", "SHOULD", "VIRTIO 1.3 §2.7",
       "a split-ring queue size that is not a power of two (100) is refused")
def _num_pow2(ctx: Context) -> str:
    return _refused_size(ctx, 100)


def _refused_size(ctx: Context, size: int) -> str:
    with ctx.session() as s:
        need(s, PF.REPLY_ACK)
        try:
            s.client.set_vring_num(0, size)
        except RequestNacked as exc:
            return f"SET_VRING_NUM {size} refused with {exc.value}"
        raise Fail(f"SET_VRING_NUM {size} acknowledged with 0")


# --- memory --------------------------------------------------------------------------------------


@check("mem.table", "MUST", 'vu "VHOST_USER_SET_MEM_TABLE"', "a one-region memory table is accepted")
def _mem_table(ctx: Context) -> str:
    with ctx.session() as s:
        s.negotiate()
        s.send_memory("table")
        return "acknowledged with 0" if s.has(PF.REPLY_ACK) else "accepted (no REPLY_ACK to confirm)"


@check("mem.multi-region", "MUST", 'vu "Memory access", "VHOST_USER_SET_MEM_TABLE"',
       "with three regions and holes between them, rings in one and buffers in another work")
def _mem_multi(ctx: Context) -> str:
    with ctx.session(regions=3) as s:
        need_workload(s)
        s.ring_region, s.buffer_region = 1, 2
        s.start()
        s.submit(2)
        complete(s, 2)
        gpas = ", ".join(f"{r.gpa:#x}" for r in s.memory.regions)
        return f"regions at {gpas}; 2 requests completed"


@check("mem.slots", "MUST", 'vu "VHOST_USER_ADD_MEM_REG", "VHOST_USER_REM_MEM_REG"',
       "regions added one by one with ADD_MEM_REG work, and an unused one can be removed")
def _mem_slots(ctx: Context) -> str:
    with ctx.session(regions=3) as s:
        need(s, PF.CONFIGURE_MEM_SLOTS)
        need_workload(s)
        s.ring_region, s.buffer_region = 1, 0
        s.start(memory="slots")
        s.submit(1)
        complete(s)
        s.client.rem_mem_reg(memory_region(s.memory.regions[2]))
        s.submit(1)
        complete(s, what="a request after REM_MEM_REG of an unused region")
        return f"{s.conn.max_mem_slots} slots; 3 regions added, 1 removed, requests completed"


# --- rings ---------------------------------------------------------------------------------------


@check("vring.call", "MUST", 'vu "VHOST_USER_SET_VRING_CALL"; VIRTIO 1.3 §2.7.7',
       "a used buffer is signalled on the call eventfd (interrupts enabled, no EVENT_IDX)")
def _vring_call(ctx: Context) -> str:
    with ctx.session() as s:
        need_workload(s)
        s.start(features=s.default_features(event_idx=False))
        ring = s.submit(1)
        complete(s)
        time.sleep(0.05)
        signals = ring.signals + s.signalled(ring.index)
        expect(signals > 0, "the request completed but the call eventfd never fired")
        return "call eventfd signalled"


@check("vring.no-protocol-features", "MUST", 'vu "Ring states"',
       "after SET_FEATURES without VHOST_USER_F_PROTOCOL_FEATURES, rings work without SET_VRING_ENABLE")
def _no_protocol_bit(ctx: Context) -> str:
    with ctx.session() as s:
        need_workload(s)
        s.start(protocol_bit=False)
        s.submit(1)
        complete(s)
        return "request completed with no SET_VRING_ENABLE"


@check("vring.kick-before-enable", "SHOULD", 'vu "Ring states"',
       "a kick that arrives while the ring is disabled is not lost once it is enabled")
def _kick_before_enable(ctx: Context) -> str:
    with ctx.session() as s:
        workload = need_workload(s)
        if not s.conn.offers_protocol_features:
            raise Skip("VHOST_USER_F_PROTOCOL_FEATURES not offered (rings start enabled)")
        s.start(enable=False)
        q = workload.queue
        s.submit(1)
        early = s.wait(1, timeout=QUIET_PERIOD)
        for index in s.rings:
            s.client.set_vring_enable(index, True)
        if early:
            return "processed while still disabled (allowed: no side effects asked of this request)"
        complete(s, index=q, what="the request kicked before SET_VRING_ENABLE 1")
        return "completed after SET_VRING_ENABLE 1 without another kick"


@check("vring.base-after-traffic", "MUST", 'vu "VHOST_USER_GET_VRING_BASE"',
       "GET_VRING_BASE stops the ring and answers the next avail index (5 after 5 requests)")
def _base_after_traffic(ctx: Context) -> str:
    with ctx.session() as s:
        workload = need_workload(s)
        s.start()
        for _ in range(5):
            s.submit(1)
            complete(s)
        base = s.stop_ring(workload.queue)
        expect(base == 5, f"GET_VRING_BASE answered {base}, not 5")
        return "answered 5"


@check("vring.suspended", "MUST", 'vu "Suspended device state"',
       "with every ring stopped, the back-end neither writes guest memory nor signals")
def _suspended(ctx: Context) -> str:
    with ctx.session() as s:
        workload = need_workload(s)
        s.start()
        s.submit(1)
        complete(s)
        q = workload.queue
        ring = s.rings[q]
        call = os.dup(ring.call)  # keep watching the eventfd the back-end was given
        try:
            for index in list(s.rings):
                s.stop_ring(index)
            _clear(call)  # signals for work done before the stop may still sit in the eventfd
            before = s.used_idx(q)
            s.submit(1, kick=False)
            time.sleep(QUIET_PERIOD)
            after = s.used_idx(q)
            signalled = _clear(call)
        finally:
            os.close(call)
        expect(after == before, f"used idx moved from {before} to {after} while suspended")
        expect(not signalled, "the call eventfd fired while suspended")
        return f"used idx stayed {before}, no signal in {QUIET_PERIOD}s"


@check("vring.base-resume", "MUST", 'vu "VHOST_USER_SET_VRING_BASE", "VHOST_USER_GET_VRING_BASE"',
       "a ring stopped at N and restarted with SET_VRING_BASE N carries on where it stopped")
def _base_resume(ctx: Context) -> str:
    with ctx.session() as s:
        workload = need_workload(s)
        s.start()
        q = workload.queue
        s.submit(3)
        complete(s, 3)
        base = s.stop_ring(q)
        expect(base == 3, f"GET_VRING_BASE answered {base}, not 3")
        s.setup_ring(q, base=base, ring=s.rings[q])
        s.submit(2)
        complete(s, 2, what="requests after the restart")
        used = s.used_idx(q)
        expect(used == 5, f"used idx is {used} after 3 + 2 requests")
        return "stopped at 3, resumed, used idx 5"


@check("vring.base-wrap", "MUST", 'vu "VHOST_USER_SET_VRING_BASE"; VIRTIO 1.3 §2.7.6',
       "a ring started at base 65533 processes requests across the 16-bit index wrap")
def _base_wrap(ctx: Context) -> str:
    with ctx.session() as s:
        workload = need_workload(s)
        s.negotiate()
        s.send_memory()
        q = workload.queue
        for index in workload.rings:
            s.setup_ring(index, base=65533 if index == q else 0)
        s.driver_ok()
        s.submit(6)
        complete(s, 6)
        base = s.stop_ring(q)
        expect(base == 3, f"GET_VRING_BASE answered {base}, not 3 (65533 + 6 mod 65536)")
        return "6 requests across the wrap; GET_VRING_BASE answered 3"


@check("vring.multiqueue", "MUST", 'vu "Multiple queue support"; VIRTIO 1.3 §5.2.2',
       "a block device with several queues serves requests on the second one")
def _multiqueue(ctx: Context) -> str:
    with ctx.session() as s:
        if s.device_type != DeviceType.BLOCK:
            raise Skip("checked on block devices")
        mq = 1 << spec_blk.BlkFeature.MQ
        if not (s.conn.backend_features or 0) & mq or (s.conn.queue_num or 1) < 2:
            raise Skip("one queue only")
        s.negotiate(s.default_features() | mq)
        s.send_memory()
        s.setup_ring(0)
        s.setup_ring(1)
        s.driver_ok()
        s.submit(2, index=1)
        complete(s, 2, index=1, what="reads on queue 1")
        return "2 reads completed on queue 1"


def config_field(s: Session, offset: int, size: int) -> bytes:
    """A config field read as part of a read from offset 0 (so that a back-end that ignores
    GET_CONFIG's offset — see config.offset — is judged on this requirement alone)."""
    return s.client.get_config(0, offset + size)[offset:offset + size]


def _clear(fd: int) -> bool:
    """Read an eventfd; whether it had been signalled."""
    try:
        return bool(os.eventfd_read(fd))
    except BlockingIOError:
        return False
