"""Network: host-side back-ends for the network device, and frame helpers.

Back-ends (``--tap``, ``--switch``, ``--socket``, ``--null`` on the command line):
:class:`~pyvirtio.net.tap.TapBackend`, :class:`~pyvirtio.net.switch.SwitchPort` (from
:func:`~pyvirtio.net.switch.get_switch`), :class:`~pyvirtio.net.stream.StreamBackend`,
:class:`~pyvirtio.net.null.NullBackend`.  :class:`~pyvirtio.net.loop.NetLoop` is the small I/O
shell that watches their fds for any number of devices.
"""

from .backend import NetBackend
from .null import NullBackend

__all__ = ["NetBackend", "NullBackend"]
