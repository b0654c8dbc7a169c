"""The reference serving integration: every configured model version warm, one live pointer.

Switching is a pointer assignment, so the restored version serves the next request. The
router records when each switch was consumed and when its first request was served.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from rollguard.events import LatencyEvent, PredictionEvent, SystemManifest, new_id, utcnow
from services.router.settings import SyntheticModelSpec


@dataclass
class Switch:
    to_version: str
    system_version: str
    consumed_at: float
    first_served_at: float | None = None

    @property
    def switch_ms(self) -> float | None:
        if self.first_served_at is None:
            return None
        return (self.first_served_at - self.consumed_at) * 1000


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

    def follow(self, manifest: SystemManifest) -> bool:
        """Move the live pointer when ``manifest`` makes another known version live."""
        if manifest.model_id != self.model_id or not manifest.serving:
            return False
        if manifest.model_version not in self.versions:
            self.unknown_versions[manifest.model_version] += 1
            return False
        if manifest.model_version == self.live and manifest.system_version == self.system_version:
            return False
        self.previous, self.live = self.live, manifest.model_version
        self.system_version = manifest.system_version
        self.switches.append(
            Switch(manifest.model_version, manifest.system_version, time.monotonic())
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
        predictions = self.rng.normal(spec.prediction_mean, spec.prediction_sd, n)
        features = self.rng.normal(0, 1, (n, 3))
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
            if not failed:
                out.append(
                    PredictionEvent(
                        **common,
                        request_id=request_id,
                        prediction=float(predictions[i]),
                        features={f"f{j}": float(features[i, j]) for j in range(3)},
                    )
                )
        return out
