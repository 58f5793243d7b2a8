"""Live control of a running device: the control socket (issue 16).

``pyvirtio serve TYPE ... --control=PATH`` listens on a UNIX socket (mode 0600) for JSON lines,
one request → one reply (schema version 1, :mod:`.protocol`), served from the daemon's own loop
(:mod:`.server`).  Commands (:mod:`.commands`): ``stats``, ``resize`` (blk), ``link`` (net),
``port.add``/``port.remove``/``port.resize`` (console), ``fault.add``/``fault.list``/
``fault.remove``/``fault.clear``, ``reset``, ``version``, ``help``.  :mod:`.client` is the
client ``pyvirtio ctl`` and ``pyvirtio top`` use.

The same operations are a Python API on the device objects, over any transport:
``device.statistics()``, ``BlkDevice.resize``, ``NetDevice.set_link``,
``ConsoleDevice.add_port``/``remove_port``/``resize``, ``device.faults``, ``device.needs_reset``.
"""

from .client import ControlClient, ControlUnavailable
from .commands import ControlTarget, build_commands, parse_size
from .protocol import VERSION, ControlConnection, ControlError, Dispatcher
from .server import ControlServer

__all__ = ["VERSION", "ControlClient", "ControlConnection", "ControlError", "ControlServer",
           "ControlTarget", "ControlUnavailable", "Dispatcher", "build_commands", "parse_size"]
