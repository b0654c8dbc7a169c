from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from rollguard import events as ev
from rollguard.errors import ConfigError
from rollguard.signing import (
    ROLES,
    Role,
    Signer,
    Trust,
    generate_keypair,
    load_signer,
    load_trust,
    signers,
    verify_command,
)
from tests.factories import breach, command, manifest


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    generate_keypair(tmp_path / "k.pem", tmp_path / "trusted" / "decider")
    return tmp_path / "k.pem", tmp_path / "trusted"


def test_signed_command_verifies(keypair: tuple[Path, Path]) -> None:
    signer = load_signer(keypair[0])
    signed = signer.sign(command())
    assert signed.key_id == signer.key_id
    assert verify_command(signed, load_trust(keypair[1]), ev.utcnow()).ok


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"to_manifest": None}, "bad_signature"),
        ({"level": 2}, "bad_signature"),
        ({"signature": ""}, "unsigned"),
        ({"key_id": "ffffffffffffffff"}, "unknown_key"),
    ],
)
def test_tampered_commands_are_refused(
    keypair: tuple[Path, Path], change: dict[str, object], reason: str
) -> None:
    signed = load_signer(keypair[0]).sign(command())
    if change.get("to_manifest", 1) is None:
        change = {"to_manifest": signed.from_manifest}
    forged = signed.model_copy(update=change)
    verdict = verify_command(forged, load_trust(keypair[1]), ev.utcnow())
    assert (verdict.ok, verdict.reason) == (False, reason)


def test_an_unsigned_command_is_refused_even_while_unsigned_events_are_taken(
    keypair: tuple[Path, Path],
) -> None:
    verdict = verify_command(command(), load_trust(keypair[1], "warn"), ev.utcnow())
    assert (verdict.ok, verdict.reason) == (False, "unsigned")


def test_expired_command_is_refused(keypair: tuple[Path, Path]) -> None:
    signed = load_signer(keypair[0]).sign(command())
    later = signed.expires_at + timedelta(seconds=1)
    assert verify_command(signed, load_trust(keypair[1]), later).reason == "expired"


def test_key_rotation_trusts_every_public_key(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "old.pem", tmp_path / "trusted" / "decider")
    generate_keypair(tmp_path / "new.pem", tmp_path / "trusted" / "decider")
    trust = load_trust(tmp_path / "trusted")
    for name in ("old.pem", "new.pem"):
        assert verify_command(load_signer(tmp_path / name).sign(command()), trust, ev.utcnow()).ok


def test_keys_kept_before_roles_are_decider_keys(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k.pem", tmp_path / "trusted")  # trusted/*.pub, as before
    signer = load_signer(tmp_path / "k.pem")
    assert load_trust(tmp_path / "trusted").keys[signer.key_id][0] == "decider"


def test_one_key_has_one_role(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k.pem", tmp_path / "trusted" / "detector")
    for pub in (tmp_path / "trusted" / "detector").iterdir():
        (tmp_path / "trusted" / "executor").mkdir()
        (tmp_path / "trusted" / "executor" / pub.name).write_bytes(pub.read_bytes())
    with pytest.raises(ConfigError, match="a key has one role"):
        load_trust(tmp_path / "trusted")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[dict[Role, Signer], Trust]:
    for role in ROLES:
        generate_keypair(tmp_path / f"{role}.pem", tmp_path / "trusted" / role)
    signer = {role: load_signer(tmp_path / f"{role}.pem", role) for role in ROLES}
    return signer, load_trust(tmp_path / "trusted")


def _acks(status: str) -> ev.CommandAck:
    return ev.CommandAck(
        model_id="m", model_version="v1", command_id="c", status=status, executor_id="x"
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "event",
    [
        breach(),
        _acks("applied"),
        _acks("verified"),
        manifest("v2", status="live"),
        manifest("v2", status="known_good"),
        manifest("v2", status="candidate"),
        command(),
    ],
    ids=lambda e: f"{type(e).__name__}:{getattr(e, 'status', '')}",
)
def test_only_the_roles_allowed_for_an_event_may_sign_it(
    keys: tuple[dict[Role, Signer], Trust], event: ev.Signed
) -> None:
    signer, trust = keys
    allowed = signers(event)
    for role in ROLES:
        verdict = trust.check(signer[role].sign(event))
        assert verdict.ok == (role in allowed), (role, verdict)
        if role not in allowed:
            assert verdict.reason == "wrong_role"
    assert trust.check(event).reason == "unsigned"


def test_a_signature_survives_the_json_round_trip_a_consumer_makes(
    keys: tuple[dict[Role, Signer], Trust],
) -> None:
    signer, trust = keys
    sent = signer["detector"].sign(breach(value=0.1 + 0.2, evidence={"ratio": 1e-300, "n": 3}))
    received = ev.decode(ev.Breach, sent.encode())
    assert trust.check(received).ok
    changed = ev.decode(ev.Breach, sent.encode().replace(b'"n":200', b'"n":201'))
    assert trust.check(changed).reason == "bad_signature"


def test_a_token_created_while_running_is_picked_up_and_a_bad_file_keeps_the_last(
    tmp_path: Path,
) -> None:
    from rollguard.authority import TokenSource, create_token, person_signer

    path = tmp_path / "tokens.yaml"
    source = TokenSource(path)  # no file yet: nobody may approve
    assert len(source.current) == 0
    token = create_token(path, "dora", "data_engineering_lead")
    assert source.refresh(0.0) is True
    who = source.current.lookup(person_signer(token).key_id)
    assert who is not None and who.name == "dora"
    assert source.refresh(0.0) is False  # unchanged
    path.write_text("tokens: [{name: x}]\n")  # broken
    os.utime(path, ns=(1, time.time_ns() + 10**9))  # a new mtime even on a coarse clock
    assert source.refresh(0.0) is False and source.last_error is not None
    assert (
        source.current.lookup(person_signer(token).key_id) is not None
    )  # the last good registry stays
    path.unlink()  # revoked by removing the file
    assert source.refresh(0.0) is True and len(source.current) == 0


def test_a_flat_directory_names_each_key_s_role_in_its_file_name(tmp_path: Path) -> None:
    """A Kubernetes Secret mounts its keys as files in one directory: <role>.<id>.pub."""
    made = tmp_path / "made"
    generate_keypair(tmp_path / "d.pem", made / "detector")
    generate_keypair(tmp_path / "x.pem", made / "executor")
    flat = tmp_path / "flat"
    flat.mkdir()
    for role in ("detector", "executor"):
        for pub in (made / role).iterdir():
            (flat / f"{role}.{pub.name}").write_bytes(pub.read_bytes())
    trust = load_trust(flat)
    assert trust.keys[load_signer(tmp_path / "d.pem").key_id][0] == "detector"
    assert trust.keys[load_signer(tmp_path / "x.pem").key_id][0] == "executor"


def test_a_token_proves_its_holder_without_anything_reusable_in_the_tokens_file(
    tmp_path: Path,
) -> None:
    """The tokens file holds the public key a token derives: an approval signed with that key
    is the holder's; copying its fields into another approval breaks the signature, and the
    file holds nothing to sign with. Entries of an older rollguard (a token's SHA-256, which
    approvals used to carry) are ignored, counted."""
    import hashlib

    import yaml

    from rollguard.authority import TokenRegistry, create_token, person_signer

    path = tmp_path / "tokens.yaml"
    token = create_token(path, "dora", "data_engineering_lead")
    text = path.read_text()
    assert token not in text and hashlib.sha256(token.encode()).hexdigest() not in text
    person = person_signer(token)
    assert person_signer(token).key_id == person.key_id  # the same on any machine
    assert person_signer(token + "x").key_id != person.key_id

    registry = TokenRegistry.load(path)
    who = registry.lookup(person.key_id)
    assert who is not None and (who.name, who.role) == ("dora", "data_engineering_lead")
    trust = registry.trust(Trust())
    approval = person.sign(ev.Approval(model_id="m", decision_id="d", role=who.role))
    assert trust.check(approval).ok
    copied = approval.model_copy(update={"decision_id": "another", "event_id": ev.new_id()})
    assert trust.check(copied).reason == "bad_signature"

    doc = yaml.safe_load(text)
    doc["tokens"].append({"name": "old", "role": "sre", "sha256": "0" * 64})
    path.write_text(yaml.safe_dump(doc))
    assert TokenRegistry.load(path).legacy == 1 and len(TokenRegistry.load(path)) == 1


def test_a_person_s_input_holds_for_its_time_and_no_longer() -> None:
    from rollguard_services.decider.approvals import out_of_time

    now = ev.utcnow()
    made = ev.RollbackRequest(model_id="m", role="sre", ts=now - timedelta(seconds=30))
    assert out_of_time(made, now, 600) is None
    late = out_of_time(made, now + timedelta(seconds=600), 600)
    assert late is not None and late.startswith("expired: made 630 s ago")
    ahead = made.model_copy(update={"ts": now + timedelta(minutes=5)})
    assert "ahead of the decider's clock" in str(out_of_time(ahead, now, 600))


def test_a_consumer_says_which_roles_no_trusted_key_speaks_for(tmp_path: Path) -> None:
    """`rollguard run detector` on a fresh state directory makes the detector's own key and
    trusts only it: every deployment would be refused. It says so at start."""
    from structlog.testing import capture_logs

    from rollguard.bus import Admission
    from rollguard.settings import RollguardSettings
    from rollguard.signing import TrustSource, ensure_keys

    settings = RollguardSettings(state_dir=tmp_path / "state", kafka_bootstrap="127.0.0.1:1")
    ensure_keys(settings, ("detector",))
    admission = Admission(TrustSource(settings), "detector")
    with capture_logs() as logs:
        assert admission.expect("deployer", "detector") == ["deployer"]
    (said,) = [e for e in logs if e["event"] == "no_trusted_keys"]
    assert said["roles"] == ["deployer"]
    assert said["trusted_dir"] == str(settings.resolved_trusted_keys_dir)
    ensure_keys(settings, ("deployer",))
    assert Admission(TrustSource(settings), "detector").expect("deployer") == []


def test_a_key_moved_to_another_role_is_taken_at_once(tmp_path: Path) -> None:
    """A key filed under the wrong role and moved: running services follow the move (the
    key ids alone did not change, so a reload that compared only them kept the old role)."""
    from rollguard.settings import RollguardSettings
    from rollguard.signing import TrustSource, ensure_keys

    settings = RollguardSettings(state_dir=tmp_path / "state", kafka_bootstrap="127.0.0.1:1")
    ensure_keys(settings, ("detector",))
    source = TrustSource(settings, min_interval_s=0.0)
    ((kid, (role, _)),) = source.current.keys.items()
    assert role == "detector"
    trusted = settings.resolved_trusted_keys_dir
    (trusted / "decider").mkdir(exist_ok=True)
    (trusted / "detector" / f"{kid}.pub").rename(trusted / "decider" / f"{kid}.pub")
    assert source.refresh(force=True)
    assert source.current.keys[kid][0] == "decider"
