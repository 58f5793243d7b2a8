"""``pyvirtio bench blk --plot FILE.png``: a completion-latency histogram (matplotlib, optional).

matplotlib is not a dependency of pyvirtio (``pip install 'pyvirtio[plot]'`` adds it); without it
:func:`latency_histogram` raises :class:`PlotUnavailable` and nothing else changes.
"""

from __future__ import annotations

import math
from typing import Sequence

from ..errors import VirtioError


class PlotUnavailable(VirtioError):
    """matplotlib is not installed."""


def latency_histogram(samples_ns: Sequence[int], path: str, title: str) -> None:
    """Write a histogram of ``samples_ns`` (log-spaced bins, in µs) with the median and the 99th
    percentile marked, to ``path`` (PNG, or any format matplotlib infers from the name)."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib (pip install 'pyvirtio[plot]')") from None
    if not samples_ns:
        raise PlotUnavailable("--plot: no request completed, nothing to draw")
    us = sorted(s / 1000 for s in samples_ns)
    low, high = max(us[0], 0.1), max(us[-1], us[0] * 1.01, 0.2)
    n_bins = 60
    step = (math.log10(high) - math.log10(low)) / n_bins
    edges = [10 ** (math.log10(low) + i * step) for i in range(n_bins + 1)]
    p50, p99 = us[len(us) // 2], us[min(len(us) - 1, int(len(us) * 0.99))]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    try:
        ax.hist(us, bins=edges, color="#4477aa")
        ax.set_xscale("log")
        ax.axvline(p50, color="#228833", linestyle="--", label=f"p50 {p50:.0f} µs")
        ax.axvline(p99, color="#ee6677", linestyle="--", label=f"p99 {p99:.0f} µs")
        ax.set_xlabel("completion latency (µs, log scale)")
        ax.set_ylabel("requests")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
