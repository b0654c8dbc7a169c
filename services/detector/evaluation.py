"""One evaluation of a closed window: every enabled detector instance through its kind, the
multiple-testing correction, then the kinds' confirmations.

Order for the rapid tier (ARCHITECTURE.md "Statistics"): every test of the evaluation gets an
adjusted p-value (Holm / BH, ``correction.py``); candidates that survive are re-tested by their
kind where it has a stricter test (KS: the exact scipy.stats.ks_2samp on the reservoirs); the
k-of-n sustain (``sustain.py``) comes after, in the service.
"""

from __future__ import annotations

from dataclasses import replace

from rollguard.detector_policy import Correction, DetectorBase, Tier
from rollguard_services.detector.correction import correct
from rollguard_services.detector.kinds import Resolved
from rollguard_services.detector.kinds.base import Judged, VersionInputs
from rollguard_services.detector.windows import LatencyWindow


def judge_latency(
    window: LatencyWindow, configs: dict[str, DetectorBase], kinds: Resolved
) -> list[Judged]:
    """The latency-window kinds (error rate, latency) on one closed latency window."""
    judged: list[Judged] = []
    for name, config in configs.items():
        kind = kinds.kind(config)
        if kind.on_latency is not None:
            judged += [Judged(name, tier_of(config), m) for m in kind.on_latency(config, window)]
    return judged


def judge_version(
    inputs: VersionInputs,
    configs: dict[str, DetectorBase],
    kinds: Resolved,
    correction: Correction,
) -> list[Judged]:
    """Every version-window kind on one closed window (rapid ones on the span), corrected for
    the number of tests and confirmed."""
    judged: list[Judged] = []
    for name, config in configs.items():
        kind = kinds.kind(config)
        if kind.on_version is not None:
            judged += [
                Judged(name, tier_of(config), m) for m in kind.on_version(name, config, inputs)
            ]
    out: list[Judged] = []
    for j in correct(judged, correction):
        config = configs[j.instance]
        kind = kinds.kind(config)
        if kind.confirm is not None and j.measurement.phase == "breach":
            j = replace(j, measurement=kind.confirm(config, j.measurement, inputs))
        out.append(j)
    return out


def tier_of(config: DetectorBase) -> Tier:
    assert config.tier is not None, "typed configs always have a tier"
    return config.tier
