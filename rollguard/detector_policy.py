"""Detector configuration as it appears in a policy: one frozen model per detector kind.

A policy's ``detectors`` maps an instance name (``prediction_drift``) to one of these,
chosen by ``kind``. Defaults are the documented defaults (docs/detectors.md). The detector
service looks the kind up in its registry; the policy only carries the numbers.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Tier = Literal["immediate", "rapid", "delayed"]
Correction = Literal["holm", "bh", "none"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DetectorBase(_Frozen):
    enabled: bool = True
    min_events: int = Field(default=50, ge=1, description="Fewer events in a window: inconclusive.")


class ErrorRateConfig(DetectorBase):
    kind: Literal["error_rate"] = "error_rate"
    tier: Tier = "immediate"
    threshold: float = Field(
        default=0.05, gt=0, lt=1, description="Breach when the Wilson lower bound exceeds it."
    )
    confidence: float = Field(default=0.95, gt=0.5, lt=1)


class LatencyConfig(DetectorBase):
    kind: Literal["latency"] = "latency"
    tier: Tier = "immediate"
    sla_ms: float = Field(default=100.0, gt=0)
    p99_multiplier: float = Field(
        default=5.0, gt=0, description="Breach when p99 > multiplier × SLA."
    )


class HealthConfig(DetectorBase):
    kind: Literal["health"] = "health"
    tier: Tier = "immediate"
    min_events: int = Field(default=1, ge=1)
    consecutive_failures: int = Field(default=3, ge=1)


class KsConfig(DetectorBase):
    kind: Literal["ks"] = "ks"
    tier: Tier = "rapid"
    min_events: int = Field(default=200, ge=1)
    signals: tuple[str, ...] = Field(
        default=("prediction", "feature:*"),
        description="prediction, feature:<name>, or feature:* for every numeric feature.",
    )
    alpha: float = Field(default=0.01, gt=0, lt=1, description="Significance after correction.")
    min_effect: float = Field(
        default=0.05, gt=0, le=1, description="KS D needed besides significance."
    )
    reservoir: int = Field(
        default=2_000, ge=100, le=100_000, description="Cap of the exact-test samples."
    )


class PsiConfig(DetectorBase):
    kind: Literal["psi"] = "psi"
    tier: Tier = "rapid"
    min_events: int = Field(default=200, ge=1)
    signals: tuple[str, ...] = ("prediction", "feature:*")
    bins: int = Field(default=10, ge=2, le=100)
    moderate: float = Field(default=0.1, gt=0)
    major: float = Field(default=0.25, gt=0, description="Breach at or above this PSI.")


class BusinessMetricConfig(DetectorBase):
    kind: Literal["business_metric"] = "business_metric"
    tier: Tier = "rapid"
    metric: str = Field(default="ctr", min_length=1)
    max_relative_drop: float = Field(default=0.1, gt=0, lt=1, description="0.1 = a 10 % drop.")
    alpha: float = Field(
        default=0.01, gt=0, lt=1, description="Two-proportion test, where counts exist."
    )


class FeatureQualityConfig(DetectorBase):
    kind: Literal["feature_quality"] = "feature_quality"
    tier: Tier = "rapid"
    max_null_rate: float = Field(default=0.05, ge=0, le=1)
    max_out_of_range_rate: float = Field(default=0.05, ge=0, le=1)
    max_unknown_category_rate: float = Field(default=0.05, ge=0, le=1)


class GroundTruthConfig(DetectorBase):
    kind: Literal["ground_truth"] = "ground_truth"
    tier: Tier = "delayed"
    method: Literal["cusum", "page_hinkley"] = "page_hinkley"
    delta: float = Field(default=0.005, ge=0, description="Tolerated drift per observation.")
    threshold: float = Field(default=50.0, gt=0, description="Alarm level (lambda / h).")
    join_ttl_s: float = Field(
        default=86_400.0, gt=0, description="How long a prediction waits for its outcome."
    )
    max_pending: int = Field(default=100_000, ge=1, description="Bound of the join state.")


class FairnessConfig(DetectorBase):
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


class CostConfig(DetectorBase):
    kind: Literal["cost"] = "cost"
    tier: Tier = "delayed"
    metric: str = Field(default="cost", min_length=1)
    max_increase: float = Field(default=0.2, gt=0, description="0.2 = 20 % above the baseline.")


DetectorConfig = Annotated[
    ErrorRateConfig
    | LatencyConfig
    | HealthConfig
    | KsConfig
    | PsiConfig
    | BusinessMetricConfig
    | FeatureQualityConfig
    | GroundTruthConfig
    | FairnessConfig
    | CostConfig,
    Field(discriminator="kind"),
]


def default_detectors() -> dict[str, DetectorConfig]:
    """What runs when a policy says nothing: every kind once, under its own name."""
    return {
        "error_rate": ErrorRateConfig(),
        "latency": LatencyConfig(),
        "health": HealthConfig(),
        "prediction_ks": KsConfig(),
        "prediction_psi": PsiConfig(),
        "ctr": BusinessMetricConfig(),
        "feature_quality": FeatureQualityConfig(),
        "ground_truth": GroundTruthConfig(),
        "fairness": FairnessConfig(),
        "cost": CostConfig(),
    }


class FalseAlarmPolicy(_Frozen):
    """How the rapid tier keeps false alarms down across many signals and windows."""

    correction: Correction = Field(
        default="holm", description="Across the tests of one evaluation."
    )
    sustain_k: int = Field(
        default=2, ge=1, description="Breach only when k of the last n windows breach."
    )
    sustain_n: int = Field(default=3, ge=1)
