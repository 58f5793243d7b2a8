"""Event-index arithmetic shared by both sides (VIRTIO 1.3, 2.7.10; Linux uapi ``vring_need_event``)."""


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """Whether moving an index from ``old_idx`` to ``new_idx`` crossed ``event_idx``.

    The other side asked to be told once the index passes ``event_idx``; all arithmetic is
    modulo 2**16.  True iff ``event_idx`` lies in ``[old_idx, new_idx)`` on the u16 circle.
    """
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)
