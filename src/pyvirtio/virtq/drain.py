"""The one "disable notifications, drain, re-enable, re-check" loop every device queue uses."""

from __future__ import annotations

from typing import Callable

from .chain import DescriptorChain


def drain_queue(queue, mem, handle: Callable[[DescriptorChain], int | None],
                settle: Callable[[], bool] | None = None) -> bool:
    """Drain ``queue`` (split or packed, device side) through ``handle``.

    ``handle(chain)`` returns the bytes written to complete the chain now, or None if the device
    completes it later with ``add_used``.  Completed chains go to the used ring in one batch per
    pass.  The loop ends only when re-enabling notifications finds nothing new (2.7.10: the
    re-check after enabling is what prevents a lost kick).  Returns whether to notify the driver.

    ``settle()``, when given, runs after each pass (the device sends what the pass started on
    its way); True ends the loop with notifications still off.  The device then promises to
    drain the queue again when that work finishes (:attr:`pyvirtio.device.Device.kicks_held`:
    a blk queue with requests in the kernel looks at its ring on each completion, so the driver
    need not kick meanwhile), and to end with notifications on once nothing is in flight.
    """
    while True:
        queue.disable_notification(mem)
        done = []
        try:
            while (chain := queue.pop_descriptor_chain(mem)) is not None:
                written = handle(chain)
                if written is not None:
                    done.append((chain.head_index, written))
        finally:
            if done and not queue.broken:  # what completed before a failure still goes back
                queue.add_used_batch(mem, done)
        if settle is not None and settle():
            break
        if not queue.enable_notification(mem):
            break
    return queue.needs_notification(mem)
