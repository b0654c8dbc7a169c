"""Tumbling event-time windows per (model_id, model_version), with bounded state.

A window closes when an event of a later window arrives, or when the wall clock passes its
end plus a grace period (so a version that stops sending still gets its last window judged).
A closed window is dropped: state never grows with the number of events or of dead versions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from rollguard.policy import WindowPolicy
from services.detector.detectors import LATENCY_EDGES, latency_histogram

VersionKey = tuple[str, str]


@dataclass
class LatencyWindow:
    model_id: str
    model_version: str
    system_version: str | None
    start: float
    seconds: float
    errors: int = 0
    n: int = 0
    counts: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(len(LATENCY_EDGES) - 1, dtype=np.int64)
    )

    @property
    def end(self) -> float:
        return self.start + self.seconds


class LatencyWindows:
    """Error and latency windows of every live (model_id, model_version)."""

    def __init__(self, window_policy: Callable[[str], WindowPolicy]) -> None:
        self._policy = window_policy
        self._open: dict[VersionKey, LatencyWindow] = {}

    def __len__(self) -> int:
        return len(self._open)

    def add(
        self,
        key: VersionKey,
        system_version: str | None,
        ts: npt.NDArray[np.float64],
        latency_ms: npt.NDArray[np.float64],
        is_error: npt.NDArray[np.bool_],
    ) -> list[LatencyWindow]:
        """Fold one version's events (event time in epoch seconds) in; return closed windows."""
        policy = self._policy(key[0])
        buckets = np.floor(ts / policy.seconds) * policy.seconds
        closed: list[LatencyWindow] = []
        for start in np.unique(buckets):
            current = self._open.get(key)
            if current is None or start > current.start:
                if current is not None:
                    closed.append(current)
                current = LatencyWindow(
                    key[0], key[1], system_version, float(start), policy.seconds
                )
                self._open[key] = current
            # Events older than the open window are late: fold them into it rather than reopen.
            sel = buckets == start
            current.n += int(sel.sum())
            current.errors += int(is_error[sel].sum())
            current.counts += latency_histogram(latency_ms[sel])
        return closed

    def close_idle(self, now: float) -> list[LatencyWindow]:
        closed = [
            w for w in self._open.values() if now >= w.end + self._policy(w.model_id).close_grace_s
        ]
        for w in closed:
            del self._open[(w.model_id, w.model_version)]
        return closed
