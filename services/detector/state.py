"""What the detector remembers between batches, per model and per model version."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from rollguard import baselines as bl
from rollguard_services.detector.counterfactual import Shadowed
from rollguard_services.detector.join import PendingJoin
from rollguard_services.detector.sustain import Sustain
from rollguard_services.detector.windows import LatencyWindow, VersionKey, VersionWindow


@dataclass
class VersionSeen:
    """Since when, and how much, a model version has sent (for MTTD and blast radius)."""

    first_ts: float
    events: int = 0
    last_wall: float = 0.0


@dataclass
class Capture:
    """A baseline being captured from a version just marked known good."""

    window: VersionWindow
    started_wall: float


@dataclass
class VersionState:
    recent: deque[VersionWindow]
    sustain: Sustain
    consecutive_failures: int = 0
    capture: Capture | None = None
    #: Closed windows short of their tests' min_events, pooled until they have them
    #: (pooling.pooled): prediction windows and latency windows.
    held: VersionWindow | None = None
    held_latency: LatencyWindow | None = None
    #: Running state a detector kind keeps across windows (drift statistics, joined tallies),
    #: by detector instance name. Only that kind's module reads its entry.
    kind_state: dict[str, object] = field(default_factory=dict)


@dataclass
class ModelState:
    """What the detector knows of one model: its versions, grids, feature kinds, join state."""

    registered: set[str] = field(default_factory=set)
    known_good: list[str] = field(default_factory=list)
    live: str | None = None
    previous_live: str | None = None
    grids: dict[str, bl.Grid] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # signal -> numeric / categorical
    features: frozenset[str] | None = None
    #: The last judged window of a known-good version's shadow predictions (counterfactual).
    shadowed: Shadowed | None = None
    pending: PendingJoin = field(default_factory=PendingJoin)  # waiting for their outcome

    def reference_version(self, version: str) -> str | None:
        """The last known-good version other than ``version``."""
        good = [v for v in self.known_good if v != version]
        return good[-1] if good else None


__all__ = ["Capture", "ModelState", "VersionKey", "VersionSeen", "VersionState"]
