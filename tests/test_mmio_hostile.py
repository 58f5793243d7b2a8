"""A hostile guest against pyvirtio's virtio-mmio window: random accesses of any width at any
offset, with garbage in guest memory.  No access raises; a reset brings the device back."""

import os

from hypothesis import HealthCheck, given, settings, strategies as st

from pyvirtio.devices.rng import RngDevice
from pyvirtio.drivers.rng import RngDriver
from pyvirtio.mmio import MmioTransport
from pyvirtio.platform.machine import InProcessMachine
from pyvirtio.spec.mmio import MmioReg as R
from pyvirtio.spec.status import DeviceStatus as S

EXAMPLES = int(os.environ.get("PYVIRTIO_FUZZ_EXAMPLES", "150"))
SIZES = st.sampled_from([1, 2, 4, 8])
VALUES = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 8, 0xF, 0xFF, 0x100, 0xFFFFFFFF]), st.integers(0, (1 << 64) - 1))
OFFSETS = st.one_of(st.sampled_from(list(R)), st.integers(-8, 0x220))

OPS = st.one_of(
    st.tuples(st.just("read"), OFFSETS, SIZES),
    st.tuples(st.just("write"), OFFSETS, SIZES, VALUES),
    st.tuples(st.just("write"), st.sampled_from([R.QUEUE_NOTIFY, R.QUEUE_READY, R.STATUS, R.QUEUE_SEL]),
              st.just(4), st.integers(0, 15)),
    st.tuples(st.just("scribble"), st.integers(0, (1 << 20) - 64), st.binary(min_size=1, max_size=64)),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, max_size=60), probe_first=st.booleans())
def test_random_accesses_to_an_mmio_window(ops, probe_first):
    with InProcessMachine(ram_size=1 << 20) as machine:
        w = machine.add_mmio(RngDevice())
        t = MmioTransport(machine, 0xFEB00000, w.size, irq=5)
        if probe_first:
            RngDriver.probe(t)
        for op in ops:
            if op[0] == "read":
                w.read(op[1], op[2])
            elif op[0] == "write":
                w.write(op[1], op[2], op[3])
            else:
                machine.memory.write(machine.memory.regions[0].gpa + op[1], op[2])
            num = w.read(R.QUEUE_SIZE_MAX, 4)
            assert num in (0, 256)
            assert w.read(R.INTERRUPT_STATUS, 4) & ~3 == 0, "only defined InterruptStatus bits (4.2.2.1)"
        w.write(R.STATUS, 4, 0)
        assert w.read(R.STATUS, 4) == 0 and w.read(R.INTERRUPT_STATUS, 4) == 0
        drv = RngDriver.probe(t)
        assert len(drv.read(8)) == 8 and not t.get_status() & S.DEVICE_NEEDS_RESET
