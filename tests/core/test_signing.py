from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from rollguard import events as ev
from rollguard.signing import generate_keypair, load_signer, load_trusted_keys, verify_command
from tests.factories import command


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    generate_keypair(tmp_path / "k.pem", tmp_path / "trusted")
    return tmp_path / "k.pem", tmp_path / "trusted"


def test_signed_command_verifies(keypair: tuple[Path, Path]) -> None:
    signer = load_signer(keypair[0])
    signed = signer.sign(command())
    assert signed.key_id == signer.key_id
    assert verify_command(signed, load_trusted_keys(keypair[1]), ev.utcnow()).ok


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
    verdict = verify_command(forged, load_trusted_keys(keypair[1]), ev.utcnow())
    assert (verdict.ok, verdict.reason) == (False, reason)


def test_expired_command_is_refused(keypair: tuple[Path, Path]) -> None:
    signed = load_signer(keypair[0]).sign(command())
    later = signed.expires_at + timedelta(seconds=1)
    assert verify_command(signed, load_trusted_keys(keypair[1]), later).reason == "expired"


def test_key_rotation_trusts_every_public_key(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "old.pem", tmp_path / "trusted")
    generate_keypair(tmp_path / "new.pem", tmp_path / "trusted")
    trusted = load_trusted_keys(tmp_path / "trusted")
    for name in ("old.pem", "new.pem"):
        assert verify_command(load_signer(tmp_path / name).sign(command()), trusted, ev.utcnow()).ok


def test_a_token_created_while_running_is_picked_up_and_a_bad_file_keeps_the_last(
    tmp_path: Path,
) -> None:
    from rollguard.authority import TokenSource, create_token, hash_token

    path = tmp_path / "tokens.yaml"
    source = TokenSource(path)  # no file yet: nobody may approve
    assert len(source.current) == 0
    token = create_token(path, "dora", "data_engineering_lead")
    assert source.refresh(0.0) is True
    who = source.current.lookup(hash_token(token))
    assert who is not None and who.name == "dora"
    assert source.refresh(0.0) is False  # unchanged
    path.write_text("tokens: [{name: x}]\n")  # broken
    os.utime(path, ns=(1, time.time_ns() + 10**9))  # a new mtime even on a coarse clock
    assert source.refresh(0.0) is False and source.last_error is not None
    assert source.current.lookup(hash_token(token)) is not None  # the last good registry stays
    path.unlink()  # revoked by removing the file
    assert source.refresh(0.0) is True and len(source.current) == 0
