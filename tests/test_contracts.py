"""The detector → decider contract: breaches the real detector published, read back from the
broker as bytes, decided by the real decider. Nothing hand-made crosses the boundary."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from aiokafka import ConsumerRecord

from rollguard import baselines as bl
from rollguard import topics
from rollguard.bus import make_producer
from rollguard.events import Breach, decode
from rollguard.policy import ModelPolicy, PolicySet
from rollguard.settings import RollguardSettings
from rollguard.signing import Signer, generate_keypair, load_signer, trust_of
from rollguard_services.decider.breaches import decide
from rollguard_services.decider.context import DecisionContext
from rollguard_services.decider.state import ModelState, apply_manifest
from rollguard_services.detector.app import Detector
from rollguard_services.detector.settings import DetectorSettings
from tests.conftest import TopicReader, run_until
from tests.detector.test_app import traffic
from tests.detector.test_drift_app import predictions
from tests.factories import manifest, signed

pytestmark = pytest.mark.broker


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    generate_keypair(tmp_path / "k.pem", tmp_path / "trusted")
    return load_signer(tmp_path / "k.pem")


async def detected(
    settings: RollguardSettings, publish: Callable[..., Awaitable[None]], reader: TopicReader
) -> list[Breach]:
    """A bad v2 (25 % errors, predictions shifted by 1σ) against a known-good v1 with a
    published baseline: what the detector puts on the breaches topic."""
    good, bad = manifest("v1", status="known_good"), manifest("v2", status="live")
    await publish(topics.DEPLOYMENTS.name, signed(good, settings))
    await publish(topics.DEPLOYMENTS.name, signed(bad, settings))
    rng = np.random.default_rng(0)
    producer = make_producer(settings, control=True)
    await producer.start()
    try:
        snapshot = bl.numeric_snapshot("m", "v1", "prediction", rng.normal(0, 1, 5000))
        await bl.publish(
            producer, settings.topic(topics.BASELINES.name), [signed(snapshot, settings)]
        )
    finally:
        await producer.stop()
    for prediction in predictions("v2", 1200, shift=1.0, seed=3):
        await publish(topics.PREDICTIONS.name, prediction)
    for latency in traffic("v2", 400, 0.25, seed=2):
        await publish(topics.LATENCY.name, latency)
    detector = Detector(settings, PolicySet(), DetectorSettings(group_id="contract", seed=1))

    def tiers(records: list[ConsumerRecord[bytes, bytes]]) -> set[str]:
        return {decode(Breach, r.value).tier for r in records}

    # Until both tiers are out (under load the immediate tier's windows may all close first).
    await run_until(
        detector,
        lambda: (
            detector.counts["breaches_immediate"] >= 1 and detector.counts["breaches_rapid"] >= 1
        ),
        timeout_s=40,
    )
    records = await reader.read(topics.BREACHES.name, until=lambda r: len(tiers(r)) >= 2)
    return [decode(Breach, r.value) for r in records]


async def test_breaches_the_detector_publishes_are_decided_by_the_decider(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    signer: Signer,
    keys: str,
) -> None:
    breaches = await detected(topics_ready, publish, reader)
    # What the decider's admission asks of each: signed by a trusted detector key.
    assert all(trust_of(topics_ready).check(b).ok for b in breaches)
    by_tier: dict[str, Breach] = {}
    for b in breaches:
        by_tier.setdefault(b.tier, b)  # the first of each tier
    assert {"immediate", "rapid"} <= set(by_tier), [(b.detector, b.tier) for b in breaches]
    rapid, immediate = by_tier["rapid"], by_tier["immediate"]
    # The typed fields the decider reads are filled by the detector itself.
    assert rapid.kind in ("ks", "psi") and rapid.sustain is not None
    assert rapid.sustain.k == 2 and rapid.sustain.n == 3
    # k of n, or a first window past the severe bar (issue 14): the contract takes both.
    assert rapid.sustain.hits >= rapid.sustain.k or rapid.sustain.severe
    assert immediate.kind == "error_rate" and immediate.sustain is None
    for b in (rapid, immediate):
        assert b.version_first_event_ts is not None and b.version_events

    state = ModelState(model_id="m")
    for m in (manifest("v1", status="known_good"), manifest("v2", status="live")):
        state = apply_manifest(state, m)
    for b in (rapid, immediate):
        now = b.ts + timedelta(milliseconds=50)
        out = decide(state, b, DecisionContext(policy=ModelPolicy(), now=now, signer=signer))
        assert out is not None and out.command is not None
        assert (out.decision.action, out.decision.level, out.decision.tier) == (
            "rollback",
            1,
            b.tier,
        )
        metrics = out.decision.metrics
        assert metrics["blast_radius_events"] == float(b.version_events or 0)
        live = state.live
        assert live is not None
        assert metrics["mttd_s"] == pytest.approx(max(0.0, (b.ts - live.ts).total_seconds()))
        assert metrics["first_event_to_breach_s"] == pytest.approx(
            (b.ts - b.version_first_event_ts).total_seconds()  # type: ignore[operator]
        )
        # evidence is for people: the same breach without it is decided the same way.
        bare = b.model_copy(update={"evidence": {}})
        again = decide(state, bare, DecisionContext(policy=ModelPolicy(), now=now, signer=signer))
        assert again is not None
        assert again.decision == out.decision and again.command == out.command
