"""Driver classes (the guest side): one per device class, written against any transport."""

from .blk import BlkDriver
from .rng import RngDriver

#: Every driver pyvirtio ships, for bus binding.
ALL_DRIVERS = (RngDriver, BlkDriver)
