"""VIRTIO spec data: numbers, flags and struct layouts, each citing its section. No logic, no I/O."""
