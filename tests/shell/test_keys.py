"""`rollguard keys`: a key per role, rotated with the old one still trusted, listed, retired
(issue 13)."""

from __future__ import annotations

from pathlib import Path

from rollguard.settings import RollguardSettings
from rollguard.signing import load_signer, load_trust
from tests.factories import breach
from tests.shell.test_lifecycle import _cli


def test_generate_rotate_list_and_retire(tmp_path: Path) -> None:
    state = tmp_path / "state"
    settings = RollguardSettings(state_dir=state)
    made = _cli(state, "keys", "generate", "--role", "detector")
    assert made.returncode == 0, made.stderr
    first = load_signer(settings.key_file("detector"), "detector")
    assert first.key_id in made.stdout

    again = _cli(state, "keys", "generate", "--role", "detector")
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
    assert "--rotate" in again.stderr

    rotated = _cli(state, "keys", "generate", "--role", "detector", "--rotate")
    assert rotated.returncode == 0, rotated.stderr
    second = load_signer(settings.key_file("detector"), "detector")
    assert second.key_id != first.key_id
    # Both trusted while the old one's events are still in flight.
    trust = load_trust(settings.resolved_trusted_keys_dir)
    assert all(trust.check(s.sign(breach())).ok for s in (first, second))

    listed = _cli(state, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[1]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows[first.key_id][0] == rows[second.key_id][0] == "detector"
    assert rows[first.key_id][2] == "-" and rows[second.key_id][2].endswith("detector.pem")

    retired = _cli(state, "keys", "retire", first.key_id)
    assert retired.returncode == 0, retired.stderr
    trust = load_trust(settings.resolved_trusted_keys_dir)
    assert trust.check(first.sign(breach())).reason == "unknown_key"
    assert trust.check(second.sign(breach())).ok

    unknown = _cli(state, "keys", "retire", "0123456789abcdef")
    assert unknown.returncode == 2 and "no trusted key" in unknown.stderr
    assert "Traceback" not in unknown.stderr + again.stderr


def test_a_broken_trusted_key_file_is_one_line_naming_it(tmp_path: Path) -> None:
    """An empty or non-PEM .pub under the trusted keys directory (a half-copied Secret, a
    private key pasted by mistake) is a configuration error naming the file, exit 2."""
    state = tmp_path / "state"
    assert _cli(state, "keys", "generate", "--role", "detector").returncode == 0
    trusted = RollguardSettings(state_dir=state).resolved_trusted_keys_dir
    for name, content in [("empty.pub", b""), ("junk.pub", b"not a key\n")]:
        bad = trusted / "detector" / name
        bad.write_bytes(content)
        for args in [("keys", "list"), ("keys", "retire", "0123456789abcdef")]:
            result = _cli(state, *args)
            assert result.returncode == 2, (args, result.stderr)
            (line,) = result.stderr.strip().splitlines()
            assert str(bad) in line and "not a PEM public key" in line, line
        bad.unlink()
    assert _cli(state, "keys", "list").returncode == 0
