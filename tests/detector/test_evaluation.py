"""Correction, exact confirmation and k-of-n sustain, as the service applies them."""

from __future__ import annotations

import numpy as np

from rollguard import baselines as bl
from rollguard.detector_policy import FalseAlarmPolicy
from rollguard_services.detector.correction import correct
from rollguard_services.detector.kinds import error_rate
from rollguard_services.detector.kinds.base import Judged, Measurement, NumericView
from rollguard_services.detector.kinds.ks import KsConfig, confirm_view, on_view
from rollguard_services.detector.sustain import Sustain, publishable


def _m(p: float, phase: str = "breach", signal: str = "s") -> Judged:
    m = Measurement("ks", signal, phase, "ks_d", 0.2, 0.1, 500, p, {"alpha": 0.01})  # type: ignore[arg-type]
    return Judged("prediction_ks", "rapid", m)


def test_holm_demotes_what_is_not_significant_across_the_evaluation() -> None:
    judged = [_m(0.004, signal="a"), _m(0.008, signal="b"), _m(0.5, "ok", "c")]
    out = correct(judged, "holm")
    # 0.004 × 3 = 0.012 ≥ 0.01: demoted; 0.008 × 2 = 0.016: demoted too (step-down stops).
    assert [j.measurement.phase for j in out] == ["ok", "ok", "ok"]
    assert out[0].measurement.evidence["p_adjusted"] == 0.012
    none = correct(judged, "none")
    assert [j.measurement.phase for j in none] == ["breach", "breach", "ok"]


def test_exact_confirmation_can_overrule_the_histogram() -> None:
    rng = np.random.default_rng(4)
    reference = rng.normal(0, 1, 2000)
    grid = bl.grid_from_sample(reference)
    config = KsConfig()
    shifted = rng.normal(0.5, 1, 2000)
    view = NumericView("prediction", grid.count(shifted), grid.count(reference), shifted, reference)
    judged = correct([Judged("prediction_ks", "rapid", on_view(config, view))], "holm")
    confirmed = Judged(
        "prediction_ks", "rapid", confirm_view(judged[0].measurement, view, config.min_effect)
    )
    assert confirmed.measurement.phase == "breach"
    assert confirmed.measurement.evidence["method"] == "exact"
    # The same counts with a sample from the reference: the exact test does not confirm.
    same = NumericView(
        "prediction", view.counts, view.reference_counts, reference[:1000], reference
    )
    assert confirm_view(judged[0].measurement, same, config.min_effect).phase == "ok"


def test_rapid_breach_needs_k_of_n_windows_immediate_does_not() -> None:
    sustain = Sustain.of(FalseAlarmPolicy(sustain_k=2, sustain_n=3))
    assert publishable([_m(0.001)], sustain) == []
    assert publishable([_m(0.5, "ok")], sustain) == []
    out = publishable([_m(0.001)], sustain)  # 2 of the last 3
    assert len(out) == 1 and out[0].measurement.evidence["sustain"] == "2/3"
    assert publishable([_m(0.5, "ok")], sustain) == []
    assert publishable([_m(0.5, "ok")], sustain) == []
    assert publishable([_m(0.001)], sustain) == []  # 1 of the last 3 again
    immediate = Judged(
        "error_rate",
        "immediate",
        error_rate.measure(40, 200, threshold=0.05, min_events=50, confidence=0.95),
    )
    assert publishable([immediate], Sustain(2, 3)) == [immediate]
