from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from rollguard.errors import ConfigError
from rollguard.policy import (
    ModelPolicy,
    PolicySet,
    PolicySource,
    load_policy,
    resolve_policy,
    typed_detectors,
)
from rollguard_services.detector.kinds import config_classes
from rollguard_services.detector.kinds.error_rate import ErrorRateConfig
from rollguard_services.detector.kinds.ks import KsConfig

ROOT = Path(__file__).resolve().parents[2]
KINDS = config_classes()


def write(tmp_path: Path, doc: object, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def test_shipped_default_policy_equals_the_documented_defaults() -> None:
    shipped = load_policy(ROOT / "policies", kinds=KINDS)
    assert shipped.defaults == typed_detectors(PolicySet().defaults, KINDS)
    assert shipped.models == {}


def test_per_model_override_merges_field_by_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "models": {
                "fraud": {"detectors": {"error_rate": {"kind": "error_rate", "threshold": 0.02}}}
            }
        },
    )
    policy = load_policy(path, kinds=KINDS)
    fraud = policy.for_model("fraud").detectors["error_rate"]
    assert isinstance(fraud, ErrorRateConfig)
    assert fraud.threshold == 0.02
    assert fraud.min_events == ErrorRateConfig().min_events
    assert set(policy.for_model("fraud").detectors) == set(ModelPolicy().detectors)
    assert policy.for_model("other") == typed_detectors(ModelPolicy(), KINDS)
    # The kind's own defaults, not the bare entry's: tier and min_events of error_rate.
    assert (fraud.tier, fraud.kind) == ("immediate", "error_rate")


def test_files_of_a_directory_merge_in_name_order(tmp_path: Path) -> None:
    write(tmp_path, {"defaults": {"rollback": {"cooldown_s": 60}}}, "10-base.yaml")
    write(
        tmp_path,
        {"defaults": {"rollback": {"bake_s": 5}}, "models": {"m": {"rollback": {"cooldown_s": 1}}}},
        "20-team.yaml",
    )
    policy = load_policy(tmp_path)
    assert (policy.defaults.rollback.cooldown_s, policy.defaults.rollback.bake_s) == (60, 5)
    assert policy.for_model("m").rollback.cooldown_s == 1
    assert policy.for_model("m").rollback.bake_s == 5
    assert len(policy.sources) == 2


BAD = """\
version: 1
defaults:
  detectors:
    drift:
      kind: ks
      alpha: 2
models:
  fraud:
    rollback:
      level: sideways
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BAD, r"p\.yaml:6: defaults\.detectors\.drift\.ks\.alpha: Input should be less than 1"),
        (
            BAD.replace("alpha: 2", "alpha: 0.5"),
            r"p\.yaml:10: models\.fraud\.rollback\.level: Input should be 'auto' or 'system'",
        ),
        (
            "defaults:\n  detectors:\n    x:\n      kind: kss\n",
            r"p\.yaml:4: defaults\.detectors\.x\.kind: unknown detector kind 'kss'; known: "
            r"business_metric, cost, error_rate, fairness, feature_quality, ground_truth, health, "
            r"ks, latency, psi",
        ),
        (
            "defaults:\n  rollbak: {}\n",
            r"p\.yaml:2: defaults\.rollbak: Extra inputs are not permitted",
        ),
        (
            "defualts: {}\n",
            r"p\.yaml:1: unknown top-level key 'defualts'; allowed: version, defaults, models",
        ),
        ("version: 2\n", r"version 2 is not supported"),
        ("defaults: [unclosed", r"not valid YAML"),
        (
            "defaults:\n  rollback:\n    component_order: [model, config]\n",
            r"component_order must name each component exactly once",
        ),
    ],
)
def test_bad_policy_names_file_line_field_and_allowed(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_policy(path, kinds=KINDS)
    assert str(path) in str(info.value)


def test_expected_change_windows_cover_versions_and_time(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "defaults": {
                "expected_changes": [
                    {
                        "start": "2026-01-01T00:00:00Z",
                        "end": "2026-01-02T00:00:00Z",
                        "reason": "new ranking",
                        "model_versions": ["v7"],
                    }
                ]
            }
        },
    )
    policy = load_policy(path).defaults
    inside = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert policy.expected_change("v7", inside) is not None
    assert policy.expected_change("v8", inside) is None
    assert policy.expected_change("v7", datetime(2026, 1, 3, tzinfo=UTC)) is None


def test_missing_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_policy(tmp_path / "nope.yaml")


def test_every_detector_kind_has_a_default_instance() -> None:
    kinds = {c.kind for c in ModelPolicy().detectors.values()}
    assert kinds == set(KINDS)
    assert isinstance(typed_detectors(ModelPolicy(), KINDS).detectors["prediction_ks"], KsConfig)


def test_without_the_kinds_a_policy_keeps_detector_entries_as_written(tmp_path: Path) -> None:
    # What a service that reads no detectors (the decider, the executor) loads.
    path = write(tmp_path, {"defaults": {"detectors": {"d": {"kind": "ks", "alpha": 0.02}}}})
    entry = load_policy(path).defaults.detectors["d"]
    assert (entry.kind, entry.model_extra, entry.tier) == ("ks", {"alpha": 0.02}, None)
    typed = typed_detectors(load_policy(path).defaults, KINDS).detectors["d"]
    assert isinstance(typed, KsConfig) and (typed.alpha, typed.tier) == (0.02, "rapid")


def test_the_shipped_default_merges_first_and_a_teams_file_overrides_it(tmp_path: Path) -> None:
    (tmp_path / "default.yaml").write_text((ROOT / "policies" / "default.yaml").read_text())
    write(tmp_path, {"defaults": {"rollback": {"cooldown_s": 30}}}, name="50-team.yaml")
    policy = load_policy(tmp_path, kinds=KINDS)
    assert policy.defaults.rollback.cooldown_s == 30
    assert [Path(s).name for s in policy.sources] == ["default.yaml", "50-team.yaml"]


def test_a_policy_file_added_to_or_removed_from_the_directory_is_picked_up(
    tmp_path: Path,
) -> None:
    write(tmp_path, {"defaults": {"rollback": {"cooldown_s": 30}}}, name="10-base.yaml")
    source = PolicySource(tmp_path, kinds=KINDS)
    assert source.refresh(0.0) is None  # nothing changed
    added = write(tmp_path, {"defaults": {"rollback": {"cooldown_s": 45}}}, name="60-late.yaml")
    assert source.refresh(0.0) is True
    assert source.current.defaults.rollback.cooldown_s == 45
    added.unlink()
    assert source.refresh(0.0) is True
    assert source.current.defaults.rollback.cooldown_s == 30


@pytest.mark.parametrize("kinds", [None, KINDS], ids=["without-kinds", "with-kinds"])
def test_a_model_override_keeps_the_default_detectors_with_or_without_the_kinds(
    tmp_path: Path, kinds: object
) -> None:
    """Review: loaded without the kinds (deploy check, the demo), an override that changed one
    field of a default detector lost its kind, and one that added a detector lost the rest."""
    path = write(
        tmp_path,
        {
            "models": {
                "m1": {"detectors": {"prediction_ks": {"alpha": 0.05}}},
                "m2": {"detectors": {"extra": {"kind": "ks", "alpha": 0.02}}},
            }
        },
    )
    policy = load_policy(path, kinds=kinds)  # type: ignore[arg-type]
    m1, m2 = policy.for_model("m1").detectors, policy.for_model("m2").detectors
    assert m1["prediction_ks"].kind == "ks"
    alpha = (m1["prediction_ks"].model_extra or {}).get("alpha") if kinds is None else None
    assert alpha == 0.05 or getattr(m1["prediction_ks"], "alpha", None) == 0.05
    assert set(m2) == {*ModelPolicy().detectors, "extra"}
