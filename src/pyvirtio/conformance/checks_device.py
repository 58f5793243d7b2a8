"""Conformance checks, part 2: the running device — config space, status and feature refusal,
reset and reconnection, a second front-end, and robustness against bad requests (last: a
back-end that crashes on them must not hide the other findings)."""

from __future__ import annotations

import time

from ..spec import blk as spec_blk
from ..spec.ids import DeviceType
from ..spec.status import DeviceStatus as S
from ..vhost_user.frontend.client import VhostUserClient
from ..vhost_user.frontend.connection import Expect
from ..vhost_user.frontend.errors import (BackendError, BackendHungUp, BackendUnreachable,
                                          ConfigReadFailed, RequestNacked)
from ..vhost_user.protocol import ProtocolFeature as PF
from .checks_session import config_field
from .framework import (NEED_REPLY, Context, Fail, Skip, check, complete, expect, need,
                        need_workload)
from .session import Session

# --- config space --------------------------------------------------------------------------------


@check("config.size", "MUST", 'vu "VHOST_USER_GET_CONFIG"',
       "a GET_CONFIG reply's payload has the requested size (or is empty for an error)")
def _config_size(ctx: Context) -> str:
    with ctx.session() as s:
        need(s, PF.CONFIG)
        try:
            data = s.client.get_config(0, 8)
        except ConfigReadFailed:
            return "an 8-byte read was refused with an empty payload"
        return f"8 bytes: {data.hex()}"


@check("config.offset", "MUST", 'vu "VHOST_USER_GET_CONFIG"',
       "GET_CONFIG honours the offset: [8, +4) reads the bytes [0, +12) has at 8")
def _config_offset(ctx: Context) -> str:
    with ctx.session() as s:
        need(s, PF.CONFIG)
        try:
            whole = s.client.get_config(0, 12)
        except ConfigReadFailed:
            raise Skip("the config space is shorter than 12 bytes")
        part = s.client.get_config(8, 4)
        expect(part == whole[8:12], f"[8, +4) is {part.hex()}, but [0, +12) has {whole[8:12].hex()} "
                                    f"at 8 (and {whole[:4].hex()} at 0)")
        return f"[8, +4) = {part.hex()}"


@check("config.error", "MUST", 'vu "VHOST_USER_GET_CONFIG"',
       "a read far past the config space (offset 0xffff0000) is answered with an empty payload")
def _config_error(ctx: Context) -> str:
    with ctx.session() as s:
        need(s, PF.CONFIG)
        try:
            data = s.client.get_config(0xFFFF0000, 8)
        except ConfigReadFailed:
            return "empty payload"
        raise Fail(f"answered 8 bytes ({data.hex()}) for a read at 0xffff0000")


@check("config.read-only", "MUST", 'vu "VHOST_USER_SET_CONFIG"',
       "SET_CONFIG without the migration flag does not change a read-only field (blk capacity)")
def _config_read_only(ctx: Context) -> str:
    with ctx.session() as s:
        need(s, PF.CONFIG)
        if s.device_type != DeviceType.BLOCK:
            raise Skip("checked on block devices")
        before = s.client.get_config(0, 8)
        bogus = (int.from_bytes(before, "little") + 8).to_bytes(8, "little")
        try:
            s.client.set_config(0, bogus)
            how = "acknowledged with 0"
        except RequestNacked as exc:
            how = f"refused with {exc.value}"
        except BackendHungUp:
            how = "answered by closing the connection"
        try:
            after = s.client.get_config(0, 8)
        except BackendHungUp:
            how += ", then the connection was closed"
            with ctx.session() as again:
                after = again.client.get_config(0, 8)
        expect(after == before, f"capacity changed from {before.hex()} to {after.hex()}")
        return f"write {how}; capacity unchanged"


@check("config.writeback", "MUST", 'vu "VHOST_USER_SET_CONFIG"; VIRTIO 1.3 §5.2.5',
       "with CONFIG_WCE, the writeback field can be written and reads back")
def _config_wce(ctx: Context) -> str:
    with ctx.session() as s:
        need(s, PF.CONFIG)
        wce = 1 << spec_blk.BlkFeature.CONFIG_WCE
        if s.device_type != DeviceType.BLOCK or not (s.conn.backend_features or 0) & wce:
            raise Skip("VIRTIO_BLK_F_CONFIG_WCE not offered")
        s.negotiate(s.default_features() | wce)
        off = spec_blk.BlkConfigOffset.WRITEBACK
        old = config_field(s, off, 1)[0]
        s.client.set_config(off, bytes([old ^ 1]))
        new = config_field(s, off, 1)[0]
        s.client.set_config(off, bytes([old]))
        expect(new == old ^ 1, f"wrote writeback={old ^ 1}, read back {new}")
        return f"writeback {old} -> {new} -> {old}"


# --- status, features, reset ---------------------------------------------------------------------


@check("status.roundtrip", "MUST", 'vu "VHOST_USER_SET_STATUS", "VHOST_USER_GET_STATUS"',
       "GET_STATUS answers the status SET_STATUS set")
def _status(ctx: Context) -> str:
    with ctx.session() as s:
        need(s, PF.STATUS)
        s.client.set_status(S.ACKNOWLEDGE | S.DRIVER)
        got = s.client.get_status()
        expect(got == S.ACKNOWLEDGE | S.DRIVER, f"GET_STATUS answered {got:#x}, not 0x3")
        return "0x3"


@check("status.features-ok", "MUST", 'vu "VHOST_USER_SET_STATUS"; VIRTIO 1.3 §2.2.2, §3.1.1',
       "FEATURES_OK stays set for a valid subset of the offered features")
def _features_ok(ctx: Context) -> str:
    with ctx.session() as s:
        need(s, PF.STATUS)
        features = s.negotiate()
        status = S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK
        s.client.set_status(status)
        got = s.client.get_status()
        expect(bool(got & S.FEATURES_OK), f"features {features:#x}: GET_STATUS {got:#x} lost FEATURES_OK")
        return f"features {features:#x}: status {got:#x}"


@check("features.unoffered-status", "MUST", 'VIRTIO 1.3 §2.2.2, §3.1.1; vu "VHOST_USER_SET_STATUS"',
       "with a feature the device did not offer, FEATURES_OK does not stay set")
def _unoffered_status(ctx: Context) -> str:
    with ctx.session() as s:
        need(s, PF.STATUS)
        extra = _unoffered_bit(s)
        try:
            s.negotiate(s.default_features() | (1 << extra))
        except RequestNacked:
            pass  # refused already; FEATURES_OK must then not stick either
        s.client.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
        got = s.client.get_status()
        expect(not got & S.FEATURES_OK, f"unoffered bit {extra} accepted: GET_STATUS {got:#x}")
        return f"unoffered bit {extra}: FEATURES_OK cleared"


@check("features.unoffered-ack", "SHOULD", 'VIRTIO 1.3 §2.2.1; vu "VHOST_USER_PROTOCOL_F_REPLY_ACK"',
       "SET_FEATURES with a feature the device did not offer is answered with a non-zero ack")
def _unoffered_ack(ctx: Context) -> str:
    with ctx.session() as s:
        need(s, PF.REPLY_ACK)
        extra = _unoffered_bit(s)
        try:
            s.negotiate(s.default_features() | (1 << extra))
        except RequestNacked as exc:
            return f"unoffered bit {extra} refused with {exc.value}"
        raise Fail(f"SET_FEATURES with unoffered bit {extra} acknowledged with 0")


def _unoffered_bit(s: Session) -> int:
    offered = s.conn.backend_features or 0
    extra = next((b for b in range(23, -1, -1) if not offered >> b & 1), None)
    if extra is None:
        raise Skip("every device-specific bit 0-23 is offered")
    return extra


@check("reset.device", "MUST", 'vu "VHOST_USER_RESET_DEVICE"',
       "after RESET_DEVICE the device can be set up again from scratch and works")
def _reset_device(ctx: Context) -> str:
    with ctx.session() as s:
        need(s, PF.RESET_DEVICE)
        workload = need_workload(s)
        s.start()
        s.submit(2)
        complete(s, 2)
        s.client.reset_device()
        for ring in s.rings.values():
            ring.close()
        s.rings.clear()
        s.negotiate()
        for index in workload.rings:
            s.setup_ring(index)
        s.driver_ok()
        s.submit(1)
        complete(s, what="a request after RESET_DEVICE and a fresh set-up")
        return "re-initialised; request completed"


@check("reset.reconnect", "SHOULD", 'vu "Communication" (reconnection)',
       "after a front-end disconnects with rings running, a new front-end can start over")
def _reconnect(ctx: Context) -> str:
    with ctx.session() as s:
        need_workload(s)
        s.start()
        s.submit(1)
        complete(s)
    time.sleep(0.1)
    with ctx.session() as s:
        s.start()
        s.submit(1)
        complete(s, what="a request on the second connection")
        return "second connection initialised and served"


@check("conn.second", "SHOULD", 'vu "VHOST_USER_SET_OWNER"',
       "a second front-end connecting does not disturb the one that owns the session")
def _second(ctx: Context) -> str:
    with ctx.session() as a:
        need_workload(a)
        a.start()
        a.submit(1)
        complete(a)
        fate = _second_connection(ctx)
        a.submit(1)
        complete(a, what="the first connection's request after the second connected")
        return f"first connection unaffected; second: {fate}"


def _second_connection(ctx: Context) -> str:
    try:
        b = VhostUserClient.connect(ctx.path, timeout=0.5)
    except BackendUnreachable as exc:
        return f"refused ({exc})"
    try:
        features = b.get_features()
        return f"served too (GET_FEATURES answered {features:#x})"
    except BackendError as exc:
        return f"not served ({type(exc).__name__}: {exc})"
    finally:
        b.close()


@check("robust.unknown-request", "SHOULD", 'vu "Communication", "REPLY_ACK"',
       "an unknown request with NEED_REPLY is refused with a non-zero ack, and the connection lives")
def _unknown(ctx: Context) -> str:
    with ctx.session() as s:
        need(s, PF.REPLY_ACK)
        try:
            s.client.request(s.conn.raw(200, flags=NEED_REPLY, expect=Expect.ACK))
            raise Fail("request 200 acknowledged with 0")
        except RequestNacked as exc:
            s.client.get_features()
            return f"refused with {exc.value}; GET_FEATURES still answered"


@check("robust.bad-ring-index", "SHOULD", 'vu "Multiple queue support"',
       "a ring index past the queue count is refused with a non-zero ack, and the connection lives")
def _bad_ring(ctx: Context) -> str:
    with ctx.session() as s:
        need(s, PF.REPLY_ACK)
        need(s, PF.MQ)
        queue_num = s.conn.queue_num  # the handshake asked GET_QUEUE_NUM (MQ is negotiated)
        if queue_num is None:
            raise Skip("the back-end did not answer GET_QUEUE_NUM")
        # QEMU reads a net back-end's GET_QUEUE_NUM as queue *pairs* (two rings each).
        index = queue_num * (2 if s.device_type == DeviceType.NET else 1)
        if index > 255:
            raise Skip(f"every ring index 0-255 is in range ({queue_num} queues)")
        try:
            s.client.set_vring_num(index, 64)
            raise Fail(f"SET_VRING_NUM on ring {index} of {s.conn.queue_num} acknowledged with 0")
        except RequestNacked as exc:
            s.client.get_features()
            return f"ring {index} refused with {exc.value}; GET_FEATURES still answered"
