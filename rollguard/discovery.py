"""Where a running `rollguard up` listens: recorded in its state directory, found by every
other command started with the same state directory and no ROLLGUARD_KAFKA_BOOTSTRAP."""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import orjson

from rollguard.secrets import private_dir
from rollguard.settings import RollguardSettings

RECORD = "broker.json"


@dataclass(frozen=True)
class BrokerRecord:
    bootstrap: str
    pid: int  # the `rollguard up` process

    @classmethod
    def read(cls, state_dir: Path) -> BrokerRecord | None:
        """The record of a `rollguard up` that still runs and whose broker answers, else None
        (a record left by a killed `up` is ignored)."""
        try:
            doc = orjson.loads((state_dir / RECORD).read_bytes())
            record = cls(str(doc["bootstrap"]), int(doc["pid"]))
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        return record if record.alive() else None

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # someone else's process: it exists
        host, _, port = self.bootstrap.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return True
        except (OSError, ValueError):
            return False

    def write(self, state_dir: Path) -> Path:
        private_dir(state_dir)
        path = state_dir / RECORD
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"bootstrap": self.bootstrap, "pid": self.pid}))
        tmp.replace(path)
        return path

    def remove(self, state_dir: Path) -> None:
        """Remove the record if it is still this one (a later `up` may have replaced it)."""
        path = state_dir / RECORD
        with contextlib.suppress(OSError, orjson.JSONDecodeError, KeyError):
            if orjson.loads(path.read_bytes())["pid"] == self.pid:
                path.unlink()


def with_running_broker(settings: RollguardSettings) -> RollguardSettings:
    """Settings pointing at the broker of the `rollguard up` running on the same state
    directory, when no bootstrap is set; else the settings unchanged."""
    if not settings.embedded:
        return settings
    record = BrokerRecord.read(settings.state_dir)
    if record is None:
        return settings
    # The embedded broker cannot do idempotent producers: asking first cost every command a
    # refused attempt and a JSON warning on stderr.
    return settings.model_copy(
        update={"kafka_bootstrap": record.bootstrap, "enable_idempotence": False}
    )
