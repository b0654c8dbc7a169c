"""policy, deploy, rollback, approve, unlock, status, tokens: what people do around a rollback.

Requests and approvals are events on Kafka, decided by the decider under the same rules as
automatic rollbacks. Each is signed with the key the caller's role token (ROLLGUARD_TOKEN)
derives; neither the token nor anything reusable in its place is ever sent.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from rollguard import topics
from rollguard.answers import WAITS, Answer, Wait
from rollguard.authority import ROLES, TokenRegistry, create_token, revoke_token, token_holders
from rollguard.bus import publish_one, read_topic, wait_for_broker
from rollguard.errors import ExitCode, UsageError
from rollguard.events import (
    Approval,
    Components,
    ModelStatus,
    RollbackRequest,
    SystemManifest,
    decode,
    utcnow,
)
from rollguard.operator import decision_model, person, submit
from rollguard.policy import Role, load_policy, resolve_policy
from rollguard.settings import RollguardSettings
from rollguard.signing import Signer, signer_of, trust_of
from rollguard_shell.commands import Subparsers, group, require_broker, writing


def register(sub: Subparsers) -> None:
    policy = group(sub, "policy", "policies")
    lint = policy.add_parser("lint", help="validate policy files and print the effective policy")
    lint.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    lint.add_argument("--model-id", action="append", default=[], help="also show this model")
    lint.add_argument("--json", action="store_true", help="the effective policy as JSON")
    lint.set_defaults(handler=_policy_lint)
    explain = policy.add_parser(
        "explain",
        help="what MODEL's policy can see at an event rate: window, smallest change, delay",
    )
    explain.add_argument("model_id", metavar="MODEL")
    explain.add_argument(
        "--rate", type=float, required=True, help="events per second the model scores (> 0)"
    )
    explain.add_argument(
        "--policy", type=Path, help="policy file or directory (default: ROLLGUARD_POLICY_PATH)"
    )
    explain.add_argument("--json", action="store_true", help="the window and every detector row")
    explain.set_defaults(handler=_policy_explain)

    deploy = group(sub, "deploy", "deployments")
    record = deploy.add_parser("record", help="publish a SystemManifest (from CI/CD)")
    record.add_argument("--model-id", required=True)
    record.add_argument("--system-version", required=True)
    record.add_argument("--model", required=True, help="model version")
    record.add_argument("--feature-pipeline", required=True)
    record.add_argument("--config", required=True)
    record.add_argument("--infra", required=True)
    record.add_argument(
        "--data",
        help="the version of the data it was trained on (a Delta table version or an ISO time): "
        "what a level-4 rollback restores",
    )
    record.add_argument(
        "--status", choices=("candidate", "live", "known_good", "rolled_back"), default="live"
    )
    record.add_argument("--note", default="")
    record.add_argument("--json", action="store_true", help="print the manifest recorded")
    record.set_defaults(handler=_deploy_record)
    check = deploy.add_parser(
        "check", help="fail unless MODEL has a ready known-good rollback target (for CI)"
    )
    check.add_argument("model_id", metavar="MODEL")
    check.add_argument(
        "--json", action="store_true", help='one JSON object: {"ready": ..., "reason": ...}'
    )
    check.set_defaults(handler=_deploy_check)

    rollback = sub.add_parser("rollback", help="ask the decider for a rollback")
    rollback.add_argument("model_id", metavar="MODEL")
    rollback.add_argument("--to", dest="to_system_version", metavar="SYSTEM_VERSION")
    rollback.add_argument("--level", type=int, choices=(1, 2, 3, 4))
    rollback.add_argument("--as", dest="role", required=True, choices=ROLES)
    rollback.add_argument("--reason", default="")
    _answer_options(rollback)
    rollback.set_defaults(handler=_rollback)

    unlock = sub.add_parser("unlock", help="lift a verification-failure lock on MODEL")
    unlock.add_argument("model_id", metavar="MODEL")
    unlock.add_argument("--as", dest="role", required=True, choices=ROLES)
    unlock.add_argument("--reason", required=True)
    _answer_options(unlock, waits=False)
    unlock.set_defaults(handler=_unlock)

    for action, text in (
        ("pause", "stop automatic action on MODEL until resumed (breaches still recorded)"),
        ("resume", "restart automatic action on a paused MODEL"),
    ):
        operating = sub.add_parser(action, help=text)
        operating.add_argument("model_id", metavar="MODEL")
        operating.add_argument("--as", dest="role", required=True, choices=ROLES)
        operating.add_argument("--reason", required=True, help="why (the ledger keeps it)")
        _answer_options(operating, waits=False)
        operating.set_defaults(handler=_operate, action=action)
    mode = sub.add_parser(
        "mode", help="switch MODEL's mode at run time: enforce, recommend or observe"
    )
    mode.add_argument("model_id", metavar="MODEL")
    mode.add_argument("mode", choices=("enforce", "recommend", "observe"))
    mode.add_argument("--as", dest="role", required=True, choices=ROLES)
    mode.add_argument("--reason", required=True, help="why (the ledger keeps it)")
    _answer_options(mode, waits=False)
    mode.set_defaults(handler=_operate, action="set_mode")

    approve = sub.add_parser("approve", help="approve a decision awaiting approval")
    approve.add_argument("decision_id", metavar="DECISION_ID")
    approve.add_argument("--as", dest="role", required=True, choices=ROLES)
    approve.add_argument("--model-id", help="skip looking the decision up")
    approve.add_argument("--comment", default="")
    _answer_options(approve)
    approve.set_defaults(handler=_approve)

    status = sub.add_parser(
        "status", help="what the decider knows of each model (or of MODEL): live, target, locks"
    )
    status.add_argument("model_id", nargs="?", metavar="MODEL")
    status.add_argument("--json", action="store_true", help="the decider's ModelStatus events")
    status.set_defaults(handler=_status)

    tokens = group(sub, "tokens", "role tokens for approvals and manual rollbacks")
    create = tokens.add_parser("create", help="add a person with a new token (printed once)")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=ROLES)
    create.set_defaults(handler=_tokens_create)
    revoke = tokens.add_parser(
        "revoke",
        help="stop taking what a person signs; the ledger keeps their earlier approvals' word",
    )
    revoke.add_argument("--name", required=True)
    revoke.set_defaults(handler=_tokens_revoke)
    listing = tokens.add_parser("list", help="who holds a token: name, role, key id, revoked")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_tokens_list)


def _answer_options(parser: argparse.ArgumentParser, *, waits: bool = True) -> None:
    if waits:
        parser.add_argument(
            "--wait",
            choices=WAITS,
            default="decided",
            help="return once decided (default), or once the rollback it launches is applied "
            "or verified (through the approvals it needs)",
        )
    parser.add_argument(
        "--timeout",
        type=_positive,
        default=30.0,
        metavar="SECONDS",
        help="give up waiting after this long (exit 7; default 30)",
    )
    parser.add_argument("--json", action="store_true", help="print the answer as one JSON object")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _policy_explain(args: argparse.Namespace, settings: RollguardSettings) -> int:
    from rollguard_services.detector.explain import advice, explain, window
    from rollguard_services.detector.kinds import config_classes
    from rollguard_services.detector.settings import DetectorSettings

    if not args.rate > 0 or args.rate == float("inf"):
        raise UsageError(f"--rate {args.rate:g}: give the events per second, more than 0")
    policy = resolve_policy(args.policy or settings.policy_path, kinds=config_classes())
    model = policy.for_model(args.model_id)
    events = DetectorSettings().window_events
    seconds, n = window(model, args.rate, events)
    rows = explain(model, args.rate, events)
    if args.json:
        print(
            json.dumps(
                {
                    "model_id": args.model_id,
                    "rate": args.rate,
                    "window_s": seconds,
                    "window_events": n,
                    "detectors": [dataclasses.asdict(r) for r in rows],
                    "note": advice(model, args.rate, rows),
                },
                default=str,
            )
        )
        return 0
    print(
        f"{args.model_id} at {args.rate:g} events/s: windows of {seconds:g} s, {n:.1f} events "
        f"each (window.seconds {model.window.seconds:g}"
        + (f", ROLLGUARD_DETECTOR_WINDOW_EVENTS {events}" if events else "")
        + "); a test short of events is judged on pooled windows, up to window.max_seconds "
        + f"{model.window.max_seconds:g}"
    )
    print(
        f"{'detector':<22} {'kind':<16} {'tier':<10} {'judged on':<10} "
        f"{'smallest change it sees':<48} delay"
    )
    for r in rows:
        seen = r.smallest if r.conclusive else f"inconclusive (needs {r.min_events} events)"
        delay = f"{r.delay_s:.1f} s" if r.delay_s is not None else "-"
        judged = f"{r.window_s:g} s"
        print(f"{r.instance:<22} {r.kind:<16} {r.tier:<10} {judged:<10} {seen:<48} {delay}")
    print(
        f"rapid tier: published after {model.false_alarm.sustain_k} of "
        f"{model.false_alarm.sustain_n} windows, or in the first when corrected p <= "
        f"{model.false_alarm.severe_p:g} (severe)"
    )
    said = advice(model, args.rate, rows)
    if said:
        print(f"note: {said}")
    return 0


def _policy_lint(args: argparse.Namespace, settings: RollguardSettings) -> int:
    # Imported here, not at the top: the detector kinds pull in scipy and pyarrow, which
    # every other command (and --help) would pay for at start-up.
    from rollguard_services.detector.kinds import config_classes

    policy = load_policy(*args.paths, kinds=config_classes())
    shown: dict[str, Any] = {"defaults": policy.defaults.model_dump(mode="json")}
    for model_id in sorted({*policy.models, *args.model_id}):
        shown[f"model {model_id}"] = policy.for_model(model_id).model_dump(mode="json")
    if args.json:
        print(json.dumps({"ok": True, "sources": list(policy.sources), **shown}))
        return 0
    print(f"# ok: {len(policy.sources)} file(s): {', '.join(policy.sources)}")
    print(yaml.safe_dump(shown, sort_keys=False), end="")
    return 0


def _person(settings: RollguardSettings, role: Role) -> Signer:
    """The key the token holder signs with, derived from ROLLGUARD_TOKEN; a token the decider
    would refuse is one line and exit 2 now (rollguard.operator.person)."""
    token = settings.token.get_secret_value() if settings.token is not None else None
    return person(token, role, settings.resolved_tokens_file, "ROLLGUARD_TOKEN")


def _send(settings: RollguardSettings, topic: str, event: SystemManifest, key: bytes) -> None:
    """Publish ``event`` signed by this installation's deployer key: consumers refuse it
    otherwise."""

    async def go() -> None:
        await wait_for_broker(settings)  # no broker is said first: exit 3, then the key
        await publish_one(settings, topic, signer_of(settings, "deployer").sign(event), key)

    asyncio.run(go())


def _answered(
    args: argparse.Namespace,
    settings: RollguardSettings,
    event: RollbackRequest | Approval,
    signer: Signer,
) -> int:
    """Send a person's input and print the decider's answer; its exit code (README)."""
    wait: Wait = getattr(args, "wait", "decided")

    async def go() -> Answer:
        await wait_for_broker(settings)  # no broker is said first: exit 3
        return await submit(settings, event, signer, wait, args.timeout)

    answer = asyncio.run(go())
    if args.json:
        print(json.dumps({"sent": event.event_id, **answer.as_dict()}))
    else:
        for line in answer.lines():
            print(line)
    code = answer.exit_code()
    if code:
        print(f"rollguard: {answer.outcome().replace('_', ' ')}", file=sys.stderr)
    return code


def _read(settings: RollguardSettings, topic: str) -> list[Any]:
    """Every record of a topic; BrokerUnavailable (one line, exit 3) when no broker answers."""

    async def go() -> list[Any]:
        await wait_for_broker(settings)
        return await read_topic(settings, topic)

    return asyncio.run(go())


def _deploy_record(args: argparse.Namespace, settings: RollguardSettings) -> int:
    require_broker(settings)
    manifest = SystemManifest(
        model_id=args.model_id,
        model_version=args.model,
        system_version=args.system_version,
        components=Components(
            model=args.model,
            feature_pipeline=args.feature_pipeline,
            config=args.config,
            infra=args.infra,
            data=args.data,
        ),
        status=args.status,
        note=args.note,
    )
    _send(settings, topics.DEPLOYMENTS.name, manifest, manifest.key)
    if args.json:
        print(json.dumps(manifest.model_dump(mode="json")))
        return 0
    print(f"recorded {args.model_id} {args.system_version} ({args.model}) as {args.status}")
    return 0


def latest_statuses(settings: RollguardSettings) -> dict[str, ModelStatus]:
    """The latest ModelStatus the decider published of each model it knows, by model id."""
    topic = settings.topic(topics.MODEL_STATUS.name)
    latest: dict[str, bytes | None] = {}
    for record in _read(settings, topics.MODEL_STATUS.name):
        if record.key is not None:
            latest[record.key.decode(errors="replace")] = record.value  # None: a tombstone
    out: dict[str, ModelStatus] = {}
    if not any(v is not None for v in latest.values()):
        return out  # nothing to check: no trusted keys needed to say so
    trust = trust_of(settings)
    for model_id, value in sorted(latest.items()):
        if value is None:
            continue  # the model was forgotten
        try:
            status = decode(ModelStatus, value)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise UsageError(
                f"the latest status of {model_id} on {topic} is not readable: {exc}"
            ) from exc
        verdict = trust.check(status)
        if not verdict.ok:
            raise UsageError(
                f"the latest status of {model_id} on {topic} is not the decider's: "
                f"{verdict.refusal}"
            )
        out[model_id] = status
    return out


def model_status(settings: RollguardSettings, model_id: str) -> ModelStatus | None:
    """The latest ModelStatus the decider published for one model; None when there is none."""
    return latest_statuses(settings).get(model_id)


def _not_ready(why: str) -> int:
    # An answer, not an error: CI tells this "no" (4) from a mistyped command (2).
    print(f"rollguard: not ready: {why}", file=sys.stderr)
    return ExitCode.NOT_READY


def _deploy_check(args: argparse.Namespace, settings: RollguardSettings) -> int:
    require_broker(settings)
    # The policy before the topic: a bad policy file fails at once, not after the broker.
    policy = resolve_policy(settings.policy_path).for_model(args.model_id)
    status = model_status(settings, args.model_id)
    if status is None:
        why: str | None = f"the decider knows no deployment of {args.model_id}"
    else:
        why = status.not_ready(policy.rollback.target_ready_within_s, utcnow())
    if args.json:
        live = status.live if status is not None else None
        target = status.rollback_target if status is not None else None
        print(
            json.dumps(
                {
                    "model_id": args.model_id,
                    "ready": why is None,
                    "reason": why,
                    "live": live.system_version if live else None,
                    "target": target.system_version if target else None,
                }
            )
        )
        return 0 if why is None else ExitCode.NOT_READY
    if why is not None:
        return _not_ready(why)
    assert status is not None
    live, target = status.live, status.rollback_target
    assert live is not None and target is not None  # not_ready() said so
    print(
        f"ready: {args.model_id} can roll back from {live.system_version} to "
        f"{target.system_version} (model {target.model_version})"
    )
    return 0


def _rollback(args: argparse.Namespace, settings: RollguardSettings) -> int:
    require_broker(settings)
    signer = _person(settings, args.role)
    req = RollbackRequest(
        model_id=args.model_id,
        to_system_version=args.to_system_version,
        level=args.level,
        role=args.role,
        reason=args.reason,
    )
    return _answered(args, settings, req, signer)


def _unlock(args: argparse.Namespace, settings: RollguardSettings) -> int:
    require_broker(settings)
    signer = _person(settings, args.role)
    req = RollbackRequest(
        model_id=args.model_id, action="unlock", role=args.role, reason=args.reason
    )
    return _answered(args, settings, req, signer)


def _operate(args: argparse.Namespace, settings: RollguardSettings) -> int:
    require_broker(settings)
    signer = _person(settings, args.role)
    req = RollbackRequest(
        model_id=args.model_id,
        action=args.action,
        mode=getattr(args, "mode", None),
        role=args.role,
        reason=args.reason,
    )
    return _answered(args, settings, req, signer)


def _approve(args: argparse.Namespace, settings: RollguardSettings) -> int:
    require_broker(settings)
    signer = _person(settings, args.role)
    model_id = args.model_id
    if model_id is None:  # no broker is said first: exit 3
        model_id = asyncio.run(decision_model(settings, args.decision_id))
        if model_id is None:
            raise UsageError(f"no decision {args.decision_id} on {settings.topic('decisions')}")
    approval = Approval(
        model_id=model_id,
        decision_id=args.decision_id,
        role=args.role,
        comment=args.comment,
    )
    return _answered(args, settings, approval, signer)


def _status(args: argparse.Namespace, settings: RollguardSettings) -> int:
    require_broker(settings)
    statuses = latest_statuses(settings)
    if args.model_id is not None:
        if args.model_id not in statuses:
            raise UsageError(f"the decider knows no deployment of {args.model_id}")
        statuses = {args.model_id: statuses[args.model_id]}
    if args.json:
        print(json.dumps([st.model_dump(mode="json") for st in statuses.values()]))
        return 0
    if not statuses:
        print("no model known to the decider yet (rollguard deploy record ...)")
        return 0
    now = utcnow()
    policy = resolve_policy(settings.policy_path)  # the mode is the policy's, as read here
    for st in statuses.values():
        mode = st.mode or policy.for_model(st.model_id).rollback.mode
        print(_status_line(st, now) + ("" if mode == "enforce" else f"; mode {mode}"))
    return 0


def _status_line(st: ModelStatus, now: datetime) -> str:
    live = f"{st.live.system_version} ({st.live.model_version})" if st.live else "-"
    target = st.rollback_target.system_version if st.rollback_target else "none"
    parts = [f"{st.model_id}: live {live}, rollback target {target}"]
    if st.locked:
        parts.append(f"LOCKED ({st.locked}: rollguard unlock {st.model_id} ...)")
    if st.paused is not None:
        parts.append(
            f"PAUSED by {st.paused.by}: {st.paused.reason} (rollguard resume {st.model_id} ...)"
        )
    if st.in_flight is not None:
        parts.append(f"rollback in flight (command {st.in_flight.command_id})")
    if st.verifying is not None:
        parts.append(f"verifying {st.verifying.restored_version}")
    if st.cooldown_until is not None and st.cooldown_until > now:
        parts.append(f"cooldown until {st.cooldown_until.isoformat()}")
    for p in st.pending:
        parts.append(f"awaiting approval: rollguard approve {p.decision_id} --as ROLE")
    return "; ".join(parts)


def _tokens_revoke(args: argparse.Namespace, settings: RollguardSettings) -> int:
    path = settings.resolved_tokens_file
    TokenRegistry.load(path)  # a file the decider would refuse is not changed
    at = utcnow()
    with writing("ROLLGUARD_TOKENS_FILE" if settings.tokens_file else "ROLLGUARD_STATE_DIR"):
        n = revoke_token(path, args.name, at)
    if not n:
        raise UsageError(f"no token of {args.name!r} to revoke in {path}")
    print(
        f"revoked {n} token(s) of {args.name} at {at.isoformat()}: the decider takes nothing "
        "they sign from now on (it follows the file); the ledger keeps their earlier word"
    )
    return 0


def _tokens_list(args: argparse.Namespace, settings: RollguardSettings) -> int:
    path = settings.resolved_tokens_file
    holders = token_holders(path)
    if args.json:
        print(json.dumps([dataclasses.asdict(h) for h in holders]))
        return 0
    if not holders:
        print(f"no tokens in {path} (rollguard tokens create --name NAME --role ROLE)")
        return 0
    for h in holders:
        if h.legacy:
            state = "ignored: made by an older rollguard, needs a new token"
        elif h.revoked_at:
            state = f"revoked at {h.revoked_at}"
        else:
            state = "active"
        key = f" key {h.key_id}" if h.key_id else ""
        print(f"{h.name} ({h.role}){key}: {state}")
    return 0


def _tokens_create(args: argparse.Namespace, settings: RollguardSettings) -> int:
    path = settings.resolved_tokens_file
    TokenRegistry.load(path)  # a file the decider would refuse is not added to
    with writing("ROLLGUARD_TOKENS_FILE" if settings.tokens_file else "ROLLGUARD_STATE_DIR"):
        token = create_token(path, args.name, args.role)
    print(
        f"token for {args.name} ({args.role}), shown once; {path} holds only the public key "
        "it derives:"
    )
    print(token)
    return 0
