"""Driver classes (the guest side): one per device class, written against any transport."""

from .blk import BlkDriver
from .console import ConsoleDriver
from .fs import FsDriver
from .input import InputDriver
from .net import NetDriver
from .rng import RngDriver
from .scsi import ScsiDriver
from .vsock import VsockDriver

#: Every driver pyvirtio ships, for bus binding.
ALL_DRIVERS = (RngDriver, BlkDriver, ConsoleDriver, NetDriver, InputDriver, ScsiDriver, FsDriver,
               VsockDriver)
