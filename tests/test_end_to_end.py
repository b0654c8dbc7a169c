"""The demo path through the broker: bad deploy → breach → decision → command → acks → ledger,
and the router serving the known-good version again."""

from __future__ import annotations

import pytest
from rich.console import Console

from rollguard.settings import RollguardSettings
from rollguard_services.ledger.store import LedgerStore
from rollguard_shell.demo import run_demo
from tests.conftest import scaled

pytestmark = pytest.mark.broker


async def test_bad_deployment_is_rolled_back_and_the_ledger_links_every_step(
    settings: RollguardSettings,
) -> None:
    report = await run_demo(
        settings,
        console=Console(quiet=True),
        live_display=False,
        warmup_s=1.5,
        timeout_s=scaled(30),
    )
    assert report.reason == ""
    assert report.rollback_applied and report.ledger_verified and report.rollback_verified
    assert report.time_to_verified_s is not None
    assert report.time_to_verified_s > report.time_to_rollback_s  # type: ignore[operator]
    assert (report.bad_version, report.restored_version, report.rollback_level) == ("v2", "v1", 1)
    assert report.served_by_restored_after_rollback > 0
    assert 0 < report.blast_radius_requests < report.requests_served["v1"]
    assert report.mttd_s is not None and report.time_to_rollback_s is not None
    assert 0 < report.mttd_s <= report.time_to_rollback_s

    store = LedgerStore(f"sqlite:///{settings.state_dir / 'demo' / 'ledger.db'}")
    try:
        entries = store.entries(model_id="demo-model")
    finally:
        store.close()
    assert report.ledger_entries == len(entries)

    def of(kind: str, **match: object) -> list[dict[str, object]]:
        return [
            e.payload
            for e in entries
            if e.event_type == kind and all(e.payload.get(k) == v for k, v in match.items())
        ]

    (decision,) = of("Decision", action="rollback")
    # One of v2's breaches: the decider's deployments and breaches agents read their topics
    # independently; a breach read before v2's live manifest waits for it (manifest_wait_s),
    # and is held (not_live_version) only when the manifest is later still.
    v2_breaches = {b["event_id"] for b in of("Breach", model_version="v2")}
    assert set(decision["breach_ids"]) <= v2_breaches  # type: ignore[arg-type]
    assert decision["breach_ids"]
    (command,) = of("RollbackCommand", command_id=decision["command_id"])
    assert command["decision_id"] == decision["event_id"]
    assert command["signature"]
    acks = of("CommandAck", command_id=command["command_id"])
    assert [a["status"] for a in acks] == ["received", "applied", "verified"]
    (restored,) = of("SystemManifest", model_version="v1", status="live")
    assert command["command_id"] in str(restored["note"])
    (rolled_back,) = of("SystemManifest", model_version="v2", status="rolled_back")
    assert rolled_back["system_version"] == "sys-2"
