from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rollguard.errors import ConfigError
from rollguard.policy import ModelPolicy, PolicySet, load_policy

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_default_policy_equals_the_documented_defaults() -> None:
    assert load_policy(ROOT / "policies" / "default.yaml") == PolicySet()


def test_per_model_override_merges_field_by_field(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"models": {"fraud": {"error_rate": {"threshold": 0.02}}}}))
    policy = load_policy(path)
    fraud = policy.for_model("fraud")
    assert fraud.error_rate.threshold == 0.02
    assert fraud.error_rate.min_events == ModelPolicy().error_rate.min_events
    assert policy.for_model("other") == ModelPolicy()


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {"defaults": {"error_rate": {"tier": "soon"}}},
            r"defaults\.error_rate\.tier.*'immediate', 'rapid' or 'delayed'",
        ),
        ({"defaults": {"latency": {"sla_ms": -1}}}, r"defaults\.latency\.sla_ms.*greater than 0"),
        ({"defaults": {"eror_rate": {}}}, r"defaults\.eror_rate.*Extra inputs"),
        ({"models": {"m": {"window": {"seconds": 0}}}}, r"window\.seconds"),
    ],
)
def test_bad_policy_names_file_and_field(
    tmp_path: Path, doc: dict[str, object], expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=expected) as info:
        load_policy(path)
    assert str(path) in str(info.value)


def test_unparseable_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("defaults: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_policy(path)
