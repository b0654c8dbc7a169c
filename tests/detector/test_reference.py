"""What a closed window is compared with (services/detector/reference.py)."""

from __future__ import annotations

from collections import deque

from rollguard.policy import WindowPolicy
from rollguard_services.detector.reference import choose
from rollguard_services.detector.state import ModelState, VersionState
from rollguard_services.detector.sustain import Sustain
from rollguard_services.detector.windows import VersionWindow, VersionWindows


def _window(version: str, n: int = 300) -> VersionWindow:
    return VersionWindow("m", version, f"sys-{version}", start=100.0, seconds=1.0, n=n)


def _versions(*windows: VersionWindow) -> dict[tuple[str, str], VersionState]:
    return {w.key: VersionState(recent=deque([w]), sustain=Sustain(2, 3)) for w in windows}


def test_a_candidate_is_compared_with_the_previous_live_version_at_the_same_time() -> None:
    model = ModelState(registered={"v1", "v2"}, live="v2", previous_live="v1")
    ref = choose(_window("v2"), model, {}, _versions(_window("v1")), VersionWindows(_policy))
    assert ref.source == "concurrent:v1"


def test_a_restored_known_good_version_is_never_compared_with_the_bad_one() -> None:
    """Issue 11's kill drill, on a busy machine: right after the rollback the restored v1's
    first window (its baseline not yet captured) was compared with the bad b1's concurrent
    window, PSI 0.29 against 0.25: verification failed, the model locked, the incident never
    verified."""
    model = ModelState(registered={"v1", "b1"}, known_good=["v1"], live="v1", previous_live="b1")
    ref = choose(_window("v1"), model, {}, _versions(_window("b1")), VersionWindows(_policy))
    assert ref.source == "none"


def _policy(model_id: str) -> WindowPolicy:
    return WindowPolicy()


def test_a_restored_version_is_verified_against_its_own_baseline() -> None:
    """Issue 14: v1 restored after a rollback has a baseline of its own (captured while it
    was known good): its windows are compared with it, not with another known-good version
    (v0) nor with nothing, so a rollback onto drifted inputs shows v1 drifted too."""
    import numpy as np

    from rollguard import baselines as bl

    own = {"prediction": bl.numeric_snapshot("m", "v1", "prediction", np.arange(300.0))}
    older = {"prediction": bl.numeric_snapshot("m", "v0", "prediction", np.arange(300.0))}
    model = ModelState(
        registered={"v0", "v1", "b1"}, known_good=["v0", "v1"], live="v1", previous_live="b1"
    )
    baselines = {("m", "v1"): own, ("m", "v0"): older}
    versions = _versions(_window("b1"))
    assert choose(_window("v1"), model, baselines, versions, VersionWindows(_policy)).source == (
        "baseline:v1"
    )
    # Without its own, the other known-good version's baseline, as before.
    del baselines[("m", "v1")]
    assert choose(_window("v1"), model, baselines, versions, VersionWindows(_policy)).source == (
        "baseline:v0"
    )
