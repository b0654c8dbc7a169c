"""What each version served, counted from the windows the detector closes and reported every
``interval_s`` as one TrafficReport per version (topics.TRAFFIC): the decider counts the
restored version's traffic before it calls a rollback verified.

Counted per closed window, not per event: a report costs one message per active version per
interval, whatever the traffic. A version that sent nothing gets no report, which is what the
decider needs to hear from a restored version with no traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from rollguard.events import TrafficReport
from rollguard_services.detector.windows import LatencyWindow, VersionKey, VersionWindow


@dataclass
class _Tally:
    system_version: str | None
    start: float
    end: float
    requests: int = 0
    errors: int = 0
    predictions: int = 0
    windows: int = 0


class TrafficCounter:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._tallies: dict[VersionKey, _Tally] = {}
        self._last: float | None = None

    def __len__(self) -> int:
        return len(self._tallies)

    def _tally(self, key: VersionKey, window: LatencyWindow | VersionWindow) -> _Tally:
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = _Tally(window.system_version, window.start, window.end)
        tally.start, tally.end = min(tally.start, window.start), max(tally.end, window.end)
        tally.system_version = window.system_version or tally.system_version
        tally.windows += 1
        return tally

    def add_latency(self, window: LatencyWindow) -> None:
        tally = self._tally((window.model_id, window.model_version), window)
        tally.requests += window.n
        tally.errors += window.errors

    def add_predictions(self, window: VersionWindow) -> None:
        if window.n:  # a window of business metrics or health checks only serves nothing
            self._tally(window.key, window).predictions += window.n

    def due(self, now: float) -> list[TrafficReport]:
        """The reports of the interval that ended, if one did (``now``: monotonic seconds);
        the counts start again from zero."""
        if self._last is None:
            self._last = now
        if now - self._last < self.interval_s or not self._tallies:
            return []
        self._last = now
        tallies, self._tallies = self._tallies, {}
        return [
            TrafficReport(
                model_id=model_id,
                model_version=version,
                system_version=t.system_version,
                start=datetime.fromtimestamp(t.start, UTC),
                end=datetime.fromtimestamp(t.end, UTC),
                requests=t.requests,
                errors=t.errors,
                predictions=t.predictions,
                windows=t.windows,
            )
            for (model_id, version), t in tallies.items()
        ]
