"""Builders of valid events for tests; override any field by keyword."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypeVar

from rollguard import events as ev
from rollguard.settings import RollguardSettings
from rollguard.signing import Role, signer_of
from rollguard_services.detector.traffic import TrafficCounter
from rollguard_services.detector.windows import LatencyWindow


def manifest(
    version: str = "v1",
    system_version: str | None = None,
    status: str = "live",
    *,
    model_id: str = "m",
    feature_pipeline: str = "fp-1",
    config: str = "cfg-1",
    infra: str = "infra-1",
    **kw: Any,
) -> ev.SystemManifest:
    return ev.SystemManifest(
        model_id=model_id,
        model_version=version,
        system_version=system_version or f"sys-{version}",
        components=ev.Components(
            model=version, feature_pipeline=feature_pipeline, config=config, infra=infra
        ),
        status=status,  # type: ignore[arg-type]
        **kw,
    )


def command(**kw: Any) -> ev.RollbackCommand:
    now = ev.utcnow()
    base: dict[str, Any] = {
        "model_id": "m",
        "model_version": "v2",
        "command_id": ev.new_id(),
        "decision_id": ev.new_id(),
        "from_manifest": manifest("v2"),
        "to_manifest": manifest("v1", status="known_good"),
        "level": 1,
        "issued_at": now,
        "expires_at": now + timedelta(seconds=60),
        "nonce": ev.new_id(),
        "key_id": "unset",
    }
    base.update(kw)
    return ev.RollbackCommand(**base)


def breach(version: str = "v2", tier: str = "immediate", **kw: Any) -> ev.Breach:
    now = ev.utcnow()
    base: dict[str, Any] = {
        "model_id": "m",
        "model_version": version,
        "detector": "error_rate",
        "kind": "error_rate",
        "signal": "error_rate",
        "statistic": "wilson_lower",
        "value": 0.17,
        "threshold": 0.05,
        "window_start": now - timedelta(seconds=1),
        "window_end": now,
        "n": 200,
        "tier": tier,
    }
    if tier == "rapid":
        base["sustain"] = ev.Sustain(k=2, n=3, hits=2)  # as the detector publishes it
    base.update(kw)
    return ev.Breach(**base)


S = TypeVar("S", bound=ev.Signed)


def signed(event: S, settings: RollguardSettings, role: Role = "deployer") -> S:
    """``event`` signed as the service (or person) of ``role`` signs it, with the key
    ``ensure_keys`` made for that role (the ``keys`` fixture)."""
    return signer_of(settings, role).sign(event)


def traffic(
    version: str, requests: int, at: datetime, *, model_id: str = "m", seconds: float = 1.0
) -> ev.TrafficReport:
    """What the detector reports of ``requests`` served by ``version`` in one window ending
    at ``at``: counted by its own TrafficCounter from a closed latency window."""
    counter = TrafficCounter(interval_s=0)
    end = at.timestamp()
    counter.add_latency(
        LatencyWindow(model_id, version, None, start=end - seconds, seconds=seconds, n=requests)
    )
    (report,) = counter.due(0.0)
    return report
