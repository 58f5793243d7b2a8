"""The hostile back-end against QEMU 7.2's vhost-user-blk front-end (issue 17, item 2):
``pyvirtio fuzz-frontend --qemu-cmd`` starts a real guest (memfd shared memory) for each rule
and classifies what QEMU did.  The test asserts that the tool observed and classified each
outcome — QEMU's exit status, its error line, a hang — not that QEMU behaves well; what QEMU
does is listed in the closing note of issue 17."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from pyvirtio.guest.initramfs import build_initrd
from pyvirtio.guest.modules import DEFAULT_MODULES
from pyvirtio.guest.qemu import qemu_command
from pyvirtio.vhost_user.tools.hostile_runner import FINDINGS

pytestmark = [pytest.mark.guest, pytest.mark.timeout(600)]

SCRIPT = r"""
echo "sectors=$(cat /sys/block/vda/size)"
dd if=/dev/vda of=/dev/null bs=4k count=64 iflag=direct 2>&1 | tail -1
echo io=done
"""
OUTCOMES = {"crashed", "aborted", "hung", "exited-with-error", "exited", "disconnected",
            "carried-on", "not-triggered"}
#: rule -> the outcomes QEMU 7.2 was seen to have (the test accepts any classified outcome for
#: the others, and checks what the tool recorded).
RULES = {
    "delay:ms=1,count=1": {"exited"},  # the control: a harmless lie, the guest does its I/O
    "short:req=GET_FEATURES": {"exited-with-error"},
    "no-reply:req=GET_CONFIG": None,
    "used-id": None,
    "inflight-fd": None,
}


def test_qemu_against_the_hostile_backend(guest_kernel, tmp_path):
    initrd, _ = build_initrd(guest_kernel.modules_dir, SCRIPT, modules=list(DEFAULT_MODULES))
    (tmp_path / "initrd.img").write_bytes(initrd)
    cmd = qemu_command(guest_kernel, tmp_path / "initrd.img", qemu_args=[
        "-chardev", "socket,id=blk,path={socket}", "-device", "vhost-user-blk-pci,chardev=blk"])
    out_dir = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "pyvirtio.cli", "fuzz-frontend", f"--socket-path={tmp_path / 'h.sock'}",
         "--device=blk", f"--out={out_dir}", "--seed=1", "--time=20",
         f"--qemu-cmd={shlex.join(cmd)}", *(f"--rule={r}" for r in RULES)],
        capture_output=True, text=True, timeout=540)
    print(run.stdout, run.stderr)
    records = [json.loads(line) for line in open(out_dir / "outcomes.jsonl")]
    assert [r["rules"][0] for r in records] == list(RULES)
    findings = 0
    for number, (record, (rule, expected)) in enumerate(zip(records, RULES.items()), 1):
        outcome = record["outcome"]
        assert outcome["kind"] in OUTCOMES, record
        if expected is not None:
            assert outcome["kind"] in expected, record
        if outcome["kind"] != "not-triggered":
            assert record["fired"], record  # what was done is recorded
        if outcome["kind"] == "exited-with-error":
            assert outcome["exit"] and outcome["errors"], record  # QEMU's status and its words
        if outcome["kind"] in ("crashed", "aborted"):
            assert outcome["signal"], record
        if outcome["kind"] in FINDINGS:
            findings += 1
            assert list(out_dir.glob(f"{outcome['kind']}-*-{number}.json")), "finding not saved"
        assert f"[{number}] {rule}: {outcome['kind'].upper()}" in run.stdout
    assert "io=done" in (out_dir / "frontend-1.log").read_text()  # the control guest did its I/O
    assert "vhost" in " ".join(records[1]["outcome"]["errors"])  # QEMU said why it refused
    assert run.returncode == (1 if findings else 0), run.stdout + run.stderr
