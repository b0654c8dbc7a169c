"""The notifier against real HTTP servers on loopback: exact payloads, order, retries, dedup."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from rollguard import topics
from rollguard.events import CommandAck, Decision, Reason
from rollguard.settings import RollguardSettings
from rollguard_services.notifier.app import Notifier
from rollguard_services.notifier.delivery import Pacer, deliver
from rollguard_services.notifier.settings import NotifierSettings
from tests.conftest import until
from tests.factories import breach, signed


@dataclass
class Endpoint:
    """A loopback HTTP endpoint that answers from a script, then with ``default``."""

    script: list[tuple[int, dict[str, str], float]] = field(default_factory=list)
    default: int = 202
    got: list[tuple[float, dict[str, Any]]] = field(default_factory=list)


class Server:
    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        self.base = ""

    def at(self, path: str, *script: tuple[int, dict[str, str], float], default: int = 202) -> str:
        self.endpoints[path] = Endpoint(list(script), default)
        return f"{self.base}{path}"

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [b for _, b in self.endpoints[path].got]

    async def handle(self, request: web.Request) -> web.Response:
        ep = self.endpoints[request.path]
        ep.got.append((time.monotonic(), await request.json()))
        status, headers, delay = ep.script.pop(0) if ep.script else (ep.default, {}, 0.0)
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, headers=headers, text="ok" if status < 300 else "no")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_post("/{tail:.*}", srv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv.base = f"http://127.0.0.1:{port}"
    yield srv
    await runner.cleanup()


def fast(**kw: Any) -> NotifierSettings:
    base: dict[str, Any] = {
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
        "request_timeout_s": 0.5,
        "max_attempts": 4,
        "slack_min_interval_s": 0.5,
        "incident_base_url": "https://rollguard.example/incidents/",
    }
    base.update(kw)
    return NotifierSettings(**base)


# --- delivery rules, straight against the server ------------------------------------------


async def _deliver(url: str, settings: NotifierSettings) -> Any:
    async with aiohttp.ClientSession() as session:
        return await deliver(session, url, {"x": 1}, settings, Pacer(0))


async def test_429_is_retried_after_what_retry_after_asks(server: Server) -> None:
    url = server.at("/r", (429, {"Retry-After": "1"}, 0.0))
    # A generous timeout: on a loaded machine the 429 itself can take longer than fast()'s
    # 0.5 s, and a timed-out attempt is retried after the backoff, not after Retry-After.
    result = await _deliver(url, fast(request_timeout_s=30.0))
    (t1, _), (t2, _) = server.endpoints["/r"].got
    assert (result.status, result.attempts, result.http_status) == ("sent", 2, 202)
    assert t2 - t1 >= 0.95  # backoff alone would have waited 0.05 s


async def test_5xx_and_slow_answers_are_retried_with_backoff(server: Server) -> None:
    url = server.at("/r", (500, {}, 0.0), (503, {}, 0.0), (202, {}, 2.0))  # the 3rd is too slow
    result = await _deliver(url, fast())
    times = [t for t, _ in server.endpoints["/r"].got]
    assert (result.status, result.attempts) == ("sent", 4)
    assert times[1] - times[0] >= 0.05 and times[2] - times[1] >= 0.1  # doubling


async def test_400_is_never_retried_and_attempts_run_out(server: Server) -> None:
    bad = await _deliver(server.at("/bad", default=400), fast())
    assert (bad.status, bad.attempts, bad.http_status) == ("failed", 1, 400)
    assert len(server.endpoints["/bad"].got) == 1
    down = await _deliver(server.at("/down", default=502), fast(max_attempts=3))
    assert (down.status, down.attempts, down.http_status) == ("failed", 3, 502)
    assert "gave up after 3 attempts" in down.error


# --- the service through the broker -------------------------------------------------------


def incident_events(settings: RollguardSettings) -> tuple[Any, Decision, list[CommandAck]]:
    """A breach, its rollback decision and the command's acks, each signed as its producer
    signs it (detector, decider, executor; the decider's ``verified``)."""
    b = signed(breach("v2", value=0.17, threshold=0.05, n=200), settings, "detector")
    d = Decision(
        model_id="m",
        model_version="v2",
        system_version="sys-v2",
        action="rollback",
        level=1,
        tier="immediate",
        reasons=[Reason(code="breach", detail="error_rate wilson_lower=0.17 > 0.05")],
        breach_ids=[b.event_id],
        target_system_version="sys-v1",
        command_id="cmd-1",
        metrics={"mttd_s": 1.5},
    )
    acks = [
        signed(
            CommandAck(
                model_id="m",
                model_version="v2",
                command_id="cmd-1",
                status=s,
                executor_id="x",
                detail=f"{s} detail",
            ),
            settings,
            "decider" if s == "verified" else "executor",
        )
        for s in ("received", "applied", "verified")
    ]
    return b, signed(d, settings, "decider"), acks


async def _publish_incident(
    publish: Callable[..., Awaitable[None]], settings: RollguardSettings
) -> tuple[Any, Decision]:
    b, d, acks = incident_events(settings)
    await publish(topics.BREACHES.name, b)
    await publish(topics.DECISIONS.name, d)
    await asyncio.sleep(0.3)  # the acks come later in life too
    for ack in acks:
        await publish(topics.ACKS.name, ack)
    return b, d


@pytest.mark.broker
async def test_an_incident_pages_posts_and_resolves_with_exact_payloads_and_no_duplicates(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Callable[..., Awaitable[None]],
    server: Server,
) -> None:
    svc = fast(
        group_id="notifier-1",
        pagerduty_routing_key="R" * 32,
        pagerduty_url=server.at("/pd"),
        slack_webhook_url=server.at("/slack"),
        webhook_url=server.at("/hook"),
    )
    notifier = Notifier(topics_ready, svc)
    task = asyncio.create_task(notifier.run())
    try:
        await until(notifier.ready.is_set)
        b, d = await _publish_incident(publish, topics_ready)
        await publish(topics.DECISIONS.name, d)  # a redelivery: same event id
        await until(lambda: len(server.endpoints["/slack"].got) == 3, 20)
        await until(lambda: len(server.endpoints["/pd"].got) == 3)
        await asyncio.sleep(1.0)  # anything extra would arrive now
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    pd = server.bodies("/pd")
    assert [p["event_action"] for p in pd] == ["trigger", "acknowledge", "resolve"]
    assert {p["dedup_key"] for p in pd} == {"rollguard/m/cmd-1"}
    assert pd[1] == {
        "routing_key": "R" * 32,
        "event_action": "acknowledge",
        "dedup_key": "rollguard/m/cmd-1",
    }
    link = "https://rollguard.example/incidents/cmd-1"
    assert pd[0] == {
        "routing_key": "R" * 32,
        "event_action": "trigger",
        "dedup_key": "rollguard/m/cmd-1",
        "payload": {
            "summary": "Rolling back m v2 to sys-v1 (level 1, immediate tier)",
            "source": "rollguard/m",
            "severity": "critical",
            "timestamp": d.ts.isoformat(),
            "component": "m",
            "group": "v2",
            "class": "rollback_decided",
            "custom_details": {
                "event": "rollback_decided",
                "model_id": "m",
                "model_version": "v2",
                "system_version": "sys-v2",
                "tier": "immediate",
                "incident": "cmd-1",
                "decision": "rollback",
                "level": 1,
                "target_system_version": "sys-v1",
                "reasons": ["breach: error_rate wilson_lower=0.17 > 0.05"],
                "breaches": [
                    f"error_rate: wilson_lower = 0.17 > 0.05 (n=200, window "
                    f"{b.window_start:%H:%M:%S}–{b.window_end:%H:%M:%S} UTC)"
                ],
                "metrics": {"mttd_s": 1.5},
            },
        },
        "links": [{"href": link, "text": "rollguard incident"}],
        "client": "rollguard",
        "client_url": link,
    }

    slack = server.bodies("/slack")
    assert [m["blocks"][0]["text"]["text"] for m in slack] == [
        ":rotating_light: Rollback decided: m v2",
        ":arrow_backward: Rollback applied: m v2",
        ":white_check_mark: Rollback verified: m v2",
    ]
    first = slack[0]["blocks"]
    assert first[2]["fields"] == [
        {"type": "mrkdwn", "text": "*Model*\n`m` v2 (sys-v2)"},
        {"type": "mrkdwn", "text": "*Tier*\nimmediate"},
        {"type": "mrkdwn", "text": "*Decision*\nrollback, level 1"},
        {"type": "mrkdwn", "text": "*Restore*\nsys-v1"},
    ]
    assert first[3]["text"]["text"].startswith("*What breached*\n• error_rate: wilson_lower = 0.17")
    assert first[4]["text"]["text"] == "*Why*\n• breach: error_rate wilson_lower=0.17 > 0.05"
    assert first[-1]["elements"][0]["url"] == link
    times = [t for t, _ in server.endpoints["/slack"].got]
    assert all(b - a >= 0.45 for a, b in itertools.pairwise(times))  # paced

    hook = server.bodies("/hook")
    assert [h["status"] for h in hook] == ["firing", "firing", "resolved"]
    assert hook[0]["version"] == "4" and hook[0]["groupKey"] == "rollguard/m/cmd-1"
    assert hook[0]["alerts"][0]["labels"]["alertname"] == "RollguardIncident"
    assert notifier.counts["duplicates"] == 3  # the redelivered decision, once per channel

    # A restarted notifier re-reads nothing it committed and posts nothing twice.
    again = Notifier(topics_ready, svc)
    task = asyncio.create_task(again.run())
    try:
        await until(again.ready.is_set)
        await publish(topics.DECISIONS.name, d)  # and one more redelivery after the restart
        await asyncio.sleep(1.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(server.bodies("/pd")) == 3 and len(server.bodies("/slack")) == 3


@pytest.mark.broker
async def test_a_channel_that_fails_for_good_is_counted_and_blocks_no_other(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Callable[..., Awaitable[None]],
    server: Server,
) -> None:
    svc = fast(
        group_id="notifier-2",
        max_attempts=3,
        pagerduty_routing_key="R" * 32,
        pagerduty_url=server.at("/pd"),
        slack_webhook_url=server.at("/slack", default=500),
        webhook_url=server.at("/hook", default=400),
    )
    notifier = Notifier(topics_ready, svc)
    task = asyncio.create_task(notifier.run())
    try:
        await until(notifier.ready.is_set)
        await _publish_incident(publish, topics_ready)
        await until(lambda: len(server.endpoints["/pd"].got) == 3, 20)
        await until(lambda: notifier.counts["failed.slack"] == 3, 20)
        await until(lambda: notifier.counts["failed.webhook"] == 3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [p["event_action"] for p in server.bodies("/pd")] == [
        "trigger",
        "acknowledge",
        "resolve",
    ]
    assert notifier.counts["sent.pagerduty"] == 3
    assert len(server.endpoints["/slack"].got) == 9  # 3 messages × 3 attempts (5xx retried)
    assert len(server.endpoints["/hook"].got) == 3  # 400: one attempt each


@pytest.mark.broker
async def test_a_rapid_tier_rollback_posts_but_does_not_page(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Callable[..., Awaitable[None]],
    server: Server,
) -> None:
    svc = fast(
        group_id="notifier-3",
        pagerduty_routing_key="R" * 32,
        pagerduty_url=server.at("/pd"),
        slack_webhook_url=server.at("/slack"),
    )
    notifier = Notifier(topics_ready, svc)
    _, d, acks = incident_events(topics_ready)
    rapid = signed(d.model_copy(update={"tier": "rapid"}), topics_ready, "decider")
    task = asyncio.create_task(notifier.run())
    try:
        await until(notifier.ready.is_set)
        await publish(topics.DECISIONS.name, rapid)
        await publish(topics.ACKS.name, acks[1])
        await until(lambda: len(server.endpoints["/slack"].got) == 2, 20)
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert server.bodies("/pd") == []  # neither the trigger nor an orphan acknowledge


@pytest.mark.broker
async def test_with_no_channel_configured_it_only_logs(
    topics_ready: RollguardSettings, keys: str, publish: Callable[..., Awaitable[None]]
) -> None:
    notifier = Notifier(topics_ready, NotifierSettings(group_id="notifier-4"))
    task = asyncio.create_task(notifier.run())
    try:
        await until(notifier.ready.is_set)
        await _publish_incident(publish, topics_ready)
        await until(lambda: notifier.counts["unrouted"] == 3)  # decided, applied, verified
        assert not task.done()  # nothing to send is not a reason to stop
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
