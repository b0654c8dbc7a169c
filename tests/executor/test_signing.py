"""What the executor publishes is signed with its own key: acks of every kind, invalidations
and the live pointer's manifests all verify against the installation's trust, as an executor
(not a decider, not a deployer) key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from rollguard import topics
from rollguard.errors import ConfigError
from rollguard.events import CommandAck, OutputInvalidation, Signed, SystemManifest
from rollguard.invalidations import InvalidationClient
from rollguard.settings import RollguardSettings
from rollguard.signing import Trust, signer_of, trust_of
from rollguard_services.executor.app import Executor
from rollguard_services.executor.settings import ExecutorSettings
from tests.conftest import TopicReader, run_until
from tests.factories import command, manifest, signed

pytestmark = pytest.mark.broker


def verified_as_executor(event: Signed, trust: Trust, executor_key: str) -> tuple[Any, ...]:
    verdict = trust.check(event)
    return (verdict.ok, verdict.reason, event.key_id == executor_key)


async def test_acks_invalidations_and_pointer_manifests_are_signed_with_the_executor_key(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
) -> None:
    # The command's manifests are as CI recorded them: signed by the deployer.
    bad = signed(manifest("v2", feature_pipeline="fp-2"), topics_ready, "deployer")
    good = signed(manifest("v1", status="known_good"), topics_ready, "deployer")
    level2 = signed(command(level=2, from_manifest=bad, to_manifest=good), topics_ready, "decider")
    await publish(topics.COMMANDS.name, level2)
    await publish(topics.COMMANDS.name, level2)  # a replay: rejected, and that ack signed too
    await publish(topics.COMMANDS.name, command(model_id="m2"))  # unsigned: rejected
    ex = Executor(topics_ready, ExecutorSettings(group_id="signing", executor_id="e"))
    await run_until(
        ex,
        lambda: (ex.counts["applied"], ex.counts["replayed"], ex.counts["rejected"]) == (1, 1, 1),
    )

    trust = trust_of(topics_ready)
    executor_key = signer_of(topics_ready, "executor").key_id
    assert executor_key not in (keys, "")
    acks = [
        CommandAck.model_validate_json(r.value)
        for r in await reader.read(topics.ACKS.name, until=lambda r: len(r) >= 8)
    ]
    assert sorted((a.status, a.component or "") for a in acks) == sorted(
        [
            ("received", ""),
            *(("applied", c) for c in ("feature_pipeline", "config", "model", "infra")),
            ("applied", ""),
            ("rejected", ""),  # the replay
            ("rejected", ""),  # the unsigned command
        ]
    )
    assert [verified_as_executor(a, trust, executor_key) for a in acks] == [(True, "", True)] * 8

    pointer = [
        SystemManifest.model_validate_json(r.value)
        for r in await reader.read(topics.DEPLOYMENTS.name, until=lambda r: len(r) >= 2)
    ]
    assert [m.status for m in pointer] == ["live", "rolled_back"]
    # Copies of the deployer's manifests, moved: the executor's signature replaced the deployer's.
    assert [verified_as_executor(m, trust, executor_key) for m in pointer] == [(True, "", True)] * 2

    (record,) = await reader.read(topics.INVALIDATIONS.name, until=lambda r: len(r) >= 1)
    invalidation = OutputInvalidation.model_validate_json(record.value)
    assert verified_as_executor(invalidation, trust, executor_key) == (True, "", True)
    async with InvalidationClient(topics_ready, trust=trust) as client:
        index = await client.catch_up()
        assert (list(index.matching("m")), index.untrusted) == ([invalidation], 0)


async def test_an_executor_without_its_key_refuses_to_start(
    topics_ready: RollguardSettings, keys: str
) -> None:
    topics_ready.key_file("executor").unlink()
    with pytest.raises(ConfigError, match=r"executor\.pem"):
        Executor(topics_ready, ExecutorSettings(group_id="nokey", executor_id="e"))
