"""One evaluation of a window: run the detectors, correct for multiple tests, confirm, sustain.

Pure apart from the sustain memory, so the service and the benchmarks run the same code.
Order for the rapid tier (ARCHITECTURE.md "Statistics"): every test of the evaluation gets an
adjusted p-value (Holm / BH); KS candidates that survive are confirmed with the exact
scipy.stats.ks_2samp on the reservoirs; a breach is published only when k of the last n
windows of that (detector, signal) breached.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from rollguard.detector_policy import Correction, FalseAlarmPolicy, KsConfig, PsiConfig, Tier
from rollguard.events import Sustain as SustainCount
from rollguard_services.detector import detectors as d

SignalKey = tuple[str, str]  # (detector instance, signal)


@dataclass(frozen=True)
class NumericView:
    """A numeric signal of a window against its reference, both counted on one grid."""

    signal: str
    counts: npt.NDArray[np.int64]
    reference_counts: npt.NDArray[np.int64]
    sample: npt.NDArray[np.float64]
    reference_sample: npt.NDArray[np.float64]


@dataclass(frozen=True)
class CategoricalView:
    signal: str
    counts: dict[str, int]
    reference: dict[str, float]  # shares (or counts) of the reference


@dataclass(frozen=True)
class Judged:
    """A measurement of one detector instance, with the tier its breach would carry."""

    instance: str
    tier: Tier
    measurement: d.Measurement
    #: Set on a rapid-tier measurement once it is sustained (k of the last n windows).
    sustain: SustainCount | None = None


def run_ks(instance: str, config: KsConfig, view: NumericView) -> Judged:
    return Judged(
        instance,
        config.tier,
        d.ks(
            view.counts,
            view.reference_counts,
            signal=view.signal,
            alpha=config.alpha,
            min_effect=config.min_effect,
            min_events=config.min_events,
        ),
    )


def run_psi(instance: str, config: PsiConfig, view: NumericView | CategoricalView) -> Judged:
    if isinstance(view, NumericView):
        groups = d.coarse_bins(view.reference_counts, config.bins)
        expected = d.regroup(view.reference_counts, groups)
        actual = d.regroup(view.counts, groups)
    else:
        labels = sorted(set(view.counts) | set(view.reference))
        expected = np.array([view.reference.get(k, 0.0) for k in labels], dtype=np.float64)
        # Shares scaled to counts so the smoothing weighs like that of a counted sample.
        expected = expected / max(expected.sum(), 1e-12) * max(sum(view.counts.values()), 1)
        actual = np.array([view.counts.get(k, 0) for k in labels], dtype=np.int64)
    m = d.psi(
        expected,
        actual,
        signal=view.signal,
        moderate=config.moderate,
        major=config.major,
        min_events=config.min_events,
    )
    return Judged(instance, config.tier, m)


def correct(judged: list[Judged], method: Correction) -> list[Judged]:
    """Adjust the p-values of every decided test in one evaluation; demote a breach whose
    adjusted p-value is no longer below its alpha. Tests without a p-value are untouched."""
    idx = [
        i
        for i, j in enumerate(judged)
        if j.measurement.p_value is not None and j.measurement.phase in ("ok", "breach")
    ]
    if not idx:
        return judged
    raw = np.array([judged[i].measurement.p_value for i in idx], dtype=np.float64)
    adjusted = d.CORRECTIONS[method](raw)
    out = list(judged)
    for i, p_adj, p in zip(idx, adjusted, raw, strict=True):
        m = judged[i].measurement
        alpha = float(m.evidence.get("alpha", 0.0))
        evidence = {
            **m.evidence,
            "p_adjusted": float(p_adj),
            "correction": method,
            "tests": len(idx),
        }
        # The factor by which this test's p was scaled; the exact confirmation reuses it.
        evidence["p_factor"] = float(p_adj / p) if p > 0 else 1.0
        phase = m.phase
        if phase == "breach" and not p_adj < alpha:
            phase = "ok"
        out[i] = replace(judged[i], measurement=replace(m, phase=phase, evidence=evidence))
    return out


def confirm_ks(judged: Judged, view: NumericView, min_effect: float) -> Judged:
    """Re-test a KS breach with the exact two-sample test on the capped samples."""
    m = judged.measurement
    d_exact, p_exact = d.ks_exact(view.sample, view.reference_sample)
    factor = float(m.evidence.get("p_factor", 1.0))
    alpha = float(m.evidence.get("alpha", 0.0))
    confirmed = d_exact >= min_effect and min(1.0, p_exact * factor) < alpha
    evidence = {
        **m.evidence,
        "method": "exact",
        "d_histogram": m.value,
        "p_histogram": m.p_value if m.p_value is not None else 1.0,
        "sample_n": len(view.sample),
        "reference_sample_n": len(view.reference_sample),
    }
    exact = replace(
        m,
        value=d_exact,
        p_value=p_exact,
        phase="breach" if confirmed else "ok",
        evidence=evidence,
    )
    return replace(judged, measurement=exact)


@dataclass
class Sustain:
    """k-of-n memory per (detector instance, signal): a rapid breach must repeat to count."""

    k: int
    n: int
    history: dict[SignalKey, deque[bool]] = field(default_factory=dict)

    @classmethod
    def of(cls, policy: FalseAlarmPolicy) -> Sustain:
        return cls(policy.sustain_k, max(policy.sustain_n, policy.sustain_k))

    def update(self, judged: Judged) -> tuple[bool, int]:
        """Record one window's outcome; (sustained, breaches among the last n)."""
        key = (judged.instance, judged.measurement.signal)
        seen = self.history.get(key)
        if seen is None:
            seen = self.history[key] = deque(maxlen=self.n)
        seen.append(judged.measurement.phase == "breach")
        hits = sum(seen)
        return judged.measurement.phase == "breach" and hits >= self.k, hits


def publishable(judged: list[Judged], sustain: Sustain) -> list[Judged]:
    """Breaches to publish now: immediate and delayed tiers at once; the rapid tier once
    sustained. Every rapid measurement updates the memory (no_data and ok count as misses)."""
    out: list[Judged] = []
    for j in judged:
        if j.tier == "rapid":
            sustained, hits = sustain.update(j)
            if sustained:
                m = j.measurement
                ev = {**m.evidence, "sustain": f"{hits}/{sustain.n}"}
                counted = SustainCount(k=sustain.k, n=sustain.n, hits=hits)
                out.append(replace(j, measurement=replace(m, evidence=ev), sustain=counted))
        elif j.measurement.phase == "breach":
            out.append(j)
    return out
