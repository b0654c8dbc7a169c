from __future__ import annotations

import math

import numpy as np
import pytest

from rollguard.errors import ConfigError
from rollguard_services.detector import histograms
from rollguard_services.detector.kinds import error_rate, get_kind, latency


@pytest.mark.parametrize(
    ("errors", "n", "confidence", "expected"),
    [
        # Reference values: the smaller root p of (p̂ − p)² = z²·p(1 − p)/n, solved with
        # numpy.roots and z = scipy.stats.norm.ppf(confidence), i.e. not the closed form.
        (20, 100, 0.95, 0.14250),
        (1, 100, 0.95, 0.00223),
        (0, 50, 0.95, 0.0),
        (50, 50, 0.95, 0.94867),
        (37, 200, 0.99, 0.12973),
    ],
)
def test_wilson_lower_bound_known_values(
    errors: int, n: int, confidence: float, expected: float
) -> None:
    assert error_rate.wilson_lower_bound(errors, n, confidence) == pytest.approx(expected, abs=5e-5)


def test_wilson_lower_bound_of_nothing_is_zero() -> None:
    assert error_rate.wilson_lower_bound(0, 0) == 0.0


def test_error_rate_phases() -> None:
    kw = {"threshold": 0.05, "min_events": 50, "confidence": 0.95}
    assert error_rate.measure(0, 0, **kw).phase == "no_data"
    assert error_rate.measure(10, 20, **kw).phase == "inconclusive"  # 50 % but too few events
    assert error_rate.measure(2, 200, **kw).phase == "ok"
    breach = error_rate.measure(40, 200, **kw)
    assert breach.phase == "breach"
    assert breach.value > 0.05 and breach.n == 200 and breach.evidence["errors"] == 40
    # 6 % observed is not enough when the lower bound is still under 5 %
    assert error_rate.measure(12, 200, **kw).phase == "ok"


def test_latency_quantiles_from_the_bounded_histogram() -> None:
    rng = np.random.default_rng(1)
    values = rng.lognormal(math.log(20), 0.5, 50_000)
    counts = histograms.latency_histogram(values)
    assert counts.sum() == 50_000
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(values, q))
        assert histograms.histogram_quantile(counts, q) == pytest.approx(exact, rel=0.02)


def test_latency_breach_at_five_times_sla() -> None:
    kw = {"sla_ms": 100.0, "p99_multiplier": 5.0, "min_events": 50}
    fast = histograms.latency_histogram(np.full(100, 40.0))
    slow = histograms.latency_histogram(np.concatenate([np.full(95, 40.0), np.full(5, 900.0)]))
    assert latency.measure(fast, **kw).phase == "ok"
    m = latency.measure(slow, **kw)
    assert m.phase == "breach"
    assert m.threshold == 500.0 and m.value == pytest.approx(900.0, rel=0.02)
    assert latency.measure(histograms.latency_histogram(np.array([])), **kw).phase == "no_data"


def test_unknown_detector_lists_the_known_ones() -> None:
    with pytest.raises(
        ConfigError,
        match="known: business_metric, cost, error_rate, fairness, feature_quality, ground_truth, health, ks, latency, psi",
    ):
        get_kind("kss")
    assert get_kind("latency").on_latency is latency.on_latency
