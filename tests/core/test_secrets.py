"""Secrets on disk: 0600 from the first byte whatever the umask, directories 0700, a secret
open to others refused in one line, a database from an older rollguard tightened."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from rollguard.authority import TokenRegistry, create_token
from rollguard.database import engine_for
from rollguard.errors import ConfigError, ExitCode
from rollguard.secrets import check_private, ensure_private_file, private_dir, write_private
from rollguard.signing import generate_keypair, load_signer
from rollguard_services.executor.inbox import Inbox
from rollguard_services.ledger.store import LedgerStore
from rollguard_services.notifier.outbox import Outbox

UMASKS = [0o000, 0o022, 0o077, 0o277]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


class Watcher:
    """Polls a directory from another thread, as someone else's process would, and keeps
    every mode it saw on every name."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.seen: dict[str, set[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in os.scandir(self.directory):
                if entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    found = stat.S_IMODE(os.stat(entry.path).st_mode)
                except FileNotFoundError:
                    continue  # renamed or removed between the listing and the stat
                self.seen.setdefault(entry.name, set()).add(found)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def shared(self) -> dict[str, list[str]]:
        """Names seen with a mode open to group or others."""
        return {
            name: [f"{m:04o}" for m in sorted(modes) if m & 0o077]
            for name, modes in self.seen.items()
            if any(m & 0o077 for m in modes)
        }


def written_then_chmodded(path: Path, data: bytes) -> None:
    """How key and token files were written before: what the watcher must be able to catch."""
    path.write_bytes(data)
    path.chmod(0o600)


def watch_writes(
    tmp_path: Path, write: Callable[[Path, bytes], None], times: int, *, until_caught: bool
) -> Watcher:
    directory = tmp_path / "watched"
    directory.mkdir()
    data = os.urandom(256 * 1024)
    with umask(0o022), Watcher(directory) as watcher:
        for _ in range(times):
            write(directory / "secret", data)
            (directory / "secret").unlink()  # the next write creates it again
            if until_caught and watcher.shared():
                break
    return watcher


@pytest.mark.parametrize("value", UMASKS, ids=[f"umask-{u:03o}" for u in UMASKS])
def test_a_secret_and_its_new_directories_are_private_whatever_the_umask(
    tmp_path: Path, value: int
) -> None:
    path = tmp_path / "a" / "b" / "secret.pem"
    with umask(value):
        write_private(path, b"first")
        write_private(path, b"second")  # replaced whole, still private
    assert path.read_bytes() == b"second"
    assert mode(path) == 0o600
    assert (mode(tmp_path / "a"), mode(tmp_path / "a" / "b")) == (0o700, 0o700)
    assert [p.name for p in path.parent.iterdir()] == ["secret.pem"]  # no temporary left


def test_a_directory_that_was_there_is_left_as_it_is(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    private_dir(tmp_path)
    private_dir(tmp_path / "new")
    assert (mode(tmp_path), mode(tmp_path / "new")) == (0o755, 0o700)


def test_a_secret_is_never_seen_open_to_others_while_it_is_written(tmp_path: Path) -> None:
    watcher = watch_writes(tmp_path, write_private, 100, until_caught=False)
    assert watcher.shared() == {}
    # the watcher did look mid-write: it saw temporary files, not only finished ones
    assert any(name.endswith(".tmp") for name in watcher.seen), watcher.seen


def test_a_private_key_is_never_seen_open_to_others_while_it_is_made(tmp_path: Path) -> None:
    trusted = tmp_path / "trusted"
    watcher = watch_writes(
        tmp_path, lambda path, _: generate_keypair(path, trusted), 100, until_caught=False
    )
    assert watcher.shared() == {}
    assert any(name.endswith(".tmp") for name in watcher.seen), watcher.seen


def test_a_private_key_and_its_new_directory_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "keys" / "signing.pem"
    with umask(0o022):
        generate_keypair(path, tmp_path / "state" / "keys" / "trusted")
    assert (mode(path), mode(path.parent), mode(path.parent.parent)) == (0o600, 0o700, 0o700)
    load_signer(path)  # its owner's: taken


def test_a_private_key_open_to_others_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    generate_keypair(path, tmp_path / "trusted")
    path.chmod(0o644)
    with pytest.raises(ConfigError) as refused:
        load_signer(path)
    assert str(refused.value) == (
        f"signing key {path} is open to group or others (mode 0644); chmod 600 {path}"
    )


def test_the_watcher_catches_a_file_written_then_chmodded(tmp_path: Path) -> None:
    """The check above could fail: the old way of writing a key is caught within a few
    hundred writes (usually the first ten)."""
    watcher = watch_writes(tmp_path, written_then_chmodded, 2000, until_caught=True)
    assert watcher.shared() == {"secret": ["0644"]}


@pytest.mark.parametrize("open_mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o700 | 0o007])
def test_a_secret_open_to_group_or_others_is_refused_in_one_line(
    tmp_path: Path, open_mode: int
) -> None:
    path = tmp_path / "signing.pem"
    path.write_bytes(b"k")
    path.chmod(open_mode)
    with pytest.raises(ConfigError) as refused:
        check_private(path, "signing key")
    line = str(refused.value)
    assert line == (
        f"signing key {path} is open to group or others (mode {open_mode:04o}); chmod 600 {path}"
    )
    assert refused.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize("private_mode", [0o600, 0o400, 0o700])
def test_a_secret_only_its_owner_can_use_is_accepted(tmp_path: Path, private_mode: int) -> None:
    path = tmp_path / "signing.pem"
    path.write_bytes(b"k")
    path.chmod(private_mode)
    check_private(path, "signing key")


def test_a_missing_secret_is_not_a_permission_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        check_private(tmp_path / "nowhere.pem", "signing key")


def test_the_tokens_file_is_created_private_and_refused_once_open(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "tokens.yaml"
    with umask(0o022):
        create_token(path, "dora", "sre")
        create_token(path, "dan", "sre")  # rewritten whole: still 0600
    assert (mode(path), mode(path.parent)) == (0o600, 0o700)
    assert len(TokenRegistry.load(path)) == 2
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"tokens file .* \(mode 0644\); chmod 600 "):
        TokenRegistry.load(path)
    with pytest.raises(ConfigError, match="chmod 600"):
        create_token(path, "eve", "sre")  # nor added to


def test_a_database_file_is_made_0600_before_sqlite_opens_it(tmp_path: Path) -> None:
    path = tmp_path / "state" / "store.db"
    with umask(0o022):
        assert ensure_private_file(path) is None
        assert (path.stat().st_size, mode(path), mode(path.parent)) == (0, 0o600, 0o700)
        assert ensure_private_file(path) is None  # there already: left as it is


def test_sqlite_gives_its_journal_files_the_database_s_mode(tmp_path: Path) -> None:
    """A write-ahead log and its index hold rows not yet in the database: while a connection
    is open they are there, as private as the database."""
    path = tmp_path / "state" / "store.db"
    with umask(0o022):
        engine = engine_for(f"sqlite:///{path}")
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                conn.exec_driver_sql("CREATE TABLE t (v TEXT)")
                conn.exec_driver_sql("INSERT INTO t VALUES ('row')")
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT v FROM t")).scalar_one() == "row"
                journal = [path.with_name(path.name + s) for s in ("-wal", "-shm")]
                assert all(j.exists() for j in journal)
                assert [mode(p) for p in (path, *journal)] == [0o600, 0o600, 0o600]
        finally:
            engine.dispose()


STORES: dict[str, Callable[[str], object]] = {
    "ledger": LedgerStore,
    "executor-inbox": Inbox,
    "notifier-outbox": Outbox,
}


@pytest.mark.parametrize("store", STORES, ids=list(STORES))
def test_every_store_creates_its_database_private(tmp_path: Path, store: str) -> None:
    path = tmp_path / "state" / f"{store}.db"
    with umask(0o022):
        opened = STORES[store](f"sqlite:///{path}")
    opened.engine.dispose()  # type: ignore[attr-defined]
    assert path.stat().st_size > 0  # its schema is written
    assert (mode(path), mode(path.parent)) == (0o600, 0o700)


def test_a_database_of_an_older_rollguard_is_tightened_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with umask(0o022):
        old = sqlite3.connect(path)
        old.execute("CREATE TABLE t (v TEXT)")
        old.commit()
        old.close()
        path.with_name("ledger.db-journal").write_bytes(b"")  # left by a crash
    assert mode(path) == 0o644
    with capture_logs() as logs:
        engine_for(f"sqlite:///{path}").dispose()
    assert mode(path) == 0o600
    assert mode(path.with_name("ledger.db-journal")) == 0o600
    assert [(e["event"], e["log_level"], e["mode"], Path(e["path"]).name) for e in logs] == [
        ("database_tightened", "warning", "0644", "ledger.db"),
        ("database_tightened", "warning", "0644", "ledger.db-journal"),
    ]
    with capture_logs() as again:
        engine_for(f"sqlite:///{path}").dispose()
    assert again == []  # once tightened, nothing more to say
