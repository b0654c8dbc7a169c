"""Multiple-testing correction across the tests of one evaluation (Holm, Benjamini–Hochberg).

A rapid-tier breach needs a significant test after correction (ARCHITECTURE.md "Statistics");
tests without a p-value are untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from rollguard.detector_policy import Correction
from rollguard_services.detector.measurement import Judged


def holm(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Holm step-down adjusted p-values (family-wise error), in the input order."""
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def benjamini_hochberg(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Benjamini–Hochberg adjusted p-values (false discovery rate), in the input order."""
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    out = np.empty(m)
    out[order] = adjusted
    return out


CORRECTIONS: dict[str, Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]] = {
    "holm": holm,
    "bh": benjamini_hochberg,
    "none": lambda p: p.copy(),
}


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
    adjusted = CORRECTIONS[method](raw)
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
