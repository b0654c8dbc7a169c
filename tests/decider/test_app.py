"""The faust decider through the broker: one decider, one scenario per model, every outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
import yaml

from rollguard import topics
from rollguard.authority import Identity, TokenRegistry, person_signer
from rollguard.events import (
    Approval,
    CommandAck,
    DeadLetter,
    Decision,
    ModelStatus,
    RollbackCommand,
    RollbackRequest,
    Sustain,
    SystemManifest,
    derived_id,
    utcnow,
)
from rollguard.policy import PolicySource
from rollguard.settings import RollguardSettings
from rollguard.signing import load_signer, signer_of, trust_of, verify_command
from rollguard_services.decider.app import Decider, final_ack_on_topic
from rollguard_services.decider.settings import DeciderSettings
from rollguard_services.decider.state import InFlight, ModelState
from tests.conftest import TopicReader, until
from tests.factories import breach, manifest, traffic

pytestmark = pytest.mark.broker

TOKENS = TokenRegistry.of_tokens(
    {
        "dora": Identity("dora", "data_engineering_lead"),
        "dan": Identity("dan", "data_engineering_lead"),
        "mike": Identity("mike", "ml_lead"),
    }
)


def policy_file(tmp_path: Path) -> Path:
    now = utcnow()
    doc = {
        "models": {
            "expected": {
                "expected_changes": [
                    {
                        "start": (now.replace(year=now.year - 1)).isoformat(),
                        "end": now.replace(year=now.year + 1).isoformat(),
                        "reason": "planned",
                    }
                ]
            },
            "verify-ok": {"rollback": {"verification_s": 1}},
            "verify-fail": {"rollback": {"verification_s": 60}},
            "notready": {"rollback": {"target_ready_within_s": 5}},
            "bake": {"rollback": {"bake_s": 1}},
            "observe": {"rollback": {"mode": "observe"}},
        }
    }
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def unsustained(model_id: str) -> bytes:
    """What a detector that skipped the k-of-n rule would publish: 1 of 3 windows, 2 needed."""
    doc = breach("v2", model_id=model_id, tier="rapid").model_dump(mode="json", by_alias=True)
    return orjson.dumps({**doc, "sustain": {"k": 2, "n": 3, "hits": 1}})


def good_and_bad(model_id: str, **bad: object) -> list[SystemManifest]:
    return [
        manifest("v1", status="known_good", model_id=model_id),
        manifest("v2", status="live", model_id=model_id, **bad),  # type: ignore[arg-type]
    ]


async def test_every_outcome_through_the_broker(
    topics_ready: RollguardSettings,
    keys: str,
    publish_signed: Callable[..., Awaitable[None]],
    reader: TopicReader,
    tmp_path: Path,
) -> None:
    manifests = [
        *good_and_bad("lvl1"),
        *good_and_bad("lvl2", feature_pipeline="fp-2"),
        *good_and_bad("notlive"),
        *good_and_bad("delayed"),
        *good_and_bad("rapid"),
        *good_and_bad("rapidvar"),
        manifest("v2", status="live", model_id="notarget"),
        *good_and_bad("expected"),
        *good_and_bad("inflight"),
        *good_and_bad("verify-ok"),
        *good_and_bad("verify-fail"),
        *good_and_bad("cool"),
        *good_and_bad("notready"),
        *good_and_bad("l3"),
        *good_and_bad("l4"),
        *good_and_bad("observe"),
        manifest("v1", status="live", model_id="bake"),
    ]
    for m in manifests:
        await publish_signed(topics.DEPLOYMENTS.name, m)
    await publish_signed(topics.DEPLOYMENTS.name, b"{broken", key=b"lvl1")

    decider = Decider(
        topics_ready,
        PolicySource(policy_file(tmp_path)),
        load_signer(topics_ready.resolved_signing_key_file),
        DeciderSettings(tick_s=0.2),
        tokens=TOKENS,
    )
    task = asyncio.create_task(decider.run())
    try:
        # deployments and breaches are separate topics: order them as production does.
        await until(lambda: decider.counts["SystemManifest"] >= len(manifests), 60)
        inflight = breach("v2", model_id="inflight")
        for b in [
            breach("v2", model_id="lvl1"),
            breach("v2", model_id="lvl2"),
            breach("v2", model_id="unknown"),
            breach("v1", model_id="notlive"),
            breach("v2", model_id="delayed", tier="delayed"),
            breach("v2", model_id="rapid", tier="rapid", sustain=Sustain(k=2, n=3, hits=2)),
            # An unsustained rapid measurement is not a Breach: refused as bad input.
            unsustained("rapidvar"),
            breach("v2", model_id="notarget"),
            breach("v2", model_id="expected"),
            inflight,
            breach("v2", model_id="inflight"),
            inflight,  # a redelivery: ignored
            breach("v2", model_id="verify-ok"),
            breach("v2", model_id="verify-fail"),
            breach("v2", model_id="cool"),
            breach("v2", model_id="notready"),
            # observe mode: said once, what enforce would do; the next window's breach is
            # ledgered and decides nothing more
            breach("v2", model_id="observe"),
            breach("v2", model_id="observe"),
        ]:
            await publish_signed(topics.BREACHES.name, b)
        # Each person signs with the key their token derives.
        dora = person_signer("dora")
        l3 = dora.sign(RollbackRequest(model_id="l3", level=3, role="data_engineering_lead"))
        l4 = dora.sign(RollbackRequest(model_id="l4", level=4, role="data_engineering_lead"))
        await publish_signed(topics.REQUESTS.name, l3)
        await publish_signed(topics.REQUESTS.name, l4)
        await until(
            lambda: decider.counts["RollbackRequest"] == 2 and decider.counts["Breach"] >= 15, 30
        )

        def approve(model: str, req: RollbackRequest, who: str, role: str) -> Approval:
            return person_signer(who).sign(
                Approval(model_id=model, decision_id=derived_id("request", req.event_id), role=role)
            )

        for a in [
            approve("l3", l3, "dora", "data_engineering_lead"),  # the requester
            approve("l3", l3, "dan", "data_engineering_lead"),
            approve("l4", l4, "dan", "data_engineering_lead"),
            approve("l4", l4, "mike", "data_engineering_lead"),  # wrong role claimed
            approve("l4", l4, "mike", "ml_lead"),
        ]:
            await publish_signed(topics.APPROVALS.name, a)
        await until(lambda: decider.counts["Approval"] == 5, 30)

        commands = {
            c.model_id: c
            for c in (
                RollbackCommand.model_validate_json(r.value)
                for r in await reader.read(topics.COMMANDS.name, until=lambda r: len(r) >= 8)
            )
        }
        for model in ("verify-ok", "verify-fail", "cool"):
            cmd = commands[model]
            await publish_signed(
                topics.ACKS.name,
                CommandAck(
                    model_id=model,
                    model_version="v2",
                    command_id=cmd.command_id,
                    status="applied",
                    executor_id="x",
                ),
            )
            await publish_signed(
                topics.DEPLOYMENTS.name, manifest("v1", status="live", model_id=model)
            )
        # what the detector reports of the restored v1's traffic: verify-ok served enough
        soon = utcnow() + timedelta(seconds=0.5)
        await publish_signed(topics.TRAFFIC.name, traffic("v1", 200, soon, model_id="verify-ok"))
        # three applied acks and verify-ok's own verified ack; three v1-live manifests and
        # the bake's known_good one
        await until(lambda: decider.counts["CommandAck"] >= 4, 30)
        await until(lambda: decider.counts["SystemManifest"] >= len(manifests) + 4, 30)
        await publish_signed(topics.BREACHES.name, breach("v1", model_id="verify-fail"))
        # cool: v2 is put back live by hand within the cooldown and breaches again
        await publish_signed(
            topics.DEPLOYMENTS.name, manifest("v2", status="live", model_id="cool")
        )
        await until(lambda: decider.counts["SystemManifest"] >= len(manifests) + 5, 30)
        await publish_signed(topics.BREACHES.name, breach("v2", model_id="cool"))
        await until(
            lambda: (
                decider.counts["ack_verified"] == 1 and decider.counts["manifest_known_good"] >= 1
            ),
            30,
        )
        await until(lambda: decider.counts["Breach"] >= 19, 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    decisions: dict[str, list[Decision]] = {}
    for r in await reader.read(topics.DECISIONS.name, until=lambda r: len(r) >= 26):
        dec = Decision.model_validate_json(r.value)
        decisions.setdefault(dec.model_id, []).append(dec)

    def last_codes(model: str) -> list[tuple[str, str]]:
        return [(x.action, x.reasons[-1].code) for x in decisions[model]]

    assert [(x.action, x.level) for x in decisions["lvl1"]] == [("rollback", 1)]
    assert [(x.action, x.level) for x in decisions["lvl2"]] == [("rollback", 2)]
    assert "model_only_incompatible" in [r.code for r in decisions["lvl2"][0].reasons]
    assert commands["lvl2"].level == 2
    assert last_codes("unknown") == [("hold", "unknown_model")]
    assert last_codes("notlive") == [("hold", "not_live_version")]
    assert last_codes("delayed") == [("investigate", "tier_not_automatic")]
    assert [x.action for x in decisions["rapid"]] == ["rollback"]
    assert "rapidvar" not in decisions
    assert last_codes("notarget") == [("investigate", "no_known_good_target")]
    assert last_codes("expected") == [("hold", "expected_change")]
    assert [x.action for x in decisions["inflight"]] == ["rollback", "hold"]
    assert decisions["inflight"][1].reasons[-1].code == "rollback_in_flight"
    assert decider.counts["duplicate_breaches"] == 1
    assert last_codes("notready") == [("investigate", "target_not_ready")]
    assert last_codes("cool") == [("rollback", "model_only"), ("hold", "cooldown")]
    assert last_codes("observe") == [("hold", "observe_mode")]
    (observed,) = decisions["observe"]
    assert (observed.level, observed.target_system_version) == (1, "sys-v1")
    assert "would have rolled back to sys-v1 (level 1)" in observed.reasons[-1].detail
    everything = await reader.read(topics.COMMANDS.name, until=lambda r: False, timeout_s=0.5)
    assert all(
        RollbackCommand.model_validate_json(r.value).model_id != "observe" for r in everything
    )

    assert [c for _, c in last_codes("l3")] == [
        "awaiting_approval",
        "approval_rejected",
        "approved",
    ]
    assert "cannot approve" in decisions["l3"][1].reasons[0].detail
    assert commands["l3"].level == 3
    assert [c for _, c in last_codes("l4")] == [
        "awaiting_approval",
        "awaiting_approval",
        "approval_rejected",
        "approved",
    ]
    assert decisions["l4"][-1].approvals_given == ["dan", "mike"] and commands["l4"].level == 4

    assert last_codes("verify-fail")[-1] == ("investigate", "verification_failed")
    acks = [
        CommandAck.model_validate_json(r.value)
        for r in await reader.read(topics.ACKS.name, until=lambda r: len(r) >= 3)
    ]
    verified = [a for a in acks if a.status == "verified"]
    assert [(a.model_id, a.command_id) for a in verified] == [
        ("verify-ok", commands["verify-ok"].command_id)
    ]

    deployments = [
        SystemManifest.model_validate_json(r.value)
        for r in await reader.read(
            topics.DEPLOYMENTS.name, until=lambda r: len(r) >= len(manifests) + 4
        )
        if r.value != b"{broken"
    ]
    assert [
        (m.model_id, m.status)
        for m in deployments
        if m.status == "known_good" and m.model_id == "bake"
    ] == [("bake", "known_good")]

    trust = trust_of(topics_ready)
    assert all(verify_command(c, trust, utcnow()).ok for c in commands.values())
    # Everything else the decider published is signed by its key, as decider.
    by_decider = [m for m in deployments if m.status == "known_good" and m.model_id == "bake"]
    published = [*(d for ds in decisions.values() for d in ds), *verified, *by_decider]
    assert published and all(trust.check(e).ok for e in published)
    assert {e.key_id for e in published} == {keys}
    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) >= 2)
    ]
    assert [x.consumer for x in letters] == ["decider", "decider"]
    (refused,) = [x for x in letters if x.model_id == "rapidvar" or "sustain" in x.error]
    assert "1 of the last 3 windows breached, 2 needed" in refused.error


async def test_model_status_follows_the_rollback(
    topics_ready: RollguardSettings,
    keys: str,
    publish_signed: Callable[..., Awaitable[None]],
    reader: TopicReader,
) -> None:
    """One ModelStatus per visible change on rollguard.model-status: deployments, the command
    in flight, then the ack (in flight cleared, verification and cooldown running); none for a
    tick with nothing due."""
    for m in good_and_bad("st"):
        await publish_signed(topics.DEPLOYMENTS.name, m)
    decider = Decider(
        topics_ready,
        PolicySource(None),
        load_signer(topics_ready.resolved_signing_key_file),
        DeciderSettings(tick_s=0.2),
        tokens=TOKENS,
    )

    async def statuses(n: int) -> list[ModelStatus]:
        records = await reader.read(topics.MODEL_STATUS.name, until=lambda r: len(r) >= n)
        assert all(r.key == b"st" for r in records)
        return [ModelStatus.model_validate_json(r.value) for r in records]

    task = asyncio.create_task(decider.run())
    try:
        await until(lambda: decider.counts["status_published"] == 2, 60)
        deployed = (await statuses(2))[-1]
        assert deployed.live is not None and deployed.live.system_version == "sys-v2"
        assert [k.system_version for k in deployed.known_good] == ["sys-v1"]
        assert deployed.rollback_target is not None
        assert deployed.rollback_target.system_version == "sys-v1"
        assert deployed.in_flight is None and deployed.verifying is None

        await publish_signed(topics.BREACHES.name, breach("v2", model_id="st"))
        (record,) = await reader.read(topics.COMMANDS.name, until=lambda r: len(r) >= 1)
        command = RollbackCommand.model_validate_json(record.value)
        await until(lambda: decider.counts["status_published"] == 3, 30)
        flying = (await statuses(3))[-1]
        assert flying.in_flight is not None
        assert (
            flying.in_flight.command_id,
            flying.in_flight.level,
            flying.in_flight.target_system_version,
            flying.in_flight.expires_at,
        ) == (command.command_id, 1, "sys-v1", command.expires_at)
        assert flying.verifying is None and flying.cooldown_until is None

        applied = CommandAck(
            model_id="st",
            model_version="v2",
            command_id=command.command_id,
            status="applied",
            executor_id="x",
        )
        await publish_signed(topics.ACKS.name, applied)
        await until(lambda: decider.counts["status_published"] == 4, 30)
        verifying = (await statuses(4))[-1]
        assert verifying.in_flight is None and verifying.verifying is not None
        assert (verifying.verifying.command_id, verifying.verifying.restored_version) == (
            command.command_id,
            "v1",
        )
        # 120 s from when the decider read the ack (never before the ack's own time)
        window = timedelta(seconds=120)
        assert applied.ts + window <= verifying.verifying.deadline <= utcnow() + window
        assert verifying.cooldown_until == applied.ts + timedelta(seconds=300)

        await asyncio.sleep(1.0)  # five ticks, nothing due (verification runs 120 s)
        assert decider.counts["status_published"] == 4
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(await statuses(4)) == 4


async def test_a_final_ack_is_looked_for_on_the_topic(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    publish_signed: Callable[..., Awaitable[None]],
) -> None:
    """What the tick reads before it calls a command unacknowledged: only the model's final
    ack of that command counts (not another model's, a component's, a received, bad bytes, nor
    one no executor key signed)."""
    flight = InFlight(
        command_id="c1",
        decision_id="d1",
        target=manifest("v1", model_id="fa"),
        bad=manifest("v2", model_id="fa"),
        level=1,
        issued_at=utcnow(),
        expires_at=utcnow(),
    )
    state = ModelState(model_id="fa", in_flight=flight)

    def ack(model_id: str = "fa", **kw: object) -> CommandAck:
        fields = {"command_id": "c1", "status": "applied", "executor_id": "x", **kw}
        return CommandAck(model_id=model_id, model_version="v2", **fields)  # type: ignore[arg-type]

    await publish_signed(topics.ACKS.name, ack(model_id="other"))
    await publish_signed(topics.ACKS.name, ack(component="feature_pipeline"))
    await publish_signed(topics.ACKS.name, ack(status="received"))
    await publish_signed(topics.ACKS.name, ack(command_id="c0"))
    await publish_signed(topics.ACKS.name, b"{not json", key=b"fa")
    await publish(topics.ACKS.name, ack(detail="forged: nobody's key"))
    forged = signer_of(topics_ready, "detector").sign(ack(detail="forged: a detector's key"))
    await publish(topics.ACKS.name, forged)
    trust = trust_of(topics_ready)
    assert await final_ack_on_topic(topics_ready, state, trust) is None
    final = ack(status="failed", detail="registry refused")
    await publish_signed(topics.ACKS.name, final)
    found = await final_ack_on_topic(topics_ready, state, trust)
    assert found is not None and found.detail == "registry refused" and trust.check(found).ok


async def test_an_ack_on_the_topic_before_the_decider_is_back_ends_the_flight(
    topics_ready: RollguardSettings,
    keys: str,
    publish_signed: Callable[..., Awaitable[None]],
    reader: TopicReader,
    tmp_path: Path,
) -> None:
    """Issue 11: a rollback applied while the decider was away past the command's TTL (a
    broker outage longer than the TTL, or a restart) is verified when the decider is back,
    never escalated as unacknowledged, whichever of its ack agent and its timer runs first."""
    path = tmp_path / "policy.yaml"
    rollback = {"command_ttl_s": 1, "verification_s": 0.5}
    path.write_text(yaml.safe_dump({"models": {"late": {"rollback": rollback}}}))

    def started() -> tuple[Decider, asyncio.Task[None]]:
        decider = Decider(
            topics_ready,
            PolicySource(path),
            load_signer(topics_ready.resolved_signing_key_file),
            DeciderSettings(tick_s=0.05),
            tokens=TOKENS,
        )
        return decider, asyncio.create_task(decider.run())

    async def stopped(task: asyncio.Task[None]) -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    for m in good_and_bad("late"):
        await publish_signed(topics.DEPLOYMENTS.name, m)
    decider, task = started()
    try:
        await until(lambda: decider.counts["SystemManifest"] == 2, 60)
        await publish_signed(topics.BREACHES.name, breach("v2", model_id="late"))
        (record,) = await reader.read(topics.COMMANDS.name, until=lambda r: len(r) >= 1)
        command = RollbackCommand.model_validate_json(record.value)
        await until(lambda: decider.counts["decision_rollback"] == 1, 30)
    finally:
        await stopped(task)
    await publish_signed(
        topics.ACKS.name,
        CommandAck(
            model_id="late",
            model_version="v2",
            command_id=command.command_id,
            status="applied",
            executor_id="x",
        ),
    )
    soon = utcnow() + timedelta(seconds=0.3)
    await publish_signed(topics.TRAFFIC.name, traffic("v1", 200, soon, model_id="late"))
    await asyncio.sleep(max(0.0, (command.expires_at - utcnow()).total_seconds()) + 0.2)

    decider, task = started()
    try:
        await until(lambda: decider.counts["ack_verified"] == 1, 60)
    finally:
        await stopped(task)
    decisions = [
        Decision.model_validate_json(r.value)
        for r in await reader.read(topics.DECISIONS.name, until=lambda r: len(r) >= 2, timeout_s=3)
    ]
    assert [d.action for d in decisions] == ["rollback"], [d.reasons for d in decisions]


async def test_in_warn_mode_an_unsigned_request_naming_a_person_s_key_is_nobody_s(
    topics_ready: RollguardSettings,
    keys: str,
    publish_signed: Callable[..., Awaitable[None]],
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    tmp_path: Path,
) -> None:
    """ROLLGUARD_SIGNED_EVENTS=warn takes unsigned events, but a person's key id is public
    (on the approvals topic, in the ledger): an unsigned request that names it acts as
    nobody, never as that person."""
    settings = topics_ready.model_copy(update={"signed_events": "warn"})
    for m in (manifest("v1", status="known_good"), manifest("v2", status="live")):
        await publish_signed(topics.DEPLOYMENTS.name, m)
    decider = Decider(
        settings,
        PolicySource(policy_file(tmp_path)),
        load_signer(settings.resolved_signing_key_file),
        DeciderSettings(app_id="decider-warn", tick_s=0.2),
        tokens=TOKENS,
    )
    dora = person_signer("dora").key_id
    forged = RollbackRequest(model_id="m", level=1, role="data_engineering_lead", key_id=dora)
    task = asyncio.create_task(decider.run())
    try:
        await until(lambda: decider.counts["SystemManifest"] == 2, 60)
        await publish(topics.REQUESTS.name, forged)
        await until(lambda: decider.counts["RollbackRequest"] == 1, 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    decisions = [
        Decision.model_validate_json(r.value)
        for r in await reader.read(topics.DECISIONS.name, until=lambda r: len(r) >= 1)
    ]
    (held,) = [d for d in decisions if d.model_id == "m"]
    assert held.action == "hold" and held.command_id is None
    assert [r.code for r in held.reasons] == ["unknown_token"] and held.requested_by is None


async def test_a_breach_read_before_its_deployment_waits_for_it_and_rolls_back(
    topics_ready: RollguardSettings,
    keys: str,
    publish_signed: Callable[..., Awaitable[None]],
    reader: TopicReader,
) -> None:
    """Deployments and breaches are two topics read by two agents: a new version's first
    breach could be read before its live manifest and was held `not_live_version` (1 demo run
    in 5), so the incident waited for the next breach. A fresh breach of a version the
    decider has no manifest of now waits (once, up to manifest_wait_s) for it."""
    await publish_signed(
        topics.DEPLOYMENTS.name, manifest("v1", status="known_good", model_id="race")
    )
    decider = Decider(
        topics_ready,
        PolicySource(None),
        load_signer(topics_ready.resolved_signing_key_file),
        DeciderSettings(tick_s=0.2, manifest_wait_s=5.0),
        tokens=TOKENS,
    )
    task = asyncio.create_task(decider.run())
    try:
        await until(lambda: decider.counts["SystemManifest"] == 1, 60)
        first = breach("v2", model_id="race")
        await publish_signed(topics.BREACHES.name, first)
        await asyncio.sleep(0.8)  # the breach is read, its version's deployment is not out
        assert decider.counts["decision_hold"] == 0
        await publish_signed(
            topics.DEPLOYMENTS.name, manifest("v2", status="live", model_id="race")
        )
        (record,) = await reader.read(topics.DECISIONS.name, until=lambda r: len(r) >= 1)
        decision = Decision.model_validate_json(record.value)
        assert (decision.action, decision.breach_ids) == ("rollback", [first.event_id])
        assert decider.counts["breaches_waited_for_manifest"] == 1
        # Rolled back: v2 is neither live nor known good any more, but it is known (it
        # breached): its next breach is decided at once, no manifest is awaited for it.
        (record,) = await reader.read(topics.COMMANDS.name, until=lambda r: len(r) >= 1)
        command = RollbackCommand.model_validate_json(record.value)
        applied = CommandAck(
            model_id="race",
            model_version="v2",
            command_id=command.command_id,
            status="applied",
            executor_id="x",
        )
        await publish_signed(topics.ACKS.name, applied)
        await until(lambda: decider.counts["CommandAck"] >= 1, 30)
        await publish_signed(topics.BREACHES.name, breach("v2", model_id="race"))
        records = await reader.read(topics.DECISIONS.name, until=lambda r: len(r) >= 2)
        after = Decision.model_validate_json(records[1].value)
        assert after.action == "hold" and [r.code for r in after.reasons][-1] == "not_live_version"
        assert decider.counts["breaches_waited_for_manifest"] == 1
        # A version nobody deploys waits once, then is decided as it always was.
        await publish_signed(topics.BREACHES.name, breach("v9", model_id="race"))
        await publish_signed(topics.BREACHES.name, breach("v9", model_id="race"))
        records = await reader.read(topics.DECISIONS.name, until=lambda r: len(r) >= 3)
        held = Decision.model_validate_json(records[2].value)
        assert held.action == "hold" and [r.code for r in held.reasons][-1] == "not_live_version"
        assert decider.counts["breaches_waited_for_manifest"] == 2  # v9 once, for both
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
