"""The virtio-scsi driver against a device that lies (a scripted MockDevice over loopback):
responses shorter than their head, sense lengths past the buffer, garbage sense, residuals
larger than the transfer, empty TMF replies, short and "missed" events, a config with no sense
or CDB room.  Each gives a typed error or a capped value; the driver goes on with the next
command."""

from __future__ import annotations

import pytest

from pyvirtio.drivers.scsi import ScsiCommandError, ScsiDriver
from pyvirtio.drivers.scsi_sense import SenseFormatError
from pyvirtio.errors import DeviceFault
from pyvirtio.loopback import LoopbackTransport
from pyvirtio.spec import scsi as spec
from pyvirtio.spec.ids import DeviceType
from pyvirtio.spec.scsi import SCSI_CONFIG, SCSI_EVENT, SCSI_RESP_CMD_HEAD, ScsiFeature
from pyvirtio.spec.status import DeviceStatus
from pyvirtio.testing.mock_device import MockDevice

SENSE, CDB = 96, 32
RESP = spec.SCSI_RESP_CMD_HEAD_SIZE + SENSE


def config(sense=SENSE, cdb=CDB, queues=2) -> bytes:
    return SCSI_CONFIG.pack(queues, 128, 0xFFFF, 128, spec.SCSI_EVENT_SIZE, sense, cdb, 0, 255, 16383)


class LyingScsi(MockDevice):
    """Request queues answer what ``reply`` returns (response bytes, data bytes); the control queue
    answers ``ctrl``; event buffers are kept until the test fills them."""

    def __init__(self, **kw):
        features = (1 << ScsiFeature.HOTPLUG) | (1 << ScsiFeature.CHANGE)
        super().__init__(DeviceType.SCSI, features=features, config=kw.pop("config", config()),
                         num_queues=4, handlers={0: self._ctrl, 1: self._event, 2: self._req, 3: self._req})
        self.reply = lambda chain: (SCSI_RESP_CMD_HEAD.pack(0, 0, 0, 0, 0), b"")
        self.ctrl = b"\x00"
        self.events: list = []

    def _req(self, chain):
        resp, data = self.reply(chain)
        written = chain.write(resp, 0)
        if data:
            written = RESP + chain.write(data, RESP)
        return written

    def _ctrl(self, chain):
        return chain.write(self.ctrl, 0) if self.ctrl else 0

    def _event(self, chain):
        self.events.append(chain)
        return None

    def send_event(self, transport, raw: bytes) -> None:
        chain = self.events.pop(0)
        self.complete(transport.memory, 1, chain.head_index, chain.write(raw, 0))


@pytest.fixture
def rig():
    dev = LyingScsi()
    t = LoopbackTransport(dev, memory_size=1 << 20)
    drv = ScsiDriver.probe(t)
    yield dev, t, drv
    drv.remove()
    t.close()


def inquiry(drv, n=36):
    return drv.execute(0, 0, bytes((0x12, 0, 0, 0, n, 0)), data_in_len=n, timeout=5)


def test_a_response_shorter_than_its_head_is_a_device_fault_and_the_next_command_works(rig):
    dev, _, drv = rig
    dev.reply = lambda chain: (b"\x00" * 5, b"")
    with pytest.raises(DeviceFault, match="less than the 12-byte response head"):
        inquiry(drv)
    dev.reply = lambda chain: (SCSI_RESP_CMD_HEAD.pack(0, 0, 0, 0, 0), b"D" * 36)
    assert inquiry(drv).check().data == b"D" * 36


def test_sense_length_past_the_buffer_is_capped_and_garbage_sense_is_typed(rig):
    dev, _, drv = rig
    dev.reply = lambda chain: (SCSI_RESP_CMD_HEAD.pack(0xFFFFFFFF, 0, 0, 2, 0) + b"\x01" * SENSE, b"")
    result = inquiry(drv)
    assert len(result.sense_raw) == SENSE and result.status == 2
    with pytest.raises(SenseFormatError):
        result.sense
    with pytest.raises(ScsiCommandError, match="unparseable sense"):
        result.check()


def test_a_residual_above_the_transfer_gives_no_data(rig):
    dev, _, drv = rig
    dev.reply = lambda chain: (SCSI_RESP_CMD_HEAD.pack(0, 1 << 31, 0, 0, 0), b"D" * 36)
    result = inquiry(drv)
    assert result.data == b"" and result.residual == 1 << 31


def test_data_is_never_read_past_what_the_device_wrote(rig):
    dev, _, drv = rig
    dev.reply = lambda chain: (SCSI_RESP_CMD_HEAD.pack(0, 0, 0, 0, 0), b"D" * 10)  # residual 0 but 10 bytes
    assert inquiry(drv).data == b"D" * 10


def test_an_empty_tmf_reply_is_a_device_fault(rig):
    dev, _, drv = rig
    dev.ctrl = b""
    with pytest.raises(DeviceFault, match="without a response byte"):
        drv.reset_lun(0, 0, timeout=5)
    dev.ctrl = b"\x0a"
    assert drv.reset_lun(0, 0, timeout=5) == spec.ScsiResponse.FUNCTION_SUCCEEDED


def test_short_and_missed_events(rig):
    dev, t, drv = rig
    seen = []
    drv.on_event = seen.append
    posted = len(dev.events)
    dev.send_event(t, b"\x01\x00")  # short: dropped, the buffer goes back
    assert drv.poll_events() == [] and len(dev.events) == posted
    lun = bytes((1, 4, 0x40, 2, 0, 0, 0, 0))
    dev.send_event(t, SCSI_EVENT.pack(spec.ScsiEventType.TRANSPORT_RESET | spec.SCSI_T_EVENTS_MISSED, lun,
                                      spec.ScsiResetReason.RESCAN))
    event = drv.wait_event(timeout=5)
    assert (event.target, event.lun, event.hotplugged, event.missed) == (4, 2, True, True)
    assert seen == [event] and drv.events_missed == 1 and len(dev.events) == posted


@pytest.mark.parametrize("bad", [config(sense=0), config(cdb=0)])
def test_a_config_without_sense_or_cdb_room_fails_the_probe(bad):
    dev = LyingScsi(config=bad)
    t = LoopbackTransport(dev, memory_size=1 << 20)
    with pytest.raises(DeviceFault, match="sense_size"):
        ScsiDriver.probe(t)
    assert t.get_status() & DeviceStatus.FAILED
    t.close()


def test_cdb_longer_than_the_device_takes_is_the_callers_error(rig):
    _, _, drv = rig
    from pyvirtio.errors import UsageError
    with pytest.raises(UsageError, match="CDB of 33 bytes"):
        drv.execute(0, 0, bytes(33))


def test_abort_task_names_the_command_in_flight_and_it_completes_aborted(rig):
    """ABORT TASK carries the tag of the command the driver submitted; the device answers the
    TMF and completes the command with response ABORTED, which the driver hands back."""
    dev, t, drv = rig
    held = []  # (queue, chain) of every command, never answered by itself
    dev.handlers[2] = lambda chain: held.append((2, chain))
    dev.handlers[3] = lambda chain: held.append((3, chain))

    def tmf(chain):
        _, subtype, lun, tag = spec.SCSI_CTRL_TMF.unpack(chain.read(0, spec.SCSI_CTRL_TMF_SIZE))
        assert subtype == spec.ScsiTmf.ABORT_TASK
        (queue, victim), = [(q, c) for q, c in held
                            if spec.ScsiReqCmdHead(*spec.SCSI_REQ_CMD_HEAD.unpack(c.read(0, spec.SCSI_REQ_CMD_HEAD_SIZE))).id == tag]
        dev.complete(t.memory, queue, victim.head_index,
                     victim.write(SCSI_RESP_CMD_HEAD.pack(0, 0, 0, 0, spec.ScsiResponse.ABORTED), 0))
        return chain.write(bytes((spec.ScsiResponse.FUNCTION_COMPLETE,)), 0)

    dev.handlers[0] = tmf
    first = drv.submit(0, 0, bytes((0x12, 0, 0, 0, 36, 0)), data_in_len=36)
    second = drv.submit(0, 0, bytes(6))
    assert len(held) == 2
    assert drv.abort(second, 0, 0, timeout=5) == spec.ScsiResponse.FUNCTION_COMPLETE
    assert drv.wait(second, timeout=5).response == spec.ScsiResponse.ABORTED
    assert not first.pending.done


@pytest.mark.parametrize("answers", [True, False])
def test_a_timeout_aborts_the_command(rig, monkeypatch, answers):
    """Past its timeout a command is aborted (ABORT TASK) and ScsiTimeout raised.  A device that
    returns the command on the abort gets its buffers back at once; one that does not keeps
    them until it completes the command, and the next wait frees them."""
    import pyvirtio.drivers.scsi as scsi_driver
    from pyvirtio.drivers.scsi import ScsiTimeout
    monkeypatch.setattr(scsi_driver, "ABORT_TIMEOUT", 0.2)
    dev, t, drv = rig
    held = []
    normal = dev.handlers[2]
    dev.handlers[2] = dev.handlers[3] = lambda chain: held.append(chain)

    def finish(chain, response):
        queue = next(q for q, c in dev.chains if c is chain)
        dev.complete(t.memory, queue, chain.head_index,
                     chain.write(SCSI_RESP_CMD_HEAD.pack(0, 0, 0, 0, response), 0))

    def tmf(chain):
        if answers:
            finish(held.pop(), spec.ScsiResponse.ABORTED)
            return chain.write(bytes((spec.ScsiResponse.FUNCTION_COMPLETE,)), 0)
        return chain.write(bytes((spec.ScsiResponse.FUNCTION_REJECTED,)), 0)
    dev.handlers[0] = tmf
    with pytest.raises(ScsiTimeout) as info:
        drv.execute(0, 0, bytes(6), timeout=0.3)
    want = spec.ScsiResponse.FUNCTION_COMPLETE if answers else spec.ScsiResponse.FUNCTION_REJECTED
    assert info.value.tmf_response == want
    assert drv.abandoned == (0 if answers else 1)
    dev.handlers[2] = dev.handlers[3] = normal
    if not answers:
        finish(held.pop(), spec.ScsiResponse.OK)  # late
    assert drv.execute(0, 0, bytes(6), timeout=5).ok
    assert drv.abandoned == 0
