"""The detector's control plane through the broker: what it publishes is signed with the
detector key, and deployments and baselines it is not shown signed by a trusted key are
dead-lettered as untrusted and change nothing (issue 13)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from rollguard import baselines as bl
from rollguard import topics
from rollguard.events import (
    BaselineSnapshot,
    Breach,
    DeadLetter,
    LatencyEvent,
    PredictionEvent,
    Signed,
    utcnow,
)
from rollguard.policy import PolicySet
from rollguard.settings import RollguardSettings
from rollguard.signing import Role, Signer, generate_keypair, load_signer, signer_of, trust_of
from rollguard_services.detector.app import Detector
from rollguard_services.detector.settings import DetectorSettings
from tests.conftest import TopicReader, run_until, scaled
from tests.factories import manifest, signed

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
S = TypeVar("S", bound=Signed)


def predictions(model_id: str, version: str, n: int, seed: int) -> list[PredictionEvent]:
    rng = np.random.default_rng(seed)
    start = (utcnow() - timedelta(seconds=5)).replace(microsecond=0)
    return [
        PredictionEvent(
            ts=start + timedelta(milliseconds=5 * i),
            model_id=model_id,
            model_version=version,
            request_id=f"{version}-{i}",
            prediction=float(rng.normal(0, 1)),
        )
        for i in range(n)
    ]


def failing(version: str, n: int, seed: int) -> list[LatencyEvent]:
    """Latency events of ``version``, a quarter of them errors: an error-rate breach."""
    rng = np.random.default_rng(seed)
    start = utcnow() - timedelta(seconds=5)
    return [
        LatencyEvent(
            ts=start + timedelta(milliseconds=2 * i),
            model_id="m",
            model_version=version,
            request_id=f"{version}-{i}",
            latency_ms=float(rng.uniform(5, 30)),
            status="error" if rng.random() < 0.25 else "ok",
        )
        for i in range(n)
    ]


def rogue(tmp_path: Path) -> Signer:
    """A well-made key nobody trusts: what an attacker with broker access can sign with."""
    private = tmp_path / "rogue" / "rogue.pem"
    generate_keypair(private, tmp_path / "rogue" / "public")
    return load_signer(private, "deployer")


def forgeries(
    genuine: S, altered: dict[str, object], settings: RollguardSettings, tmp_path: Path, wrong: Role
) -> dict[str, S]:
    """``genuine`` as a forger sends it, by the refusal each must meet: unsigned; signed by a
    trusted key and then altered (``altered``); signed by an untrusted key; signed by the
    trusted key of a role (``wrong``) that may not sign it."""
    return {
        "unsigned": genuine,
        "bad_signature": signed(genuine, settings).model_copy(update=altered),
        "unknown_key": rogue(tmp_path).sign(genuine),
        "wrong_role": signed(genuine, settings, wrong),
    }


def refusals(letters: list[DeadLetter], topic: str) -> list[str]:
    """The refusal codes of the detector's untrusted letters from ``topic``."""
    return sorted(
        letter.error.split(": ")[1]
        for letter in letters
        if letter.consumer == "detector" and letter.source_topic == topic
    )


async def test_breaches_and_captured_baselines_are_signed_with_the_detector_key(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    keys: str,
) -> None:
    settings = topics_ready
    await publish(topics.DEPLOYMENTS.name, signed(manifest("v1", status="known_good"), settings))
    for event in predictions("m", "v1", 400, seed=1):  # captured: baseline_events=300
        await publish(topics.PREDICTIONS.name, event)
    for latency in failing("v2", 400, seed=2):
        await publish(topics.LATENCY.name, latency)

    detector = Detector(
        settings, PolicySet(), DetectorSettings(group_id="signed", baseline_events=300, seed=1)
    )
    await run_until(
        detector,
        # Installed twice: when captured, and when read back from the topic (its own, trusted).
        lambda: detector.counts["breaches"] >= 1 and detector.counts["baselines"] >= 2,
        timeout_s=40,
    )

    trust, detector_key = trust_of(settings), signer_of(settings, "detector").key_id
    breaches = [
        Breach.model_validate_json(r.value)
        for r in await reader.read(topics.BREACHES.name, until=lambda r: len(r) >= 1)
    ]
    assert breaches and {b.model_version for b in breaches} == {"v2"}
    assert all(b.key_id == detector_key and trust.check(b).ok for b in breaches)
    snapshots = [
        BaselineSnapshot.model_validate_json(r.value)
        for r in await reader.read(topics.BASELINES.name, until=lambda r: len(r) >= 1)
    ]
    assert {(s.model_version, s.signal) for s in snapshots} == {("v1", "prediction")}
    assert all(s.key_id == detector_key and trust.check(s).ok for s in snapshots)
    # Signing a sealed snapshot leaves its own checksum true: the detector installs it.
    assert all(s.checksum == bl.checksum(s) for s in snapshots)
    assert detector.counts["baselines_bad_checksum"] == 0


async def test_forged_deployments_and_baselines_are_dead_lettered_and_change_nothing(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    keys: str,
    tmp_path: Path,
) -> None:
    settings = topics_ready
    # Forged: v1 of m marked known good (it would start a capture and become the reference),
    # and a baseline for m v1. Each arrives in all four forms.
    mark = manifest("v1", status="known_good")
    forged_marks = forgeries(mark, {"system_version": "sys-forged"}, settings, tmp_path, "detector")
    rng = np.random.default_rng(3)
    snapshot = bl.numeric_snapshot("m", "v1", "prediction", rng.normal(5, 1, 500))
    forged_baselines = forgeries(snapshot, {"n": 1}, settings, tmp_path, "executor")
    for forged in forged_marks.values():
        await publish(topics.DEPLOYMENTS.name, forged)
    for forged_b in forged_baselines.values():
        await publish(topics.BASELINES.name, forged_b)
    # Genuine, beside them: m2's v1 marked known good, and its baseline, deployer-signed.
    await publish(
        topics.DEPLOYMENTS.name,
        signed(manifest("v1", status="known_good", model_id="m2"), settings),
    )
    genuine = bl.numeric_snapshot("m2", "v1", "prediction", rng.normal(0, 1, 500))
    await publish(topics.BASELINES.name, signed(genuine, settings))
    # Enough of m's v1 for a capture, had one started (baseline_events=300).
    for event in predictions("m", "v1", 400, seed=4):
        await publish(topics.PREDICTIONS.name, event)

    detector = Detector(
        settings, PolicySet(), DetectorSettings(group_id="forged", baseline_events=300, seed=1)
    )
    await run_until(
        detector,
        lambda: (
            detector.dead_letters is not None
            and detector.dead_letters.sent >= 8
            and detector.counts["prediction_events"] >= 400
        ),
        timeout_s=40,
    )

    assert detector.counts["control_untrusted"] == 8
    assert detector.admission is not None
    assert detector.admission.counts == {
        "unsigned": 2,
        "bad_signature": 2,
        "unknown_key": 2,
        "wrong_role": 2,
    }
    # No capture, no reference, no baseline for m; m2's signed mark and baseline are taken.
    assert detector.counts["baselines_captured"] == 0
    assert ("m", "v1") not in detector.baselines
    model = detector.models.get("m")
    assert model is None or (model.known_good == [] and not model.registered)
    state = detector.versions.get(("m", "v1"))
    assert state is None or state.capture is None
    assert detector.models["m2"].known_good == ["v1"]
    assert set(detector.baselines[("m2", "v1")]) == {"prediction"}

    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) >= 8)
    ]
    assert all(letter.reason == "untrusted" for letter in letters)
    codes = ["bad_signature", "unknown_key", "unsigned", "wrong_role"]
    assert refusals(letters, settings.topic(topics.DEPLOYMENTS.name)) == codes
    assert refusals(letters, settings.topic(topics.BASELINES.name)) == codes


async def test_baseline_import_publishes_snapshots_signed_with_the_deployer_key(
    topics_ready: RollguardSettings, reader: TopicReader, keys: str, tmp_path: Path
) -> None:
    settings = topics_ready
    rng = np.random.default_rng(7)
    table = tmp_path / "good.csv"
    table.write_text(
        "prediction,feature:f0\n"
        + "".join(f"{p:.4f},{f:.4f}\n" for p, f in rng.normal(0, 1, (300, 2)))
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROLLGUARD_")}
    env = {
        **clean,
        "ROLLGUARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "ROLLGUARD_TOPIC_PREFIX": settings.topic_prefix,
        "ROLLGUARD_STATE_DIR": str(settings.state_dir),
        "ROLLGUARD_ENABLE_IDEMPOTENCE": str(settings.enable_idempotence).lower(),
    }
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rollguard_shell.cli",
        "baseline",
        "import",
        "--model-id",
        "m",
        "--model-version",
        "v1",
        str(table),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(cli.communicate(), scaled(60))
    assert cli.returncode == 0, err.decode()
    deployer = signer_of(settings, "deployer").key_id
    assert f"signed by deployer key {deployer}" in out.decode()

    snapshots = [
        BaselineSnapshot.model_validate_json(r.value)
        for r in await reader.read(topics.BASELINES.name, until=lambda r: len(r) >= 2)
    ]
    assert sorted(s.signal for s in snapshots) == ["feature:f0", "prediction"]
    trust = trust_of(settings)
    assert all(s.key_id == deployer and trust.check(s).ok for s in snapshots)
    assert all(s.checksum == bl.checksum(s) for s in snapshots)


async def test_baselines_an_earlier_detector_key_signed_are_signed_again_so_retiring_it_loses_none(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    keys: str,
    tmp_path: Path,
) -> None:
    """The detector key is rotated (the old one still trusted): at its next start the
    detector signs the baselines it keeps again with its key of now and publishes them, so
    once the old key is retired the compacted topic still holds every baseline, trusted."""
    settings = topics_ready
    trusted = settings.resolved_trusted_keys_dir / "detector"
    generate_keypair(tmp_path / "old" / "detector.pem", trusted)
    old = load_signer(tmp_path / "old" / "detector.pem", "detector")
    now = signer_of(settings, "detector").key_id
    rng = np.random.default_rng(5)
    kept = old.sign(bl.numeric_snapshot("m", "v1", "prediction", rng.normal(0, 1, 500)))
    await publish(topics.BASELINES.name, kept, key=bl.snapshot_key(kept))

    def holds(detector: Detector, key_id: str) -> bool:
        snapshot = detector.baselines.get(("m", "v1"), {}).get("prediction")
        return snapshot is not None and snapshot.key_id == key_id

    first = Detector(settings, PolicySet(), DetectorSettings(group_id="resign", seed=1))
    await run_until(first, lambda: holds(first, now))
    assert first.baselines[("m", "v1")]["prediction"].checksum == kept.checksum

    (trusted / f"{old.key_id}.pub").unlink()  # retired
    second = Detector(settings, PolicySet(), DetectorSettings(group_id="resign-2", seed=1))
    await run_until(second, lambda: holds(second, now))
    assert trust_of(settings).check(second.baselines[("m", "v1")]["prediction"]).ok
