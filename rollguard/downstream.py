"""Dropping a bad version's outputs where downstream systems keep them.

An ``OutputInvalidation`` says: outputs of ``bad_versions`` of ``model_id`` made from
``valid_from`` to ``valid_to`` (both included) are not to be used. This module applies it to
the stores model outputs usually land in, each idempotently (applied twice, the second time
drops nothing) and never touching another version's outputs or the same version's outside the
interval:

- ``RedisOutputs``: a prediction cache in Redis, laid out so it can be invalidated — each
  output at ``<prefix>:<model_id>:<model_version>:<key>`` and, per model version, a sorted set
  ``<prefix>:<model_id>:<model_version>:made`` of those keys scored by when each was made;
- ``drop_from_parquet``: a Parquet file of batch outputs with ``model_id``, ``model_version``
  and a timestamp column, rewritten without the invalid rows (atomically: a reader sees the
  old file or the new one);
- ``drop_from_delta``: a Delta Lake table, its invalid rows deleted (a new table version; the
  old one stays readable by time travel, as Delta keeps it).

``rollguard invalidations drop`` applies every trusted invalidation on the topic to the stores
it is given, once or as they come (``--follow``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rollguard.events import OutputInvalidation

#: Keys deleted per Redis round trip.
_CHUNK = 500


def _epoch(ts: datetime) -> float:
    return ts.astimezone(UTC).timestamp()


class RedisOutputs:
    """A model's cached outputs in Redis (``redis.asyncio.Redis``), droppable by version and
    time: ``put`` where the server caches a prediction, ``get`` where it reads one, ``drop``
    for an invalidation."""

    def __init__(self, redis: Any, prefix: str = "rollguard:outputs") -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, model_id: str, model_version: str, key: str) -> str:
        return f"{self.prefix}:{model_id}:{model_version}:{key}"

    def _made(self, model_id: str, model_version: str) -> str:
        return f"{self.prefix}:{model_id}:{model_version}:made"

    async def put(
        self,
        model_id: str,
        model_version: str,
        key: str,
        value: bytes | str,
        made_at: datetime,
        ttl_s: int | None = None,
    ) -> None:
        name = self._key(model_id, model_version, key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(name, value, ex=ttl_s)
            pipe.zadd(self._made(model_id, model_version), {name: _epoch(made_at)})
            await pipe.execute()

    async def get(self, model_id: str, model_version: str, key: str) -> bytes | None:
        got: bytes | None = await self.redis.get(self._key(model_id, model_version, key))
        return got

    async def drop(self, invalidation: OutputInvalidation) -> int:
        """Delete the outputs ``invalidation`` names; how many were there."""
        low, high = _epoch(invalidation.valid_from), _epoch(invalidation.valid_to)
        dropped = 0
        for version in invalidation.bad_versions:
            made = self._made(invalidation.model_id, version)
            names = await self.redis.zrangebyscore(made, low, high)
            for i in range(0, len(names), _CHUNK):
                chunk = names[i : i + _CHUNK]
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.delete(*chunk)
                    pipe.zrem(made, *chunk)
                    deleted, _ = await pipe.execute()
                dropped += int(deleted)
        return dropped


def _mask(table: Any, invalidations: Iterable[OutputInvalidation], ts_column: str) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column(ts_column)
    unit = column.type.unit if pa.types.is_timestamp(column.type) else "us"
    invalid = pa.array([False] * table.num_rows)
    for inv in invalidations:
        low = pa.scalar(inv.valid_from.astimezone(UTC), pa.timestamp(unit, tz="UTC"))
        high = pa.scalar(inv.valid_to.astimezone(UTC), pa.timestamp(unit, tz="UTC"))
        if pa.types.is_timestamp(column.type) and column.type.tz is None:  # naive: UTC
            low, high = low.cast(pa.timestamp(unit)), high.cast(pa.timestamp(unit))
        hit = pc.and_(
            pc.and_(
                pc.equal(table.column("model_id"), inv.model_id),
                pc.is_in(table.column("model_version"), pa.array(inv.bad_versions)),
            ),
            pc.and_(pc.greater_equal(column, low), pc.less_equal(column, high)),
        )
        invalid = pc.or_(invalid, pc.fill_null(hit, False))
    return invalid


def drop_from_parquet(
    path: Path, invalidations: Iterable[OutputInvalidation], ts_column: str = "ts"
) -> int:
    """Rewrite the Parquet file ``path`` without the rows the invalidations name; how many
    rows went. Nothing matching: the file is not rewritten."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    invalid = _mask(table, list(invalidations), ts_column)
    dropped = int(pc.sum(invalid).as_py() or 0)
    if dropped == 0:
        return 0
    kept = table.filter(pc.invert(invalid))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(kept, tmp)
    os.replace(tmp, path)
    return dropped


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def delta_predicate(inv: OutputInvalidation, ts_column: str = "ts") -> str:
    """The SQL predicate (Delta Lake's ``delete``) of the rows ``inv`` names."""
    versions = ", ".join(_quoted(v) for v in inv.bad_versions)
    low = _quoted(inv.valid_from.astimezone(UTC).isoformat())
    high = _quoted(inv.valid_to.astimezone(UTC).isoformat())
    return (
        f"model_id = {_quoted(inv.model_id)} AND model_version IN ({versions}) "
        f"AND {ts_column} >= {low} AND {ts_column} <= {high}"
    )


def drop_from_delta(
    uri: str, invalidations: Iterable[OutputInvalidation], ts_column: str = "ts"
) -> int:
    """Delete the rows the invalidations name from the Delta table at ``uri``; how many."""
    from deltalake import DeltaTable

    dropped = 0
    for inv in invalidations:
        metrics = DeltaTable(uri).delete(delta_predicate(inv, ts_column))
        dropped += int(metrics.get("num_deleted_rows", 0))
    return dropped
