"""Fixed log-spaced latency bins: what latency windows count into and the latency kind reads."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

# From 0.01 ms to one day: bounded state, ~2 % relative error.
LATENCY_EDGES: npt.NDArray[np.float64] = np.concatenate(
    ([0.0], np.geomspace(0.01, 86_400_000.0, 1200))
)


def latency_histogram(values_ms: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Counts of ``values_ms`` in LATENCY_EDGES bins (vectorised, one pass)."""
    idx = np.searchsorted(LATENCY_EDGES, values_ms, side="right") - 1
    np.clip(idx, 0, len(LATENCY_EDGES) - 2, out=idx)
    return np.bincount(idx, minlength=len(LATENCY_EDGES) - 1).astype(np.int64)


def histogram_quantile(counts: npt.NDArray[np.int64], q: float) -> float:
    """The q-quantile from binned counts, reported as the upper edge of its bin."""
    total = int(counts.sum())
    if total == 0:
        return math.nan
    rank = q * total
    i = int(np.searchsorted(np.cumsum(counts), rank, side="left"))
    return float(LATENCY_EDGES[min(i + 1, len(LATENCY_EDGES) - 1)])
