"""Every detector kind, registered by name in one explicit dict.

Adding a kind is one module beside these (its config class, the streams it needs, its
evaluation; see ``base.py``) and one line in ``KINDS``. The service dispatches through this
registry alone; asking for a kind that is not here fails with the list of known ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rollguard import baselines as bl
from rollguard.detector_policy import DetectorBase, DetectorKinds
from rollguard.errors import ConfigError
from rollguard.policy import ModelPolicy, typed_detectors
from rollguard_services.detector.kinds import (
    business_metric,
    cost,
    error_rate,
    fairness,
    feature_quality,
    ground_truth,
    health,
    ks,
    latency,
    psi,
)
from rollguard_services.detector.kinds.base import AnyKind, JoinNeed

KINDS: dict[str, AnyKind] = {
    "error_rate": error_rate.KIND,
    "latency": latency.KIND,
    "health": health.KIND,
    "ks": ks.KIND,
    "psi": psi.KIND,
    "business_metric": business_metric.KIND,
    "feature_quality": feature_quality.KIND,
    "ground_truth": ground_truth.KIND,
    "fairness": fairness.KIND,
    "cost": cost.KIND,
}


def get_kind(name: str, kinds: Mapping[str, AnyKind] = KINDS) -> AnyKind:
    try:
        return kinds[name]
    except KeyError:
        raise ConfigError(f"unknown detector {name!r}; known: {', '.join(sorted(kinds))}") from None


def config_classes(kinds: Mapping[str, AnyKind] = KINDS) -> DetectorKinds:
    """kind → config class: what the policy loader validates detector entries with."""
    return {name: kind.config for name, kind in kinds.items()}


@dataclass(frozen=True)
class Plan:
    """What folding asks of one model's policy on every batch, worked out once per policy."""

    #: Every detector instance, enabled or not, typed by its kind.
    typed: dict[str, DetectorBase]
    #: The enabled ones.
    enabled: dict[str, DetectorBase]
    #: (instance name, config, kind's fold_predictions) of the enabled kinds that fold some.
    prediction_folds: tuple[tuple[str, DetectorBase, Any], ...]
    #: (instance name, config, kind's fold_outcomes) likewise.
    outcome_folds: tuple[tuple[str, DetectorBase, Any], ...]
    #: The largest sample any instance asks for; disabled ones count too (the cap also sizes
    #: captured baselines, which outlive a toggle).
    reservoir_cap: int
    #: What the enabled kinds need of the prediction ↔ outcome join, taken together (the
    #: tightest bounds); its ``segment`` is unused, ``segments`` has them all.
    join: JoinNeed
    segments: frozenset[str]


def plan_of(policy: ModelPolicy, kinds: Mapping[str, AnyKind], classes: DetectorKinds) -> Plan:
    typed = typed_detectors(policy, classes).detectors
    enabled = {name: c for name, c in typed.items() if c.enabled}
    of = {name: get_kind(c.kind, kinds) for name, c in typed.items()}
    caps = [cap(c) for name, c in typed.items() if (cap := of[name].reservoir) is not None]
    needs = [join(c) for name, c in enabled.items() if (join := of[name].join) is not None]
    pending = [n.max_pending for n in needs if n.max_pending is not None]
    ttls = [n.ttl_s for n in needs if n.ttl_s is not None]
    return Plan(
        typed,
        enabled,
        tuple(
            (name, c, fold)
            for name, c in enabled.items()
            if (fold := of[name].fold_predictions) is not None
        ),
        tuple(
            (name, c, joined)
            for name, c in enabled.items()
            if (joined := of[name].fold_outcomes) is not None
        ),
        max(caps) if caps else bl.REFERENCE_CAP,
        JoinNeed(min(pending, default=None), min(ttls, default=None)),
        frozenset(n.segment for n in needs if n.segment is not None),
    )


class Resolved:
    """The detector entries of each model's policy, typed by their kinds' config classes.

    A policy loaded with the kinds is typed already; one built without them (``PolicySet()``)
    is typed here once per policy object, which the service asks for on every evaluation.
    """

    def __init__(self, kinds: Mapping[str, AnyKind] = KINDS) -> None:
        self.kinds = kinds
        self._classes = config_classes(kinds)
        self._cache: dict[int, tuple[ModelPolicy, Plan]] = {}

    def configs(self, policy: ModelPolicy) -> dict[str, DetectorBase]:
        """Enabled detector instances of one model's policy, by instance name."""
        return self.plan(policy).enabled

    def typed(self, policy: ModelPolicy) -> dict[str, DetectorBase]:
        """Every detector instance of the policy, enabled or not, typed by its kind."""
        return self.plan(policy).typed

    def plan(self, policy: ModelPolicy) -> Plan:
        # Asked on every fold and evaluation: worked out once per policy object.
        hit = self._cache.get(id(policy))
        if hit is not None and hit[0] is policy:
            return hit[1]
        plan = plan_of(policy, self.kinds, self._classes)
        if len(self._cache) >= 256:  # policies change rarely; never grow without bound
            self._cache.clear()
        self._cache[id(policy)] = (policy, plan)
        return plan

    def kind(self, config: DetectorBase) -> AnyKind:
        return get_kind(config.kind, self.kinds)
