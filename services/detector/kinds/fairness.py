"""fairness (delayed tier): the disparity ratio of a rate across the segments of a feature.

``positive_rate`` counts positive predictions per segment in each window; ``error_rate``
counts wrong calls per segment among outcomes joined since the version's last evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field

from rollguard.detector_policy import DetectorBase, Tier
from rollguard_services.detector.decoding import Column, segment_labels, select
from rollguard_services.detector.kinds.base import (
    DetectorKind,
    JoinedOutcomes,
    JoinNeed,
    Measurement,
    Phase,
    Selection,
    VersionInputs,
)
from rollguard_services.detector.windows import VersionWindow


class FairnessConfig(DetectorBase):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["fairness"] = "fairness"
    tier: Tier = "delayed"
    min_events: int = Field(default=100, ge=1, description="Per segment.")
    segment: str = Field(
        default="segment", min_length=1, description="Feature holding the segment."
    )
    metric: Literal["positive_rate", "error_rate"] = "positive_rate"
    min_ratio: float = Field(default=0.8, gt=0, le=1, description="Four-fifths rule by default.")
    positive_threshold: float = Field(
        default=0.5, description="A numeric prediction at or above it counts as positive."
    )
    positive_label: str = Field(
        default="1", min_length=1, description="A label prediction equal to it counts as positive."
    )


@dataclass
class Tallies:
    """Per segment label: how many were counted and how many of those hit (positive / wrong)."""

    totals: dict[str, int] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)

    def add(self, label: str, total: int, hits: int) -> None:
        self.totals[label] = self.totals.get(label, 0) + total
        self.hits[label] = self.hits.get(label, 0) + hits

    def absorb(self, other: Tallies) -> None:
        """A pooled window's tallies (windows.VersionWindow.absorb)."""
        for label, total in other.totals.items():
            self.add(label, total, other.hits.get(label, 0))


def measure(
    positives: dict[str, int],
    totals: dict[str, int],
    *,
    segment: str,
    metric: str,
    min_ratio: float,
    min_events: int,
) -> Measurement:
    """Disparity ratio: lowest segment rate over highest, among segments with ``min_events``.

    Breach below ``min_ratio`` (0.8: the four-fifths rule). Fewer than two segments with
    enough events: inconclusive.
    """
    signal = f"segment:{segment}"
    n = sum(totals.values())
    if n == 0:
        return Measurement("fairness", signal, "no_data", "disparity_ratio", 1.0, min_ratio, 0)
    rates = {s: positives.get(s, 0) / t for s, t in totals.items() if t >= min_events}
    if len(rates) < 2:
        return Measurement(
            "fairness",
            signal,
            "inconclusive",
            "disparity_ratio",
            1.0,
            min_ratio,
            n,
            None,
            {"segments": len(rates)},
        )
    low, high = min(rates, key=rates.__getitem__), max(rates, key=rates.__getitem__)
    ratio = rates[low] / rates[high] if rates[high] > 0 else 1.0
    evidence: dict[str, float | int | str] = {
        "metric": metric,
        "lowest": low,
        "highest": high,
        "lowest_rate": rates[low],
        "highest_rate": rates[high],
    }
    phase: Phase = "breach" if ratio < min_ratio else "ok"
    return Measurement(
        "fairness", signal, phase, "disparity_ratio", ratio, min_ratio, n, None, evidence
    )


def fold_predictions(
    instance: str,
    config: FairnessConfig,
    window: VersionWindow,
    columns: dict[str, Column],
    sel: Selection,
) -> None:
    """positive_rate: count positive predictions per segment label into the window."""
    segment = columns.get(f"feature:{config.segment}")
    if config.metric != "positive_rate" or segment is None:
        return
    pred = select(columns["prediction"], sel)
    if isinstance(pred, np.ndarray):
        positive = pred >= config.positive_threshold
    else:
        positive = np.array([v == config.positive_label for v in pred], dtype=np.bool_)
    seg = segment_labels(select(segment, sel))
    labels, inverse = np.unique(np.array(seg, dtype=object), return_inverse=True)
    totals = np.bincount(inverse, minlength=len(labels))
    hits = np.bincount(inverse, weights=positive, minlength=len(labels))
    tallies = window.kind_sums.setdefault(instance, Tallies())
    assert isinstance(tallies, Tallies)
    for label, t, h in zip(labels, totals, hits, strict=True):
        tallies.add(label, int(t), int(h))


def is_error(prediction: float | str, outcome: float | str, threshold: float) -> bool:
    """A wrong call: labels that differ, or a score and an outcome on either side of the
    positive threshold."""
    if isinstance(prediction, str) or isinstance(outcome, str):
        return str(prediction) != str(outcome)
    return (float(prediction) >= threshold) != (float(outcome) >= threshold)


def join(config: FairnessConfig) -> JoinNeed:
    return JoinNeed(segment=config.segment if config.metric == "error_rate" else None)


def fold_outcomes(instance: str, config: FairnessConfig, joined: JoinedOutcomes) -> None:
    """error_rate: count wrong calls per segment label until the version's next evaluation."""
    if config.metric != "error_rate":
        return
    tallies = joined.state.kind_state.setdefault(instance, Tallies())
    assert isinstance(tallies, Tallies)
    for prediction, outcome, segments in zip(
        joined.predictions, joined.outcomes, joined.segments, strict=True
    ):
        if config.segment in segments:
            wrong = is_error(prediction, outcome, config.positive_threshold)
            tallies.add(str(segments[config.segment]), 1, int(wrong))


def on_version(instance: str, config: FairnessConfig, inputs: VersionInputs) -> list[Measurement]:
    # error_rate: outcomes joined since the last evaluation, measured once, then counted afresh.
    source = inputs.state.kind_state if config.metric == "error_rate" else inputs.window.kind_sums
    tallies = source.pop(instance, None) if config.metric == "error_rate" else source.get(instance)
    if not isinstance(tallies, Tallies):
        tallies = Tallies()
    return [
        measure(
            tallies.hits,
            tallies.totals,
            segment=config.segment,
            metric=config.metric,
            min_ratio=config.min_ratio,
            min_events=config.min_events,
        )
    ]


KIND = DetectorKind(
    "fairness",
    FairnessConfig,
    "disparity ratio across a segment",
    frozenset({"prediction", "feature", "outcome"}),
    on_version=on_version,
    fold_predictions=fold_predictions,
    join=join,
    fold_outcomes=fold_outcomes,
)
