"""virtio-scsi host bus adapter and its logical units (VIRTIO 1.3, 5.6; SPC-4, SBC-3, MMC-6).

Layers, innermost first:

* :mod:`.sense` and :mod:`.task`: sense data, the CHECK CONDITION a logical unit raises, and one
  command as a logical unit sees it (CDB, data-out and data-in views into guest memory).
* Logical units, sans-I/O cores over a small medium interface (:mod:`.media`): :mod:`.spc`
  (what every emulated unit shares: unit attention, INQUIRY, REQUEST SENSE, mode pages),
  :mod:`.disk` (SBC), :mod:`.cdrom` (MMC) and :mod:`.passthrough` (CDBs to a host SCSI generic
  device through SG_IO, :mod:`.sg_io`, behind an allow-list).
* :mod:`.target`: targets and LUNs, the virtio LUN format, REPORT LUNS and the answers for a
  LUN that does not exist.
* :mod:`.hba`: the virtio device: controlq (TMF, AN), eventq (hot-plug, parameter change,
  asynchronous notification), request queues.
"""

from .cdrom import CdromUnit
from .disk import DiskUnit
from .hba import ScsiDevice
from .passthrough import PassthroughUnit

__all__ = ["ScsiDevice", "DiskUnit", "CdromUnit", "PassthroughUnit"]
