"""Subcommands of `rollguard`, one module per group, each with ``register(sub)``.

A handler takes the parsed arguments and the settings and returns the exit status
(``ExitCode``); an outcome such as "not ready" is returned, with one line on stderr. User
errors are raised as ``RollguardError`` subclasses, whose class carries the exit status (one
line, no traceback). Handlers are attached with ``set_defaults(handler=...)``; ``logs=False``
means the handler configures logging itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from rollguard.errors import BrokerMissing, MissingDependency, UsageError
from rollguard.secrets import private_dir
from rollguard.settings import RollguardSettings

Handler = Callable[[argparse.Namespace, RollguardSettings], int]
Subparsers = Any  # argparse's _SubParsersAction is private


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``rollguard: error: ...`` like the rest."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"rollguard: error: {message} (see {self.prog} --help)\n")


def group(sub: Subparsers, name: str, help_text: str) -> Subparsers:
    """A command with its own subcommands (``rollguard <name> <action>``)."""
    parser = sub.add_parser(name, help=help_text)
    return parser.add_subparsers(dest="action", required=True, parser_class=Parser)


def require_broker(settings: RollguardSettings) -> None:
    """BrokerMissing unless a broker is configured or a `rollguard up` runs on the state
    directory (the CLI has already looked for one: ``with_running_broker``)."""
    if settings.embedded:
        raise BrokerMissing(
            "no broker: set ROLLGUARD_KAFKA_BOOTSTRAP to the Kafka rollguard runs on, or start "
            f"`rollguard up` with this state directory ({settings.state_dir})"
        )


@contextlib.contextmanager
def writing(where: str) -> Iterator[None]:
    """An OSError while writing where the user pointed (``where``: the option or setting
    that names it) is theirs to fix: one line naming the path, exit 2."""
    try:
        yield
    except OSError as exc:
        path = exc.filename if exc.filename is not None else where
        raise UsageError(f"cannot write {path}: {exc.strerror or exc} ({where})") from exc


def writable_state_dir(settings: RollguardSettings) -> None:
    """Create the state directory (0700: it holds keys and databases), or say in one line why
    it cannot be written."""
    with writing("ROLLGUARD_STATE_DIR"):
        private_dir(settings.state_dir)
    if not os.access(settings.state_dir, os.W_OK | os.X_OK):
        raise UsageError(
            f"cannot write {settings.state_dir}: permission denied (ROLLGUARD_STATE_DIR)"
        )


def database_url(url: str, where: str) -> str:
    """``url`` when SQLAlchemy can parse it and its driver imports; else one line naming
    ``where`` (``--url``, ``ROLLGUARD_LEDGER_URL``). Nothing is opened or created, and the
    URL is not repeated (it may hold a password)."""
    expected = "use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
    try:
        parsed = make_url(url)
    except (sa.exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise UsageError(f"{where} is not a database URL; {expected}") from None
    try:
        dialect = parsed.get_dialect()
    except sa.exc.NoSuchModuleError:
        raise UsageError(f"{where}: unknown database {parsed.drivername!r}; {expected}") from None
    try:
        dialect.import_dbapi()
    except ModuleNotFoundError as exc:
        raise MissingDependency(
            f"{where}: the database driver {exc.name!r} of {parsed.drivername}:// is not "
            "installed; for PostgreSQL use postgresql+psycopg:// and "
            "pip install 'rollguard[postgres]'"
        ) from None
    except ImportError as exc:  # installed but unusable, e.g. psycopg without libpq
        raise MissingDependency(
            f"{where}: the database driver of {parsed.drivername}:// does not load ({exc}); "
            "pip install 'rollguard[postgres]' installs psycopg with its libpq"
        ) from None
    return url
