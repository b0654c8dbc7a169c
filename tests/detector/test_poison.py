"""Fuzzed input through the broker: every malformed record dead-lettered once, with its source,
reason, size and hash, while the valid traffic around it is still judged (issue 11, part 2).

The small copy of ``benchmarks/fuzz.py`` (100,000 records): the same kinds, a few thousand.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaProducer

from benchmarks.common import rss_bytes
from benchmarks.poison import (
    BAD,
    GOOD,
    KINDS,
    MODEL,
    Fuzzer,
    Poison,
    dead_letter_check,
    interleave,
    self_check,
    traffic,
)
from rollguard import topics
from rollguard.bus import client_options
from rollguard.events import Breach, DeadLetter
from rollguard.policy import PolicySet
from rollguard.settings import RollguardSettings
from rollguard_services.detector.app import Detector
from rollguard_services.detector.settings import DetectorSettings
from tests.conftest import TopicReader, run_until
from tests.factories import manifest, signed

pytestmark = pytest.mark.broker

#: Random kinds on top of two of every kind (1 MB strings and 100,000-deep nestings included).
RANDOM_POISON = 3_000
REQUESTS = 600  # per version: a latency event and a prediction each


def test_the_generator_makes_only_records_the_contracts_refuse() -> None:
    """Without it, 'as many dead letters as malformed records' could count valid ones."""
    assert set(self_check(900)) == set(KINDS)


async def test_fuzzed_records_are_all_dead_lettered_and_valid_traffic_is_still_judged(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    keys: str,
    figure: Callable[[str], None],
) -> None:
    settings = topics_ready
    await publish(
        topics.DEPLOYMENTS.name,
        signed(manifest(GOOD, status="known_good", model_id=MODEL), settings),
    )
    await publish(
        topics.DEPLOYMENTS.name, signed(manifest(BAD, status="live", model_id=MODEL), settings)
    )
    fuzzer = Fuzzer(11, now=time.time)
    poison = [fuzzer.one(kind) for kind in KINDS for _ in range(2)]
    poison += [fuzzer.one() for _ in range(RANDOM_POISON)]
    start = time.time() - 8
    valid = traffic(GOOD, REQUESTS, start, 3.0, 0.01, seed=1)
    valid += traffic(BAD, REQUESTS, start + 3.0, 3.0, 0.3, seed=2)
    sent: dict[tuple[str, int, int], Poison] = {}

    # An independent client, as a bad producer would be; acks=1 like the router's data.
    producer = AIOKafkaProducer(**client_options(settings), acks=1, linger_ms=5)
    await producer.start()
    try:
        pending = []
        for record in interleave(valid, poison, seed=3):
            topic = settings.topic(record.topic)
            pending.append((record, await producer.send(topic, record.value, key=record.key)))
        for record, delivery in pending:
            meta = await delivery
            if isinstance(record, Poison):
                sent[(meta.topic, meta.partition, meta.offset)] = record
    finally:
        await producer.stop()

    detector = Detector(settings, PolicySet(), DetectorSettings(group_id="det-fuzz"))
    rss_before, peak_before = rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    good_events = 2 * REQUESTS  # latency and predictions of v1, every one folded
    await run_until(
        detector,
        lambda: (
            detector.dead_letters is not None
            and detector.dead_letters.sent >= len(sent)  # on the topic, not only counted
            and detector.seen.get((MODEL, GOOD)) is not None
            and detector.seen[(MODEL, GOOD)].events >= good_events
            and (MODEL, BAD) in detector.seen
            and detector.seen[(MODEL, BAD)].events >= 2 * REQUESTS
            and detector.counts["breaches"] >= 1
        ),
        timeout_s=60,
    )
    rss_after, peak_after = rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    figure(
        f"fuzz (test size): {len(sent)} malformed records of {len(KINDS)} kinds among "
        f"{len(valid)} valid; dead letters {detector.counts['dead_letters']}; RSS "
        f"{(rss_after - rss_before) / 2**20:+.0f} MiB over the run, peak "
        f"{(peak_after - peak_before) / 1024:+.0f} MiB"
    )
    assert detector.counts["dead_letters"] == len(sent)
    assert detector.seen[(MODEL, GOOD)].events == good_events
    assert detector.seen[(MODEL, BAD)].events == 2 * REQUESTS

    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) >= len(sent))
    ]
    by_source = {(d.source_topic, d.partition, d.offset): d for d in letters}
    assert len(by_source) == len(letters) == len(sent), "one dead letter per malformed record"
    assert by_source.keys() == sent.keys()
    wrong = {
        f"{sent[src].kind} at {src}: {problem}"
        for src, letter in by_source.items()
        if (problem := dead_letter_check(sent[src], letter))
    }
    assert not wrong, sorted(wrong)[:10]
    assert all(len(d.encode()) < 512 * 1024 for d in letters)

    breaches = [
        Breach.model_validate_json(r.value)
        for r in await reader.read(topics.BREACHES.name, until=lambda r: len(r) >= 1)
    ]
    assert {b.model_version for b in breaches} == {BAD}
    assert any(b.kind == "error_rate" for b in breaches)
