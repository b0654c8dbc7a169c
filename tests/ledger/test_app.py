"""The ledger service through the broker: every control event once, across restarts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from rollguard import topics
from rollguard.events import CommandAck
from rollguard.settings import RollguardSettings
from services.ledger.app import Ledger
from services.ledger.settings import LedgerSettings
from services.ledger.store import LedgerStore
from tests.conftest import run_until
from tests.factories import breach, command, manifest

pytestmark = pytest.mark.broker


async def test_every_control_event_is_recorded_once_across_a_restart(
    topics_ready: RollguardSettings, publish: Callable[..., Awaitable[None]]
) -> None:
    cmd = command()
    first = [
        (topics.DEPLOYMENTS.name, manifest("v1", status="known_good")),
        (topics.BREACHES.name, breach("v2")),
        (topics.COMMANDS.name, cmd),
        (
            topics.ACKS.name,
            CommandAck(
                model_id="m",
                model_version="v2",
                command_id=cmd.command_id,
                status="applied",
                executor_id="x",
            ),
        ),
    ]
    for name, event in first:
        await publish(name, event)
    await publish(topics.LATENCY.name, b"data topics are not ledgered", key=b"m")

    svc = LedgerSettings(group_id="ledger-test")
    ledger = Ledger(topics_ready, svc)
    await run_until(ledger, lambda: ledger.counts["appended"] == 4)

    await publish(topics.DECISIONS.name, b"{not an event", key=b"m")
    await publish(topics.BREACHES.name, breach("v3"))
    again = Ledger(topics_ready, svc)
    await run_until(again, lambda: again.counts["appended"] == 2)
    assert again.counts["redelivered"] == 0  # offsets were committed after the append

    store = LedgerStore(topics_ready.resolved_ledger_url)
    try:
        report = store.verify()
        assert report.ok and report.entries == 6
        entries = store.entries()
        assert {e.topic for e in entries} == {
            topics_ready.topic(t)
            for t in ("deployments", "breaches", "commands", "acks", "decisions")
        }
        assert sorted(e.event_type for e in entries) == sorted(
            ["SystemManifest", "Breach", "Breach", "RollbackCommand", "CommandAck", "unparsed"]
        )
    finally:
        store.close()
