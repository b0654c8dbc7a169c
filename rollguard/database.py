"""Opening a service's database from its SQLAlchemy URL: one way for every store (the ledger,
the executor's inbox, the notifier's outbox), SQLite or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from rollguard.logs import get_logger
from rollguard.secrets import ensure_private_file

log = get_logger("rollguard.database")

#: What SQLite keeps beside a database file, with the database's own mode when it makes them.
_SQLITE_SIBLINGS = ("-journal", "-wal", "-shm")


def sqlite_file(url: str | URL) -> Path | None:
    """The file a SQLite URL names; None for an in-memory SQLite database or another dialect."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def engine_for(url: str) -> sa.Engine:
    """An engine for ``url``, ready for ``metadata.create_all``.

    SQLite: the file's missing directories are created first, 0700 (so a fresh state directory
    works), and the file itself 0600 before SQLite opens it; a database, or a file of its
    journal, open to group or others (made by an older rollguard) is tightened to 0600 with a
    warning. ``sqlite://`` and ``sqlite:///:memory:`` are in memory and create nothing.
    PostgreSQL (and any other dialect): the database must exist already. Either way the engine has
    SQLAlchemy's defaults: no pragmas (SQLite keeps its rollback journal, no busy timeout, no
    foreign-key enforcement), the default pool, no connection-time options beyond the URL's.

    Raises OSError when the directory or the file cannot be created; connection errors come on
    first use.
    """
    path = sqlite_file(url)
    if path is not None:
        private_sqlite(path)
    return sa.create_engine(url)


def private_sqlite(path: Path) -> None:
    """``path`` and whichever of its journal files exist are 0600 (see engine_for)."""
    journal = [path.with_name(path.name + suffix) for suffix in _SQLITE_SIBLINGS]
    for file in [path, *(j for j in journal if j.exists())]:
        was = ensure_private_file(file)
        if was is not None:
            log.warning("database_tightened", path=str(file), mode=f"{was:04o}", now="0600")


def create_tables(engine: sa.Engine, metadata: sa.MetaData, *more_ddl: str) -> None:
    """Create what of ``metadata`` is missing (and run ``more_ddl``, idempotent statements
    such as triggers), in one transaction.

    On PostgreSQL the transaction first takes an advisory lock named after the tables, so
    services starting at once against one database (two executors sharing an inbox, say)
    take turns: without it both see no table, both create it, and one dies of a duplicate
    type. The lock goes with the transaction."""
    names = ",".join(sorted(metadata.tables))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:n))"), {"n": names})
        metadata.create_all(conn)
        for ddl in more_ddl:
            conn.exec_driver_sql(ddl)
