"""The virtio-scsi HBA through an in-process transport (LoopbackTransport) and a minimal driver
that builds every request by hand: routing by LUN, responses, residuals, TMF, AN, events
(hot-plug, media change), config space, and hostile requests — malformed headers, short
responses, unknown LUNs and targets, random CDBs — which get the right answer while the device
keeps serving."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirtio.devices.scsi import CdromUnit, DiskUnit, ScsiDevice
from pyvirtio.devices.scsi.media import MemoryMedium
from pyvirtio.devices.scsi.target import encode_lun, parse_lun
from pyvirtio.driver import VirtioDriver
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec import scsi as spec
from pyvirtio.spec import scsi_cmd as sc
from pyvirtio.spec.ids import DeviceType

O = sc.Opcode
R = spec.ScsiResponse
RESP = spec.SCSI_RESP_CMD_HEAD


class RawScsi(VirtioDriver):
    """Queues only; every request is built by the test."""

    id_table = (DeviceType.SCSI,)
    features = (1 << spec.ScsiFeature.HOTPLUG) | (1 << spec.ScsiFeature.CHANGE)

    def setup(self):
        self.queues = [self.create_queue(i, 64) for i in range(3)]

    def cmd(self, lun, cdb, *, data_out=b"", in_len=0, sense_size=96, cdb_size=32, tag=7):
        head = spec.SCSI_REQ_CMD_HEAD.pack(lun, tag, 0, 0, 0) + bytes(cdb).ljust(cdb_size, b"\0")
        out = [head] + ([data_out] if data_out else [])
        ins = [RESP.size + sense_size] + ([in_len] if in_len else [])
        raw = self.queues[2].call(out, ins)
        sense_len, residual, _q, status, response = RESP.unpack_from(raw.ljust(12, b"\0"))
        sense = raw[12:12 + sense_len]
        return response, status, sense, residual, raw[12 + sense_size:]

    def tmf(self, subtype, lun, tag=0):
        return self.queues[0].call([spec.SCSI_CTRL_TMF.pack(0, subtype, lun, tag)], [1])[0]

    def an(self, kind, lun, requested):
        return spec.SCSI_CTRL_AN_RESP.unpack(self.queues[0].call([spec.SCSI_CTRL_AN.pack(kind, lun, requested)], [5]))


def L(target, lun=0):
    return encode_lun(target, lun)


def flat(target, lun):
    """The form Linux's virtio_scsi sends in requests: flat space for every LUN."""
    return bytes((1, target, 0x40 | (lun >> 8), lun & 0xFF, 0, 0, 0, 0))


@pytest.fixture
def hba():
    dev = ScsiDevice()
    dev.add_unit(0, 0, DiskUnit(MemoryMedium(data=bytes(range(256)) * 64), serial="D0"))
    dev.add_unit(0, 3, DiskUnit(MemoryMedium(8192), serial="D3"))
    dev.add_unit(2, 0, CdromUnit(MemoryMedium(2048 * 8, read_only=True), serial="CD"))
    t = LoopbackTransport(dev, memory_size=4 << 20)
    drv = RawScsi.probe(t)
    yield dev, drv
    t.close()


def tur(drv, lun):
    return drv.cmd(lun, [O.TEST_UNIT_READY, 0, 0, 0, 0, 0])


def test_config_space():
    dev = ScsiDevice(request_queues=2)
    cfg = spec.ScsiConfig(*spec.SCSI_CONFIG.unpack(dev.read_config(0, spec.SCSI_CONFIG_SIZE)))
    assert (cfg.num_queues, cfg.event_info_size, cfg.sense_size, cfg.cdb_size) == (2, 16, 96, 32)
    assert (cfg.max_channel, cfg.max_target, cfg.max_lun) == (0, 255, 16383)
    dev.write_config(spec.ScsiConfigOffset.SENSE_SIZE, (1000).to_bytes(4, "little"))
    dev.write_config(spec.ScsiConfigOffset.CDB_SIZE, (16).to_bytes(4, "little"))
    assert (dev.sense_size, dev.cdb_size) == (252, 16)
    dev.reset()
    assert (dev.sense_size, dev.cdb_size) == (96, 32)
    assert not dev.device_features & (1 << spec.ScsiFeature.T10_PI)
    assert len(dev.queues) == 4


def test_lun_encodings():
    assert parse_lun(flat(3, 5)) == (3, 5) == parse_lun(L(3, 5))
    assert parse_lun(flat(1, 300)) == (1, 300) and L(1, 300)[2:4] == bytes((0x41, 0x2C))
    assert parse_lun(bytes((2, 0, 0, 0, 0, 0, 0, 0))) is None
    assert parse_lun(bytes((1, 0, 0x80, 0, 0, 0, 0, 0))) is None
    assert parse_lun(bytes((1, 0, 0x01, 0, 0, 0, 0, 0))) is None


def test_commands_reach_the_unit_and_residuals_are_reported(hba):
    dev, drv = hba
    assert tur(drv, L(0))[2] == bytes((0x70, 0, 6, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0, 0, 0, 0, 0))
    response, status, sense, residual, data = drv.cmd(flat(0, 0), [O.READ_10, 0, 0, 0, 0, 1, 0, 0, 2, 0],
                                                      in_len=4096)
    assert (response, status, sense, residual) == (R.OK, 0, b"", 4096 - 1024)
    assert data[:1024] == (bytes(range(256)) * 64)[512:1536]
    response, status, _, residual, data = drv.cmd(L(0), [O.INQUIRY, 1, 0x80, 0, 255, 0], in_len=255)
    assert (response, status, residual, data[:6]) == (R.OK, 0, 255 - 6, b"\0\x80\0\x02D0")
    response, status, _, residual, _ = drv.cmd(L(0), [O.WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], data_out=b"w" * 512)
    assert (response, status, residual) == (R.OK, 0, 0)
    assert bytes(dev.unit(0, 0).medium.data[:512]) == b"w" * 512


def test_report_luns_lists_a_targets_units(hba):
    _, drv = hba
    response, status, _, _, data = drv.cmd(L(0, 3), [O.REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], in_len=256)
    assert (response, status) == (R.OK, 0)
    assert data[:24] == struct.pack(">I4x", 16) + bytes(8) + bytes((0, 3)) + bytes(6)
    _, _, sense, _, _ = drv.cmd(L(0), [O.REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], in_len=8)
    assert sense[2] == 5 and sense[12] == 0x24 and sense[16:18] == b"\0\x06"
    response, *_ = drv.cmd(L(0), [O.REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], in_len=64)
    assert response == R.OVERRUN


def test_a_lun_without_a_unit_on_an_existing_target(hba):
    _, drv = hba
    response, status, _, _, data = drv.cmd(L(0, 1), [O.INQUIRY, 0, 0, 0, 36, 0], in_len=36)
    assert (response, status, data[0]) == (R.OK, 0, 0x7F)
    response, status, sense, _, _ = tur(drv, L(0, 1))
    assert (response, status) == (R.OK, sc.Status.CHECK_CONDITION)
    assert sense == bytes((0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x25, 0, 0, 0, 0, 0))
    _, status, _, _, data = drv.cmd(L(0, 1), [O.REQUEST_SENSE, 0, 0, 0, 18, 0], in_len=18)
    assert status == 0 and data[2] == 5 and data[12] == 0x25
    _, _, sense, _, _ = drv.cmd(L(0, 1), [O.INQUIRY, 1, 0, 0, 36, 0], in_len=36)
    assert sense[12] == 0x25


def test_a_target_without_units_and_a_malformed_lun_are_bad_target(hba):
    _, drv = hba
    assert tur(drv, L(1))[0] == R.BAD_TARGET
    assert tur(drv, L(255, 7))[0] == R.BAD_TARGET
    assert tur(drv, bytes((0, 0, 0, 0, 0, 0, 0, 0)))[0] == R.BAD_TARGET
    assert tur(drv, bytes((1, 0, 0xC0, 0, 0, 0, 0, 0)))[0] == R.BAD_TARGET
    assert tur(drv, L(0))[0] == R.OK  # and the queue goes on


def test_malformed_request_headers_get_failure(hba):
    dev, drv = hba
    q = drv.queues[2]
    short = spec.SCSI_REQ_CMD_HEAD.pack(L(0), 1, 0, 0, 0) + bytes(6)  # cdb shorter than cdb_size
    assert RESP.unpack(q.call([short], [108])[:12])[4] == R.FAILURE
    assert RESP.unpack(q.call([b"\x01"], [108])[:12])[4] == R.FAILURE  # not even a LUN
    assert RESP.unpack(q.call([], [108])[:12])[4] == R.FAILURE  # no device-readable part
    full = spec.SCSI_REQ_CMD_HEAD.pack(L(0), 1, 0, 0, 0) + bytes(32)
    assert RESP.unpack(q.call([full], [20])[:12])[4] == R.FAILURE  # no room for sense_size
    assert q.call([full], [8]) == b""  # no room for a response at all: returned empty
    assert q.call([full], []) == b""
    # the header split over many small descriptors is fine
    response = RESP.unpack(q.call([full[i:i + 3] for i in range(0, len(full), 3)], [12, 96])[:12])[4]
    assert response == R.OK
    assert dev.stats["bad_requests"] == 6 and not dev.status & 0x40  # no DEVICE_NEEDS_RESET


def test_driver_chosen_cdb_and_sense_sizes(hba):
    dev, drv = hba
    drv.transport.write_config(spec.ScsiConfigOffset.CDB_SIZE, (16).to_bytes(4, "little"))
    drv.transport.write_config(spec.ScsiConfigOffset.SENSE_SIZE, (8).to_bytes(4, "little"))
    response, status, sense, _, _ = drv.cmd(L(0), [O.TEST_UNIT_READY], cdb_size=16, sense_size=8)
    assert (response, status, len(sense)) == (R.OK, 2, 8)  # sense cut to sense_size
    response, status, _, _, data = drv.cmd(L(0), [O.READ_16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
                                           cdb_size=16, sense_size=8, in_len=512)
    assert (response, status) == (R.OK, 0)


def test_task_management(hba):
    dev, drv = hba
    T = spec.ScsiTmf
    tur(drv, L(0))
    assert drv.tmf(T.ABORT_TASK, L(0), 7) == R.FUNCTION_COMPLETE
    assert drv.tmf(T.ABORT_TASK_SET, L(0)) == R.FUNCTION_COMPLETE
    assert drv.tmf(T.QUERY_TASK, L(0), 5) == R.FUNCTION_COMPLETE
    assert drv.tmf(T.CLEAR_ACA, L(0)) == R.FUNCTION_REJECTED
    assert drv.tmf(99, L(0)) == R.FUNCTION_REJECTED
    assert drv.tmf(T.LOGICAL_UNIT_RESET, L(0)) == R.FUNCTION_COMPLETE
    assert tur(drv, L(0))[2][12:14] == b"\x29\x03"
    assert drv.tmf(T.I_T_NEXUS_RESET, L(0, 3)) == R.FUNCTION_COMPLETE
    assert tur(drv, L(0))[2][12:14] == b"\x29\x07"
    assert drv.tmf(T.LOGICAL_UNIT_RESET, L(0, 1)) == R.INCORRECT_LUN
    assert drv.tmf(T.LOGICAL_UNIT_RESET, L(9)) == R.BAD_TARGET
    assert drv.tmf(T.ABORT_TASK, bytes(8)) == R.BAD_TARGET
    q = drv.queues[0]
    assert q.call([struct.pack("<II", 0, 5)], [1]) == bytes((R.FAILURE,))  # TMF too short
    assert q.call([struct.pack("<I", 77) + bytes(20)], [1]) == b""  # unknown type: nothing written
    assert q.call([b"\x00"], [1]) == b""
    assert drv.tmf(T.ABORT_TASK, L(0)) == R.FUNCTION_COMPLETE


def test_async_notification_query_and_subscribe(hba):
    dev, drv = hba
    media = spec.ScsiAsyncEvent.MEDIA_CHANGE
    assert drv.an(spec.ScsiCtrlType.AN_QUERY, L(2), 0xFF) == (media, R.OK)
    assert drv.an(spec.ScsiCtrlType.AN_QUERY, L(0), 0xFF) == (0, R.OK)
    assert drv.an(spec.ScsiCtrlType.AN_QUERY, L(5), 0xFF) == (0, R.BAD_TARGET)
    assert drv.an(spec.ScsiCtrlType.AN_SUBSCRIBE, L(2), media) == (media, R.OK)
    pending = drv.queues[1].submit([], [16])
    dev.eject()
    drv.queues[1].wait(pending, 5)
    event = spec.ScsiEvent(*spec.SCSI_EVENT.unpack(drv.queues[1].read_in(pending)))
    assert (event.event, event.lun, event.reason) == (spec.ScsiEventType.ASYNC_NOTIFY, L(2), media)


def test_hotplug_and_unplug_events(hba):
    dev, drv = hba
    pend = [drv.queues[1].submit([], [16]) for _ in range(2)]
    dev.attach(4, 1, DiskUnit(MemoryMedium(4096), serial="HOT"))
    drv.queues[1].wait(pend[0], 5)
    event = spec.ScsiEvent(*spec.SCSI_EVENT.unpack(drv.queues[1].read_in(pend[0])))
    assert event == (spec.ScsiEventType.TRANSPORT_RESET, bytes((1, 4, 0, 1, 0, 0, 0, 0)), spec.ScsiResetReason.RESCAN)
    assert drv.cmd(L(4, 1), [O.INQUIRY, 1, 0x80, 0, 64, 0], in_len=64)[4][4:7] == b"HOT"
    assert dev.detach(4, 1) is not None
    drv.queues[1].wait(pend[1], 5)
    event = spec.ScsiEvent(*spec.SCSI_EVENT.unpack(drv.queues[1].read_in(pend[1])))
    assert (event.event, event.reason) == (spec.ScsiEventType.TRANSPORT_RESET, spec.ScsiResetReason.REMOVED)
    assert tur(drv, L(4, 1))[0] == R.BAD_TARGET
    dev.attach(0, 9, DiskUnit(MemoryMedium(4096)))  # the other units of target 0 hear of it
    tur(drv, L(0, 3))
    assert tur(drv, L(0, 3))[2][12:14] == b"\x3f\x0e"


def test_events_wait_for_buffers_and_overflow_is_reported_as_missed(hba):
    dev, drv = hba
    for i in range(70):
        dev.attach(10 + i, 0, DiskUnit(MemoryMedium(4096)))
    pending = drv.queues[1].submit([], [16])
    drv.queues[1].kick()
    drv.queues[1].wait(pending, 5)
    event = spec.ScsiEvent(*spec.SCSI_EVENT.unpack(drv.queues[1].read_in(pending)))
    assert event.event == spec.ScsiEventType.TRANSPORT_RESET | spec.SCSI_T_EVENTS_MISSED
    assert dev.stats["events_dropped"] == 6
    assert dev.statistics()["scsi"]["pending_events"] == 63


def test_param_change_event(hba):
    dev, drv = hba
    pending = drv.queues[1].submit([], [16])
    dev.param_change(0, 0, sc.AdditionalSense.CAPACITY_DATA_HAS_CHANGED)
    drv.queues[1].wait(pending, 5)
    event = spec.ScsiEvent(*spec.SCSI_EVENT.unpack(drv.queues[1].read_in(pending)))
    assert (event.event, event.reason) == (spec.ScsiEventType.PARAM_CHANGE, 0x2A | (0x09 << 8))
    pending = drv.queues[1].submit([], [16])
    dev.eject()  # a host medium change: PARAM_CHANGE 28h/00h for the CD-ROM
    drv.queues[1].wait(pending, 5)
    event = spec.ScsiEvent(*spec.SCSI_EVENT.unpack(drv.queues[1].read_in(pending)))
    assert event == (spec.ScsiEventType.PARAM_CHANGE, L(2), 0x28)


def test_host_errors_are_typed():
    from pyvirtio.errors import UsageError
    dev = ScsiDevice()
    dev.add_unit(0, 0, DiskUnit(MemoryMedium(4096)))
    with pytest.raises(UsageError):
        dev.add_unit(0, 0, DiskUnit(MemoryMedium(4096)))
    with pytest.raises(UsageError):
        dev.add_unit(256, 0, DiskUnit(MemoryMedium(4096)))
    with pytest.raises(UsageError):
        dev.detach(3, 0)
    with pytest.raises(UsageError):
        dev.eject()
    with pytest.raises(UsageError):
        ScsiDevice(request_queues=0)


# --- hostile: random CDBs and LUNs through the whole HBA ---------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cdb=st.binary(min_size=1, max_size=32), lun=st.sampled_from([(0, 0), (0, 3), (2, 0), (0, 1)]),
       in_len=st.sampled_from([0, 1, 18, 512, 4096]), out=st.binary(max_size=600))
def test_any_cdb_gets_a_well_formed_answer(hba, cdb, lun, in_len, out):
    _, drv = hba
    response, status, sense, residual, _ = drv.cmd(L(*lun), cdb, in_len=in_len, data_out=out)
    assert response in (R.OK, R.OVERRUN)
    assert status in (sc.Status.GOOD, sc.Status.CHECK_CONDITION)
    if status == sc.Status.CHECK_CONDITION:
        assert sense[0] & 0x7F in (0x70, 0x72) and len(sense) >= 8  # 0x80: VALID (INFORMATION set)
    assert 0 <= residual <= max(in_len, len(out))


@settings(max_examples=200, deadline=None)
@given(cdb=st.binary(min_size=0, max_size=40))
def test_the_cdb_parser_never_raises(cdb):
    from pyvirtio.devices.scsi.task import Task
    for unit in (DiskUnit(MemoryMedium(8192)), CdromUnit(MemoryMedium(4096, read_only=True)), CdromUnit(None)):
        for _ in range(2):  # the second time without the power-on attention in the way
            buf = bytearray(1024)
            task = Task(cdb=cdb, data_in=[memoryview(buf)], data_out=[memoryview(bytearray(b"\xff" * 1024))])
            unit.execute(task)
            assert task.status in (0, 2) and task.transferred <= 1024


_KNOWN = sorted(set(DiskUnit(MemoryMedium(512)).commands) | set(CdromUnit(None).commands) | {O.REPORT_LUNS})


@settings(max_examples=400, deadline=None)
@given(op=st.sampled_from(_KNOWN), rest=st.binary(min_size=0, max_size=31),
       in_len=st.sampled_from([0, 8, 36, 255, 2048, 65536]), out=st.binary(max_size=1100))
def test_known_opcodes_with_random_fields_answer_with_status_and_sense(op, rest, in_len, out):
    """Every implemented command with arbitrary CDB fields and buffers: GOOD, CHECK CONDITION with
    well-formed sense, or OVERRUN — the data never past the buffer, the medium never past its end."""
    from pyvirtio.devices.scsi.task import Task
    disk = DiskUnit(MemoryMedium(8192))
    cd = CdromUnit(MemoryMedium(2048 * 4, read_only=True))
    for unit in (disk, cd, disk, cd):
        buf = bytearray(in_len)
        task = Task(cdb=bytes((op,)) + rest, data_in=[memoryview(buf)] if in_len else [],
                    data_out=[memoryview(bytearray(out))] if out else [])
        unit.execute(task)
        assert task.status in (0, 2) and task.response in (R.OK, R.OVERRUN)
        assert 0 <= task.transferred <= max(in_len, len(out))
        if task.status:
            assert task.sense[0] & 0x7F in (0x70, 0x72) and task.sense[2 if task.sense[0] & 0x7F == 0x70 else 1] & 0x0F
    assert len(disk.medium.data) == 8192


def test_a_host_call_the_busy_worker_never_started_is_cancelled(monkeypatch):
    from pyvirtio.devices.scsi import hba as hba_module
    from pyvirtio.errors import UsageError
    dev = ScsiDevice()
    queued = []
    dev.host_call = lambda fn, group=0: queued.append(fn)  # a worker that never gets to it
    monkeypatch.setattr(hba_module, "HOST_CALL_TIMEOUT", 0.05)
    with pytest.raises(UsageError, match="busy"):
        dev.attach(0, 0, DiskUnit(MemoryMedium(4096)))
    queued[0]()  # the worker comes round later: the cancelled call does nothing
    assert dev.unit(0, 0) is None


def test_passes_the_device_conformance_checks():
    from pyvirtio.conformance.device_model import CHECKS, check_device

    def make():
        dev = ScsiDevice(request_queues=2)
        dev.add_unit(0, 0, DiskUnit(MemoryMedium(8192)))
        dev.add_unit(1, 0, CdromUnit(None))
        return dev
    assert len(check_device(make)) == len(CHECKS)


def test_resize_reports_capacity_data_has_changed(hba):
    dev, drv = hba
    from pyvirtio.errors import UsageError
    pending = drv.queues[1].submit([], [16])
    assert dev.resize((0, 3), 16384) == 32
    drv.queues[1].wait(pending, 5)
    event = spec.ScsiEvent(*spec.SCSI_EVENT.unpack(drv.queues[1].read_in(pending)))
    assert event == (spec.ScsiEventType.PARAM_CHANGE, L(0, 3), 0x2A | (0x09 << 8))
    tur(drv, L(0, 3))  # the power-on attention
    assert tur(drv, L(0, 3))[2][12:14] == b"\x2a\x09"
    assert drv.cmd(L(0, 3), [O.READ_CAPACITY_10] + [0] * 9, in_len=8)[4] == struct.pack(">II", 31, 512)
    with pytest.raises(UsageError, match="shrink"):
        dev.resize((0, 3), 4096)
    assert dev.resize((0, 3), 4096, shrink=True) == 8
    with pytest.raises(UsageError, match="block size"):
        dev.resize((0, 3), 1000)
    with pytest.raises(UsageError, match="no disk"):
        dev.resize((2, 0), 4096)
