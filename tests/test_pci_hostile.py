"""A hostile guest against pyvirtio's virtio PCI function: random configuration-space and BAR
accesses of any width at any offset, with garbage in guest memory.

Invariant: no access raises, the registers stay within what the spec lets a device present, and a
reset followed by an ordinary driver brings the device back."""

import os
import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st

from pyvirtio.devices.blk import BlkDevice
from pyvirtio.devices.rng import RngDevice
from pyvirtio.drivers.blk import BlkDriver
from pyvirtio.drivers.rng import RngDriver
from pyvirtio.pci import scan_pci
from pyvirtio.platform.machine import InProcessMachine
from pyvirtio.pci.function import COMMON_OFFSET, ISR_OFFSET, NOTIFY_OFFSET, VIRTIO_BAR
from pyvirtio.spec.pci import PCI_BAR_OFFSETS, VIRTIO_MSI_NO_VECTOR, CommonCfg, PciCfg
from pyvirtio.spec.status import DeviceStatus as S

SIZES = st.sampled_from([1, 2, 4, 8])
VALUES = st.one_of(st.sampled_from([0, 1, 2, 4, 7, 8, 0x10, 0xFF, 0xFFFF, 0xFFFFFFFF, (1 << 64) - 1]),
                   st.integers(0, (1 << 64) - 1))
COMMON = [COMMON_OFFSET + f for f in CommonCfg]
BAR_OFFSETS = st.one_of(st.sampled_from(COMMON + [ISR_OFFSET, NOTIFY_OFFSET, 0x2000, 0x800, 0, 12]),
                        st.integers(0, 0x4100))
CFG_OFFSETS = st.one_of(st.sampled_from(list(PciCfg) + list(range(0x40, 0x100, 4))), st.integers(0, 0x110))

#: More examples for a long fuzzing run: PYVIRTIO_FUZZ_EXAMPLES=5000 pytest tests/test_pci_hostile.py
EXAMPLES = int(os.environ.get("PYVIRTIO_FUZZ_EXAMPLES", "150"))

OPS = st.one_of(
    st.tuples(st.just("cfg_read"), CFG_OFFSETS, SIZES),
    st.tuples(st.just("cfg_write"), CFG_OFFSETS, SIZES, VALUES),
    st.tuples(st.just("bar_read"), st.integers(0, 6), BAR_OFFSETS, SIZES),
    st.tuples(st.just("bar_write"), st.integers(0, 6), BAR_OFFSETS, SIZES, VALUES),
    st.tuples(st.just("bar_write"), st.just(VIRTIO_BAR), st.just(NOTIFY_OFFSET), st.just(2), st.integers(0, 3)),
    st.tuples(st.just("scribble"), st.integers(0, (1 << 20) - 64), st.binary(min_size=1, max_size=64)),
)


def _run(machine, fn, ops):
    for op in ops:
        kind = op[0]
        if kind == "cfg_read":
            fn.config_read(op[1], op[2])
        elif kind == "cfg_write":
            fn.config_write(op[1], op[2], op[3])
        elif kind == "bar_read":
            fn.bar_read(op[1], op[2], op[3])
        elif kind == "bar_write":
            fn.bar_write(op[1], op[2], op[3], op[4])
        else:
            machine.memory.write(machine.memory.regions[0].gpa + op[1], op[2])
        _check_invariants(fn)


def _check_invariants(fn):
    size = fn.bar_read(VIRTIO_BAR, COMMON_OFFSET + CommonCfg.QUEUE_SIZE, 2)
    assert size == 0 or size & (size - 1) == 0, "queue_size is 0 or a power of two (4.1.4.3.1)"
    vector = fn.bar_read(VIRTIO_BAR, COMMON_OFFSET + CommonCfg.CONFIG_MSIX_VECTOR, 2)
    assert vector == VIRTIO_MSI_NO_VECTOR or vector < fn.msix.nvectors


def _recover(machine, fn, driver_cls):
    fn.bar_write(VIRTIO_BAR, COMMON_OFFSET + CommonCfg.DEVICE_STATUS, 1, 0)
    assert fn.bar_read(VIRTIO_BAR, COMMON_OFFSET + CommonCfg.DEVICE_STATUS, 1) == 0
    assert fn.bar_read(VIRTIO_BAR, COMMON_OFFSET + CommonCfg.QUEUE_ENABLE, 2) == 0
    for offset in PCI_BAR_OFFSETS:  # let the scan place the BARs again
        fn.config_write(offset, 4, 0)
    (t,) = scan_pci(machine).transports
    drv = driver_cls.probe(t)
    assert not t.get_status() & S.DEVICE_NEEDS_RESET
    return drv


def _init_prefix(fn):
    """Sometimes start from a driver-initialised device so queues are live during the storm."""
    for value in (S.ACKNOWLEDGE, S.ACKNOWLEDGE | S.DRIVER):
        fn.bar_write(VIRTIO_BAR, COMMON_OFFSET + CommonCfg.DEVICE_STATUS, 1, value)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, max_size=60), prefix=st.booleans(), probe_first=st.booleans())
def test_random_accesses_to_an_rng_function(ops, prefix, probe_first):
    with InProcessMachine(ram_size=1 << 20) as machine:
        fn = machine.add_pci(RngDevice())
        if probe_first:
            (t,) = scan_pci(machine).transports
            RngDriver.probe(t)
        elif prefix:
            _init_prefix(fn)
        _run(machine, fn, ops)
        assert len(_recover(machine, fn, RngDriver).read(16)) == 16


@settings(max_examples=max(EXAMPLES // 3, 1), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, max_size=40), probe_first=st.booleans())
def test_random_accesses_to_a_blk_function(ops, probe_first):
    fd, path = tempfile.mkstemp(prefix="pyvirtio-hostile-")
    os.ftruncate(fd, 1 << 16)
    os.close(fd)
    try:
        with InProcessMachine(ram_size=1 << 20) as machine:
            fn = machine.add_pci(BlkDevice(path))
            if probe_first:
                (t,) = scan_pci(machine).transports
                BlkDriver.probe(t)
            _run(machine, fn, ops)
            drv = _recover(machine, fn, BlkDriver)
            drv.write(0, b"r" * 512)
            assert drv.read(0, 512) == b"r" * 512
    finally:
        os.unlink(path)
