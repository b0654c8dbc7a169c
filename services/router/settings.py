"""Router settings (ROLLGUARD_ROUTER_*): which model it serves and how each version behaves."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SyntheticModelSpec(BaseModel):
    """How a synthetic model version behaves: its error rate, latency and predictions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    error_rate: float = Field(default=0.01, ge=0, le=1)
    latency_median_ms: float = Field(default=20.0, gt=0)
    latency_sigma: float = Field(default=0.35, ge=0, description="Log-normal shape.")
    prediction_mean: float = 0.0
    prediction_sd: float = Field(default=1.0, ge=0)
    feature_weight: float = Field(
        default=0.0,
        description="How much the prediction follows input f0 (prediction = mean + weight * f0 "
        "+ sd * noise): with a weight, a shift of the inputs moves every version's output.",
    )


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROLLGUARD_ROUTER_", frozen=True, extra="ignore")

    model_id: str = "demo-model"
    rate_rps: float = Field(default=200.0, ge=0, description="Synthetic requests per second.")
    tick_s: float = Field(default=0.02, gt=0)
    versions: dict[str, SyntheticModelSpec] = Field(
        default_factory=lambda: {
            "v1": SyntheticModelSpec(error_rate=0.01),
            "v2": SyntheticModelSpec(error_rate=0.20),
        },
        description="JSON: model version → behaviour. Every version is kept warm.",
    )
    seed: int | None = None
    shadow_fraction: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of live requests the rollback target (the last known-good version "
        "other than the live one) also scores, in shadow: PredictionEvent.shadow, never served "
        "(the counterfactual check; it needs as many events a window as any test). 0: none.",
    )
    input_shift: float = Field(
        default=0.0,
        description="Mean of the synthetic inputs f0..f2 (0: standard normal): a drill's or a "
        "test's data shift, the world changing under an unchanged model.",
    )
