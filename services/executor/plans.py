"""What a command asks the executor to do: its component steps in order, or why it cannot be
executed. A refusal is data, rejected at receive with its reason as the ack's first word."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rollguard.events import RollbackCommand
from rollguard.policy import PolicyView
from rollguard_services.executor.appliers.base import Step
from rollguard_services.executor.settings import ExecutorSettings

#: Levels and the components they restore; level 2 uses the model's policy order; level 4
#: restores the data, then retrains on it where an applier is configured for ``retrain``.
LEVEL_COMPONENTS: dict[int, tuple[str, ...]] = {
    1: ("model",),
    3: ("feature_pipeline",),
    4: ("data",),
}

#: Why a verified command cannot be planned: a level no applier can do (4 when the target
#: manifest names no data version), or a component of the model with no applier configured.
RefusalReason = Literal["unsupported_level", "unknown_model"]


@dataclass(frozen=True)
class Plan:
    """The component steps of one command, in the order they run (never empty)."""

    steps: tuple[Step, ...]

    @property
    def per_component(self) -> bool:
        """Level 2 acks every component; a one-step command acks only the command."""
        return len(self.steps) > 1


@dataclass(frozen=True)
class Refusal:
    reason: RefusalReason
    detail: str


def plan_for(
    command: RollbackCommand, policy: PolicyView, settings: ExecutorSettings
) -> Plan | Refusal:
    """The steps of ``command`` in order, or why it cannot be executed."""
    components: tuple[str, ...]
    if command.level == 2:
        components = policy.for_model(command.model_id).rollback.component_order
    elif command.level in LEVEL_COMPONENTS:
        components = LEVEL_COMPONENTS[command.level]
    else:
        return Refusal("unsupported_level", f"level {command.level} has no applier")
    before, after = command.from_manifest.components, command.to_manifest.components
    if command.level == 4:
        if after.data is None:
            return Refusal(
                "unsupported_level",
                f"level 4 (data): the target {command.to_manifest.system_version} names no "
                "data version (rollguard deploy record --data)",
            )
        if settings.applier_for(command.model_id, "data") in (None, "registry"):
            # the registry applier changes nothing outside: it would call the data restored
            return Refusal(
                "unknown_model",
                f"no data applier configured for {command.model_id} "
                f'(ROLLGUARD_EXECUTOR_APPLIERS_BY_MODEL=\'{{"{command.model_id}": '
                '{"data": "delta"}}\')',
            )
        chosen = settings.appliers_by_model.get(command.model_id)
        if isinstance(chosen, dict) and "retrain" in chosen:
            components = ("data", "retrain")
    if command.level == 3:
        # The pipeline, then its features recomputed and waited for (where configured), then
        # the model trained on them, when the manifests name another.
        chosen = settings.appliers_by_model.get(command.model_id)
        extra = [
            c for c in ("recompute", "features_ready") if isinstance(chosen, dict) and c in chosen
        ]
        model = ["model"] if before.model != after.model else []
        components = ("feature_pipeline", *extra, *model)
    pipeline = (before.feature_pipeline, after.feature_pipeline)
    versions = {
        "data": (before.data or "unknown", after.data or ""),
        "retrain": (before.model, after.model),  # retrain as the target's model was trained
        "recompute": pipeline,
        "features_ready": pipeline,
    }
    steps = []
    for component in components:
        frm, to = versions.get(component) or (
            getattr(before, component),
            getattr(after, component),
        )
        if settings.applier_for(command.model_id, component) is None:
            return Refusal(
                "unknown_model",
                f"no applier configured for {component} of "
                f"{command.model_id} (ROLLGUARD_EXECUTOR_APPLIERS_BY_MODEL)",
            )
        steps.append(
            Step(
                command,
                component,
                from_version=frm,
                to_version=to,
                single=len(components) == 1,
            )
        )
    return Plan(tuple(steps))
