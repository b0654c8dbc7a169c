"""Adding a detector kind is one module and one registry line: a kind defined here, named in a
policy file, is validated at load and evaluated through the broker like a built-in one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import yaml
from pydantic import ConfigDict, Field

from rollguard import topics
from rollguard.detector_policy import DetectorBase, Tier
from rollguard.errors import ConfigError
from rollguard.events import Breach
from rollguard.policy import PolicySource, load_policy
from rollguard.settings import RollguardSettings
from rollguard_services.detector.app import Detector
from rollguard_services.detector.kinds import KINDS, config_classes
from rollguard_services.detector.kinds.base import DetectorKind, Measurement, VersionInputs
from rollguard_services.detector.settings import DetectorSettings
from tests.conftest import TopicReader, run_until
from tests.detector.test_drift_app import predictions


# --- the whole new kind: a config class, a pure evaluation, a spec ---------------------------
class MeanAboveConfig(DetectorBase):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["mean_above"] = "mean_above"
    tier: Tier = "immediate"
    min_events: int = Field(default=100, ge=1)
    limit: float = Field(description="Breach when the window's mean prediction is above it.")


def mean_above(_instance: str, config: MeanAboveConfig, inputs: VersionInputs) -> list[Measurement]:
    acc = inputs.window.numeric.get("prediction")
    if acc is None or acc.n == 0:
        return [Measurement("mean_above", "prediction", "no_data", "mean", 0.0, config.limit, 0)]
    mean = float(np.mean(acc.reservoir.values()))
    phase = "breach" if mean > config.limit and acc.n >= config.min_events else "ok"
    return [Measurement("mean_above", "prediction", phase, "mean", mean, config.limit, acc.n)]


MEAN_ABOVE = DetectorKind(
    "mean_above",
    MeanAboveConfig,
    "mean prediction above a limit",
    frozenset({"prediction"}),
    on_version=mean_above,
)
KINDS_PLUS = {**KINDS, "mean_above": MEAN_ABOVE}  # the one registry line
# ----------------------------------------------------------------------------------------------


def policy_file(tmp_path: Path, entry: dict[str, object]) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"defaults": {"detectors": {"too_high": entry}}}))
    return path


def test_the_policy_checks_the_new_kinds_fields_at_load(tmp_path: Path) -> None:
    bad = policy_file(tmp_path, {"kind": "mean_above", "limt": 2.0})
    with pytest.raises(ConfigError, match=r"policy\.yaml:4: .*too_high.*limit: Field required"):
        load_policy(bad, kinds=config_classes(KINDS_PLUS))
    # Without the registry line the kind is unknown, and the error lists the known ones.
    good = policy_file(tmp_path, {"kind": "mean_above", "limit": 2.0})
    with pytest.raises(ConfigError, match=r"unknown detector kind 'mean_above'; known: .*psi"):
        load_policy(good, kinds=config_classes(KINDS))


@pytest.mark.broker
async def test_a_kind_defined_in_a_test_is_evaluated_through_the_broker(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    tmp_path: Path,
    keys: str,
) -> None:
    path = policy_file(tmp_path, {"kind": "mean_above", "limit": 2.0})
    source = PolicySource(path, kinds=config_classes(KINDS_PLUS))
    for event in predictions("v1", 800, shift=0.0, seed=1) + predictions("v2", 800, 3.0, 2):
        await publish(topics.PREDICTIONS.name, event)

    detector = Detector(
        topics_ready, source, DetectorSettings(group_id="kinds", seed=1), kinds=KINDS_PLUS
    )
    await run_until(detector, lambda: detector.counts["breaches"] >= 1, timeout_s=40)

    breaches = [
        Breach.model_validate_json(r.value)
        for r in await reader.read(topics.BREACHES.name, until=lambda r: len(r) >= 1)
    ]
    assert {(b.detector, b.kind, b.model_version, b.tier) for b in breaches} == {
        ("too_high", "mean_above", "v2", "immediate")
    }
    assert all(b.value > 2.0 and b.statistic == "mean" for b in breaches)


def test_a_disabled_ks_entry_still_sizes_the_reservoir() -> None:
    """Review: the reservoir cap was the largest of every KS entry, enabled or not; the
    refactor had quietly made it enabled-only (and so changed exact-test samples)."""
    from rollguard.policy import ModelPolicy, PolicySet
    from rollguard_services.detector.kinds.ks import KsConfig

    policy = PolicySet(
        defaults=ModelPolicy(
            detectors={
                "ks": KsConfig(reservoir=300),
                "ks_off": KsConfig(enabled=False, reservoir=5000),
            }
        )
    )
    settings = RollguardSettings(kafka_bootstrap="127.0.0.1:1", topic_prefix="t.")
    detector = Detector(settings, policy, DetectorSettings(seed=1))
    assert detector.folder.plan("m").reservoir_cap == 5000
