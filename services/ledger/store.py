"""The hash-chained, append-only ledger store (SQLAlchemy Core: SQLite or PostgreSQL).

``hash = SHA-256(prev_hash ‖ seq ‖ canonical payload)``, seq counts from 1 without gaps, and
(topic, partition, offset) is unique so a redelivered message is never stored twice. Triggers
reject UPDATE and DELETE (and TRUNCATE on PostgreSQL); ``verify`` recomputes every link and
names the first sequence number that does not hold.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from rollguard.errors import LedgerError
from rollguard.events import utcnow

GENESIS = "0" * 64

metadata = sa.MetaData()

entries = sa.Table(
    "ledger_entries",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("topic", sa.String(255), nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("event_id", sa.String(128), nullable=False, index=True),
    sa.Column("model_id", sa.String(256), index=True),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.UniqueConstraint("topic", "partition", "offset", name="uq_ledger_source"),
)

_SQLITE_TRIGGERS = [
    """CREATE TRIGGER IF NOT EXISTS ledger_no_update BEFORE UPDATE ON ledger_entries
       BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS ledger_no_delete BEFORE DELETE ON ledger_entries
       BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END""",
]

_PG_TRIGGERS = [
    """CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger AS $$
       BEGIN RAISE EXCEPTION 'ledger_entries is append-only'; END $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS ledger_no_update_delete ON ledger_entries",
    """CREATE TRIGGER ledger_no_update_delete BEFORE UPDATE OR DELETE ON ledger_entries
       FOR EACH ROW EXECUTE FUNCTION ledger_append_only()""",
    "DROP TRIGGER IF EXISTS ledger_no_truncate ON ledger_entries",
    """CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger_entries
       FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()""",
]


def canonical_payload(value: bytes | None) -> tuple[bytes, str, str, str | None]:
    """(canonical JSON, event type, event id, model_id) of a message value.

    Whatever arrives is kept: a value that is not a JSON object is stored as its base64 with
    the reason, so the ledger records the fact that it arrived.
    """
    try:
        doc = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raw = base64.b64encode(value or b"").decode()
        doc = {"unparsed": True, "raw_b64": raw}
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS), "unparsed", "", None
    schema = str(doc.get("schema", "unknown"))
    event_type = schema.split("/", 1)[0][:64]
    model_id = doc.get("model_id")
    return (
        orjson.dumps(doc, option=orjson.OPT_SORT_KEYS),
        event_type,
        str(doc.get("event_id", ""))[:128],
        str(model_id)[:256] if model_id is not None else None,
    )


def entry_hash(prev_hash: str, seq: int, payload: bytes) -> str:
    h = hashlib.sha256()
    h.update(bytes.fromhex(prev_hash))
    h.update(seq.to_bytes(8, "big"))
    h.update(payload)
    return h.hexdigest()


@dataclass(frozen=True)
class Incoming:
    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    entries: int
    head_hash: str
    first_bad_seq: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class Entry:
    seq: int
    topic: str
    partition: int
    offset: int
    event_type: str
    event_id: str
    model_id: str | None
    recorded_at: datetime
    payload: dict[str, Any]
    hash: str


class LedgerStore:
    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite" and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = sa.create_engine(url)
            metadata.create_all(self.engine)
            with self.engine.begin() as conn:
                for ddl in _SQLITE_TRIGGERS if self.dialect == "sqlite" else _PG_TRIGGERS:
                    conn.exec_driver_sql(ddl)
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerError(f"cannot open the ledger at {parsed!r}: {exc}") from exc

    def append(self, records: Iterable[Incoming]) -> int:
        """Append records not yet stored, chained, in one transaction; returns how many."""
        records = list(records)
        if not records:
            return 0
        try:
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    # One writer at a time extends the chain.
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7316021)")
                head = conn.execute(
                    sa.select(entries.c.seq, entries.c.hash).order_by(entries.c.seq.desc()).limit(1)
                ).first()
                seq, prev = (head.seq, head.hash) if head else (0, GENESIS)
                rows = []
                for rec in records:
                    if self._stored(conn, rec):
                        continue
                    payload, event_type, event_id, model_id = canonical_payload(rec.value)
                    seq += 1
                    digest = entry_hash(prev, seq, payload)
                    rows.append(
                        {
                            "seq": seq,
                            "topic": rec.topic,
                            "partition": rec.partition,
                            "offset": rec.offset,
                            "event_type": event_type,
                            "event_id": event_id,
                            "model_id": model_id,
                            "recorded_at": utcnow(),
                            "payload": payload,
                            "prev_hash": prev,
                            "hash": digest,
                        }
                    )
                    prev = digest
                if rows:
                    conn.execute(sa.insert(entries), rows)
                return len(rows)
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerError(f"ledger append failed: {exc}") from exc

    @staticmethod
    def _stored(conn: sa.Connection, rec: Incoming) -> bool:
        found = conn.execute(
            sa.select(entries.c.seq).where(
                entries.c.topic == rec.topic,
                entries.c.partition == rec.partition,
                entries.c.offset == rec.offset,
            )
        ).first()
        return found is not None

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(entries)).scalar_one())

    def entries(self, model_id: str | None = None) -> list[Entry]:
        query = sa.select(entries).order_by(entries.c.seq)
        if model_id is not None:
            query = query.where(entries.c.model_id == model_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            Entry(
                r.seq,
                r.topic,
                r.partition,
                r.offset,
                r.event_type,
                r.event_id,
                r.model_id,
                r.recorded_at,
                orjson.loads(r.payload),
                r.hash,
            )
            for r in rows
        ]

    def verify(self) -> VerifyReport:
        """Recompute the chain from the genesis; the first broken link names its seq."""
        prev, expected_seq, n = GENESIS, 1, 0
        query = sa.select(
            entries.c.seq, entries.c.payload, entries.c.prev_hash, entries.c.hash
        ).order_by(entries.c.seq)
        with self.engine.connect() as conn:
            for row in conn.execution_options(yield_per=1000).execute(query):
                n += 1
                if row.seq != expected_seq:
                    return VerifyReport(
                        False, n, prev, expected_seq, f"seq {expected_seq} is missing"
                    )
                if row.prev_hash != prev:
                    return VerifyReport(
                        False, n, prev, row.seq, "prev_hash does not match the entry before"
                    )
                if entry_hash(prev, row.seq, row.payload) != row.hash:
                    return VerifyReport(
                        False, n, prev, row.seq, "hash does not match the entry's content"
                    )
                prev, expected_seq = row.hash, expected_seq + 1
        return VerifyReport(True, n, prev)

    def close(self) -> None:
        self.engine.dispose()
