"""What a model's policy can see at a given event rate (``rollguard policy explain``): how long
a window lasts and how many events it holds, whether each detector's test is conclusive on
that, the smallest change it can tell from noise, and how long a change takes to be published.

The figures are the tests' own large-sample bounds, not simulations:

- ``ks``: the smallest D significant at ``alpha`` (Holm over the evaluation's rapid tests:
  ``alpha / tests``) between n window events and the reference's N, c(a)·√((n+N)/(n·N)) with
  c(a) = √(−ln(a/2)/2), and never below ``min_effect``; as a normal mean shift, δ ≈ D·√(2π).
- ``psi``: the chi-square bound of ``kinds.psi.psi_p_value`` solved for the PSI (against a
  captured baseline's 5,000 events), never below ``major``.
- ``business_metric``: the drop a one-sided two-proportion test sees at a 5 % base rate
  (against 5,000 baseline events), never below ``max_relative_drop``.
- ``error_rate``: the error rate whose one-sided Wilson lower bound clears ``threshold``.

A window short of a detector's ``min_events`` is pooled with the next ones until it holds them
or spans ``window.max_seconds`` (pooling.py): the window such a detector is judged on is that
pool. A rapid-tier change is published after ``sustain_k`` of them, or in its first when it
passes the severe bar (``false_alarm.severe_p``); immediate-tier ones in their first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from scipy.stats import chi2

from rollguard.policy import ModelPolicy, WindowPolicy
from rollguard_services.detector.kinds import KINDS

#: The reference sample KS holds against (a baseline snapshot's capped sample).
REFERENCE_N = 2_000
#: The events a captured baseline counts (ROLLGUARD_DETECTOR_BASELINE_EVENTS): what PSI's bins
#: and a business metric's rate are counted from.
BASELINE_N = 5_000
#: The base rate a business metric is explained at.
BASE_RATE = 0.05


@dataclass(frozen=True)
class Explained:
    instance: str
    kind: str
    tier: str
    window_s: float
    events: float
    min_events: int | None
    #: The smallest change the test tells from noise, in words; "" when inconclusive.
    smallest: str
    #: From a change to its breach being published (None: not conclusive, or delayed tier).
    delay_s: float | None

    @property
    def conclusive(self) -> bool:
        return self.min_events is None or self.events >= self.min_events


def window(policy: ModelPolicy, rate_per_s: float, window_events: int = 0) -> tuple[float, float]:
    """(seconds, events) of one window at ``rate_per_s``: the policy's seconds, or fewer when
    ``window_events`` (the detector's ROLLGUARD_DETECTOR_WINDOW_EVENTS) fill it first."""
    seconds = policy.window.seconds
    if window_events > 0 and rate_per_s > 0:
        seconds = min(seconds, window_events / rate_per_s)
    return seconds, rate_per_s * seconds


def _ks_smallest(alpha: float, n: float, min_effect: float) -> tuple[float, float]:
    c = math.sqrt(-math.log(alpha / 2) / 2)
    d = max(min_effect, c * math.sqrt((n + REFERENCE_N) / (n * REFERENCE_N)))
    return d, d * math.sqrt(2 * math.pi)


def pooled_window(
    policy: ModelPolicy, rate_per_s: float, need: int, window_events: int = 0
) -> tuple[float, float]:
    """(seconds, events) of what a detector needing ``need`` events is judged on: one
    window, or as many pooled as hold ``need`` events, up to ``window.max_seconds``."""
    seconds, n = window(policy, rate_per_s, window_events)
    if n >= need or rate_per_s <= 0:
        return seconds, n
    pooled = min(policy.window.max_seconds, math.ceil(need / n) * seconds)
    return pooled, rate_per_s * pooled


def pools(kind: str, tier: str) -> bool:
    """Whether a detector of this kind and tier is judged on pooled windows when one is short
    (pooling.py): not the immediate tier's version checks (health), nor ground truth."""
    found = KINDS.get(kind)
    if found is None:
        return False
    if tier == "immediate":
        return found.on_latency is not None
    return found.pooled


def explain(policy: ModelPolicy, rate_per_s: float, window_events: int = 0) -> list[Explained]:
    """Every detector of ``policy`` at ``rate_per_s`` events a second."""
    rapid = [d for d in policy.detectors.values() if getattr(d, "tier", "") == "rapid"]
    tests = max(len(rapid), 1)  # at least one signal each; more features, stricter
    fa = policy.false_alarm
    # The detector pools a version's windows until the neediest detector of each kind of
    # window has its events (pooling.needed): every pooled detector is judged on that pool.
    need = {True: 0, False: 0}
    for d in policy.detectors.values():
        kind, tier = str(getattr(d, "kind", "")), str(getattr(d, "tier", ""))
        if pools(kind, tier) and kind in KINDS:
            latency = KINDS[kind].on_latency is not None
            need[latency] = max(need[latency], getattr(d, "min_events", None) or 0)
    out: list[Explained] = []
    for name, d in sorted(policy.detectors.items()):
        kind, tier = str(getattr(d, "kind", "")), str(getattr(d, "tier", ""))
        min_events = getattr(d, "min_events", None)
        if pools(kind, tier) and min_events:
            pool = need[KINDS[kind].on_latency is not None]
            seconds, n = pooled_window(policy, rate_per_s, pool, window_events)
        else:
            # Health checks and joined outcomes: counted apart from the prediction rate.
            seconds, n = window(policy, rate_per_s, window_events)
            min_events = None
        conclusive = min_events is None or n >= min_events
        smallest = ""
        if conclusive and n > 0:
            smallest = _smallest(kind, d, n, tests)
        delay: float | None
        if tier == "delayed" or not conclusive:
            delay = None
        elif tier == "rapid":
            delay = seconds * fa.sustain_k + policy.window.close_grace_s
        else:
            delay = seconds + policy.window.close_grace_s
        out.append(Explained(name, kind, tier, seconds, n, min_events, smallest, delay))
    return out


def _smallest(kind: str, d: object, n: float, tests: int) -> str:
    alpha = float(getattr(d, "alpha", 0.01)) / tests
    if kind == "ks":
        dmin, delta = _ks_smallest(alpha, n, float(getattr(d, "min_effect", 0.05)))
        return f"KS D {dmin:.3f} (a mean shift of about {delta:.2f} sigma)"
    if kind == "psi":
        bins = int(getattr(d, "bins", 10))
        noise = float(chi2.isf(alpha, bins - 1)) * (1 / n + 1 / BASELINE_N)
        return f"PSI {max(float(getattr(d, 'major', 0.25)), noise):.3f}"
    if kind == "business_metric":
        z = NormalDist().inv_cdf(1 - alpha)
        drop = z * math.sqrt(BASE_RATE * (1 - BASE_RATE) * (1 / n + 1 / BASELINE_N)) / BASE_RATE
        floor = float(getattr(d, "max_relative_drop", 0.1))
        return f"a {100 * max(drop, floor):.0f} % drop of a {100 * BASE_RATE:.0f} % rate"
    if kind == "error_rate":
        threshold = float(getattr(d, "threshold", 0.05))
        z = NormalDist().inv_cdf(float(getattr(d, "confidence", 0.95)))
        rate = threshold + z * math.sqrt(threshold * (1 - threshold) / n)
        return f"an error rate of {100 * min(rate, 1.0):.1f} % (threshold {100 * threshold:g} %)"
    limit = getattr(d, "threshold", None)
    return f"its threshold ({limit:g})" if isinstance(limit, float | int) else "its rule"


def advice(policy: ModelPolicy, rate_per_s: float, rows: list[Explained]) -> str | None:
    """What to change when a test cannot conclude at this rate, else None."""
    if rate_per_s <= 0:
        return "no traffic: nothing is ever conclusive"
    pooled = [r for r in rows if not r.conclusive and r.min_events]
    said: list[str] = []
    if pooled:
        need = max(r.min_events or 0 for r in pooled)
        most = int(rate_per_s * policy.window.max_seconds)
        names = ", ".join(sorted(r.instance for r in pooled))
        longest = WindowPolicy.model_fields["max_seconds"].metadata
        cap = next((float(m.le) for m in longest if hasattr(m, "le")), 86_400.0)
        wider = math.ceil(need / rate_per_s)
        said.append(
            f"{len(pooled)} detector(s) stay inconclusive: even pooled over window.max_seconds "
            f"({policy.window.max_seconds:g} s) the windows hold {most} events, {need} needed. "
            + (
                f"Set window.max_seconds to {wider} or more for this model, or "
                if wider <= cap
                else ""
            )
            + f"set min_events to {most} or less for {names}, or measure this model in a "
            "batch job instead."
        )
    return " ".join(said) or None
