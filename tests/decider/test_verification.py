"""A rollback's verification through the broker (issue 14, part 1): the reference router
serves, the real detector measures and reports traffic, the real decider decides, the real
executor applies. The restored version is then

- good and serving: ``verified``, with the requests it served;
- still bad (its errors breach the immediate tier): ``verification_failed``, model locked;
- serving nothing (its traffic stops at the switch): ``unverifiable``, model locked;

each with the notification it causes (the notifier's own rules, fed the real decision)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

from rollguard import topics
from rollguard.events import CommandAck, Decision, Event, ModelStatus, TrafficReport
from rollguard.policy import ModelPolicy
from rollguard.settings import RollguardSettings
from rollguard_services.notifier.notifications import (
    NOT_VERIFIED,
    PAGE_ALWAYS,
    channels_for,
    from_decision,
)
from rollguard_services.router.app import RouterService
from rollguard_services.router.settings import RouterSettings, SyntheticModelSpec
from rollguard_shell.runner import as_client, build_service, run_services
from tests.conftest import HEAVY, TopicReader, scaled
from tests.factories import manifest, signed

pytestmark = pytest.mark.broker
E = TypeVar("E", bound=Event)

VERIFICATION_S = 3.0
BAD = SyntheticModelSpec(error_rate=0.3)
GOOD = SyntheticModelSpec(error_rate=0.0)


def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policy"
    directory.mkdir()
    doc = {"models": {"m": {"rollback": {"verification_s": VERIFICATION_S, "bake_s": 3600}}}}
    (directory / "10-test.yaml").write_text(yaml.safe_dump(doc))
    return directory


@HEAVY
@pytest.mark.parametrize("restored", ["good", "bad", "silent"])
async def test_the_restored_version_is_verified_only_on_what_it_served(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    keys: str,
    tmp_path: Path,
    restored: str,
) -> None:
    settings = topics_ready.model_copy(update={"policy_path": policy_dir(tmp_path)})
    router_service = RouterService(
        as_client("router", settings),
        RouterSettings(
            model_id="m",
            rate_rps=200,
            versions={"v1": BAD if restored == "bad" else GOOD, "v2": BAD},
            seed=3,
        ),
    )
    services = [router_service] + [
        build_service(n, settings) for n in ("detector", "decider", "executor")
    ]
    # v1 known good, v2 live: the router's first version is the bad one.
    await publish(topics.DEPLOYMENTS.name, signed(manifest("v1", "s1", "known_good"), settings))
    await publish(topics.DEPLOYMENTS.name, signed(manifest("v2", "s2", "live"), settings))
    task = asyncio.create_task(run_services(services))

    async def read(
        cls: type[E], name: str, done: Callable[[list[E]], bool], wait: float
    ) -> list[E]:
        decoded = lambda rs: [cls.model_validate_json(r.value) for r in rs]  # noqa: E731
        return decoded(await reader.read(name, until=lambda rs: done(decoded(rs)), timeout_s=wait))

    def ends(code: str) -> Callable[[list[Decision]], bool]:
        return lambda ds: any(d.reasons[-1].code == code for d in ds)

    try:
        await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in services)), scaled(60))
        await read(
            CommandAck, topics.ACKS.name, lambda a: any(x.status == "applied" for x in a), 60
        )
        if restored == "silent":
            router_service.rate_rps = 0  # nothing is served from the switch on
        wait = VERIFICATION_S + 30
        if restored == "good":
            await read(
                CommandAck, topics.ACKS.name, lambda a: any(x.status == "verified" for x in a), wait
            )
        else:
            code = "verification_failed" if restored == "bad" else "unverifiable"
            await read(Decision, topics.DECISIONS.name, ends(code), wait)
        # The status the decider publishes after the outcome (the lock, if any).
        await asyncio.sleep(1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    has_verified = lambda a: any(x.status == "verified" for x in a)  # noqa: E731
    acks = await read(
        CommandAck,
        topics.ACKS.name,
        lambda a: has_verified(a) if restored == "good" else len(a) >= 3,
        5,
    )
    decisions = await read(Decision, topics.DECISIONS.name, lambda d: len(d) >= 2, 5)
    traffic = await read(TrafficReport, topics.TRAFFIC.name, lambda t: len(t) >= 1, 5)
    status = (await read(ModelStatus, topics.MODEL_STATUS.name, lambda s: len(s) >= 1, 5))[-1]
    rollback = next(d for d in decisions if d.action == "rollback")
    assert rollback.model_version == "v2" and rollback.target_system_version == "s1"
    assert traffic and all(t.signature for t in traffic)  # the detector signs what it counts
    served_v1 = sum(t.served for t in traffic if t.model_version == "v1" and t.end > rollback.ts)
    if restored == "good":
        (verified,) = [a for a in acks if a.status == "verified"]
        assert verified.model_version == "v1" and "serving" in verified.detail
        assert verified.timings["verification_requests"] >= 100
        assert served_v1 >= verified.timings["verification_requests"]
        assert status.locked is None
        return
    (last,) = [d for d in decisions if d.reasons[-1].code in NOT_VERIFIED]
    assert last.action == "investigate" and last.model_version == "v1"
    assert last.command_id == rollback.command_id
    assert last.parent_decision_id == rollback.event_id
    assert not any(a.status == "verified" for a in acks)
    assert status.locked == last.reasons[-1].code
    if restored == "bad":
        assert last.reasons[-1].code == "verification_failed"
        assert last.breach_ids  # the restored version's own breach
    else:
        assert last.reasons[-1].code == "unverifiable"
        detail = last.reasons[-1].detail
        assert "verification_min_requests" in detail and "100 needed" in detail
        assert last.metrics["verification_requests"] < 100
    note = from_decision(last, [], notify_holds=False)
    assert note is not None and note.kind == last.reasons[-1].code and note.kind in PAGE_ALWAYS
    assert note.incident_ref == rollback.command_id  # the rollback's page, not a new one
    routes = ModelPolicy().notifications.model_dump()
    assert "pagerduty" in channels_for(note, routes, [], False, ["slack", "pagerduty"])
