"""Level 4 (data) on Delta Lake, through the broker: a signed level-4 command restores the
model's training table (a real Delta table written here, a bad load appended after the good
one) to the data version its target manifest names, then retrains on it (a command step), each
acked; the acks are in the ledger; a replay restores nothing twice, even after a newer write;
and a table version the table does not have fails with the reason."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rollguard import topics
from rollguard.events import CommandAck, RollbackCommand
from rollguard.settings import RollguardSettings
from rollguard.signing import load_signer
from rollguard_services.executor.app import Executor
from rollguard_services.executor.settings import CommandSettings, DeltaSettings, ExecutorSettings
from tests.conftest import TopicReader, ledgered_acks, run_until
from tests.factories import command, manifest

deltalake = pytest.importorskip("deltalake", reason="pip install deltalake (make test does)")

pytestmark = pytest.mark.broker

RETRAIN = """
import json, os, sys
doc = json.load(sys.stdin)
with open(os.environ["RETRAINED"], "a") as f:
    f.write(json.dumps([doc["component"], doc["to_version"], doc["command_id"]]) + "\\n")
print(f"retraining {doc['model_id']} as {doc['to_version']} was trained")
"""


def _rows(uri: str) -> list[int]:
    # file by file: deltalake's own pyarrow dataset aborts the interpreter at exit now and
    # then (delta-io/delta-rs#2184), which would kill the test worker
    return sorted(
        x for f in deltalake.DeltaTable(uri).file_uris() for x in pq.read_table(f)["x"].to_pylist()
    )


def _level4(data_from: str, data_to: str) -> RollbackCommand:
    def with_data(m: object, data: str) -> object:
        return m.model_copy(update={"components": m.components.model_copy(update={"data": data})})  # type: ignore[attr-defined]

    return command(
        level=4,
        from_manifest=with_data(manifest("v2"), data_from),
        to_manifest=with_data(manifest("v1", status="known_good"), data_to),
    )


async def test_level_4_restores_the_delta_table_retrains_and_is_ledgered(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = str(tmp_path / "fraud-training")
    deltalake.write_deltalake(table, pa.table({"x": [1, 2, 3]}))  # version 0: the good load
    deltalake.write_deltalake(table, pa.table({"x": [666]}), mode="append")  # 1: the bad one
    script = tmp_path / "retrain.py"
    script.write_text(RETRAIN)
    retrained = tmp_path / "retrained.jsonl"
    monkeypatch.setenv("RETRAINED", str(retrained))

    signer = load_signer(topics_ready.resolved_signing_key_file)
    cmd = signer.sign(_level4("1", "0"))
    await publish(topics.COMMANDS.name, cmd)
    await publish(topics.COMMANDS.name, cmd)  # a replay
    settings = ExecutorSettings(
        group_id="delta",
        executor_id="e",
        applier=None,
        appliers_by_model={"m": {"data": "delta", "retrain": "command"}},
        delta=DeltaSettings(tables={"m": table}),
        command=CommandSettings(argv=[sys.executable, str(script)]),
    )
    ex = Executor(topics_ready, settings)
    await run_until(ex, lambda: ex.counts["applied"] == 1 and ex.counts["replayed"] == 1)
    assert _rows(table) == [1, 2, 3]  # the table as data version 0 had it
    history = deltalake.DeltaTable(table).history(limit=5)
    assert (
        history[0]["operation"] == "RESTORE"
        and history[0]["rollguard.command_id"] == cmd.command_id
    )
    assert [json.loads(line)[:2] for line in retrained.read_text().splitlines()] == [
        ["retrain", "v1"]
    ]

    # received, data applied, retrain applied, the command applied, the replay rejected
    acks = [
        CommandAck.model_validate_json(r.value)
        for r in await reader.read(topics.ACKS.name, until=lambda r: len(r) >= 5)
    ]
    by_component = {(a.component, a.status): a for a in acks if a.command_id == cmd.command_id}
    assert (
        "restored to data version 0 (table version 1 → 2)"
        in by_component[("data", "applied")].detail
    )
    assert "retraining m as v1 was trained" in by_component[("retrain", "applied")].detail
    assert ("", "applied") in by_component or (None, "applied") in by_component

    # A newer load after the restore, then the same command's step again (a redelivery after
    # a crash, say): the key is in the table's history, nothing is restored twice.
    deltalake.write_deltalake(table, pa.table({"x": [4]}), mode="append")
    from rollguard_services.executor.appliers.base import Step
    from rollguard_services.executor.appliers.delta import DeltaApplier

    again = await DeltaApplier(settings.delta).apply(Step(cmd, "data", "1", "0", single=False))
    assert again.status == "applied" and "restored already" in again.detail
    assert _rows(table) == [1, 2, 3, 4]

    missing = await DeltaApplier(settings.delta).apply(
        Step(signer.sign(_level4("2", "99")), "data", "2", "99", single=False)
    )
    assert missing.status == "failed" and not missing.retriable, missing

    recorded = await ledgered_acks(topics_ready, {cmd.command_id}, 4)
    assert {(p.get("component"), p["status"]) for p in recorded} >= {
        ("data", "applied"),
        ("retrain", "applied"),
    }
