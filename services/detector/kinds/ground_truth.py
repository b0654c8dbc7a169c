"""ground_truth (delayed tier): slow decline of the joined outcomes' loss, by Page-Hinkley or
CUSUM over per-prediction losses (a few floats of state per version)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field

from rollguard.detector_policy import DetectorBase, Tier
from rollguard_services.detector.kinds.base import (
    DetectorKind,
    JoinedOutcomes,
    JoinNeed,
    Measurement,
    Phase,
    VersionInputs,
)


class GroundTruthConfig(DetectorBase):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["ground_truth"] = "ground_truth"
    tier: Tier = "delayed"
    min_events: int = Field(default=50, ge=1, description="Fewer events in a window: inconclusive.")
    method: Literal["cusum", "page_hinkley"] = "page_hinkley"
    delta: float = Field(default=0.005, ge=0, description="Tolerated drift per observation.")
    threshold: float = Field(default=50.0, gt=0, description="Alarm level (lambda / h).")
    join_ttl_s: float = Field(
        default=86_400.0, gt=0, description="How long a prediction waits for its outcome."
    )
    max_pending: int = Field(default=100_000, ge=1, description="Bound of the join state.")


@dataclass(frozen=True)
class DriftState:
    """Running state of Page-Hinkley / CUSUM over per-prediction losses (a few floats)."""

    n: int = 0
    mean: float = 0.0
    cum: float = 0.0
    low: float = 0.0

    @property
    def statistic(self) -> float:
        return self.cum - self.low


def page_hinkley(losses: npt.NDArray[np.float64], state: DriftState, *, delta: float) -> DriftState:
    """Page-Hinkley for an increase of the mean loss: m_t = Σ (x_i − x̄_i − δ), alarm when
    m_t − min m exceeds λ. x̄_i is the running mean including x_i. Vectorised over ``losses``."""
    if len(losses) == 0:
        return state
    idx = state.n + np.arange(1, len(losses) + 1)
    means = (state.mean * state.n + np.cumsum(losses)) / idx
    cum = state.cum + np.cumsum(losses - means - delta)
    low = min(state.low, float(cum.min()))
    return DriftState(int(idx[-1]), float(means[-1]), float(cum[-1]), low)


def cusum(
    losses: npt.NDArray[np.float64], state: DriftState, *, delta: float, target: float
) -> DriftState:
    """One-sided CUSUM S_t = max(0, S_{t−1} + x_t − target − δ), as C_t − min C (vectorised).

    ``target`` is the expected loss (the baseline's); ``statistic`` of the result is S_t.
    """
    if len(losses) == 0:
        return state
    cum = state.cum + np.cumsum(losses - target - delta)
    low = min(state.low, float(cum.min()))
    n = state.n + len(losses)
    mean = (state.mean * state.n + float(losses.sum())) / n
    return DriftState(n, mean, float(cum[-1]), low)


def measure(state: DriftState, *, method: str, threshold: float, min_events: int) -> Measurement:
    """Breach when the Page-Hinkley / CUSUM statistic over joined losses exceeds ``threshold``."""
    if state.n == 0:
        return Measurement("ground_truth", "outcome_loss", "no_data", method, 0.0, threshold, 0)
    value = state.statistic
    if state.n < min_events:
        phase: Phase = "inconclusive"
    else:
        phase = "breach" if value > threshold else "ok"
    return Measurement(
        "ground_truth",
        "outcome_loss",
        phase,
        method,
        value,
        threshold,
        state.n,
        None,
        {"mean_loss": state.mean},
    )


def loss(prediction: float | str, outcome: float | str) -> float:
    """Absolute error for numbers, 0/1 disagreement for labels."""
    if isinstance(prediction, str) or isinstance(outcome, str):
        return float(str(prediction) != str(outcome))
    return abs(float(prediction) - float(outcome))


def drift_of(instance: str, state: object | None) -> DriftState:
    """This instance's running statistic in a version's kind state (fresh when there is none)."""
    found = getattr(state, "kind_state", {}).get(instance)
    return found if isinstance(found, DriftState) else DriftState()


def fold_outcomes(instance: str, config: GroundTruthConfig, joined: JoinedOutcomes) -> None:
    losses = np.array(
        [loss(p, o) for p, o in zip(joined.predictions, joined.outcomes, strict=True)],
        dtype=np.float64,
    )
    drift = drift_of(instance, joined.state)
    if config.method == "page_hinkley":
        drift = page_hinkley(losses, drift, delta=config.delta)
    else:
        # The expected loss is the reference version's mean loss so far (0 without one).
        reference = drift_of(instance, joined.reference_state)
        target = reference.mean if reference.n else 0.0
        drift = cusum(losses, drift, delta=config.delta, target=target)
    joined.state.kind_state[instance] = drift


def on_version(
    instance: str, config: GroundTruthConfig, inputs: VersionInputs
) -> list[Measurement]:
    return [
        measure(
            drift_of(instance, inputs.state),
            method=config.method,
            threshold=config.threshold,
            min_events=config.min_events,
        )
    ]


KIND = DetectorKind(
    "ground_truth",
    GroundTruthConfig,
    "Page-Hinkley / CUSUM on joined outcomes",
    frozenset({"prediction", "outcome"}),
    on_version=on_version,
    join=lambda config: JoinNeed(max_pending=config.max_pending, ttl_s=config.join_ttl_s),
    fold_outcomes=fold_outcomes,
    pooled=False,
)
