"""The front-end (driver) side of vhost-user.

* ``connection`` — :class:`FrontendConnection`, the sans-I/O core: requests out, replies
  checked (a hostile back-end raises typed errors, never anything else);
* ``channel`` — the back-end request channel's core (CONFIG_CHANGE_MSG ...);
* ``errors`` — what a back-end can do wrong, and what a caller can;
* ``client`` — :class:`VhostUserClient`, the I/O shell: a socket, timeouts, the channel;
* ``transport`` — :class:`VhostUserTransport`, the driver-side transport over a client
  (memory, rings, interrupts, reconnect);
* ``identify`` — what a back-end is, from what it offers.
"""
