"""Device classes (the host side): each turns requests on its virtqueues into work on the host."""
