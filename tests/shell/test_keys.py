"""`rollguard keys`: a key per role, rotated with the old one still trusted, listed, retired
(issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollguard import topics
from rollguard.settings import RollguardSettings
from rollguard.signing import load_signer, load_trust
from rollguard_services.ledger.provenance import provenance
from rollguard_services.ledger.store import Incoming, LedgerStore
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

    # The key the detector here signs with is not retired by mistake.
    in_use = _cli(state, "keys", "retire", second.key_id)
    assert in_use.returncode == 2 and "--rotate" in one_line(in_use), in_use.stderr

    retired = _cli(state, "keys", "retire", first.key_id)
    assert retired.returncode == 0, retired.stderr
    trust = load_trust(settings.resolved_trusted_keys_dir)
    assert trust.check(first.sign(breach())).reason == "unknown_key"
    assert trust.check(second.sign(breach())).ok

    # A role's last trusted key (its private key kept elsewhere) is not retired by mistake.
    elsewhere = tmp_path / "ci" / "operator.pem"
    made = _cli(state, "keys", "generate", "--role", "operator", "--private", str(elsewhere))
    assert made.returncode == 0, made.stderr
    operator = load_signer(elsewhere, "operator").key_id
    last = _cli(state, "keys", "retire", operator)
    assert last.returncode == 2 and "last trusted operator key" in one_line(last)
    assert _cli(state, "keys", "retire", operator, "--force").returncode == 0

    # A time to come would keep trusting, in history, what the key signs from now on.
    ahead = _cli(state, "keys", "retire", second.key_id, "--since", "2999-01-01T00:00:00+00:00")
    assert ahead.returncode == 2 and "a time to come" in one_line(ahead)

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


def one_line(result: object) -> str:
    stderr = str(getattr(result, "stderr", ""))
    assert "Traceback" not in stderr
    (line,) = stderr.strip().splitlines()
    return line


def test_retiring_a_key_keeps_the_word_of_what_the_ledger_recorded_before(
    tmp_path: Path,
) -> None:
    """A retired key no longer vouches for anything new, but the ledger entries it signed
    before its retirement stay trusted: retiring does not rewrite history. Retired as
    compromised (--since), what was recorded from then on is untrusted too."""
    state = tmp_path / "state"
    settings = RollguardSettings(state_dir=state)
    assert _cli(state, "keys", "generate", "--role", "detector").returncode == 0
    old = load_signer(settings.key_file("detector"), "detector")
    store = LedgerStore(settings.resolved_ledger_url)
    try:
        store.append([Incoming(topics.BREACHES.name, 0, 0, old.sign(breach()).encode())])
        in_use = _cli(state, "keys", "retire", old.key_id)
        assert in_use.returncode == 2 and "the detector here signs with it" in one_line(in_use)
        assert _cli(state, "keys", "generate", "--role", "detector", "--rotate").returncode == 0
        assert _cli(state, "keys", "retire", old.key_id).returncode == 0
        # A breach the old key signs after its retirement (a leaked key) lands too.
        store.append([Incoming(topics.BREACHES.name, 0, 1, old.sign(breach()).encode())])

        history = load_trust(settings.resolved_trusted_keys_dir, history=True)
        before, after = (provenance(e, history) for e in store.iter_entries())
        assert (before.trusted, before.role) == (True, "detector")
        assert (after.trusted, after.reason) == (False, "retired_key")
        # What services act on now: the retired key is not trusted at all.
        assert load_trust(settings.resolved_trusted_keys_dir).check(old.sign(breach())).reason == (
            "unknown_key"
        )
        verified = _cli(state, "ledger", "verify")
        assert "Breach: retired_key" in verified.stdout, verified.stdout

        # Retired as compromised since before the first entry: neither is trusted.
        for path in (state / "keys" / "trusted" / "retired").iterdir():
            if path.name.endswith(".retired_at"):
                path.write_text("2000-01-01T00:00:00+00:00\n")
        history = load_trust(settings.resolved_trusted_keys_dir, history=True)
        assert [provenance(e, history).trusted for e in store.iter_entries()] == [False, False]
    finally:
        store.close()


def test_a_revoked_person_signs_nothing_more_and_keeps_their_earlier_word(tmp_path: Path) -> None:
    """`rollguard tokens revoke`: the decider takes nothing the person signs from then on,
    but the approvals the ledger recorded before stay theirs in `incident show` and
    `ledger verify` (removing them from the file would have made their history untrusted)."""
    from rollguard import events as ev
    from rollguard.authority import TokenRegistry, person_signer
    from rollguard_shell.commands.ledger import recorded_trust

    state = tmp_path / "state"
    settings = RollguardSettings(state_dir=state)
    assert _cli(state, "keys", "generate", "--role", "detector").returncode == 0  # a trusted dir
    made = _cli(state, "tokens", "create", "--name", "dora", "--role", "data_engineering_lead")
    assert made.returncode == 0, made.stderr
    dora = person_signer(made.stdout.strip().splitlines()[-1])
    store = LedgerStore(settings.resolved_ledger_url)
    try:
        before = dora.sign(ev.Approval(model_id="m", decision_id="d", role="data_engineering_lead"))
        store.append([Incoming(topics.APPROVALS.name, 0, 0, before.encode())])
        revoked = _cli(state, "tokens", "revoke", "--name", "dora")
        assert revoked.returncode == 0, revoked.stderr
        after = dora.sign(ev.Approval(model_id="m", decision_id="e", role="data_engineering_lead"))
        store.append([Incoming(topics.APPROVALS.name, 0, 1, after.encode())])

        registry = TokenRegistry.load(settings.resolved_tokens_file)
        assert registry.lookup(dora.key_id) is None  # the decider: nobody's
        assert (
            dora.key_id not in registry.trust(load_trust(settings.resolved_trusted_keys_dir)).keys
        )
        history = recorded_trust(settings)
        first, second = (provenance(e, history) for e in store.iter_entries())
        assert first.trusted and (second.trusted, second.reason) == (False, "retired_key")
    finally:
        store.close()
    nobody = _cli(state, "tokens", "revoke", "--name", "nobody")
    assert nobody.returncode == 2 and "no token of 'nobody'" in one_line(nobody)


def test_bad_names_binary_files_and_huge_durations_are_one_line(tmp_path: Path) -> None:
    """From a user probe: an empty or repeated name no longer corrupts the tokens file, a
    file that is not text and a duration past the calendar are one line, exit 2."""
    state = tmp_path / "state"
    for name in ("", "  ", "x\x1b[31mred"):
        bad = _cli(state, "tokens", "create", "--name", name, "--role", "sre")
        assert bad.returncode == 2 and "give a person's name" in one_line(bad)
    assert _cli(state, "tokens", "create", "--name", "alice", "--role", "sre").returncode == 0
    again = _cli(state, "tokens", "create", "--name", "alice", "--role", "sre")
    assert again.returncode == 2 and "has a token already" in one_line(again)
    assert _cli(state, "tokens", "revoke", "--name", "alice").returncode == 0
    assert _cli(state, "tokens", "create", "--name", "alice", "--role", "sre").returncode == 0

    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    explained = _cli(state, "policy", "explain", "m", "--rate", "100", "--policy", str(binary))
    assert explained.returncode == 2 and "not a text file" in one_line(explained)
    tokens = RollguardSettings(state_dir=state).resolved_tokens_file
    tokens.write_bytes(b"\xff\xfe")
    garbled = _cli(state, "tokens", "revoke", "--name", "alice")
    assert garbled.returncode == 2 and "not a text file" in one_line(garbled)
    far = _cli(state, "ledger", "show", "--since", "99999999d")
    assert far.returncode == 2 and "further back than a date can be" in one_line(far)


def test_rollback_and_approve_refuse_a_token_the_decider_would_refuse_before_sending(
    tmp_path: Path,
) -> None:
    """From a user probe: a revoked or unknown token, or one of another role, got exit 0 and
    a request the decider then refused out of sight. Where the tokens file is readable, each
    is one line, exit 2, before anything is sent; a good token goes on to the broker (none
    answers here: exit 3)."""
    from tests.shell.test_cli import one_line_error, rollguard

    state = tmp_path / "state"
    made = _cli(state, "tokens", "create", "--name", "dora", "--role", "sre")
    gone = _cli(state, "tokens", "create", "--name", "rex", "--role", "sre")
    assert made.returncode == 0 and gone.returncode == 0, (made.stderr, gone.stderr)
    dora, rex = (r.stdout.strip().splitlines()[-1] for r in (made, gone))
    assert _cli(state, "tokens", "revoke", "--name", "rex").returncode == 0
    base = {"ROLLGUARD_STATE_DIR": str(state), "ROLLGUARD_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    base["ROLLGUARD_CONNECT_TIMEOUT_S"] = "1"
    cases = {
        "revoked": (rex, "sre", "was revoked at"),
        "unknown": ("not-a-token-of-this-file", "sre", "is not a token of"),
        "another role": (dora, "ml_lead", "dora's, whose role is sre, not ml_lead"),
    }
    for what, (token, role, said) in cases.items():
        for command in (["rollback", "m"], ["approve", "d1", "--model-id", "m"]):
            result = rollguard(*command, "--as", role, env={**base, "ROLLGUARD_TOKEN": token})
            assert result.returncode == 2, (what, command, result.stderr)
            assert said in one_line_error(result), (what, command)
    ok = rollguard("rollback", "m", "--as", "sre", env={**base, "ROLLGUARD_TOKEN": dora})
    assert ok.returncode == 3, ok.stderr  # past the token check, on to a broker that is not there


@pytest.mark.parametrize("content", ["tokens: [1, 2", "tokens: 5"], ids=["not-yaml", "not-a-list"])
def test_a_broken_tokens_file_beside_the_cli_is_one_line_before_anything_is_sent(
    tmp_path: Path, content: str
) -> None:
    from tests.shell.test_cli import one_line_error, rollguard

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    tokens = state / "tokens.yaml"
    tokens.touch(mode=0o600)
    tokens.write_text(content)
    env = {
        "ROLLGUARD_STATE_DIR": str(state),
        "ROLLGUARD_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "ROLLGUARD_TOKEN": "some-token",
    }
    result = rollguard("rollback", "m", "--as", "sre", env=env)
    assert result.returncode == 2, result.stderr
    assert one_line_error(result).startswith("rollguard: error: ROLLGUARD_TOKENS_FILE: ")
    empty = rollguard("rollback", "m", "--as", "sre", env={**env, "ROLLGUARD_TOKEN": " "})
    assert empty.returncode == 2 and "set ROLLGUARD_TOKEN" in one_line_error(empty)
