"""The ledger service through the broker: every control event once, across restarts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from rollguard import topics
from rollguard.events import CommandAck
from rollguard.settings import RollguardSettings
from rollguard_services.ledger.app import Ledger
from rollguard_services.ledger.settings import LedgerSettings
from rollguard_services.ledger.store import LedgerStore
from tests.conftest import run_until, until
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


async def _committed(settings: RollguardSettings, group: str) -> dict[tuple[str, int], int]:
    """What the group has committed on the breaches topic (fetched without joining it)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from rollguard.bus import client_options

    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=f"{settings.topic_prefix}{group}",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        topic = settings.topic(topics.BREACHES.name)
        await consumer.topics()
        out = {}
        for p in consumer.partitions_for_topic(topic) or ():
            offset = await consumer.committed(TopicPartition(topic, p))
            if offset is not None:
                out[(topic, p)] = offset
        return out
    finally:
        await consumer.stop()


async def test_stopped_mid_stream_and_restarted_the_ledger_has_no_gap_and_no_duplicate(
    topics_ready: RollguardSettings, publish: Callable[..., Awaitable[None]]
) -> None:
    import asyncio

    total = 150
    sent: list[str] = []

    async def producer() -> None:
        for i in range(total):
            b = breach(f"v{i}", model_id=f"m{i % 5}")
            sent.append(b.event_id)
            await publish(topics.BREACHES.name, b)
            await asyncio.sleep(0.02)

    svc = LedgerSettings(group_id="ledger-restart", max_batch=7, checkpoint_interval_s=0.2)
    first = Ledger(topics_ready, svc)
    running = asyncio.create_task(first.run())
    await until(lambda: first.ready.is_set())
    feeding = asyncio.create_task(producer())
    await until(lambda: first.counts["appended"] >= 30)
    running.cancel()  # stopped mid-stream, possibly mid-batch
    await asyncio.gather(running, return_exceptions=True)
    assert not feeding.done(), "the stop must happen while events are still arriving"
    second = Ledger(topics_ready, svc)
    # Count what is stored, not what each run counted: a batch stored just as the first run
    # was cancelled is in the database but in no counter (its offsets were not committed, so
    # the second run sees it again and stores nothing: redelivered).
    counter = LedgerStore(topics_ready.resolved_ledger_url)
    try:
        await run_until(second, lambda: counter.count() >= total)
    finally:
        counter.close()
    await feeding

    store = LedgerStore(topics_ready.resolved_ledger_url)
    try:
        found = store.entries()
    finally:
        store.close()
    assert [e.seq for e in found] == list(range(1, total + 1))  # no gap
    assert sorted(e.event_id for e in found) == sorted(sent)  # each event exactly once
    assert len({(e.topic, e.partition, e.offset) for e in found}) == total
    assert first.counts["checkpoints"] >= 1 and second.counts["checkpoints"] >= 1


@pytest.mark.parametrize("failure", ["full", "read_only", "missing"])
async def test_a_failing_database_stalls_without_committing_and_resumes_without_a_gap(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    failure: str,
) -> None:
    import asyncio
    import shutil

    import sqlalchemy as sa

    group = f"ledger-{failure}"
    ledger = Ledger(
        topics_ready, LedgerSettings(group_id=group, retry_initial_s=0.1, retry_max_s=0.3)
    )
    task = asyncio.create_task(ledger.run())
    try:
        await until(lambda: ledger.ready.is_set())
        for i in range(3):
            await publish(topics.BREACHES.name, breach(f"before{i}"))
        await until(lambda: ledger.counts["appended"] == 3)
        assert ledger.store is not None
        engine, path = ledger.store.engine, ledger.store.sqlite_path
        assert path is not None
        broken = {"on": True}
        backup = path.with_suffix(".bak")

        # Real SQLite refusals: a page budget it cannot grow past (SQLITE_FULL), a
        # query-only connection (SQLITE_READONLY), or the file gone.
        @sa.event.listens_for(engine, "checkout")
        def _degrade(dbapi_conn: object, record: object, proxy: object) -> None:
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            if failure == "full":
                pages = cur.execute("PRAGMA page_count").fetchone()[0]
                cur.execute(f"PRAGMA max_page_count = {pages if broken['on'] else 1_000_000}")
            elif failure == "read_only":
                cur.execute(f"PRAGMA query_only = {1 if broken['on'] else 0}")
            cur.close()

        engine.dispose()
        if failure == "missing":
            shutil.copy(path, backup)
            path.unlink()
        # Big enough to need new pages, so a full database really refuses it.
        for i in range(5):
            await publish(topics.BREACHES.name, breach(f"during{i}", evidence={"pad": "x" * 5000}))
        await until(lambda: ledger.status == "stalled" and ledger.counts["store_failures"] >= 2)
        assert ledger.stall_reason
        committed = await _committed(topics_ready, group)
        assert sum(committed.values()) == 3, "nothing past what is stored may be committed"

        broken["on"] = False
        if failure == "missing":
            shutil.move(backup, path)
        await until(lambda: ledger.status == "ok" and ledger.counts["appended"] == 8, 20)
        await publish(topics.BREACHES.name, breach("after"))
        await until(lambda: ledger.counts["appended"] == 9)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    store = LedgerStore(topics_ready.resolved_ledger_url)
    try:
        found = store.entries()
        assert [e.seq for e in found] == list(range(1, 10))
        assert [e.payload["model_version"] for e in found][-1] == "after"
        assert store.verify().ok
    finally:
        store.close()
