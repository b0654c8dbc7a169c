"""Tamper detection, proven by property tests on SQLite and PostgreSQL.

The attacker is the table owner with the append-only triggers disabled. Each example builds
a fresh chain (appended in batches, a signed checkpoint after each batch, as the service
does), changes it one way, and asserts that ``verify_ledger`` fails and names the first bad
seq. Every case run is counted per (database, kind) and printed at the end of the session.
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollguard.events import LedgerCheckpoint
from rollguard.signing import Signer, key_id
from rollguard_services.ledger.audit import VerifyReport, verify_ledger
from rollguard_services.ledger.checkpoints import CheckpointRead, sign_checkpoint
from rollguard_services.ledger.store import Incoming, LedgerStore, entries, row_hash
from tests.conftest import postgres_problem
from tests.factories import breach

#: (database, kind) → examples run; printed by tests/ledger/conftest.py.
TAMPER_CASES: Counter[tuple[str, str]] = Counter()

_PRIVATE = Ed25519PrivateKey.generate()
SIGNER = Signer(_PRIVATE, key_id(_PRIVATE.public_key()))
TRUSTED = {SIGNER.key_id: _PRIVATE.public_key()}

EXAMPLES = 50
COLUMNS = (
    "topic",
    "partition",
    "offset",
    "event_type",
    "event_id",
    "model_id",
    "recorded_at",
    "payload",
    "prev_hash",
    "hash",
)


class Chains:
    """Fresh ledgers on one database, one per example."""

    def __init__(self, db: str, tmp: Path, postgres_url: str) -> None:
        self.db = db
        self.tmp = tmp
        self.schema = f"tamper_{uuid.uuid4().hex[:8]}"
        self.pg_url = postgres_url + ("&" if "?" in postgres_url else "?")
        self.pg_url += f"options=-csearch_path%3D{self.schema}"
        if db == "postgresql":
            problem = postgres_problem(postgres_url)
            if problem:
                pytest.skip(f"PostgreSQL not answering at {postgres_url}: {problem}")
            self.admin = sa.create_engine(postgres_url)
            with self.admin.begin() as conn:
                conn.exec_driver_sql(f"CREATE SCHEMA {self.schema}")

    @contextlib.contextmanager
    def fresh(self) -> Iterator[LedgerStore]:
        if self.db == "sqlite":
            with tempfile.TemporaryDirectory(dir=self.tmp) as d:
                store = LedgerStore(f"sqlite:///{d}/ledger.db")
                try:
                    yield store
                finally:
                    store.close()
            return
        engine = sa.create_engine(self.pg_url)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS ledger_entries")
        engine.dispose()
        store = LedgerStore(self.pg_url)
        try:
            yield store
        finally:
            store.close()

    def close(self) -> None:
        if self.db == "postgresql":
            with self.admin.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA {self.schema} CASCADE")
            self.admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"], scope="module")
def chains(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chains]:
    import os

    url = os.environ.get(
        "ROLLGUARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    c = Chains(request.param, tmp_path_factory.mktemp("tamper"), url)
    yield c
    c.close()


def build(store: LedgerStore, batches: list[int]) -> CheckpointRead:
    """Append the batches, signing a checkpoint of the head after each."""
    cps: list[LedgerCheckpoint] = []
    offset = 0
    for size in batches:
        store.append(
            Incoming("rollguard.breaches", offset % 3, offset, breach(value=0.1 + offset).encode())
            for offset in range(offset, offset + size)
        )
        offset += size
        n, head = store.head()
        cps.append(sign_checkpoint(SIGNER, n, head, breach().ts))
    return CheckpointRead(cps, [])


@contextlib.contextmanager
def owner(store: LedgerStore) -> Iterator[sa.Connection]:
    """A transaction as the table owner with the append-only triggers out of the way."""
    with store.engine.begin() as conn:
        if store.dialect == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER ledger_no_update")
            conn.exec_driver_sql("DROP TRIGGER ledger_no_delete")
        else:
            conn.exec_driver_sql("ALTER TABLE ledger_entries DISABLE TRIGGER USER")
        yield conn


def shift(conn: sa.Connection, from_seq: int, by: int) -> None:
    """seq += by for every seq >= from_seq, without colliding on the primary key."""
    conn.execute(
        sa.update(entries).where(entries.c.seq >= from_seq).values(seq=entries.c.seq + 100_000)
    )
    conn.execute(
        sa.update(entries).where(entries.c.seq >= 100_000).values(seq=entries.c.seq - 100_000 + by)
    )


def row(conn: sa.Connection, seq: int) -> sa.Row[tuple[object, ...]]:
    return conn.execute(sa.select(entries).where(entries.c.seq == seq)).one()


def changed(column: str, old: object) -> object:
    if column in ("partition", "offset"):
        return int(old) + 1  # type: ignore[call-overload]
    if column == "recorded_at":
        return old + timedelta(microseconds=1)  # type: ignore[operator]
    if column == "payload":
        return bytes(old).replace(b'"value":', b'"value": ', 1)  # type: ignore[call-overload]
    if column in ("prev_hash", "hash"):
        return ("1" if str(old)[0] != "1" else "2") + str(old)[1:]
    return f"{old}x"


def check(report: VerifyReport, expected: int, db: str, kind: str) -> None:
    TAMPER_CASES[(db, kind)] += 1
    assert not report.ok, f"{kind} not detected"
    assert report.first_bad_seq == expected, (kind, report.first_bad_seq, expected, report.reason)


class _as_row:  # a stand-in row for row_hash, which reads attributes
    def __init__(self, values: dict[str, object]) -> None:
        self.__dict__.update(values)


batches_st = st.lists(st.integers(1, 4), min_size=1, max_size=3)
COMMON = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@COMMON
@given(batches=batches_st, data=st.data())
def test_modifying_any_column_of_any_row_is_detected_there(
    chains: Chains, batches: list[int], data: st.DataObject
) -> None:
    n = sum(batches)
    k = data.draw(st.integers(1, n), label="seq")
    column = data.draw(st.sampled_from(COLUMNS), label="column")
    with chains.fresh() as store:
        cps = build(store, batches)
        assert verify_ledger(store, cps, TRUSTED).ok
        with owner(store) as conn:
            old = row(conn, k)._mapping[column]
            conn.execute(
                sa.update(entries).where(entries.c.seq == k).values({column: changed(column, old)})
            )
        check(verify_ledger(store, cps, TRUSTED), k, chains.db, "modify")


@COMMON
@given(batches=batches_st, data=st.data())
def test_deleting_any_row_is_detected_there(
    chains: Chains, batches: list[int], data: st.DataObject
) -> None:
    n = sum(batches)
    k = data.draw(st.integers(1, n), label="seq")
    close_gap = data.draw(st.booleans(), label="renumber the rest")
    with chains.fresh() as store:
        cps = build(store, batches)
        with owner(store) as conn:
            conn.execute(sa.delete(entries).where(entries.c.seq == k))
            if close_gap:
                shift(conn, k + 1, -1)
        check(verify_ledger(store, cps, TRUSTED), k, chains.db, "delete")


@COMMON
@given(batches=batches_st, data=st.data())
def test_inserting_a_row_anywhere_is_detected_there(
    chains: Chains, batches: list[int], data: st.DataObject
) -> None:
    n = sum(batches)
    k = data.draw(st.integers(1, n + 1), label="position")
    source = data.draw(st.integers(1, n), label="copied from")
    rechained = data.draw(st.booleans(), label="hash computed from the true predecessor")
    with chains.fresh() as store:
        cps = build(store, batches)
        with owner(store) as conn:
            copy = dict(row(conn, source)._mapping)
            prev = row(conn, k - 1).hash if k > 1 else "0" * 64
            shift(conn, k, 1)
            copy.update(seq=k, offset=copy["offset"] + 10_000)
            if rechained:
                # A careful forger links the new row to its predecessor correctly; the row
                # after it then no longer links (nor hashes: its seq moved).
                copy["prev_hash"] = prev
                copy["hash"] = row_hash(prev, _as_row(copy))
            conn.execute(sa.insert(entries).values(copy))
        # A rechained row links, so the chain breaks at the row after it; but a checkpoint of
        # exactly size k (signed over the true row k) no longer matches, and a checkpoint
        # mismatch names the start of the range it covers: just after the last one that holds.
        sizes = {cp.size for cp in cps.checkpoints}
        expected = k
        if rechained:
            expected = max((s for s in sizes if s < k), default=0) + 1 if k in sizes else k + 1
        if rechained and k == n + 1:
            # Appended after every checkpoint with a valid link: indistinguishable from a
            # real append, which is why only checkpointed entries are vouched for.
            report = verify_ledger(store, cps, TRUSTED)
            assert report.ok and report.warnings
            TAMPER_CASES[(chains.db, "insert-after-last-checkpoint (undetectable)")] += 1
            return
        check(verify_ledger(store, cps, TRUSTED), expected, chains.db, "insert")


@COMMON
@given(batches=batches_st, data=st.data())
def test_reordering_rows_is_detected_at_the_first_moved(
    chains: Chains, batches: list[int], data: st.DataObject
) -> None:
    n = sum(batches)
    if n < 2:
        batches = [*batches, 1]
        n += 1
    i = data.draw(st.integers(1, n - 1), label="first")
    j = data.draw(st.integers(i + 1, n), label="second")
    with chains.fresh() as store:
        cps = build(store, batches)
        with owner(store) as conn:
            conn.execute(sa.update(entries).where(entries.c.seq == i).values(seq=-1))
            conn.execute(sa.update(entries).where(entries.c.seq == j).values(seq=i))
            conn.execute(sa.update(entries).where(entries.c.seq == -1).values(seq=j))
        check(verify_ledger(store, cps, TRUSTED), i, chains.db, "reorder")


@COMMON
@given(batches=batches_st, data=st.data())
def test_truncating_the_tail_is_detected_by_the_checkpoints(
    chains: Chains, batches: list[int], data: st.DataObject
) -> None:
    n = sum(batches)
    cut = data.draw(st.integers(1, n), label="rows cut")
    with chains.fresh() as store:
        cps = build(store, batches)
        with owner(store) as conn:
            conn.execute(sa.delete(entries).where(entries.c.seq > n - cut))
        assert store.verify_chain().ok  # the chain alone cannot see it
        check(verify_ledger(store, cps, TRUSTED), n - cut + 1, chains.db, "truncate")


@COMMON
@given(batches=batches_st, data=st.data())
def test_a_rewritten_and_rehashed_chain_is_caught_by_the_checkpoints(
    chains: Chains, batches: list[int], data: st.DataObject
) -> None:
    n = sum(batches)
    k = data.draw(st.integers(1, n), label="seq")
    with chains.fresh() as store:
        cps = build(store, batches)
        with owner(store) as conn:
            conn.execute(
                sa.update(entries)
                .where(entries.c.seq == k)
                .values(event_id="forged", model_id="forged")
            )
            prev = row(conn, k - 1).hash if k > 1 else "0" * 64
            for seq in range(k, n + 1):
                r = row(conn, seq)
                digest = row_hash(prev, _as_row({**r._mapping, "prev_hash": prev}))
                conn.execute(
                    sa.update(entries)
                    .where(entries.c.seq == seq)
                    .values(prev_hash=prev, hash=digest)
                )
                prev = digest
        assert store.verify_chain().ok  # every link holds again
        # The checkpoints vouch for sizes; the first one past k no longer matches, so the
        # place named is just after the last checkpoint that still does.
        sizes = [cp.size for cp in cps.checkpoints]
        expected = max((s for s in sizes if s < k), default=0) + 1
        check(verify_ledger(store, cps, TRUSTED), expected, chains.db, "rewrite+rehash")


def test_a_forged_checkpoint_is_refused(chains: Chains) -> None:
    with chains.fresh() as store:
        cps = build(store, [3])
        cp = cps.checkpoints[0]
        forged = cp.model_copy(update={"size": 2})
        other = Ed25519PrivateKey.generate()
        stranger = sign_checkpoint(
            Signer(other, key_id(other.public_key())), 3, cp.head_hash, cp.ts
        )
        report = verify_ledger(store, CheckpointRead([forged, stranger], [4]), TRUSTED)
        assert not report.ok and report.first_bad_seq is None
        assert len(report.checkpoint_problems) == 3
        assert "signature does not match" in report.checkpoint_problems[1]
        assert "not trusted" in report.checkpoint_problems[2]


@pytest.mark.parametrize("column", [c for c in COLUMNS if c != "seq"])
@pytest.mark.parametrize("value", ["CAST({c} AS TEXT)", "7", "x'ff00'", "'x'", "1e400"])
def test_any_value_of_another_type_in_any_column_names_the_seq(
    tmp_path: Path, column: str, value: str
) -> None:
    """SQLite stores whatever it is given: a payload CAST to TEXT used to crash verify with
    TypeError instead of naming the entry. Any type in any column is a broken seq."""
    store = LedgerStore(f"sqlite:///{tmp_path}/ledger.db")
    try:
        cps = build(store, [3, 3])
        assert verify_ledger(store, cps, TRUSTED).ok
        with owner(store) as conn:
            conn.exec_driver_sql(
                f"UPDATE ledger_entries SET {column} = {value.format(c=column)} WHERE seq = 4"
            )
        report = verify_ledger(store, cps, TRUSTED)
    finally:
        store.close()
    if value == "CAST({c} AS TEXT)" and column not in ("payload",):
        # Text stays text for most columns, and some numbers read back equal: only what
        # changed the entry must be named, but nothing may crash.
        assert report.ok or report.first_bad_seq == 4
    else:
        assert not report.ok and report.first_bad_seq == 4, report


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("payload", "x'fffe00'"),
        ("recorded_at", "'garbage'"),
        ("payload", "x'7b2261'"),
        ("payload", "CAST('[1,2]' AS BLOB)"),
        ("model_id", "x'ff'"),
        ("recorded_at", "12345"),
    ],
    ids=[
        "payload-not-utf8",
        "recorded-at-not-a-time",
        "payload-cut-json",
        "payload-not-an-object",
        "model-id-bytes",
        "recorded-at-a-number",
    ],
)
def test_an_unreadable_entry_is_broken_for_every_ledger_command_never_a_traceback(
    tmp_path: Path, column: str, value: str
) -> None:
    """From a user probe: bytes that are not JSON text, or a recorded_at that is no time,
    crashed `ledger verify`, `show` and `export` with a traceback. Each now says which entry
    (exit 5, BROKEN: the ledger does not verify)."""
    from tests.shell.test_cli import one_line_error, rollguard

    db = tmp_path / "ledger.db"
    store = LedgerStore(f"sqlite:///{db}")
    try:
        build(store, [3, 3])
        with owner(store) as conn:
            conn.exec_driver_sql(f"UPDATE ledger_entries SET {column} = {value} WHERE seq = 4")
    finally:
        store.close()
    env = {"ROLLGUARD_STATE_DIR": str(tmp_path / "state")}
    url = f"sqlite:///{db}"
    verify = rollguard("ledger", "verify", "--url", url, env=env)
    assert verify.returncode == 5, verify.stderr
    assert "Traceback" not in verify.stderr
    assert verify.stdout.startswith("ledger BROKEN at seq 4"), verify.stdout
    for command in ("show", "export"):
        result = rollguard("ledger", command, "--url", url, env=env)
        assert result.returncode == 5, (command, result.stderr)
        assert "seq" in one_line_error(result) and result.stdout == "", command
