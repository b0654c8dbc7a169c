"""What a command asks the executor to do: its component steps in order, or why it cannot be
executed. A refusal is data, rejected at receive with its reason as the ack's first word."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rollguard.events import RollbackCommand
from rollguard.policy import PolicyView
from rollguard_services.executor.appliers.base import Step
from rollguard_services.executor.settings import ExecutorSettings

#: Levels and the components they restore; level 2 uses the model's policy order.
LEVEL_COMPONENTS: dict[int, tuple[str, ...]] = {1: ("model",), 3: ("feature_pipeline",)}

#: Why a verified command cannot be planned: a level no applier can do (4, data), or a
#: component of the model with no applier configured.
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
        return Refusal("unsupported_level", f"level {command.level} (data) has no applier")
    before, after = command.from_manifest.components, command.to_manifest.components
    steps = []
    for component in components:
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
                from_version=getattr(before, component),
                to_version=getattr(after, component),
                single=len(components) == 1,
            )
        )
    return Plan(tuple(steps))
