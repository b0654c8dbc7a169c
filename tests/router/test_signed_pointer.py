"""The router's live pointer through the broker: only a manifest signed by a key trusted for
it moves the traffic; a forged one is dead-lettered as untrusted (issue 13)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from rollguard import topics
from rollguard.events import DeadLetter
from rollguard.settings import RollguardSettings
from rollguard.signing import generate_keypair, load_signer
from rollguard_services.router.app import RouterService
from rollguard_services.router.settings import RouterSettings, SyntheticModelSpec
from tests.conftest import TopicReader, scaled, until
from tests.factories import manifest, signed

pytestmark = pytest.mark.broker


def _router(settings: RollguardSettings) -> RouterService:
    """A router of m serving v1 and v2, following deployments."""
    return RouterService(
        settings,
        RouterSettings(
            model_id="m",
            rate_rps=50.0,
            versions={"v1": SyntheticModelSpec(), "v2": SyntheticModelSpec()},
            seed=1,
        ),
    )


async def test_forged_manifests_do_not_move_the_pointer_and_signed_ones_do(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    keys: str,
    tmp_path: Path,
) -> None:
    settings = topics_ready
    service = _router(settings)
    generate_keypair(tmp_path / "rogue" / "rogue.pem", tmp_path / "rogue" / "public")
    rogue = load_signer(tmp_path / "rogue" / "rogue.pem", "deployer")
    move = manifest("v2", status="live")
    forged = {
        "unsigned": move,
        # A real deployment of v2 as a candidate, rewritten to live.
        "bad_signature": signed(manifest("v2", status="candidate"), settings).model_copy(
            update={"status": "live"}
        ),
        "unknown_key": rogue.sign(move),
        "wrong_role": signed(move, settings, "detector"),
    }
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.ready.wait(), scaled(30))
        await publish(topics.DEPLOYMENTS.name, signed(manifest("v1", status="live"), settings))
        await until(lambda: service.router.live == "v1", timeout_s=10)
        for event in forged.values():
            await publish(topics.DEPLOYMENTS.name, event)
        await until(
            lambda: service.dead_letters is not None and service.dead_letters.sent >= 4,
            timeout_s=10,
        )
        assert not task.done()
        assert service.router.live == "v1"
        assert [s.to_version for s in service.router.switches] == ["v1"]
        assert "v2" not in service.router.served
        assert service.counts["manifests_untrusted"] == 4
        # A rollback's pointer move, signed by the executor, is followed (made now: the
        # router follows no manifest older than the one it follows).
        await publish(
            topics.DEPLOYMENTS.name, signed(manifest("v2", status="live"), settings, "executor")
        )
        await until(lambda: service.router.live == "v2", timeout_s=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) >= 4)
    ]
    assert all(letter.consumer == "router" and letter.reason == "untrusted" for letter in letters)
    assert all(letter.source_topic == settings.topic(topics.DEPLOYMENTS.name) for letter in letters)
    assert sorted(letter.error.split(": ")[1] for letter in letters) == sorted(forged)


async def test_a_key_added_while_the_router_runs_is_trusted_without_a_restart(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    keys: str,
    tmp_path: Path,
) -> None:
    """`rollguard keys generate --role deployer --rotate` while services run: the new key's
    deployments are followed within a second or so, the router is not restarted; a key
    retired meanwhile is no longer trusted."""
    settings = topics_ready
    service = _router(settings)
    trusted = settings.resolved_trusted_keys_dir / "deployer"
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.ready.wait(), scaled(30))
        await publish(topics.DEPLOYMENTS.name, signed(manifest("v1", status="live"), settings))
        await until(lambda: service.router.live == "v1", timeout_s=10)
        # A new deployer key, trusted after the router started.
        generate_keypair(tmp_path / "new" / "deployer.pem", trusted)
        rotated = load_signer(tmp_path / "new" / "deployer.pem", "deployer")
        await asyncio.sleep(0.3)  # an unknown key makes it look again, five times a second at most
        await publish(topics.DEPLOYMENTS.name, rotated.sign(manifest("v2", status="live")))
        await until(lambda: service.router.live == "v2", timeout_s=10)
        assert service.counts["manifests_untrusted"] == 0
        # Retired: its next deployment is refused.
        (trusted / f"{rotated.key_id}.pub").unlink()
        await asyncio.sleep(1.5)  # the directory is looked at once a second
        await publish(topics.DEPLOYMENTS.name, rotated.sign(manifest("v1", status="live")))
        await until(lambda: service.counts["manifests_untrusted"] == 1, timeout_s=10)
        assert service.router.live == "v2"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
