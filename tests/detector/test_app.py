"""The detector through the broker: breaches for a bad version, dead letters for bad input."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pytest
from structlog.testing import capture_logs

from rollguard import topics
from rollguard.events import Breach, DeadLetter, LatencyEvent, utcnow
from rollguard.policy import PolicySet
from rollguard.settings import RollguardSettings
from rollguard_services.detector.app import Detector
from rollguard_services.detector.settings import DetectorSettings
from tests.conftest import TopicReader, run_until

pytestmark = pytest.mark.broker


def traffic(version: str, n: int, error_rate: float, seed: int) -> list[LatencyEvent]:
    rng = np.random.default_rng(seed)
    start = utcnow() - timedelta(seconds=5)
    return [
        LatencyEvent(
            ts=start + timedelta(milliseconds=2 * i),
            model_id="m",
            model_version=version,
            request_id=f"{version}-{i}",
            latency_ms=float(rng.uniform(5, 30)),
            status="error" if rng.random() < error_rate else "ok",
        )
        for i in range(n)
    ]


async def test_bad_version_breaches_good_one_does_not_and_bad_input_is_dead_lettered(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    keys: str,
) -> None:
    for event in traffic("v1", 400, 0.01, seed=1) + traffic("v2", 400, 0.25, seed=2):
        await publish(topics.LATENCY.name, event)
    poison = [
        b"\x00\x01 not json",
        b'{"model_id": "m", "latency_ms": NaN}',
        orjson.dumps(
            {
                "model_id": "m",
                "model_version": "v1",
                "request_id": "r",
                "latency_ms": -3,
                "status": "ok",
                "schema": "LatencyEvent/v1",
            }
        ),
        orjson.dumps(
            {
                "model_id": "m",
                "model_version": "v1",
                "request_id": "r",
                "latency_ms": 3,
                "status": "ok",
                "schema": "LatencyEvent/v2",
            }
        ),
    ]
    for raw in poison:
        await publish(topics.LATENCY.name, raw, key=b"m")

    detector = Detector(topics_ready, PolicySet(), DetectorSettings(group_id="det-test"))
    await run_until(
        detector,
        lambda: (
            detector.counts["breaches"] >= 1
            and detector.counts["latency_events"] == 800
            and detector.counts["dead_letters"] == 4
        ),  # counted once on the topic
    )

    breaches = [
        Breach.model_validate_json(r.value)
        for r in await reader.read(topics.BREACHES.name, until=lambda r: len(r) >= 1)
    ]
    assert {b.model_version for b in breaches} == {"v2"}
    first = breaches[0]
    assert (first.detector, first.tier, first.statistic) == (
        "error_rate",
        "immediate",
        "wilson_lower",
    )
    assert first.value > 0.05 and first.n >= 50
    # 1 s windows; the burst's part in a window short of 50 requests pools with the next.
    assert first.window_end - first.window_start in (timedelta(seconds=1), timedelta(seconds=2))

    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) >= 4)
    ]
    assert sorted(letter.error.split(":")[0] for letter in letters) == [
        "invalid",
        "invalid",
        "malformed",
        "malformed",
    ]
    assert all(letter.source_topic == topics_ready.topic(topics.LATENCY.name) for letter in letters)
    assert any("latency_ms" in letter.error for letter in letters)
    assert any("schema" in letter.error for letter in letters)


async def test_a_record_too_large_to_copy_is_dead_lettered_truncated_and_the_loop_goes_on(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    keys: str,
) -> None:
    """Issue 11: a ~900 KB invalid message made a dead letter (base64 of it all) larger than the
    producer's 1 MiB limit, and MessageSizeTooLargeError stopped the detector."""
    import hashlib

    huge = b'{"model_id": "m", "junk": "' + b"x" * 900_000 + b'"}'
    await publish(topics.LATENCY.name, huge, key=b"m")
    for event in traffic("v2", 400, 0.25, seed=4):  # after it: still judged
        await publish(topics.LATENCY.name, event)
    detector = Detector(topics_ready, PolicySet(), DetectorSettings(group_id="det-huge"))
    await run_until(
        detector,
        lambda: (
            detector.counts["breaches"] >= 1
            and detector.counts["latency_events"] == 400
            and detector.counts["dead_letters"] == 1
        ),  # counted once on the topic
    )
    (letter,) = [
        DeadLetter.model_validate_json(r.value)
        for r in await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) >= 1)
    ]
    assert letter.raw_truncated and letter.raw_size == len(huge)
    assert letter.raw_sha256 == hashlib.sha256(huge).hexdigest()
    assert huge.startswith(base64.b64decode(letter.raw_b64))
    assert len(letter.encode()) < 512 * 1024


async def test_events_from_the_future_or_far_past_are_refused_and_do_not_blind_the_version(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    keys: str,
) -> None:
    """Issue 11: one schema-valid LatencyEvent dated an hour ahead opened a window in the
    future that every later event folded into: 0 breaches for bad traffic. One dated 1970 (a
    stopped clock) became the version's first event: an MTTD of 56 years."""
    bad = traffic("v2", 400, 0.25, seed=6)
    ahead = bad[0].model_copy(update={"ts": utcnow() + timedelta(hours=1), "request_id": "skew"})
    behind = bad[0].model_copy(
        update={"ts": datetime(1970, 1, 1, tzinfo=UTC), "request_id": "stopped"}
    )
    await publish(topics.LATENCY.name, ahead)
    await publish(topics.LATENCY.name, behind)
    for event in bad:
        await publish(topics.LATENCY.name, event)
    detector = Detector(topics_ready, PolicySet(), DetectorSettings(group_id="det-future"))
    await run_until(
        detector,
        lambda: (
            detector.counts["breaches"] >= 1
            and detector.counts["latency_events"] == 402
            and detector.counts["dead_letters"] == 2
        ),  # counted once on the topic
    )
    assert detector.counts["events_from_the_future"] == 1
    assert detector.counts["events_from_the_past"] == 1
    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) >= 2)
    ]
    said = [
        "ahead" if "s ahead of the detector's clock" in e else "behind" if "s behind" in e else e
        for e in sorted(letter.error for letter in letters)
    ]
    assert sorted(said) == ["ahead", "behind"]
    assert all(letter.error.startswith("clock_skew: ") for letter in letters)
    (first, *_) = [
        Breach.model_validate_json(r.value)
        for r in await reader.read(topics.BREACHES.name, until=lambda r: len(r) >= 1)
    ]
    assert first.version_first_event_ts == bad[0].ts


async def test_a_backlog_is_said_not_silent(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    keys: str,
) -> None:
    """Issue 15: a detector behind its topics says so (`falling_behind`, the records waiting
    behind the batch it just folded) instead of delaying breaches silently; once it has
    caught up the backlog it reports is zero."""
    for event in traffic("v1", 3000, 0.01, seed=3):
        await publish(topics.LATENCY.name, event)
    detector = Detector(
        topics_ready,
        PolicySet(),
        DetectorSettings(group_id="det-lag", max_batch=250, lag_warn_records=1000),
    )
    with capture_logs() as said:
        await run_until(detector, lambda: detector.counts["latency_events"] == 3000)
    # (what the log says, not samples of the counter: a loaded CI machine's samples all
    # missed the moments it was behind)
    warned = [line for line in said if line["event"] == "falling_behind"]
    assert len(warned) == detector.counts["lag_warnings"] >= 1
    assert warned[0]["lag_records"] >= 1000  # it was behind by at least the warning's bound...
    assert detector.lag_records == 0  # ...and says nothing is waiting once it caught up
    assert 0 <= detector.behind_s < 60
