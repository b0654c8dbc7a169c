"""One way from a SQLAlchemy URL to an engine, for every store: SQLite files, memory, PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from rollguard.database import create_tables, engine_for, sqlite_file


def roundtrip(engine: sa.Engine) -> list[tuple[int, str]]:
    """Create a table, write a row in one connection and read it back in another."""
    metadata = sa.MetaData()
    table = sa.Table(
        "probe", metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Text)
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(table).values(id=1, v="kept"))
    with engine.connect() as conn:
        return [(r.id, r.v) for r in conn.execute(sa.select(table))]


def test_a_sqlite_file_in_a_directory_not_yet_there_is_created(tmp_path: Path) -> None:
    path = tmp_path / "state" / "deeper" / "store.db"
    url = f"sqlite:///{path}"
    assert sqlite_file(url) == path
    engine = engine_for(url)
    try:
        assert path.parent.is_dir()
        assert roundtrip(engine) == [(1, "kept")]
        assert path.is_file()
    finally:
        engine.dispose()
    again = engine_for(url)  # the directory exists now: opening again is fine
    try:
        with again.connect() as conn:
            assert conn.execute(sa.text("SELECT v FROM probe")).scalar_one() == "kept"
    finally:
        again.dispose()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_sqlite_in_memory_creates_no_file(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_file(url) is None
    engine = engine_for(url)
    try:
        # One pooled connection per thread, so the in-memory database outlives a connection.
        assert roundtrip(engine) == [(1, "kept")]
    finally:
        engine.dispose()
    assert list(tmp_path.iterdir()) == []


def test_a_fresh_database_on_either_backend_takes_tables(database_url: str) -> None:
    """SQLite file or PostgreSQL (a schema of its own on the server at 127.0.0.1:5432)."""
    backend = sa.engine.make_url(database_url).get_backend_name()
    assert (sqlite_file(database_url) is None) == (backend == "postgresql")
    engine = engine_for(database_url)
    try:
        assert engine.dialect.name == backend
        assert roundtrip(engine) == [(1, "kept")]
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_services_creating_their_tables_at_once_take_turns(database_url: str) -> None:
    """Issue 15: two executors started together against one inbox database both saw no
    table, both created it, and one died of PostgreSQL's duplicate type."""
    from rollguard_services.executor.inbox import metadata

    engines = [engine_for(database_url) for _ in range(6)]
    start = threading.Barrier(len(engines))
    failed: list[BaseException] = []

    def create(engine: sa.Engine) -> None:
        start.wait()
        try:
            create_tables(engine, metadata)
        except BaseException as exc:  # what the racing service would die of
            failed.append(exc)

    threads = [threading.Thread(target=create, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert failed == []
        assert set(metadata.tables) <= set(sa.inspect(engines[0]).get_table_names())
    finally:
        for e in engines:
            e.dispose()
