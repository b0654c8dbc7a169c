"""The invalidation contract without a broker: ids, keys, intervals, and a reader that skips
what it cannot use."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from rollguard.events import OutputInvalidation
from rollguard.invalidations import InvalidationIndex, invalidation_for, invalidation_key
from rollguard.signing import generate_keypair, load_signer, load_trust
from tests.factories import command, manifest


def test_one_invalidation_per_command_and_one_key_per_live_period() -> None:
    cmd = command()
    applied = cmd.from_manifest.ts + timedelta(minutes=5)
    first = invalidation_for(cmd, applied)
    again = invalidation_for(cmd, applied + timedelta(seconds=3))  # a redelivery, later
    assert first.event_id == again.event_id
    assert invalidation_key(first) == invalidation_key(again)
    assert (first.valid_from, first.valid_to) == (cmd.from_manifest.ts, applied)

    # Another live period of the same version (redeployed, rolled back again) keeps its own key,
    # so compaction never drops the earlier interval.
    later = command(from_manifest=manifest("v2", ts=applied + timedelta(hours=1)))
    other = invalidation_for(later, applied + timedelta(hours=2))
    assert invalidation_key(other) != invalidation_key(first)
    assert other.event_id != first.event_id


def test_index_keeps_the_latest_per_key_drops_tombstones_and_skips_garbage() -> None:
    cmd = command()
    start = cmd.from_manifest.ts
    inv = invalidation_for(cmd, start + timedelta(minutes=1))
    index = InvalidationIndex()
    index.add(invalidation_key(inv), inv.encode())
    index.add(invalidation_key(inv), inv.encode())  # the same again: still one
    index.add(b"m:v9:x", b"{not json")
    index.add(None, inv.encode())
    assert index.skipped == 2
    assert list(index.matching("m")) == [inv]
    assert index.is_invalid("m", "v2", start)
    assert index.is_invalid("m", "v2", start + timedelta(seconds=30))
    assert not index.is_invalid("m", "v2", start - timedelta(microseconds=1))
    assert not index.is_invalid("m", "v1", start + timedelta(seconds=30))
    index.add(invalidation_key(inv), None)  # withdrawn
    assert not index.is_invalid("m", "v2", start + timedelta(seconds=30))


def test_an_index_given_trust_keeps_only_invalidations_an_executor_key_signed(
    tmp_path: Path,
) -> None:
    trusted = tmp_path / "trusted"
    generate_keypair(tmp_path / "executor.pem", trusted / "executor")
    generate_keypair(tmp_path / "detector.pem", trusted / "detector")
    generate_keypair(tmp_path / "stranger.pem", tmp_path / "not-trusted")
    executor = load_signer(tmp_path / "executor.pem", "executor")

    def of(model_id: str) -> OutputInvalidation:
        cmd = command(model_id=model_id, from_manifest=manifest("v2", model_id=model_id))
        return invalidation_for(cmd, cmd.from_manifest.ts + timedelta(minutes=1))

    good = executor.sign(of("good"))
    forged = [
        of("unsigned"),
        load_signer(tmp_path / "detector.pem", "detector").sign(of("wrong-role")),
        load_signer(tmp_path / "stranger.pem", "executor").sign(of("unknown-key")),
        executor.sign(of("bad-signature")).model_copy(update={"bad_versions": ["v1"]}),
    ]
    guarded, open_ = InvalidationIndex(trust=load_trust(trusted)), InvalidationIndex()
    for inv in [good, *forged]:
        for index in (guarded, open_):
            index.add(invalidation_key(inv), inv.encode())
    assert (list(guarded.matching()), guarded.untrusted, guarded.skipped) == ([good], 4, 0)
    assert len(list(open_.matching())) == 5  # without trust, as before: every valid one
