"""Data shift vs bad model, the counterfactual check (issue 14, part 2), through the broker:
the reference router keeps the known-good v1 warm and scores the live v2's requests with it in
shadow (PredictionEvent.shadow), the real detector measures the shadow predictions against v1's
own baseline and names the result on v2's breach, and the real decider reads it.

The bad deploy changed the feature pipeline, so the input-drift rule alone would roll back.

- the world moved (every input shifted by 1σ, both versions the same function of it): v1
  drifts the same way on the same inputs → ``investigate: data_shift``, sent as the rapid tier;
- the model is bad (v2's output moved, inputs as ever): v1 stays within its baseline on the
  same inputs → the rollback goes ahead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from rollguard import baselines as bl
from rollguard import topics
from rollguard.bus import make_producer
from rollguard.events import Breach, Decision, PredictionEvent
from rollguard.policy import ModelPolicy
from rollguard.settings import RollguardSettings
from rollguard_services.notifier.notifications import channels_for, from_decision
from rollguard_services.router.app import RouterService
from rollguard_services.router.settings import RouterSettings, SyntheticModelSpec
from rollguard_shell.runner import as_client, build_service, run_services
from tests.conftest import HEAVY, TopicReader, scaled
from tests.factories import manifest, signed

pytestmark = pytest.mark.broker

#: prediction = f0 + N(0, 0.5): the same model whoever serves it, unless ``mean`` moves it.
GOOD = SyntheticModelSpec(error_rate=0.0, feature_weight=1.0, prediction_sd=0.5)


async def import_v1_baseline(settings: RollguardSettings) -> None:
    """v1's baseline as CI imports it: its inputs and outputs while it was known good."""
    rng = np.random.default_rng(0)
    inputs = rng.normal(0, 1, (5000, 3))
    snapshots = [
        bl.numeric_snapshot("m", "v1", f"feature:f{j}", inputs[:, j]) for j in range(3)
    ] + [bl.numeric_snapshot("m", "v1", "prediction", inputs[:, 0] + rng.normal(0, 0.5, 5000))]
    producer = make_producer(settings, control=True)
    await producer.start()
    try:
        topic = settings.topic(topics.BASELINES.name)
        await bl.publish(producer, topic, [signed(s, settings) for s in snapshots])
    finally:
        await producer.stop()


@HEAVY
@pytest.mark.parametrize("world", ["data_shift", "bad_model"])
async def test_the_target_scoring_the_same_inputs_in_shadow_tells_a_data_shift_from_a_bad_model(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    keys: str,
    world: str,
) -> None:
    shift = world == "data_shift"
    bad = GOOD if shift else GOOD.model_copy(update={"prediction_mean": 1.0})
    router = RouterService(
        as_client("router", topics_ready),
        RouterSettings(
            model_id="m",
            rate_rps=400,
            versions={"v1": GOOD, "v2": bad},
            shadow_fraction=1.0,
            input_shift=1.0 if shift else 0.0,
            seed=5,
        ),
    )
    services = [router] + [build_service(n, topics_ready) for n in ("detector", "decider")]
    await import_v1_baseline(topics_ready)
    v1 = manifest("v1", "s1", "known_good", feature_pipeline="fp-1")
    v2 = manifest("v2", "s2", "live", feature_pipeline="fp-2")  # the deploy changed it
    for m in (v1, v2):
        await publish(topics.DEPLOYMENTS.name, signed(m, topics_ready))

    def decoded(records: list, cls: type) -> list:  # type: ignore[type-arg]
        return [cls.model_validate_json(r.value) for r in records]

    def decided(records: list) -> bool:  # type: ignore[type-arg]
        return any(d.action != "hold" for d in decoded(records, Decision))

    task = asyncio.create_task(run_services(services))
    try:
        await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in services)), scaled(60))
        records = await reader.read(topics.DECISIONS.name, until=decided, timeout_s=60)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    decision = next(d for d in decoded(records, Decision) if d.action != "hold")
    wanted = set(decision.breach_ids)
    breaches = {
        b.event_id: b
        for b in decoded(
            await reader.read(
                topics.BREACHES.name,
                until=lambda rs: wanted <= {b.event_id for b in decoded(rs, Breach)},
                timeout_s=10,
            ),
            Breach,
        )
    }
    (breach,) = [breaches[i] for i in decision.breach_ids[:1]]
    assert breach.model_version == "v2" and breach.tier == "rapid", breach
    seen = breach.counterfactual
    assert seen is not None and seen.model_version == "v1", breach
    assert seen.n >= 200  # v1's shadow predictions of the window, against v1's own baseline
    shadowed = decoded(
        await reader.read(topics.PREDICTIONS.name, until=lambda rs: len(rs) >= 2000, timeout_s=10),
        PredictionEvent,
    )
    assert {e.model_version for e in shadowed if e.shadow} == {"v1"}
    if shift:
        assert seen.drifted, seen
        assert (decision.action, decision.reasons[-1].code) == ("investigate", "data_shift")
        detail = decision.reasons[-1].detail
        assert "rollback target v1 drifts the same way" in detail and "shadow" in detail
        note = from_decision(decision, list(breaches.values()), notify_holds=False)
        assert note is not None and note.kind == "investigate" and "data_shift" in note.summary
        routes = ModelPolicy().notifications.model_dump()
        assert channels_for(note, routes, [], False, ["slack", "pagerduty"]) == ["slack"]
    else:
        assert not seen.drifted, seen
        assert decision.action == "rollback", decision.reasons
        assert decision.target_system_version == "s1"
        assert "data_shift" not in [r.code for r in decision.reasons]
