"""Shared pieces of the benchmarks: a detector without a broker, result files, RSS."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from rollguard.policy import PolicySet
from rollguard.settings import RollguardSettings
from rollguard_services.detector.app import Detector
from rollguard_services.detector.settings import DetectorSettings

RESULTS = Path(__file__).parent / "results"


def offline_detector(policy: PolicySet | None = None, **svc: Any) -> Detector:
    """A Detector whose evaluation code is driven directly (nothing is sent anywhere)."""
    settings = RollguardSettings(kafka_bootstrap="127.0.0.1:1", topic_prefix="bench.")
    return Detector(settings, policy or PolicySet(), DetectorSettings(seed=7, **svc))


def write(name: str, result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "machine": platform.machine(), "at": time.time(), **result}
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")
