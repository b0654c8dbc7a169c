from __future__ import annotations

import numpy as np

from rollguard.events import LatencyEvent, PredictionEvent
from rollguard_services.router.serving import Router
from rollguard_services.router.settings import SyntheticModelSpec
from tests.factories import manifest


def router() -> Router:
    return Router(
        "m",
        {"v1": SyntheticModelSpec(error_rate=0.0), "v2": SyntheticModelSpec(error_rate=1.0)},
        np.random.default_rng(3),
    )


def test_nothing_is_served_before_a_live_pointer() -> None:
    r = router()
    assert r.serve(10) == [] and r.live is None


def test_follows_live_and_known_good_but_not_candidates_or_strangers() -> None:
    r = router()
    assert r.follow(manifest("v1", status="known_good"))
    assert not r.follow(manifest("v2", status="candidate"))
    assert not r.follow(manifest("v2", status="live", model_id="other"))
    assert not r.follow(manifest("v9", status="live"))
    assert r.unknown_versions["v9"] == 1
    assert r.live == "v1"
    assert r.follow(manifest("v2", status="live"))
    assert (r.live, r.previous) == ("v2", "v1")
    assert not r.follow(manifest("v2", status="live"))  # already live: no switch


def test_serves_the_live_version_and_records_the_switch() -> None:
    r = router()
    r.follow(manifest("v1", status="live"))
    good = r.serve(50)
    assert {e.model_version for e in good} == {"v1"}
    assert sum(isinstance(e, LatencyEvent) and e.status == "ok" for e in good) == 50
    assert sum(isinstance(e, PredictionEvent) for e in good) == 50

    r.follow(manifest("v2", status="live"))
    bad = r.serve(20)
    latencies = [e for e in bad if isinstance(e, LatencyEvent)]
    assert len(latencies) == 20 and all(e.status == "error" for e in latencies)
    assert not any(isinstance(e, PredictionEvent) for e in bad)  # failed requests predict nothing
    assert r.served == {"v1": 50, "v2": 20}
    switch = r.switches[-1]
    assert switch.to_version == "v2" and switch.switch_ms is not None and switch.switch_ms >= 0
    assert {e.system_version for e in bad} == {"sys-v2"}


def test_the_rollback_target_scores_the_same_requests_in_shadow() -> None:
    spec = SyntheticModelSpec(error_rate=0.0, feature_weight=1.0, prediction_sd=0.0)
    r = Router("m", {"v1": spec, "v2": spec}, np.random.default_rng(1), shadow_fraction=0.5)
    r.follow(manifest("v1", status="known_good"))
    assert r.shadow_version is None  # v1 is live: nothing warm to compare with
    assert not any(e.shadow for e in r.serve(50) if isinstance(e, PredictionEvent))
    r.follow(manifest("v2", status="live"))
    assert r.shadow_version == "v1"
    events = [e for e in r.serve(400) if isinstance(e, PredictionEvent)]
    live = {e.request_id: e for e in events if not e.shadow}
    shadow = [e for e in events if e.shadow]
    assert {e.model_version for e in live.values()} == {"v2"}
    assert {e.model_version for e in shadow} == {"v1"}
    assert 120 < len(shadow) < 280 and r.shadowed["v1"] == len(shadow)
    for e in shadow:  # the live request's own inputs, scored by the same function of f0
        twin = live[e.request_id]
        assert e.features == twin.features and e.prediction == twin.prediction
    assert r.served["v1"] == 50  # what it served while live; the shadow is never served


def test_a_rolled_back_version_is_no_rollback_target_to_shadow() -> None:
    r = Router("m", {"v1": SyntheticModelSpec(), "v2": SyntheticModelSpec()}, shadow_fraction=1)
    r.follow(manifest("v1", status="known_good"))
    r.follow(manifest("v2", status="live"))
    assert r.shadow_version == "v1"
    r.follow(manifest("v1", status="rolled_back"))
    assert r.shadow_version is None and r.live == "v2"
