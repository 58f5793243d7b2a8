"""The virtio-scsi device served over vhost-user: pyvirtio's VhostUserServer with the device, and
pyvirtio's vhost-user front-end (VhostUserTransport) with the SCSI driver (drivers.scsi) — one
real socket, shared memory, eventfds.  Then ``pyvirtio serve scsi`` as a child process with
``--control``: ctl eject/insert/attach/detach seen by the driver, and the command line's
refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from pyvirtio.devices.scsi import CdromUnit, DiskUnit, ScsiDevice
from pyvirtio.devices.scsi.media import ImageMedium, MemoryMedium
from pyvirtio.drivers.scsi import ScsiDriver
from pyvirtio.spec import scsi_cmd as sc
from pyvirtio.spec.ids import DeviceType
from pyvirtio.spec.scsi import ScsiResponse
from pyvirtio.testing.serve import ServeProcess
from pyvirtio.vhost_user.backend.server import VhostUserServer
from pyvirtio.vhost_user.frontend.transport import VhostUserTransport

pytestmark = pytest.mark.timeout(120)
CLI = [sys.executable, "-m", "pyvirtio.cli"]
DATA = bytes(range(256)) * 4096  # 1 MiB


def _serve(dev, path):
    server = VhostUserServer()
    server.add(dev, socket_path=path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def _clear_attention(lun):
    lun.command(bytes((sc.Opcode.TEST_UNIT_READY, 0, 0, 0, 0, 0)))


def test_driver_over_vhost_user_reads_writes_and_sees_the_cdrom(tmp_path):
    path = str(tmp_path / "scsi.sock")
    image = tmp_path / "disk.img"
    image.write_bytes(DATA)
    dev = ScsiDevice()
    dev.add_unit(0, 0, DiskUnit(ImageMedium(str(image)), serial="VU-DISK"))
    dev.add_unit(1, 0, CdromUnit(MemoryMedium(data=b"\x11" * 2048 * 16, read_only=True)))
    server, thread = _serve(dev, path)
    try:
        for _ in range(2):  # a second front-end (a guest reboot) finds the device answering again
            t = VhostUserTransport(path, device_type=DeviceType.SCSI)
            try:
                drv = ScsiDriver.probe(t)
                disk, cd = drv.lun(0, 0), drv.lun(1, 0)
                _clear_attention(disk)
                assert disk.serial() == "VU-DISK"
                assert disk.read_capacity16().blocks == len(DATA) // 512
                assert disk.read(8, 16) == DATA[8 * 512:24 * 512]
                disk.write(100, b"\xee" * 4096)
                disk.synchronize_cache()
                assert disk.read(100, 8) == b"\xee" * 4096
                _clear_attention(cd)
                assert cd.read_capacity10().block_size == 2048
                assert cd.read10(3, 2) == b"\x11" * 4096
                assert drv.execute(5, 0, bytes(6)).response == ScsiResponse.BAD_TARGET
                # the driver resets the device on the same connection (as a guest does after
                # SeaBIOS): the rings stop (GET_VRING_BASE) and start again
                drv.remove()
                drv = ScsiDriver.probe(t)
                again = drv.lun(0, 0)
                assert again.test_unit_ready().ok or again.test_unit_ready().ok
                assert again.read(100, 8) == b"\xee" * 4096
            finally:
                t.close()
        assert image.read_bytes()[100 * 512:108 * 512] == b"\xee" * 4096
    finally:
        server.shutdown()
        thread.join(10)
        dev.close()


class ScsiServe(ServeProcess):
    """``pyvirtio serve scsi`` with a control socket."""

    def __init__(self, tmp, *units):
        self.socket, self.control = str(tmp / "scsi.sock"), str(tmp / "ctl.sock")
        super().__init__(tmp, "scsi", ["scsi", f"--socket-path={self.socket}", f"--control={self.control}",
                                       *units], wait_for=[self.socket, self.control])

    def ctl(self, *words, check=True):
        r = subprocess.run([*CLI, "ctl", "--json", self.control, *words], capture_output=True, text=True, timeout=30)
        if check:
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)
        return r


def _start(tmp_path, *units):
    return ScsiServe(tmp_path, *units)


def test_serve_scsi_with_ctl_eject_insert_and_hotplug(tmp_path):
    disk = tmp_path / "d.img"
    disk.write_bytes(DATA)
    iso1, iso2, hot = tmp_path / "a.iso", tmp_path / "b.iso", tmp_path / "hot.img"
    iso1.write_bytes(b"\x01" * 2048 * 8)
    iso2.write_bytes(b"\x02" * 2048 * 4)
    hot.write_bytes(b"\x03" * 65536)
    proc = _start(tmp_path, f"--disk={disk},serial=S-ONE", f"--cdrom={iso1}")
    try:
        t = VhostUserTransport(proc.socket, device_type=DeviceType.SCSI)
        try:
            drv = ScsiDriver.probe(t)
            cd = drv.lun(1, 0)
            _clear_attention(cd)
            assert drv.lun(0, 0).serial() == "S-ONE"
            units = proc.ctl("scsi", "units")["result"]
            assert [u["unit"] for u in units] == ["0:0", "1:0"] and units[1]["medium"] == str(iso1)
            cd.prevent_removal(True)
            refused = proc.ctl("eject", check=False)
            assert refused.returncode == 1 and "prevents medium removal" in refused.stderr
            cd.prevent_removal(False)
            assert proc.ctl("eject")["result"] == {"unit": "1:0"}
            result = cd.command(bytes((sc.Opcode.TEST_UNIT_READY, 0, 0, 0, 0, 0)))
            assert result.sense.key == sc.SenseKey.UNIT_ATTENTION
            result = cd.command(bytes((sc.Opcode.TEST_UNIT_READY, 0, 0, 0, 0, 0)))
            assert (result.sense.key, result.sense.asc, result.sense.ascq) == (2, 0x3A, 0x02)
            assert proc.ctl("insert", str(iso2))["result"]["unit"] == "1:0"
            _clear_attention(cd)
            assert cd.read_capacity10().blocks == 4
            assert cd.read10(0, 1) == b"\x02" * 2048
            assert proc.ctl("scsi", "attach", "disk", f"{hot},ro")["result"] == {"unit": "2:0"}
            for _ in ("eject", "insert"):  # each a PARAM_CHANGE, medium may have changed
                change = drv.wait_event(lambda e: e.event == 3, timeout=10)
                assert (change.target, change.lun, change.asc_ascq) == (1, 0, (0x28, 0))
            event = drv.wait_event(lambda e: e.event == 1, timeout=10)
            assert event.hotplugged and (event.target, event.lun) == (2, 0)
            new = drv.lun(2, 0)
            _clear_attention(new)
            assert new.read(0, 1) == b"\x03" * 512
            assert proc.ctl("scsi", "resize", "2:0", "128K", check=False).returncode == 1  # read-only
            assert proc.ctl("scsi", "detach", "2:0")["result"] == {"unit": "2:0"}
            assert proc.ctl("scsi", "resize", "0:0", "2M")["result"] == {"unit": "0:0", "blocks": 4096}
            assert drv.wait_event(lambda e: e.event == 3 and e.asc_ascq == (0x2A, 0x09), timeout=10).target == 0
            assert disk.stat().st_size == 2 * 1024 * 1024
            assert drv.wait_event(lambda e: e.event == 1, timeout=10).unplugged
            assert proc.ctl("scsi", "detach", "2:0", check=False).returncode == 1
            assert proc.ctl("insert", str(tmp_path / "missing.iso"), check=False).returncode == 1
        finally:
            t.close()
    finally:
        assert proc.stop() == 0


def test_serve_scsi_refusals(tmp_path):
    def serve(*args):
        return subprocess.run([*CLI, "serve", "scsi", f"--socket-path={tmp_path / 's.sock'}", *args],
                              capture_output=True, text=True, timeout=30)
    r = serve()
    assert r.returncode == 2 and "at least one of --disk" in r.stderr
    r = serve(f"--disk={tmp_path / 'nope.img'}")
    assert r.returncode == 1 and "no such file" in r.stderr
    (tmp_path / "d.img").write_bytes(bytes(4096))
    r = serve(f"--disk={tmp_path / 'd.img'},colour=red")
    assert r.returncode == 2 and "unknown option" in r.stderr
    r = serve(f"--disk={tmp_path / 'd.img'},target=1", f"--cdrom=empty,target=1")
    assert r.returncode == 2 and "is taken" in r.stderr
    r = serve(f"--disk={tmp_path / 'd.img'},block-size=1000")
    assert r.returncode == 2 and "block size" in r.stderr
    r = serve("--passthrough=/dev/sg-does-not-exist")
    assert r.returncode == 1 and "/dev/sg-does-not-exist" in r.stderr
    caps = subprocess.run([*CLI, "serve", "scsi", "--print-capabilities"], capture_output=True, text=True)
    assert json.loads(caps.stdout) == {"type": "scsi"}
