"""Downstream systems really drop a bad version's outputs (rollguard.downstream): the real
executor applies a rollback of v2 and publishes its signed invalidation; `rollguard
invalidations drop`, as a downstream job runs it, removes v2's outputs made while v2 was live
from a real Redis cache, a Parquet file and a Delta table, keeps v1's and v2's outside the
interval, and drops nothing the second time. A forged invalidation drops nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rollguard import topics
from rollguard.downstream import RedisOutputs
from rollguard.events import OutputInvalidation
from rollguard.settings import RollguardSettings
from rollguard.signing import load_signer, signer_of
from rollguard_services.executor.app import Executor
from rollguard_services.executor.settings import ExecutorSettings
from tests.conftest import TopicReader, run_until, scaled, service_env
from tests.factories import command, manifest

redis_asyncio = pytest.importorskip("redis.asyncio", reason="pip install redis (make test does)")
deltalake = pytest.importorskip("deltalake", reason="pip install deltalake (make test does)")

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def cache() -> AsyncIterator[RedisOutputs]:
    client = redis_asyncio.from_url(REDIS_URL)
    try:
        await client.ping()
    except OSError as exc:
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    outputs = RedisOutputs(client, prefix=f"test-{uuid.uuid4().hex[:8]}")
    yield outputs
    async for key in client.scan_iter(f"{outputs.prefix}:*"):
        await client.delete(key)
    await client.aclose()


def _delta_rows(uri: str) -> list[str]:
    """The request ids in the Delta table now, read file by file with pyarrow: deltalake's
    own pyarrow dataset aborts the interpreter at exit now and then (delta-io/delta-rs#2184,
    apache/arrow#34314), which would kill the test worker."""
    files = deltalake.DeltaTable(uri).file_uris()
    return [r for f in files for r in pq.read_table(f).column("request_id").to_pylist()]


def _drop(settings: RollguardSettings, *args: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-m", "rollguard_shell.cli", "invalidations", "drop", "--json", *args],
        cwd=ROOT,
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


async def test_a_rolled_back_versions_outputs_are_dropped_from_cache_and_tables(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    cache: RedisOutputs,
    tmp_path: Path,
) -> None:
    # v2 went live a minute ago and is rolled back now.
    bad = manifest("v2").model_copy(
        update={"ts": datetime.now().astimezone() - timedelta(minutes=1)}
    )
    cmd = load_signer(topics_ready.resolved_signing_key_file).sign(command(from_manifest=bad))
    await publish(topics.COMMANDS.name, cmd)
    ex = Executor(
        topics_ready, ExecutorSettings(group_id="down", executor_id="e", applier="registry")
    )
    await run_until(ex, lambda: ex.counts["applied"] == 1)
    (record,) = await reader.read(topics.INVALIDATIONS.name, until=lambda r: len(r) >= 1)
    inv = OutputInvalidation.model_validate_json(record.value)
    assert (inv.model_version, inv.valid_from) == ("v2", bad.ts)

    # What downstream holds: v2's outputs from before, during and after its live period, v1's
    # during it (a canary's share, say), and another model's v2.
    before, during, after = (
        inv.valid_from - timedelta(seconds=30),
        inv.valid_from + (inv.valid_to - inv.valid_from) / 2,
        inv.valid_to + timedelta(seconds=30),
    )
    rows = [
        ("m", "v2", before, "keep-v2-before"),
        ("m", "v2", during, "drop-1"),
        ("m", "v2", inv.valid_to, "drop-2"),  # the interval is closed
        ("m", "v2", after, "keep-v2-after"),
        ("m", "v1", during, "keep-v1"),
        ("other", "v2", during, "keep-other"),
    ]
    for model_id, version, ts, key in rows:
        await cache.put(model_id, version, key, f"score-{key}", ts)
    table = pa.table(
        {
            "model_id": [r[0] for r in rows],
            "model_version": [r[1] for r in rows],
            "ts": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
            "request_id": [r[3] for r in rows],
        }
    )
    parquet = tmp_path / "outputs.parquet"
    pq.write_table(table, parquet)
    delta = str(tmp_path / "outputs-delta")
    deltalake.write_deltalake(delta, table)

    # A forged invalidation of v1 (no executor key signed it) is left out: drops nothing.
    forged = inv.model_copy(
        update={"event_id": uuid.uuid4().hex, "model_version": "v1", "bad_versions": ["v1"]}
    )
    await publish(
        topics.INVALIDATIONS.name, signer_of(topics_ready, "detector").sign(forged), key=b"m:v1:x"
    )

    stores = [
        "--redis",
        REDIS_URL,
        "--redis-prefix",
        cache.prefix,
        "--parquet",
        str(parquet),
        "--delta",
        delta,
    ]
    first = _drop(topics_ready, *stores)
    assert first["invalidations"] == 1 and first["untrusted"] == 1
    assert (first["redis"], first[f"parquet:{parquet}"], first[f"delta:{delta}"]) == (2, 2, 2)

    kept = sorted(r[3] for r in rows if r[3].startswith("keep"))
    for model_id, version, _, key in rows:
        got = await cache.get(model_id, version, key)
        assert (got is not None) == key.startswith("keep"), key
    assert sorted(pq.read_table(parquet).column("request_id").to_pylist()) == kept
    assert sorted(_delta_rows(delta)) == kept

    again = _drop(topics_ready, *stores)  # idempotent: a second pass drops nothing
    assert (again["redis"], again[f"parquet:{parquet}"], again[f"delta:{delta}"]) == (0, 0, 0)
    assert sorted(pq.read_table(parquet).column("request_id").to_pylist()) == kept
