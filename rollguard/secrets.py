"""Secrets on disk: private keys, the tokens file and the SQLite databases are their owner's alone.

A secret file has mode 0600 from its first byte, never written and chmodded after: it is
written under a temporary name created with that mode in the same directory, fsynced and
renamed into place. The directories rollguard creates for secrets are 0700.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from rollguard.errors import ConfigError

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
#: The group's and others' bits: a secret with any of them set is not private.
_SHARED = stat.S_IRWXG | stat.S_IRWXO


def private_dir(path: Path) -> None:
    """Create ``path`` and each missing parent with mode 0700.

    A directory that exists already is left as it is: it may be the user's (a home, /tmp, a
    mounted volume), and what rollguard keeps in it is 0600 anyway. OSError when one cannot be
    created.
    """
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # made meanwhile by another process
        # The umask can only have taken bits away, the owner's included: give those back.
        os.chmod(directory, PRIVATE_DIR)


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600 from the first byte; its missing
    directories are created 0700. A reader sees the old file or the new one, never half."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        with open(fd, "wb") as f:
            os.fchmod(f.fileno(), PRIVATE_FILE)  # as in private_dir: the owner's bits back
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def ensure_private_file(path: Path) -> int | None:
    """Make sure ``path`` exists with mode 0600, its contents untouched: created empty with
    that mode when missing, tightened when it is open to group or others.

    What a SQLite database is opened through: sqlite3 creates a missing file with the umask's
    mode (0644 under the usual 022), while it opens an existing one as it is and gives its
    -journal, -wal and -shm files the database's own mode. An empty file is an empty database.
    Returns the mode a file had when it was tightened, else None.
    """
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if not mode & _SHARED:
            return None
        os.chmod(path, mode & ~_SHARED)
        return mode
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    return None


def check_private(path: Path, what: str) -> None:
    """Refuse a secret that group or others may read or write: ConfigError, one line naming
    ``what`` it is, the file, its mode and the fix. FileNotFoundError when it is not there."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & _SHARED:
        raise ConfigError(
            f"{what} {path} is open to group or others (mode {mode:04o}); chmod 600 {path}"
        )


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a crash could otherwise undo it)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
