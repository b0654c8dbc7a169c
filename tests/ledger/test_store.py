"""The hash chain on SQLite and PostgreSQL: append once, refuse changes, detect tampering."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
import sqlalchemy as sa

from rollguard_services.ledger.store import (
    GENESIS,
    Incoming,
    LedgerStore,
    entries,
    entry_hash,
    record_bytes,
)
from tests.factories import breach, manifest


@pytest.fixture
def store(database_url: str) -> Iterator[LedgerStore]:
    s = LedgerStore(database_url)
    yield s
    s.close()


def records(n: int, topic: str = "rollguard.breaches", start: int = 0) -> list[Incoming]:
    return [Incoming(topic, 0, start + i, breach(value=0.1 + i / 1000).encode()) for i in range(n)]


def tamper(store: LedgerStore, *statements: str) -> None:
    """Run statements as the table owner with the append-only triggers out of the way."""
    with store.engine.begin() as conn:
        if store.dialect == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER ledger_no_update")
            conn.exec_driver_sql("DROP TRIGGER ledger_no_delete")
        else:
            conn.exec_driver_sql("ALTER TABLE ledger_entries DISABLE TRIGGER USER")
        for sql in statements:
            conn.exec_driver_sql(sql)


def test_append_chains_and_verifies(store: LedgerStore) -> None:
    assert store.append(records(5)) == 5
    report = store.verify()
    assert (report.ok, report.entries) == (True, 5)
    entries = store.entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    prev = GENESIS
    for e in entries:
        payload = orjson.dumps(e.payload, option=orjson.OPT_SORT_KEYS)
        record = record_bytes(
            topic=e.topic,
            partition=e.partition,
            offset=e.offset,
            event_type=e.event_type,
            event_id=e.event_id,
            model_id=e.model_id,
            recorded_at=e.recorded_at,
        )
        assert e.hash == entry_hash(prev, e.seq, record, payload)
        prev = e.hash
    assert report.head_hash == prev
    assert entries[0].event_type == "Breach" and entries[0].model_id == "m"


def test_redelivered_messages_are_stored_once(store: LedgerStore) -> None:
    batch = records(3)
    assert store.append(batch) == 3
    assert store.append(batch + records(2, start=3)) == 2
    assert store.count() == 5 and store.verify().ok


def test_a_batch_larger_than_one_lookup_is_deduplicated_as_a_set(store: LedgerStore) -> None:
    """Issue 15: identities are looked up once per batch (or per chunk of ids on SQLite), not
    once per record; a batch of a fleet's size, part stored, part repeated within itself, part
    the same ids on another topic, stores each (topic, event id) once."""
    first = records(700)
    assert store.append(first[:300]) == 300
    again = first + first[650:]  # 300 stored, 400 new, 50 twice within the batch
    assert store.append(again) == 400
    same_ids = [Incoming("rollguard.decisions", 1, r.offset, r.value) for r in first[:5]]
    assert store.append(same_ids) == 5  # another topic: other facts
    assert store.count() == 705
    report = store.verify()
    assert report.ok and report.entries == 705


def test_a_broker_whose_offsets_start_again_loses_nothing(store: LedgerStore) -> None:
    """Issue 11: after `rollguard up` restarted, the in-memory broker's offsets began at 0 again
    and the ledger, de-duplicating on (topic, partition, offset), dropped every new event as
    "redelivered". A topic deleted and recreated on Kafka does the same. Identity is the
    event's id now."""
    assert store.append(records(3)) == 3
    assert store.append(records(3)) == 3  # new events at the same offsets 0, 1, 2
    again = records(1)
    assert store.append(again) == 1
    # the same event re-published (an outbox flushed after a crash) at another offset
    assert store.append([Incoming(again[0].topic, 2, 40, again[0].value)]) == 0
    assert store.count() == 7 and store.verify().ok


def test_values_without_an_id_are_told_apart_by_where_they_arrived(store: LedgerStore) -> None:
    junk = [Incoming("rollguard.acks", 0, i, b"junk") for i in range(2)]
    assert store.append(junk) == 2  # the same bytes twice are two arrivals
    assert store.append(junk[:1]) == 0  # a redelivery of the first
    ids = [e.event_id for e in store.entries()]
    assert len(set(ids)) == 2 and all(i.startswith("sha256:") for i in ids)


def test_a_ledger_made_before_identity_dedup_is_migrated(database_url: str) -> None:
    """Ledgers written by earlier versions are unique on (topic, partition, offset): opened
    for writing, they lose that constraint and keep every row and hash."""
    old = LedgerStore(database_url)
    old.append(records(3))
    with old.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(entries))]
    tamper(old, "DROP TABLE ledger_entries")
    legacy = sa.MetaData()
    sa.Table(
        "ledger_entries",
        legacy,
        *(
            sa.Column(c.name, c.type, nullable=c.nullable, primary_key=c.primary_key)
            for c in entries.columns
        ),
        sa.UniqueConstraint("topic", "partition", "offset", name="uq_ledger_source"),
    )
    legacy.create_all(old.engine)
    with old.engine.begin() as conn:
        conn.execute(legacy.tables["ledger_entries"].insert(), rows)
    old.close()

    store = LedgerStore(database_url)
    try:
        uniques = sa.inspect(store.engine).get_unique_constraints("ledger_entries")
        assert [u["name"] for u in uniques] == []
        assert store.count() == 3 and store.verify().ok
        assert store.append(records(3)) == 3  # offsets 0, 1, 2 again: stored
        assert store.verify().ok and store.verify().entries == 6
        with pytest.raises(sa.exc.DatabaseError), store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE ledger_entries SET model_id = 'x'")  # still append-only
    finally:
        store.close()


def test_odd_values_are_kept_faithfully(store: LedgerStore) -> None:
    odd = [
        Incoming("rollguard.acks", 0, 0, b"\xff\xfe not json"),
        Incoming("rollguard.acks", 0, 1, None),
        Incoming("rollguard.acks", 0, 2, b"[1, 2, 3]"),
        Incoming("rollguard.deployments", 1, 0, manifest("v1").encode()),
    ]
    assert store.append(odd) == 4
    kinds = [e.event_type for e in store.entries()]
    assert kinds == ["unparsed", "unparsed", "unparsed", "SystemManifest"]
    assert store.verify().ok


@pytest.mark.parametrize(
    "sql", ["UPDATE ledger_entries SET model_id = 'x'", "DELETE FROM ledger_entries"]
)
def test_triggers_refuse_update_and_delete(store: LedgerStore, sql: str) -> None:
    store.append(records(2))
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), store.engine.begin() as conn:
        conn.exec_driver_sql(sql)
    assert store.verify().ok and store.count() == 2


def test_truncate_is_refused_on_postgresql(store: LedgerStore) -> None:
    if store.dialect != "postgresql":
        pytest.skip("SQLite has no TRUNCATE statement")
    store.append(records(2))
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), store.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE ledger_entries")


@pytest.mark.parametrize(
    ("statements", "first_bad"),
    [
        (["UPDATE ledger_entries SET payload = CAST('{\"x\":1}' AS {blob}) WHERE seq = 4"], 4),
        (["DELETE FROM ledger_entries WHERE seq = 3"], 3),
        (
            [
                "UPDATE ledger_entries SET seq = seq + 100 WHERE seq >= 5",
                "UPDATE ledger_entries SET seq = 5 WHERE seq = 106",
                "UPDATE ledger_entries SET seq = 6 WHERE seq = 105",
                "UPDATE ledger_entries SET seq = seq - 100 WHERE seq > 100",
            ],
            5,
        ),
        (
            [
                'INSERT INTO ledger_entries SELECT 9, topic, partition, "offset" + 100, event_type, event_id, model_id, recorded_at, payload, hash, hash FROM ledger_entries WHERE seq = 8'
            ],
            9,
        ),
        (["DELETE FROM ledger_entries WHERE seq >= 7"], None),
    ],
    ids=["modify", "delete", "reorder", "insert", "truncate-tail"],
)
def test_tampering_is_detected_at_the_right_seq(
    store: LedgerStore, statements: list[str], first_bad: int | None
) -> None:
    store.append(records(8))
    head_before = store.verify().head_hash
    blob = "BLOB" if store.dialect == "sqlite" else "BYTEA"
    tamper(store, *(s.replace("{blob}", blob) for s in statements))
    report = store.verify()
    if first_bad is None:
        # A cut tail leaves a valid shorter chain: only a checkpoint of the head reveals it.
        assert report.ok and report.entries == 6 and report.head_hash != head_before
    else:
        assert not report.ok
        assert report.first_bad_seq == first_bad
