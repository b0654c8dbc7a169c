"""Every detector kind, registered by name in one explicit dict.

Adding a kind is one module beside these (its config class, the streams it needs, its
evaluation; see ``base.py``) and one line in ``KINDS``. The service dispatches through this
registry alone; asking for a kind that is not here fails with the list of known ones.
"""

from __future__ import annotations

from collections.abc import Mapping

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
from rollguard_services.detector.kinds.base import AnyKind

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


class Resolved:
    """The detector entries of each model's policy, typed by their kinds' config classes.

    A policy loaded with the kinds is typed already; one built without them (``PolicySet()``)
    is typed here once per policy object, which the service asks for on every evaluation.
    """

    def __init__(self, kinds: Mapping[str, AnyKind] = KINDS) -> None:
        self.kinds = kinds
        self._classes = config_classes(kinds)
        self._cache: dict[
            int, tuple[ModelPolicy, dict[str, DetectorBase], dict[str, DetectorBase]]
        ] = {}

    def configs(self, policy: ModelPolicy) -> dict[str, DetectorBase]:
        """Enabled detector instances of one model's policy, by instance name."""
        return self._resolve(policy)[1]

    def typed(self, policy: ModelPolicy) -> dict[str, DetectorBase]:
        """Every detector instance of the policy, enabled or not, typed by its kind."""
        return self._resolve(policy)[0]

    def _resolve(
        self, policy: ModelPolicy
    ) -> tuple[dict[str, DetectorBase], dict[str, DetectorBase]]:
        # Asked on every fold and evaluation: typed and filtered once per policy object.
        hit = self._cache.get(id(policy))
        if hit is not None and hit[0] is policy:
            return hit[1], hit[2]
        typed = typed_detectors(policy, self._classes).detectors
        enabled = {name: c for name, c in typed.items() if c.enabled}
        if len(self._cache) >= 256:  # policies change rarely; never grow without bound
            self._cache.clear()
        self._cache[id(policy)] = (policy, typed, enabled)
        return typed, enabled

    def kind(self, config: DetectorBase) -> AnyKind:
        return get_kind(config.kind, self.kinds)
