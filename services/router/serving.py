"""The reference serving integration: every configured model version warm, one live pointer.

Switching is a pointer assignment, so the restored version serves the next request. The
router records when each switch was consumed and when its first request was served.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from rollguard.events import LatencyEvent, PredictionEvent, SystemManifest, new_id, utcnow
from rollguard_services.router.settings import SyntheticModelSpec


@dataclass
class Switch:
    """One live-pointer change: when its event was published, consumed, and first served.

    ``consumed_at`` and ``first_served_at`` are monotonic seconds; ``published_at`` and
    ``consumed_wall`` are wall-clock times, for the publish → consume leg.
    """

    to_version: str
    system_version: str
    consumed_at: float
    first_served_at: float | None = None
    published_at: datetime | None = None
    consumed_wall: datetime | None = None

    @property
    def switch_ms(self) -> float | None:
        """Pointer event consumed → first request served by the new version."""
        if self.first_served_at is None:
            return None
        return (self.first_served_at - self.consumed_at) * 1000

    @property
    def propagation_ms(self) -> float | None:
        """Pointer event published (its ``ts``) → consumed by this router."""
        if self.published_at is None or self.consumed_wall is None:
            return None
        return (self.consumed_wall - self.published_at).total_seconds() * 1000


def switch_report(switches: list[Switch]) -> dict[str, float]:
    """Count and p50 / p95 / max in ms of both legs, over the switches served so far."""
    served = [s for s in switches if s.switch_ms is not None]
    out: dict[str, float] = {"switches": float(len(served))}
    legs = {
        "switch_ms": [s.switch_ms for s in served if s.switch_ms is not None],
        "propagation_ms": [s.propagation_ms for s in served if s.propagation_ms is not None],
    }
    for name, values in legs.items():
        if values:
            arr = np.asarray(values)
            out[f"{name}_p50"] = float(np.percentile(arr, 50))
            out[f"{name}_p95"] = float(np.percentile(arr, 95))
            out[f"{name}_max"] = float(arr.max())
    return out


@dataclass
class Router:
    model_id: str
    versions: dict[str, SyntheticModelSpec]
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    live: str | None = None
    system_version: str | None = None
    previous: str | None = None
    served: Counter[str] = field(default_factory=Counter)
    switches: list[Switch] = field(default_factory=list)
    unknown_versions: Counter[str] = field(default_factory=Counter)
    #: Event time of the serving manifest followed last; an older one is not followed.
    followed_ts: datetime | None = None
    stale_ignored: int = 0
    #: Share of requests the rollback target scores in shadow, and the inputs' mean.
    shadow_fraction: float = 0.0
    input_shift: float = 0.0
    #: Versions marked known good, oldest first: the last one not live is the rollback target.
    known_good: list[str] = field(default_factory=list)
    shadowed: Counter[str] = field(default_factory=Counter)

    @property
    def shadow_version(self) -> str | None:
        """The version a rollback would restore, warm here: it scores a sample in shadow."""
        good = [v for v in self.known_good if v != self.live and v in self.versions]
        return good[-1] if good and self.shadow_fraction > 0 else None

    def follow(self, manifest: SystemManifest) -> bool:
        """Move the live pointer when ``manifest`` makes another known version live."""
        if manifest.model_id != self.model_id:
            return False
        if manifest.status == "rolled_back" and manifest.model_version in self.known_good:
            self.known_good.remove(manifest.model_version)  # no rollback target any more
        if not manifest.serving:
            return False
        if manifest.status == "known_good" and manifest.model_version not in self.known_good:
            self.known_good.append(manifest.model_version)
        if manifest.model_version not in self.versions:
            self.unknown_versions[manifest.model_version] += 1
            return False
        if manifest.model_version == self.live and manifest.system_version == self.system_version:
            self.followed_ts = max(self.followed_ts or manifest.ts, manifest.ts)
            return False
        if self.followed_ts is not None and manifest.ts < self.followed_ts:
            # An older fact than the one followed: a deployment sent again as it was (a
            # replay; its signature still holds) would send traffic back to a bad version.
            self.stale_ignored += 1
            return False
        self.followed_ts = manifest.ts
        self.previous, self.live = self.live, manifest.model_version
        self.system_version = manifest.system_version
        self.switches.append(
            Switch(
                manifest.model_version,
                manifest.system_version,
                time.monotonic(),
                published_at=manifest.ts,
                consumed_wall=utcnow(),
            )
        )
        return True

    def serve(self, n: int) -> list[PredictionEvent | LatencyEvent]:
        """Serve ``n`` synthetic requests with the live version; their monitoring events."""
        if self.live is None or n <= 0:
            return []
        version, spec = self.live, self.versions[self.live]
        last = self.switches[-1] if self.switches else None
        if last is not None and last.first_served_at is None:
            last.first_served_at = time.monotonic()
        self.served[version] += n
        errors = self.rng.random(n) < spec.error_rate
        latencies = spec.latency_median_ms * np.exp(self.rng.normal(0, spec.latency_sigma, n))
        features = self.rng.normal(self.input_shift, 1, (n, 3))
        predictions = self._score(spec, features)
        shadow = self.shadow_version
        if shadow is not None:
            scored = self.rng.random(n) < self.shadow_fraction
            shadow_predictions = self._score(self.versions[shadow], features)
        now = utcnow()
        out: list[PredictionEvent | LatencyEvent] = []
        common = {
            "ts": now,
            "model_id": self.model_id,
            "model_version": version,
            "system_version": self.system_version,
        }
        for i in range(n):
            request_id = new_id()
            failed = bool(errors[i])
            out.append(
                LatencyEvent(
                    **common,
                    request_id=request_id,
                    latency_ms=float(latencies[i]),
                    status="error" if failed else "ok",
                    error_kind="synthetic" if failed else None,
                )
            )
            if failed:
                continue
            inputs = {f"f{j}": float(features[i, j]) for j in range(3)}
            out.append(
                PredictionEvent(
                    **common,
                    request_id=request_id,
                    prediction=float(predictions[i]),
                    features=inputs,
                )
            )
            if shadow is not None and scored[i]:
                self.shadowed[shadow] += 1
                out.append(
                    PredictionEvent(
                        ts=now,
                        model_id=self.model_id,
                        model_version=shadow,
                        request_id=request_id,
                        prediction=float(shadow_predictions[i]),
                        features=inputs,
                        shadow=True,
                    )
                )
        return out

    def _score(self, spec: SyntheticModelSpec, features: np.ndarray) -> np.ndarray:
        """A synthetic version's predictions for ``features`` (one row per request)."""
        noise = self.rng.normal(0, 1, len(features))
        return (
            spec.prediction_mean + spec.feature_weight * features[:, 0] + spec.prediction_sd * noise
        )
