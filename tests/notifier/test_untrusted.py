"""The notifier acts only on events signed by a key trusted for their type: forged breaches,
decisions and acks (unsigned, a bad signature, an unknown key, the wrong role's key) tell
nobody anything and are dead-lettered as untrusted, while the real incident around them
pages, posts and resolves as before; a page resolves only on a decider-signed ``verified``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from rollguard import topics
from rollguard.events import DeadLetter, Signed
from rollguard.settings import RollguardSettings
from rollguard.signing import Role, Signer, generate_keypair, load_signer
from rollguard_services.notifier.app import UNSIGNED_VERIFIED, Notifier
from tests.conftest import TopicReader, until
from tests.factories import signed
from tests.notifier.test_app import Server, fast, incident_events
from tests.notifier.test_app import server as server  # the loopback HTTP fixture

pytestmark = pytest.mark.broker

Publish = Callable[..., Awaitable[None]]
S = TypeVar("S", bound=Signed)

FORGERIES = ("unsigned", "bad_signature", "unknown_key", "wrong_role")


def forge(event: S, how: str, settings: RollguardSettings, wrong: Role, stranger: Signer) -> S:
    if how == "unsigned":
        return event.model_copy(update={"key_id": "", "signature": ""})
    if how == "bad_signature":  # signed by the right key, then changed
        return event.model_copy(update={"system_version": "sys-forged"})
    if how == "unknown_key":
        return stranger.sign(event)
    return signed(event, settings, wrong)


@pytest.fixture
def stranger(tmp_path: Path) -> Signer:
    """A well-formed key the installation never trusted."""
    generate_keypair(tmp_path / "stranger.pem", tmp_path / "stranger-trusted")
    return load_signer(tmp_path / "stranger.pem")


def channels(server: Server) -> dict[str, Any]:
    return {
        "pagerduty_routing_key": "R" * 32,
        "pagerduty_url": server.at("/pd"),
        "slack_webhook_url": server.at("/slack"),
    }


async def letters(reader: TopicReader, n: int) -> list[DeadLetter]:
    records = await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) >= n)
    return [DeadLetter.model_validate_json(r.value) for r in records]


def slack_titles(server: Server) -> list[str]:
    return [m["blocks"][0]["text"]["text"] for m in server.bodies("/slack")]


async def test_forged_breaches_decisions_and_acks_notify_nobody_and_are_dead_lettered(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Publish,
    reader: TopicReader,
    server: Server,
    stranger: Signer,
) -> None:
    b, d, (received, applied, verified) = incident_events(topics_ready)
    s = topics_ready
    # What an attacker with the network but no trusted key writes into the same incident:
    # the breach again with a worse number, decisions of their own, a failure and a
    # verification of the real command.
    forged_breaches = [
        forge(
            signed(b.model_copy(update={"value": 0.99}), s, "detector"), h, s, "decider", stranger
        )
        for h in FORGERIES
    ]
    forged_decisions = [
        forge(
            signed(
                d.model_copy(update={"event_id": f"d-{h}", "command_id": f"c-{h}"}), s, "decider"
            ),
            h,
            s,
            "detector",
            stranger,
        )
        for h in FORGERIES
    ]

    def ack_like(status: str, h: str, right: Role, wrong: Role) -> Any:
        fake = applied.model_copy(update={"event_id": f"{status}-{h}", "status": status})
        return forge(signed(fake, s, right), h, s, wrong, stranger)

    forged_failed = [ack_like("failed", h, "executor", "decider") for h in FORGERIES]
    forged_verified = [ack_like("verified", h, "decider", "executor") for h in FORGERIES]

    notifier = Notifier(topics_ready, fast(group_id="notifier-forged", **channels(server)))
    task = asyncio.create_task(notifier.run())
    try:
        await until(notifier.ready.is_set)
        await publish(topics.BREACHES.name, b)
        for event in forged_breaches:
            await publish(topics.BREACHES.name, event)
        admission = notifier.admission
        assert admission is not None
        # The forged breaches are judged before the decision comes, so a forged one taken
        # would have replaced the real numbers the page shows.
        await until(lambda: sum(admission.counts.values()) == len(FORGERIES))
        await publish(topics.DECISIONS.name, d)
        for event in forged_decisions:
            await publish(topics.DECISIONS.name, event)
        await publish(topics.ACKS.name, received)
        await publish(topics.ACKS.name, applied)
        for event in [*forged_failed, *forged_verified]:
            await publish(topics.ACKS.name, event)
        await publish(topics.ACKS.name, verified)
        await until(lambda: len(server.endpoints["/pd"].got) == 3, 20)
        await until(lambda: len(server.endpoints["/slack"].got) == 3)
        await asyncio.sleep(1.0)  # anything extra would arrive now
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert [p["event_action"] for p in server.bodies("/pd")] == [
        "trigger",
        "acknowledge",
        "resolve",
    ]
    assert slack_titles(server) == [
        ":rotating_light: Rollback decided: m v2",
        ":arrow_backward: Rollback applied: m v2",
        ":white_check_mark: Rollback verified: m v2",
    ]
    shown = server.bodies("/pd")[0]["payload"]["custom_details"]["breaches"]
    assert len(shown) == 1 and "wilson_lower = 0.17 >" in shown[0]  # the real breach's number
    forged = 4 * len(FORGERIES)
    assert notifier.counts["untrusted"] == forged
    assert dict(admission.counts) == {h: 4 for h in FORGERIES}

    got = [x for x in await letters(reader, forged) if x.consumer == "notifier"]
    assert len(got) == forged and {x.reason for x in got} == {"untrusted"}
    by_topic: dict[str, list[str]] = {}
    for letter in got:
        # "untrusted: <reason>: <detail>", as every dead letter says its reason first
        by_topic.setdefault(letter.source_topic, []).append(letter.error.split(": ")[1])
    assert by_topic == {
        s.topic(topics.BREACHES.name): list(FORGERIES),
        s.topic(topics.DECISIONS.name): list(FORGERIES),
        s.topic(topics.ACKS.name): [*FORGERIES, *FORGERIES],
    }
    wrong_role = [x.error for x in got if x.error.startswith("untrusted: wrong_role")]
    assert any("is a executor key; CommandAck needs decider" in e for e in wrong_role)


async def test_in_warn_mode_unsigned_events_are_taken_but_never_an_unsigned_verified_ack(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Publish,
    reader: TopicReader,
    server: Server,
) -> None:
    warn = topics_ready.model_copy(update={"signed_events": "warn"})
    _, d, (_, applied, verified) = incident_events(warn)

    def unsigned(event: S) -> S:
        return event.model_copy(update={"key_id": "", "signature": ""})

    notifier = Notifier(warn, fast(group_id="notifier-warn", **channels(server)))
    task = asyncio.create_task(notifier.run())
    try:
        await until(notifier.ready.is_set)
        await publish(topics.DECISIONS.name, unsigned(d))
        await publish(topics.ACKS.name, unsigned(applied))
        await publish(topics.ACKS.name, unsigned(verified.model_copy(update={"event_id": "v-u"})))
        as_executor = signed(verified.model_copy(update={"event_id": "v-e"}), warn, "executor")
        await publish(topics.ACKS.name, as_executor)
        await until(lambda: notifier.counts["untrusted"] == 2, 20)
        await until(lambda: len(server.endpoints["/slack"].got) == 2)
        await asyncio.sleep(1.0)
        assert [p["event_action"] for p in server.bodies("/pd")] == ["trigger", "acknowledge"]
        await publish(topics.ACKS.name, verified)  # the decider's: resolves
        await until(lambda: len(server.endpoints["/pd"].got) == 3, 20)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert server.bodies("/pd")[2]["event_action"] == "resolve"
    assert slack_titles(server)[:2] == [
        ":rotating_light: Rollback decided: m v2",
        ":arrow_backward: Rollback applied: m v2",
    ]
    admission = notifier.admission
    assert admission is not None
    assert dict(admission.counts) == {"unsigned_taken": 2, "unsigned": 1, "wrong_role": 1}
    got = await letters(reader, 2)
    assert [(x.reason, x.error) for x in got] == [
        ("untrusted", f"untrusted: unsigned: {UNSIGNED_VERIFIED}"),
        (
            "untrusted",
            f"untrusted: wrong_role: key {as_executor.key_id} is a executor key; "
            "CommandAck needs decider",
        ),
    ]
