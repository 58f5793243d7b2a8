"""The back-end (device) side of vhost-user: the sans-I/O connection and its parts, and the
server that hosts devices on sockets.

* ``connection`` — :class:`BackendConnection`: the protocol's rules as a table, one dispatch
  for REPLY_ACK and fd closing;
* ``vring`` — one ring's state (addresses, kick/call/err fds, started/enabled);
* ``memmap`` — mapping the front-end's memory table and inflight buffer;
* ``inflight`` — the inflight region's layouts (requests in flight survive a restart);
* ``notifyfd`` — which fds may serve as kick, call and channel fds;
* ``server`` — :class:`VhostUserServer`, the I/O shell.
"""
