"""The ledger and oversized invalid input: recorded, dead-lettered with the reason, and the
events after it stored as usual (issue 11, part 2)."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

import pytest

from rollguard import topics
from rollguard.events import (
    Alert,
    Approval,
    CommandAck,
    DeadLetter,
    Decision,
    DrillRun,
    Event,
    Reason,
    RollbackRequest,
    utcnow,
)
from rollguard.invalidations import invalidation_for
from rollguard.settings import RollguardSettings
from rollguard_services.ledger.app import Ledger
from rollguard_services.ledger.settings import LedgerSettings
from rollguard_services.ledger.store import LedgerStore
from tests.conftest import TopicReader, run_until
from tests.factories import breach, command, manifest

pytestmark = pytest.mark.broker

#: Valid JSON, not an event, larger than a dead letter may copy (its base64 would pass 1 MiB).
HUGE = b'{"model_id": "m", "junk": "' + b"x" * 900_000 + b'"}'


def one_of_each() -> dict[str, Event]:
    cmd = command()
    return {
        topics.DEPLOYMENTS.name: manifest("v1", status="known_good"),
        topics.BREACHES.name: breach("v2"),
        topics.DECISIONS.name: Decision(
            model_id="m",
            model_version="v2",
            action="hold",
            tier="immediate",
            reasons=[Reason(code="cooldown", detail="in cooldown")],
        ),
        topics.APPROVALS.name: Approval(model_id="m", decision_id="d-1", role="ml_lead"),
        topics.REQUESTS.name: RollbackRequest(model_id="m", level=3, role="data_engineering_lead"),
        topics.COMMANDS.name: cmd,
        topics.ACKS.name: CommandAck(
            model_id="m",
            model_version="v2",
            command_id=cmd.command_id,
            status="received",
            executor_id="x",
        ),
        topics.INVALIDATIONS.name: invalidation_for(cmd, utcnow()),
        topics.DRILLS.name: DrillRun(
            drill_id="d",
            scenario="error_spike",
            model_id="m",
            bad_version="v2",
            good_version="v1",
            passed=True,
            started_at=utcnow(),
            ended_at=utcnow(),
        ),
        topics.ALERTS.name: Alert(
            model_id="m",
            status="firing",
            alertname="ModelErrorBudgetBurn",
            fingerprint="f",
            starts_at=utcnow(),
            outcome="unmapped",
        ),
    }


async def test_oversized_invalid_input_on_every_ledgered_topic_is_dead_lettered_and_kept(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
) -> None:
    valid = one_of_each()
    assert set(valid) == {t.name for t in topics.LEDGERED}
    for name, event in valid.items():
        await publish(name, HUGE, key=b"m")
        await publish(name, event)

    ledger = Ledger(topics_ready, LedgerSettings(group_id="ledger-poison"))
    # The letters go out after the batch's appends: wait for both, or the last send is cut.
    await run_until(
        ledger,
        lambda: (
            ledger.counts["appended"] == 2 * len(valid)
            and ledger.counts["dead_letters"] >= len(valid)
        ),
    )
    assert ledger.counts["dead_letters"] == len(valid)

    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) >= len(valid))
    ]
    assert sorted(d.source_topic for d in letters) == sorted(topics_ready.topic(n) for n in valid)
    for letter in letters:
        assert (letter.consumer, letter.reason, letter.offset) == ("ledger", "invalid", 0)
        assert letter.raw_truncated and letter.raw_size == len(HUGE)
        assert letter.raw_sha256 == hashlib.sha256(HUGE).hexdigest()
        assert "junk" in letter.error or "Field required" in letter.error

    store = LedgerStore(topics_ready.resolved_ledger_url)
    try:
        assert store.verify().ok
        kinds = {e.topic: e.event_type for e in store.entries() if e.offset == 1}
        assert kinds == {topics_ready.topic(n): type(e).__name__ for n, e in valid.items()}
    finally:
        store.close()
