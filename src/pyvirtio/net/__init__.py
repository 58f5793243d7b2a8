"""Network: host-side back-ends for the network device, and what goes with them.

Back-ends (``--tap``, ``--switch``, ``--socket``, ``--null`` on the command line):
:class:`~pyvirtio.net.tap.TapBackend`, :class:`~pyvirtio.net.switch.SwitchPort` (from
:func:`~pyvirtio.net.switch.get_switch`), :class:`~pyvirtio.net.stream.StreamBackend`,
:class:`~pyvirtio.net.null.NullBackend`, and :class:`~pyvirtio.net.mock.MockBackend` for tests.
The engine's worker of the device that owns a back-end watches its fds (``pyvirtio.engine``).
Also here: link state over vhost-user (``vhost_link``), a frame builder (``frame``) and a tiny
ARP/ping responder (``responder``).  The device's own internals live beside it in
:mod:`pyvirtio.devices`: the receive path (``net_rx``, ``net_rxpath``), the control queue
(``net_ctrl``), receive steering (``net_steer``) and the transmit header checks (``net_txhdr``).
"""

from .backend import NetBackend
from .null import NullBackend

__all__ = ["NetBackend", "NullBackend"]
