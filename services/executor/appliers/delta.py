"""The Delta Lake applier (level 4, data): restores the model's training table to the data
version the target manifest names, by Delta's own time travel (``RESTORE``).

The table of each model is ``ROLLGUARD_EXECUTOR_DELTA__TABLES`` (JSON, model id → URI). A
data version is a table version (a number) or a time (ISO 8601: the table as it was then).
Idempotent: each restore commits with the step's idempotency key in its commit metadata, and a
step whose key is among the table's recent commits is applied already (a retry, a
redelivery, an executor killed after the restore) — it is not restored twice, so a newer
write made since is never undone by a replay. The old versions stay readable: a restore is a
new version, not a rewrite of history.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from rollguard_services.executor.appliers.base import Effect, Step
from rollguard_services.executor.settings import DeltaSettings

#: How many of the table's newest commits are searched for a step's idempotency key.
HISTORY = 100
KEY = "rollguard.idempotency_key"


def data_version(text: str) -> int | datetime:
    """A manifest's data version as Delta takes it: a table version, or a time."""
    if text.isdigit():
        return int(text)
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError(f"data version {text!r}: a time needs its UTC offset")
    return when


class DeltaApplier:
    name = "delta"

    def __init__(self, settings: DeltaSettings) -> None:
        self.settings = settings

    async def apply(self, step: Step) -> Effect:
        uri = self.settings.tables.get(step.command.model_id)
        if uri is None:
            return Effect(
                "failed",
                f"no Delta table for {step.command.model_id} (ROLLGUARD_EXECUTOR_DELTA__TABLES)",
            )
        try:
            target = data_version(step.to_version)
        except ValueError as exc:
            return Effect("failed", str(exc))
        return await asyncio.to_thread(self._restore, uri, target, step)

    async def close(self) -> None:
        """Nothing held between steps: each opens the table afresh."""

    def _restore(self, uri: str, target: int | datetime, step: Step) -> Effect:
        from deltalake import CommitProperties, DeltaTable
        from deltalake.exceptions import DeltaError, TableNotFoundError

        try:
            table = DeltaTable(uri, storage_options=self.settings.storage_options or None)
            done = _committed(table.history(limit=HISTORY), step.idempotency_key)
            if done is not None:
                return Effect("applied", f"{uri} restored already (version {done})")
            before = table.version()
            if isinstance(target, int) and target > before:
                return Effect("failed", f"{uri} has no version {target} (its newest is {before})")
            table.restore(
                target,
                commit_properties=CommitProperties(
                    custom_metadata={
                        KEY: step.idempotency_key,
                        "rollguard.command_id": step.command.command_id,
                    }
                ),
            )
            return Effect(
                "applied",
                f"{uri} restored to data version {step.to_version} "
                f"(table version {before} → {table.version()})",
            )
        except TableNotFoundError as exc:
            return Effect("failed", f"{uri}: no Delta table there ({exc})")
        except (DeltaError, OSError) as exc:  # the store away, a commit conflict: try again
            return Effect("failed", f"{uri}: {exc}"[:500], retriable=True)
        except ValueError as exc:  # a version the table does not have
            return Effect("failed", f"{uri}: {exc}"[:500])


def _committed(history: list[dict[str, Any]], key: str) -> int | None:
    for commit in history:
        if commit.get(KEY) == key:
            return int(commit["version"])
    return None
