"""The hash-chained, append-only ledger store (SQLAlchemy Core: SQLite or PostgreSQL).

``hash = SHA-256(prev_hash ‖ seq ‖ len(record) ‖ record ‖ payload)``: ``record`` is the
canonical JSON of the entry's other columns (source topic/partition/offset, event type, id,
model id, recorded_at), so changing any column of any row breaks the chain; ``payload`` is the
canonical JSON of the event. seq counts from 1 without gaps, and an event is stored once per
topic by its identity (its event id; for a value with none, the SHA-256 of its bytes), never by
its broker offset (a value without an id is identified by its bytes and where it arrived): a
redelivered or re-published event is not stored twice, and a broker whose
offsets start again at 0 (the in-memory embedded broker after a restart, a topic deleted and
recreated on Kafka) has its new events stored, not mistaken for old ones. Triggers reject UPDATE and DELETE (and
TRUNCATE on PostgreSQL); ``verify`` recomputes every link and names the first sequence number
that does not hold. Cutting rows off the end leaves a valid shorter chain: signed checkpoints
(``checkpoints.py``) are what reveal that.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

from rollguard.database import create_tables, engine_for, sqlite_file
from rollguard.errors import LedgerCorrupt, LedgerError, LedgerMissing
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
    # Not unique: ledgers written before identity de-duplication may hold an event twice.
    # The single writer (advisory lock on PostgreSQL) checks identity before appending.
    sa.Index("ix_ledger_identity", "topic", "event_id"),
)

#: The constraint of ledgers made before identity de-duplication (see _migrate).
_OLD_SOURCE_CONSTRAINT = "uq_ledger_source"


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
        str(doc.get("event_id") or "")[:128],
        str(model_id)[:256] if model_id is not None else None,
    )


def utc_iso(ts: datetime) -> str:
    """One spelling of a timestamp whatever the database hands back.

    SQLite returns naive datetimes (the value was UTC when written), PostgreSQL aware ones in
    the session's time zone; both must hash the same.
    """
    aware = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return aware.isoformat(timespec="microseconds")


def record_bytes(
    *,
    topic: str,
    partition: int,
    offset: int,
    event_type: str,
    event_id: str,
    model_id: str | None,
    recorded_at: datetime | str,
) -> bytes:
    """Canonical JSON of an entry's columns other than seq, payload and the hashes
    (``recorded_at`` as a time, or already in ``utc_iso``'s spelling)."""
    return orjson.dumps(
        {
            "event_id": event_id,
            "event_type": event_type,
            "model_id": model_id,
            "offset": offset,
            "partition": partition,
            "recorded_at": recorded_at if isinstance(recorded_at, str) else utc_iso(recorded_at),
            "topic": topic,
        },
        option=orjson.OPT_SORT_KEYS,
    )


def entry_hash(prev_hash: str, seq: int, record: bytes, payload: bytes) -> str:
    h = hashlib.sha256()
    h.update(bytes.fromhex(prev_hash))
    h.update(seq.to_bytes(8, "big"))
    # Length-prefixed, so no split of record ‖ payload other than the true one hashes the same.
    h.update(len(record).to_bytes(4, "big"))
    h.update(record)
    h.update(payload)
    return h.hexdigest()


def row_hash(prev_hash: str, row: Any) -> str:
    """The hash a stored row must carry, given the hash its predecessor carries."""
    record = record_bytes(
        topic=row.topic,
        partition=row.partition,
        offset=row.offset,
        event_type=row.event_type,
        event_id=row.event_id,
        model_id=row.model_id,
        recorded_at=row.recorded_at,
    )
    return _link_hash(prev_hash, row.seq, record, row.payload)


def _link_hash(prev_hash: str, seq: int, record: bytes, payload: Any) -> str:
    """entry_hash of a stored row's columns, "" when its prev_hash is no 64 hex digits (then it
    matches no hash)."""
    try:
        prev = bytes.fromhex(prev_hash)
    except ValueError:
        return ""
    if len(prev) != 32:
        return ""
    return entry_hash(prev_hash, seq, record, bytes(payload))


@dataclass(frozen=True)
class Incoming:
    topic: str
    partition: int
    offset: int
    value: bytes | None


#: Rows verify reads per fetch.
_VERIFY_BATCH = 5_000

#: The columns verify reads, in this order (the table's own).
_CHAIN_COLUMNS = tuple(c.name for c in entries.columns)

#: How SQLAlchemy writes a DateTime into SQLite (its default storage format).
_SQLITE_STORED = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}")

#: Event ids per de-duplication query (SQLite takes at most 32,766 bound parameters).
_ID_CHUNK = 500


def _prepared(rec: Incoming) -> tuple[bytes, str, str, str | None]:
    """(canonical payload, event type, identity's event id, model id) of an arriving record."""
    payload, event_type, event_id, model_id = canonical_payload(rec.value)
    # A value without an event id is the same fact only at the same place.
    event_id = event_id or (
        f"sha256:{hashlib.sha256(payload).hexdigest()}@{rec.partition}:{rec.offset}"
    )
    return payload, event_type, event_id, model_id


@dataclass(frozen=True)
class ChainReport:
    """What recomputing the chain found. ``hashes_at`` answers the sizes asked for."""

    ok: bool
    entries: int
    head_hash: str
    first_bad_seq: int | None = None
    reason: str = ""
    hashes_at: dict[int, str] = field(default_factory=dict)


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
    prev_hash: str = ""

    def recorded_at_utc(self) -> datetime:
        return datetime.fromisoformat(utc_iso(self.recorded_at))

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "event_type": self.event_type,
            "event_id": self.event_id,
            "model_id": self.model_id,
            "recorded_at": utc_iso(self.recorded_at),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "payload": self.payload,
        }


class LedgerStore:
    def __init__(self, url: str, *, create: bool = True) -> None:
        """Open the ledger at ``url``; ``create=False`` (what read-only commands use) opens
        only a ledger that exists, writes nothing, and raises LedgerMissing otherwise, so
        that a mistyped path is an error, never an empty ledger that verifies."""
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self.url = parsed.render_as_string(hide_password=True)
        #: The SQLite file, whose disappearance must stop appends (see ``append``).
        self.sqlite_path: Path | None = sqlite_file(parsed)
        if not create and self.sqlite_path is not None and not self.sqlite_path.is_file():
            raise LedgerMissing(f"no ledger at {self.sqlite_path} (mistyped path or state dir?)")
        try:
            self.engine = engine_for(url) if create else sa.create_engine(url)
            if not create:
                if not sa.inspect(self.engine).has_table(entries.name):
                    self.engine.dispose()
                    raise LedgerMissing(f"no ledger table {entries.name!r} at {self.url}")
                return
            self._migrate()
            triggers = _SQLITE_TRIGGERS if self.dialect == "sqlite" else _PG_TRIGGERS
            create_tables(self.engine, metadata, *triggers)
        except OSError as exc:
            raise LedgerError(f"cannot create the ledger: {exc}") from exc
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerError(f"cannot open the ledger at {self.url}: {_first_line(exc)}") from exc

    def _migrate(self) -> None:
        """Drop the (topic, partition, offset) constraint of a ledger made before identity
        de-duplication: with it, the first event a reset broker delivers at an old offset
        would stop the ledger. Rows, and so every hash, stay as they are."""
        inspector = sa.inspect(self.engine)
        if not inspector.has_table(entries.name):
            return
        names = {c["name"] for c in inspector.get_unique_constraints(entries.name)}
        if _OLD_SOURCE_CONSTRAINT not in names:
            return
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(
                    f"ALTER TABLE {entries.name} DROP CONSTRAINT {_OLD_SOURCE_CONSTRAINT}"
                )
                return
            # SQLite cannot drop a constraint: copy the rows into a table without it. The old
            # table's indexes and append-only triggers go with it; create_all and the trigger
            # DDL that follow make the new one's.
            indexes = [index["name"] for index in inspector.get_indexes(entries.name)]
            conn.exec_driver_sql(f"ALTER TABLE {entries.name} RENAME TO {entries.name}_old")
            for name in indexes:
                conn.exec_driver_sql(f'DROP INDEX IF EXISTS "{name}"')
            metadata.create_all(conn)
            columns = ", ".join(f'"{c.name}"' for c in entries.columns)
            conn.exec_driver_sql(
                f"INSERT INTO {entries.name} ({columns}) "
                f"SELECT {columns} FROM {entries.name}_old ORDER BY seq"
            )
            conn.exec_driver_sql(f"DROP TABLE {entries.name}_old")

    def append(self, records: Iterable[Incoming]) -> int:
        """Append records not yet stored, chained, in one transaction; returns how many.

        Raises LedgerError (retriable) when the database cannot take them; then nothing of the
        batch is stored.
        """
        records = list(records)
        if not records:
            return 0
        if self.sqlite_path is not None and not self.sqlite_path.exists():
            # SQLite would keep writing to the unlinked file, or start an empty chain at seq 1.
            raise LedgerError(f"ledger database file {self.sqlite_path} is missing")
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
                prepared = [_prepared(rec) for rec in records]
                seen = self._stored(conn, prepared)
                for rec, (payload, event_type, event_id, model_id) in zip(
                    records, prepared, strict=True
                ):
                    identity = (rec.topic, event_id)
                    if identity in seen:
                        continue
                    seen.add(identity)
                    seq += 1
                    recorded_at = utcnow()
                    record = record_bytes(
                        topic=rec.topic,
                        partition=rec.partition,
                        offset=rec.offset,
                        event_type=event_type,
                        event_id=event_id,
                        model_id=model_id,
                        recorded_at=recorded_at,
                    )
                    digest = entry_hash(prev, seq, record, payload)
                    rows.append(
                        {
                            "seq": seq,
                            "topic": rec.topic,
                            "partition": rec.partition,
                            "offset": rec.offset,
                            "event_type": event_type,
                            "event_id": event_id,
                            "model_id": model_id,
                            "recorded_at": recorded_at,
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
            # Drop pooled connections: after an outage (a restarted server, a restored SQLite
            # file) the next attempt must open the database afresh, not reuse a dead handle.
            self.engine.dispose()
            raise LedgerError(f"ledger append failed: {_first_line(exc)}") from exc

    def _stored(
        self, conn: sa.Connection, prepared: list[tuple[bytes, str, str, str | None]]
    ) -> set[tuple[str, str]]:
        """The (topic, event id) identities of a batch already in the ledger: one query per
        batch (PostgreSQL) or per chunk of ids (SQLite) on the event id index, never one per
        record."""
        ids = sorted({event_id for _, _, event_id, _ in prepared})
        if self.dialect == "postgresql":
            # A join with the ids as one array: a plan of index lookups whatever the batch
            # size (an IN list of bound parameters gets a generic plan that scans the table).
            joined = sa.text(
                "SELECT e.topic, e.event_id FROM unnest(:ids) AS wanted(id) "
                "JOIN ledger_entries e ON e.event_id = wanted.id"
            ).bindparams(sa.bindparam("ids", type_=postgresql.ARRAY(sa.Text)))
            return {(str(r.topic), str(r.event_id)) for r in conn.execute(joined, {"ids": ids})}
        found: set[tuple[str, str]] = set()
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start : start + _ID_CHUNK]
            query = sa.select(entries.c.topic, entries.c.event_id).where(
                entries.c.event_id.in_(chunk)
            )
            found.update((str(r.topic), str(r.event_id)) for r in conn.execute(query))
        return found

    def count(self) -> int:
        try:
            with self.engine.connect() as conn:
                return int(
                    conn.execute(sa.select(sa.func.count()).select_from(entries)).scalar_one()
                )
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerError(f"cannot read the ledger: {_first_line(exc)}") from exc

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last entry; (0, GENESIS) when the ledger is empty."""
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.select(entries.c.seq, entries.c.hash).order_by(entries.c.seq.desc()).limit(1)
                ).first()
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerError(f"cannot read the ledger: {_first_line(exc)}") from exc
        return (int(row.seq), str(row.hash)) if row else (0, GENESIS)

    def hash_at(self, seq: int) -> str | None:
        """The stored hash of entry ``seq`` (GENESIS for 0); None when there is no such entry."""
        if seq == 0:
            return GENESIS
        try:
            with self.engine.connect() as conn:
                found = conn.execute(sa.select(entries.c.hash).where(entries.c.seq == seq)).first()
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerError(f"cannot read the ledger: {_first_line(exc)}") from exc
        return str(found.hash) if found else None

    def first_recorded_at(self) -> datetime | None:
        """When the ledger stored its first entry (None: it has none)."""
        query = sa.select(entries.c.recorded_at).order_by(entries.c.seq).limit(1)
        try:
            with self.engine.connect() as conn:
                row = conn.execute(query).first()
        except (TypeError, ValueError, OverflowError) as exc:
            raise LedgerCorrupt(f"the first entry cannot be read: {_first_line(exc)}") from exc
        if row is None:
            return None
        if not isinstance(row[0], datetime):
            raise LedgerCorrupt("the first entry's recorded_at is not a time")
        return datetime.fromisoformat(utc_iso(row[0]))

    def entries(
        self,
        model_id: str | None = None,
        *,
        since: datetime | None = None,
        event_types: Iterable[str] | None = None,
    ) -> list[Entry]:
        return list(self.iter_entries(model_id, since=since, event_types=event_types))

    def iter_entries(
        self,
        model_id: str | None = None,
        *,
        since: datetime | None = None,
        event_types: Iterable[str] | None = None,
        after_seq: int | None = None,
    ) -> Iterator[Entry]:
        """Entries in seq order; ``since`` compares with recorded_at (when the ledger stored
        it); ``after_seq``: only those appended after that entry."""
        query = sa.select(entries).order_by(entries.c.seq)
        if after_seq is not None:
            query = query.where(entries.c.seq > after_seq)
        if model_id is not None:
            query = query.where(entries.c.model_id == model_id)
        if since is not None:
            # SQLite compares the stored (naive UTC) text; give it the same spelling.
            bound = since.astimezone(UTC)
            query = query.where(
                entries.c.recorded_at
                >= (bound.replace(tzinfo=None) if self.dialect == "sqlite" else bound)
            )
        if event_types is not None:
            query = query.where(entries.c.event_type.in_(list(event_types)))
        last = 0
        with self.engine.connect() as conn:
            rows = iter(conn.execution_options(yield_per=1000).execute(query))
            while True:
                try:
                    r = next(rows)
                except StopIteration:
                    return
                except (TypeError, ValueError, OverflowError) as exc:
                    # A column the driver cannot even read back (a recorded_at that is no time).
                    raise LedgerCorrupt(
                        f"the entry after seq {last} cannot be read: {_first_line(exc)}"
                    ) from exc
                last = r.seq
                try:
                    payload = orjson.loads(r.payload)
                except (TypeError, orjson.JSONDecodeError) as exc:
                    raise LedgerCorrupt(
                        f"entry seq {r.seq}: its payload is not JSON text ({_first_line(exc)})"
                    ) from exc
                wrong = _wrong_column(r, payload)
                if wrong:
                    raise LedgerCorrupt(f"entry seq {r.seq}: {wrong}")
                yield Entry(
                    r.seq,
                    r.topic,
                    r.partition,
                    r.offset,
                    r.event_type,
                    r.event_id,
                    r.model_id,
                    r.recorded_at,
                    payload,
                    r.hash,
                    r.prev_hash,
                )

    def verify_chain(self, at_sizes: Iterable[int] = ()) -> ChainReport:
        """Recompute the chain from the genesis; the first broken link names its seq.

        ``at_sizes``: also report the hash the chain had after that many entries (what a
        checkpoint of that size signed), for every such size the chain reaches intact.
        Streams the rows in batches and reads them as plain tuples; on SQLite a recorded_at in
        the spelling SQLAlchemy writes is turned into the hashed spelling as text, and any other
        spelling goes through SQLAlchemy's own conversion (so every row hashes as
        ``row_hash`` would hash it).
        """
        wanted = set(at_sizes)
        hashes_at: dict[int, str] = {0: GENESIS} if 0 in wanted else {}
        prev, expected_seq, n = GENESIS, 1, 0
        query, recorded_iso = self._chain_query()

        def broken(seq: int, reason: str) -> ChainReport:
            return ChainReport(False, n, prev, seq, reason, hashes_at)

        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(yield_per=_VERIFY_BATCH).execute(query)
                while True:
                    try:
                        rows = result.fetchmany(_VERIFY_BATCH)
                    except (TypeError, ValueError, OverflowError) as exc:
                        # A column whose stored value the driver cannot even read back.
                        return broken(expected_seq, f"an entry's column is not of its type: {exc}")
                    if not rows:
                        break
                    for row in rows:
                        seq, topic, partition, offset, event_type, event_id = row[:6]
                        model_id, recorded_at, payload, prev_hash, digest = row[6:]
                        n += 1
                        try:
                            if seq != expected_seq:
                                return broken(expected_seq, f"seq {expected_seq} is missing")
                            record = record_bytes(
                                topic=topic,
                                partition=partition,
                                offset=offset,
                                event_type=event_type,
                                event_id=event_id,
                                model_id=model_id,
                                recorded_at=recorded_iso(recorded_at),
                            )
                            if _link_hash(prev_hash, seq, record, payload) != digest:
                                return broken(seq, "hash does not match the entry's content")
                        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
                            # Any bytes in any column (a payload stored as TEXT, a number where
                            # a string belongs) name the seq, never crash the verification.
                            return broken(
                                expected_seq,
                                f"an entry's columns are not of their types "
                                f"({type(exc).__name__}: {exc})",
                            )
                        if prev_hash != prev:
                            return broken(seq, "prev_hash does not match the entry before")
                        prev, expected_seq = digest, expected_seq + 1
                        if seq in wanted:
                            hashes_at[seq] = digest
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerError(f"cannot read the ledger: {_first_line(exc)}") from exc
        return ChainReport(True, n, prev, hashes_at=hashes_at)

    def _chain_query(self) -> tuple[sa.Select[Any], Callable[[Any], str]]:
        """The rows verify reads, and how a row's recorded_at becomes its hashed spelling."""
        columns: list[sa.ColumnElement[Any]] = [entries.c[name] for name in _CHAIN_COLUMNS]
        at = _CHAIN_COLUMNS.index("recorded_at")
        if self.dialect == "postgresql":
            # The server spells the time as utc_iso would (microseconds, UTC, "+00:00").
            columns[at] = sa.func.to_char(
                sa.func.timezone("UTC", entries.c.recorded_at),
                'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"',
            ).label("recorded_at")
            return sa.select(*columns).order_by(entries.c.seq), str
        if self.dialect != "sqlite":
            return sa.select(*columns).order_by(entries.c.seq), utc_iso
        convert = entries.c.recorded_at.type.dialect_impl(self.engine.dialect).result_processor(
            self.engine.dialect, None
        )
        columns[at] = sa.type_coerce(entries.c.recorded_at, sa.Text).label("recorded_at")

        def recorded_iso(value: Any) -> str:
            if isinstance(value, str) and _SQLITE_STORED.fullmatch(value):
                return f"{value[:10]}T{value[11:]}+00:00"
            return utc_iso(convert(value) if convert is not None else value)  # type: ignore[arg-type]

        return sa.select(*columns).order_by(entries.c.seq), recorded_iso

    #: The chain alone; ``services.ledger.audit.verify_ledger`` adds the checkpoints.
    verify = verify_chain

    def close(self) -> None:
        self.engine.dispose()


def _wrong_column(row: Any, payload: object) -> str:
    """What makes a stored row no entry (empty: nothing): what the chain hashes is checked by
    ``verify_chain``; this is what reading it as an Entry needs."""
    if not isinstance(payload, dict):
        return f"its payload is JSON {type(payload).__name__}, not an event"
    if not isinstance(row.recorded_at, datetime):
        return "its recorded_at is not a time"
    for column in ("topic", "event_type", "event_id", "hash", "prev_hash"):
        if not isinstance(getattr(row, column), str):
            return f"its {column} is not text"
    if row.model_id is not None and not isinstance(row.model_id, str):
        return "its model_id is not text"
    return ""


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__
