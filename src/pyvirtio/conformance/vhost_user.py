"""A conformance run against any vhost-user back-end (``pyvirtio check``).

Each check tests one normative requirement of vhost-user.rst (QEMU docs/interop, cited as
``vu "Section"``) or of the VIRTIO 1.3 spec, on a connection of its own, so one failure does not
hide the next.  A check passes, fails (the back-end broke the rule: a wrong answer, a hang-up, no
answer), is skipped (the back-end does not offer what the rule is about; or no request is known
for its device type), or errs (the back-end could not be reached at all).  ``level`` is the
rule's strength: MUST, or SHOULD for the recommended behaviour (robustness included).

The requests the traffic checks send are harmless: a 512-byte read of sector 0 (blk), 64 bytes
of entropy (rng), one broadcast frame of an unused EtherType on transmitq1 (net).
"""

from __future__ import annotations

from . import checks_session  # noqa: F401  (registers part 1 of the checks)
from . import checks_device  # noqa: F401  (registers part 2, after part 1)
from .framework import (CHECKS, Check, Context, Result, Status, failed_musts, run_checks,
                        run_one)

__all__ = ["CHECKS", "Check", "Context", "Result", "Status", "failed_musts", "run_checks", "run_one"]
