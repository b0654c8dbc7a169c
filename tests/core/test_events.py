from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from rollguard import events as ev
from rollguard import schemas
from tests.factories import breach, manifest

ROOT = Path(__file__).resolve().parents[2]


def test_checked_in_schemas_match_the_models() -> None:
    assert schemas.stale(ROOT / "schemas") == [], "run: rollguard schemas export"


def test_stale_schema_is_detected(tmp_path: Path) -> None:
    schemas.export(tmp_path)
    (tmp_path / "Breach.v1.json").write_text("{}")
    (tmp_path / "Orphan.v1.json").write_text("{}")
    assert schemas.stale(tmp_path) == ["Breach.v1.json", "Orphan.v1.json"]


def test_every_event_has_a_versioned_schema_tag() -> None:
    for cls in ev.EVENT_TYPES:
        name, _, version = cls.SCHEMA.partition("/v")
        assert name == cls.__name__ and version.isdigit() and int(version) >= 1, cls.SCHEMA
        assert cls.model_fields["schema_tag"].default == cls.SCHEMA
        assert cls.model_fields["schema_tag"].alias == "schema"


def test_roundtrip_through_orjson_keeps_every_field() -> None:
    m = manifest()
    raw = m.encode()
    doc = orjson.loads(raw)
    assert doc["schema"] == "SystemManifest/v1"
    assert ev.decode(ev.SystemManifest, raw) == m


def test_unknown_schema_version_is_refused() -> None:
    doc = orjson.loads(manifest().encode())
    doc["schema"] = "SystemManifest/v9"
    with pytest.raises(ValidationError, match="schema"):
        ev.decode(ev.SystemManifest, orjson.dumps(doc))


def test_events_are_frozen_and_strict() -> None:
    m = manifest()
    with pytest.raises(ValidationError):
        m.status = "rolled_back"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        ev.SystemManifest.model_validate({**orjson.loads(m.encode()), "surprise": 1})


def test_manifest_model_must_match_components() -> None:
    with pytest.raises(ValidationError, match=r"differs from components\.model"):
        ev.SystemManifest(**{**manifest().model_dump(), "model_version": "v2"})


@pytest.mark.parametrize("latency", [-1.0, 86_400_001.0, float("nan"), float("inf")])
def test_absurd_latencies_are_invalid(latency: float) -> None:
    with pytest.raises(ValidationError):
        ev.LatencyEvent(
            model_id="m", model_version="v", request_id="r", latency_ms=latency, status="ok"
        )


def test_business_metric_needs_a_value_or_a_ratio() -> None:
    with pytest.raises(ValidationError, match="numerator and denominator"):
        ev.BusinessMetricEvent(model_id="m", model_version="v", metric="ctr", numerator=3)
    ok = ev.BusinessMetricEvent(
        model_id="m", model_version="v", metric="ctr", numerator=3, denominator=100
    )
    assert ok.denominator == 100


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        ev.HealthCheckEvent(model_id="m", model_version="v", ok=True, ts=datetime(2026, 1, 1))
    assert ev.HealthCheckEvent(
        model_id="m", model_version="v", ok=True, ts=datetime(2026, 1, 1, tzinfo=UTC)
    ).ok


def test_tombstone_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="tombstone"):
        ev.decode(ev.Breach, None)


def test_a_rapid_breach_must_be_sustained() -> None:
    from pydantic import ValidationError

    from rollguard.events import Sustain
    from tests.factories import breach

    assert breach(tier="rapid", sustain=Sustain(k=2, n=3, hits=2)).sustain == Sustain(
        k=2, n=3, hits=2
    )
    with pytest.raises(ValidationError, match="1 of the last 3 windows breached, 2 needed"):
        breach(tier="rapid", sustain=Sustain(k=2, n=3, hits=1))
    with pytest.raises(ValidationError, match="k <= n"):
        Sustain(k=4, n=3, hits=3)
    with pytest.raises(ValidationError, match="a rapid-tier breach needs its k of n"):
        breach(tier="rapid", sustain=None)


def test_reason_codes_are_a_closed_set() -> None:
    from typing import get_args

    assert ev.Reason(code="cooldown").code == "cooldown"
    with pytest.raises(ValidationError, match="within_variation"):
        ev.Reason.model_validate({"code": "within_variation"})
    schema = ev.Decision.model_json_schema(by_alias=True)
    assert schema["$defs"]["Reason"]["properties"]["code"]["enum"] == list(get_args(ev.ReasonCode))


def test_every_reason_code_is_documented_once_in_policies_md() -> None:
    import re
    from typing import get_args

    text = (ROOT / "docs" / "policies.md").read_text()
    section = text.split("\n## Reason codes\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    assert sorted(rows) == sorted(get_args(ev.ReasonCode))  # each once, none unknown


def test_a_rapid_breach_before_k_of_n_must_say_it_was_severe() -> None:
    """Issue 14: a rapid breach of its first window passes the contract only as severe."""
    import pytest
    from pydantic import ValidationError

    early = ev.Sustain(k=2, n=3, hits=1, severe=True)
    assert breach(tier="rapid", sustain=early).sustain == early
    with pytest.raises(ValidationError, match="2 needed"):
        breach(tier="rapid", sustain=ev.Sustain(k=2, n=3, hits=1))
