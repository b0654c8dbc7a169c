"""Where a rollback goes and how deep it reaches: the target, the level, whether the target
may take traffic."""

from __future__ import annotations

from datetime import datetime

from rollguard.events import LastHealthCheck, Reason, SystemManifest, target_health_problem
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
    """None when the target may take traffic (the rule is the core's, shared with
    ``rollguard deploy check``); else why not, as a ``target_not_ready`` reason."""
    last = state.health.get(target.model_version)
    check = LastHealthCheck(ts=last[0], ok=last[1]) if last is not None else None
    problem = target_health_problem(target.model_version, check, within_s, now)
    return None if problem is None else Reason(code="target_not_ready", detail=problem)
