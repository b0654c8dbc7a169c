"""Detectors as a policy names them: instance name → an entry with a ``kind`` and its numbers.

The core knows the fields every kind has (``kind``, ``enabled``, ``min_events``, ``tier``); each
kind's own config class (a subclass of DetectorBase, with ``extra="forbid"``) lives in that
kind's module under the detector service (``services/detector/kinds/``). A policy loaded with
the kinds' config classes (``load_policy(..., kinds=...)``, what the shell does) validates every
entry against its kind at load time, naming file, line and field; one loaded without them keeps
the other fields as they are, for services that do not read detectors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Tier = Literal["immediate", "rapid", "delayed"]
Correction = Literal["holm", "bh", "none"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DetectorBase(BaseModel):
    """The fields of every detector entry; a kind's config class adds its own."""

    # Open as a bare entry (the kind's fields are checked by its config class); every
    # config class closes it again.
    model_config = ConfigDict(frozen=True, extra="allow")

    kind: str = Field(min_length=1, description="The detector kind (docs/detectors.md).")
    enabled: bool = True
    # None on a bare entry means "the kind's default"; every config class sets its own.
    min_events: int | None = Field(
        default=None, ge=1, description="Fewer events in a window: inconclusive."
    )
    tier: Tier | None = None


#: kind → its config class, as the detector service registers them.
DetectorKinds = Mapping[str, type[DetectorBase]]

#: What runs when a policy says nothing: every built-in kind once, by these instance names.
DEFAULT_DETECTORS: dict[str, dict[str, Any]] = {
    "error_rate": {"kind": "error_rate"},
    "latency": {"kind": "latency"},
    "health": {"kind": "health"},
    "prediction_ks": {"kind": "ks"},
    "prediction_psi": {"kind": "psi"},
    "ctr": {"kind": "business_metric"},
    "feature_quality": {"kind": "feature_quality"},
    "ground_truth": {"kind": "ground_truth"},
    "fairness": {"kind": "fairness"},
    "cost": {"kind": "cost"},
}


def default_detectors() -> dict[str, DetectorBase]:
    return {name: DetectorBase(**entry) for name, entry in DEFAULT_DETECTORS.items()}


class FalseAlarmPolicy(_Frozen):
    """How the rapid tier keeps false alarms down across many signals and windows."""

    correction: Correction = Field(
        default="holm", description="Across the tests of one evaluation."
    )
    sustain_k: int = Field(
        default=2, ge=1, description="Breach only when k of the last n windows breach."
    )
    sustain_n: int = Field(default=3, ge=1)
    severe_p: float = Field(
        default=1e-9,
        ge=0,
        le=1,
        description="A rapid breach whose corrected p-value is at most this, with an effect of "
        "at least severe_effect times its threshold, is published in its first window, without "
        "waiting for k of n (0: never).",
    )
    severe_effect: float = Field(
        default=1.0,
        ge=1,
        description="Effect size the severe bar needs, in multiples of the breach threshold.",
    )
