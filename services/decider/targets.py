"""Where a rollback goes and how deep it reaches: the target, the level, whether the target
may take traffic."""

from __future__ import annotations

from datetime import datetime, timedelta

from rollguard.events import Reason, SystemManifest
from rollguard.policy import ModelPolicy
from rollguard_services.decider.state import ModelState

#: Components compared to pick the rollback level.
NON_MODEL_COMPONENTS = ("feature_pipeline", "config", "infra")


def rollback_target(state: ModelState, system_version: str | None = None) -> SystemManifest | None:
    """The most recent known-good manifest other than the live one (or the one asked for)."""
    live_sv = state.live.system_version if state.live else None
    for manifest in reversed(state.known_good):
        if manifest.system_version == live_sv:
            continue
        if system_version is None or manifest.system_version == system_version:
            return manifest
    return None


def choose_level(
    live: SystemManifest, target: SystemManifest, policy: ModelPolicy
) -> tuple[int, list[Reason]]:
    """Level 1 when only the model differs; level 2 when any other component differs too.

    A model-only rollback onto a different feature pipeline (or config, or infra) would serve
    the old model on inputs it was not built for: it is refused and the reason recorded.
    """
    differing = [
        c
        for c in NON_MODEL_COMPONENTS
        if getattr(live.components, c) != getattr(target.components, c)
    ]
    if policy.rollback.level == "system":
        return 2, [Reason(code="policy_system_level", detail="policy asks for system rollbacks")]
    if not differing:
        return 1, [Reason(code="model_only", detail="only the model differs from the target")]
    detail = ", ".join(
        f"{c} {getattr(live.components, c)} live vs {getattr(target.components, c)} target"
        for c in differing
    )
    return 2, [
        Reason(
            code="model_only_incompatible",
            detail=f"model-only rollback refused: {detail}; restoring the whole system version",
        )
    ]


def target_ready(
    state: ModelState, target: SystemManifest, within_s: float | None, now: datetime
) -> Reason | None:
    """None when the target may take traffic: no health check is required (``within_s`` is
    None), or its last one was ok and at most ``within_s`` seconds before ``now``."""
    within = within_s
    if within is None:
        return None
    last = state.health.get(target.model_version)
    if last is None:
        return Reason(code="target_not_ready", detail=f"no health check of {target.model_version}")
    ts, ok = last
    if not ok:
        return Reason(
            code="target_not_ready", detail=f"{target.model_version} failed its last health check"
        )
    age = now - ts
    if age > timedelta(seconds=within):
        return Reason(
            code="target_not_ready",
            detail=f"last health check of {target.model_version} is {age.total_seconds():.0f}s old",
        )
    return None
