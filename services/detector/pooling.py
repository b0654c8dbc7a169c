"""Windows that fit the traffic. A window closes after ``window.seconds`` (or earlier, after
``ROLLGUARD_DETECTOR_WINDOW_EVENTS`` predictions); one short of the events its tests need is
held and pooled with the version's next windows until the pool holds them (the largest
``min_events`` of the detectors judged on it) or spans ``window.max_seconds``, and is then
judged as one window. A busy model's windows are judged as they close, as before; a model that
scores a few requests a minute gets one conclusive test per ``min_events`` requests instead of
only inconclusive ones."""

from __future__ import annotations

from typing import TypeVar

from rollguard.detector_policy import DetectorBase
from rollguard_services.detector.evaluation import tier_of
from rollguard_services.detector.kinds import Resolved
from rollguard_services.detector.windows import LatencyWindow, VersionWindow

W = TypeVar("W", LatencyWindow, VersionWindow)


def pooled(held: W | None, window: W, need: int, max_seconds: float) -> tuple[W | None, W | None]:
    """(the window to judge now, or None; what stays held). The window itself when it holds
    enough on its own and nothing is held."""
    if held is not None:
        held.absorb(window)
        window = held
    if events(window) >= need or window.seconds >= max_seconds:
        return window, None
    return None, window


def events(window: LatencyWindow | VersionWindow) -> int:
    """What a window holds for its tests: requests, predictions, or a business metric's
    events (a model may send those alone)."""
    if isinstance(window, LatencyWindow):
        return window.n
    return max([window.n, *(m.n for m in window.metrics.values())])


def split(
    configs: dict[str, DetectorBase], kinds: Resolved
) -> tuple[dict[str, DetectorBase], dict[str, DetectorBase]]:
    """(the detectors run on every window, unpooled: the immediate tier's and those that
    measure what they keep across windows; the others, judged on pooled windows)."""
    every = {
        n: c for n, c in configs.items() if tier_of(c) == "immediate" or not kinds.kind(c).pooled
    }
    return every, {n: c for n, c in configs.items() if n not in every}


def needed(configs: dict[str, DetectorBase], kinds: Resolved, *, latency: bool) -> int:
    """The most events any of ``configs``' latency-window (or version-window) kinds need."""
    need = 0
    for config in configs.values():
        kind = kinds.kind(config)
        if (kind.on_latency if latency else kind.on_version) is not None and config.enabled:
            need = max(need, config.min_events or 0)
    return need
