"""Opening a service's database from its SQLAlchemy URL: one way for every store (the ledger,
the executor's inbox, the notifier's outbox), SQLite or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url


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

    SQLite: the file's parent directory is created first (so a fresh state directory works);
    ``sqlite://`` and ``sqlite:///:memory:`` are in memory and create nothing. PostgreSQL (and
    any other dialect): the database must exist already. Either way the engine has
    SQLAlchemy's defaults: no pragmas (SQLite keeps its rollback journal, no busy timeout, no
    foreign-key enforcement), the default pool, no connection-time options beyond the URL's.

    Raises OSError when the directory cannot be created; connection errors come on first use.
    """
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(url)
