"""Data shift vs bad model (issue 14, part 2, the input-drift check), through the broker: the
real detector measures a version whose inputs drifted, its breaches carry the drifted
features, and the real decider reads them. With the feature pipeline the same in the live and
the target manifests the inputs changed, not the model: `investigate`, reason `data_shift`,
naming the features, and a notification; with a new pipeline in the bad deploy the rollback
takes it back, as before. Errors (the immediate tier) are never explained away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import numpy as np
import pytest

from rollguard import baselines as bl
from rollguard import topics
from rollguard.bus import make_producer
from rollguard.events import (
    Breach,
    Counterfactual,
    Decision,
    DriftedInput,
    PredictionEvent,
    utcnow,
)
from rollguard.policy import ModelPolicy, PolicySet, PolicySource
from rollguard.settings import RollguardSettings
from rollguard.signing import load_signer
from rollguard_services.decider.app import Decider
from rollguard_services.decider.breaches import data_shift
from rollguard_services.decider.settings import DeciderSettings
from rollguard_services.detector.app import Detector
from rollguard_services.detector.settings import DetectorSettings
from rollguard_services.notifier.notifications import channels_for, from_decision
from tests.conftest import HEAVY, TopicReader, run_until, until
from tests.factories import breach, manifest, signed

pytestmark = pytest.mark.broker


def shifted(version: str, n: int, shift: float, seed: int) -> list[PredictionEvent]:
    """The model is a fixed function of its input (prediction = f0 + noise): when the input
    moves, so does the output, whichever version scores it."""
    rng = np.random.default_rng(seed)
    start = (utcnow() - timedelta(seconds=10)).replace(microsecond=0)
    f0 = rng.normal(shift, 1, n)
    return [
        PredictionEvent(
            ts=start + timedelta(milliseconds=2.5 * i),  # 400 per 1 s window
            model_id="m",
            model_version=version,
            request_id=f"{version}-{i}",
            prediction=float(f0[i] + rng.normal(0, 0.5)),
            features={"f0": float(f0[i])},
        )
        for i in range(n)
    ]


@HEAVY
@pytest.mark.parametrize("pipeline", ["same", "new"], ids=["same-pipeline", "new-pipeline"])
async def test_drifted_inputs_under_the_same_pipeline_are_a_data_shift_not_a_bad_model(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    keys: str,
    pipeline: str,
) -> None:
    v2_pipeline = "fp-1" if pipeline == "same" else "fp-2"
    await publish(
        topics.DEPLOYMENTS.name,
        signed(manifest("v1", "s1", status="known_good", feature_pipeline="fp-1"), topics_ready),
    )
    await publish(
        topics.DEPLOYMENTS.name,
        signed(manifest("v2", "s2", status="live", feature_pipeline=v2_pipeline), topics_ready),
    )
    rng = np.random.default_rng(0)
    f0 = rng.normal(0, 1, 5000)
    producer = make_producer(topics_ready, control=True)
    await producer.start()
    try:
        await bl.publish(
            producer,
            topics_ready.topic(topics.BASELINES.name),
            [
                signed(bl.numeric_snapshot("m", "v1", "feature:f0", f0), topics_ready),
                signed(
                    bl.numeric_snapshot("m", "v1", "prediction", f0 + rng.normal(0, 0.5, 5000)),
                    topics_ready,
                ),
            ],
        )
    finally:
        await producer.stop()
    for event in shifted("v2", 1200, shift=1.0, seed=3):
        await publish(topics.PREDICTIONS.name, event)

    detector = Detector(topics_ready, PolicySet(), DetectorSettings(group_id="shift", seed=1))
    decider = Decider(
        topics_ready,
        PolicySource(None),
        load_signer(topics_ready.resolved_signing_key_file),
        DeciderSettings(),
    )
    decider_task = asyncio.create_task(decider.run())
    try:
        # The deployments first, as in production: a breach read before them is unknown_model.
        await until(lambda: decider.counts["SystemManifest"] >= 2, 40)
        await run_until(detector, lambda: detector.counts["breaches"] >= 1, timeout_s=40)
        await until(lambda: decider.counts["Breach"] >= 1, 40)
        decisions = [
            Decision.model_validate_json(r.value)
            for r in await reader.read(topics.DECISIONS.name, until=lambda r: len(r) >= 1)
        ]
    finally:
        decider_task.cancel()
        await asyncio.gather(decider_task, return_exceptions=True)

    breaches = [
        Breach.model_validate_json(r.value)
        for r in await reader.read(topics.BREACHES.name, until=lambda r: len(r) >= 1)
    ]
    first = breaches[0]
    assert first.tier == "rapid" and first.model_version == "v2"
    # The detector names the drifted input on every breach of the window, its own too.
    drifted = {d.signal for d in first.input_drift}
    assert "feature:f0" in drifted or first.signal == "feature:f0", first
    decision = decisions[0]
    assert decision.breach_ids[0] in {b.event_id for b in breaches}
    codes = [r.code for r in decision.reasons]
    if pipeline == "same":
        assert (decision.action, codes[-1]) == ("investigate", "data_shift"), decision
        detail = decision.reasons[-1].detail
        assert "f0 (" in detail and "fp-1 is the same in s2 and the target s1" in detail
        assert decider.counts["decision_rollback"] == 0
        note = from_decision(decision, breaches, notify_holds=False)
        assert note is not None and note.kind == "investigate"
        assert "data_shift" in note.summary
        routes = ModelPolicy().notifications.model_dump()
        assert channels_for(note, routes, [], False, ["slack", "pagerduty"]) == ["slack"]
    else:
        assert decision.action == "rollback" and "data_shift" not in codes, decision
        assert decision.target_system_version == "s1"


def test_the_immediate_tier_and_a_breach_without_drifted_inputs_are_never_a_data_shift() -> None:
    live = manifest("v2", "s2", status="live")
    target = manifest("v1", "s1", status="known_good")
    errors = breach("v2", tier="immediate")
    assert data_shift(errors, live, target) is None
    quiet = breach("v2", tier="rapid", detector="prediction_ks", kind="ks", signal="prediction")
    assert data_shift(quiet, live, target) is None


def test_the_target_s_counterfactual_decides_over_the_input_rule() -> None:
    live = manifest("v2", "s2", status="live")  # the same pipeline: the input rule applies
    target = manifest("v1", "s1", status="known_good")
    drifted_input = DriftedInput(
        signal="feature:f0", detector="feature_ks", statistic="ks_d", value=0.4, p_value=1e-9
    )

    def shadow(version: str, drifted: bool) -> Counterfactual:
        return Counterfactual(
            model_version=version,
            detector="prediction_ks",
            statistic="ks_d",
            value=0.4 if drifted else 0.03,
            p_value=1e-12 if drifted else 0.6,
            threshold=0.1,
            n=400,
            drifted=drifted,
            window_end=utcnow(),
        )

    def judged(seen: Counterfactual | None) -> str | None:
        b = breach(
            "v2",
            tier="rapid",
            detector="prediction_ks",
            kind="ks",
            signal="prediction",
            input_drift=[drifted_input],
            counterfactual=seen,
        )
        return data_shift(b, live, target)

    assert "f0 (" in (judged(None) or "")  # inputs drifted, same pipeline: the input rule
    # The target on the same inputs stays within its baseline: the model is at fault.
    assert judged(shadow("v1", drifted=False)) is None
    said = judged(shadow("v1", drifted=True)) or ""
    assert "rollback target v1 drifts the same way" in said and "400 shadow predictions" in said
    # Another version's shadow says nothing of this target: the input rule again.
    assert "f0 (" in (judged(shadow("v0", drifted=False)) or "")
