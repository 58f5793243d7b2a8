"""The one "disable notifications, drain, re-enable, re-check" loop every device queue uses
(:func:`drain_queue`; :func:`drain_single`: the same loop with the batch path first)."""

from __future__ import annotations

from typing import Callable, Sequence

from .chain import DescriptorChain

#: With ``notify`` (:func:`drain_queue`): chains completed at once go to the used ring in
#: batches of this many while the ring is still being drained, not only at the end of the pass.
PUBLISH_EVERY = 8


def drain_queue(queue, mem, handle: Callable[[DescriptorChain], int | None],
                settle: Callable[[], bool | None] | None = None,
                notify: Callable[[], None] | None = None) -> bool:
    """Drain ``queue`` (split or packed, device side) through ``handle``.

    ``handle(chain)`` returns the bytes written to complete the chain now, or None if the device
    completes it later with ``add_used``.  Completed chains go to the used ring in one batch per
    pass.  The loop ends only when re-enabling notifications finds nothing new (2.7.10: the
    re-check after enabling is what prevents a lost kick).  Returns whether to notify the driver.

    ``settle()``, when given, runs after each pass (the device sends what the pass started on
    its way); True ends the loop with notifications still off.  The device then promises to
    drain the queue again when that work finishes (:attr:`pyvirtio.device.Device.kicks_held`:
    a blk queue with requests in the kernel looks at its ring on each completion, so the driver
    need not kick meanwhile), and to end with notifications on once nothing is in flight.  None
    asks for another pass with notifications still off (work finished during the settle: the
    driver, told, may have made more requests available meanwhile).

    ``notify()``, when given, notifies the driver at once: every PUBLISH_EVERY chains completed
    at once — and what completed at once when a look finds the ring empty — are put in the used
    ring during the pass, and ``notify()`` is called if the driver wants to know
    (``needs_notification``).  The driver so hears of the last request as soon as it is done,
    not after the pass's last look at the ring and its re-enabled notifications (one request at
    a time: that tail is no longer between the answer and the driver's next request).  A driver
    that keeps the ring full then takes those and makes more available while the rest is
    drained, instead of both sides waiting for each
    other's whole batch (4 KiB reads from the page cache at queue depth 32: one kick and one
    notification per 32 requests, the two sides taking turns).  The return value covers what
    was published after the last such call.
    """
    pop = queue.pop_descriptor_chain
    while True:
        queue.disable_notification(mem)
        done = []
        try:
            while True:
                chain = pop(mem)
                if chain is not None:
                    written = handle(chain)
                    if written is None:
                        continue
                    done.append((chain.head_index, written))
                    if notify is None or len(done) < PUBLISH_EVERY:
                        continue
                elif notify is None or not done:
                    break
                batch, done = done, []  # PUBLISH_EVERY completed, or the ring is empty
                queue.add_used_batch(mem, batch)
                if queue.needs_notification(mem):
                    notify()
                if chain is None:
                    break
        finally:
            if done and not queue.broken:  # what completed before a failure still goes back
                queue.add_used_batch(mem, done)
        if settle is not None:
            held = settle()
            if held:
                break
            if held is None:
                continue
        if not queue.enable_notification(mem):
            break
    return queue.needs_notification(mem)


#: What a device does with a batch of one-descriptor chains (``pop_single``'s ``heads, lengths,
#: offsets, buf``): the bytes written into each chain's buffer, in the batch's order.
BatchFill = Callable[[Sequence[int], Sequence[int], Sequence[int], memoryview], Sequence[int]]


def drain_single(queue, mem, fill: BatchFill, handle: Callable[[DescriptorChain], int],
                 *, writable: bool = True, limit: int = 1 << 16) -> bool:
    """:func:`drain_queue` for a queue whose chains are mostly one descriptor (an entropy
    device's, a receive queue's): batches of such chains go through ``queue.pop_single`` and
    ``fill`` — which gets each chain's buffer as ``buf[offsets[i]:offsets[i] + lengths[i]]``,
    with no DescriptorChain and no view per chain — and back with one ``add_used_lengths``; a
    chain of any other shape through ``pop_descriptor_chain`` and ``handle`` (which completes it
    now: the bytes written), in ring order.  Every descriptor is checked either way (the batch
    path checks what the general path checks, over the batch).  Same notification loop as
    :func:`drain_queue`; returns whether to notify the driver."""
    pop, used, pop_chain = queue.pop_single, queue.add_used_lengths, queue.pop_descriptor_chain
    while True:
        queue.disable_notification(mem)
        while True:
            heads, lengths, offsets, buf = pop(mem, limit, writable=writable)
            if heads:
                used(mem, heads, fill(heads, lengths, offsets, buf))
                continue
            chain = pop_chain(mem)
            if chain is None:
                break
            queue.add_used(mem, chain.head_index, handle(chain))
        if not queue.enable_notification(mem):
            break
    return queue.needs_notification(mem)
