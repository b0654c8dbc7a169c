"""topics (and their ACLs), schemas, keys: provisioning and housekeeping."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from rollguard.errors import ExitCode, UsageError
from rollguard.settings import RollguardSettings
from rollguard.signing import ROLES
from rollguard_shell.commands import Subparsers, group, require_broker, writing


def register(sub: Subparsers) -> None:
    topics = group(sub, "topics", "topic provisioning")
    create = topics.add_parser("create", help="create missing topics with explicit partitions")
    create.add_argument("--json", action="store_true", help='{"created": [topic, ...]}')
    create.set_defaults(handler=_topics_create)
    acls = topics.add_parser(
        "acls",
        help="print the Kafka ACLs of each principal (a kafka-acls.sh script, or the table)",
    )
    acls.add_argument(
        "--principal-type", default="User", help="the principal type your brokers use (User)"
    )
    acls.add_argument("--table", action="store_true", help="print the table of grants instead")
    acls.set_defaults(handler=_topics_acls, logs=False)

    schemas = group(sub, "schemas", "event JSON Schemas")
    export = schemas.add_parser("export", help="write schemas/*.json from the event models")
    export.add_argument("--dir", type=Path, default=Path("schemas"))
    export.add_argument("--check", action="store_true", help="fail if the files are stale")
    export.set_defaults(handler=_schemas_export)

    keys = group(sub, "keys", "the signing keys of every role, and the keys trusted")
    gen = keys.add_parser(
        "generate", help="write an Ed25519 key pair for a role and trust its public key"
    )
    gen.add_argument("--role", choices=ROLES, default="decider", help="default: decider")
    gen.add_argument("--private", type=Path, help="private key path (default: the role's)")
    gen.add_argument(
        "--trusted-dir", type=Path, help="where the public key goes (default: trusted/<role>/)"
    )
    gen.add_argument(
        "--rotate",
        action="store_true",
        help="the role has a key: keep it trusted, move it aside, write a new one",
    )
    gen.set_defaults(handler=_keys_generate)
    listing = keys.add_parser("list", help="every trusted key: role, key id, held here")
    listing.add_argument("--json", action="store_true", help="one object per trusted key")
    listing.set_defaults(handler=_keys_list)
    retire = keys.add_parser(
        "retire",
        help="stop trusting a key: events it signs are refused from now on; what the ledger "
        "recorded before keeps its word",
    )
    retire.add_argument("key_id")
    retire.add_argument(
        "--since",
        help="the key was compromised: distrust what the ledger recorded from this time on "
        "too (ISO time, UTC if no offset, or a duration ago: 30m, 2h, 7d; default: now)",
    )
    retire.add_argument(
        "--force",
        action="store_true",
        help="retire it although a role signs with it here or it is the role's last key",
    )
    retire.set_defaults(handler=_keys_retire)


def _topics_create(args: argparse.Namespace, settings: RollguardSettings) -> int:
    from rollguard.bus import provision_topics, wait_for_broker
    from rollguard_shell.access import internal_topics

    require_broker(settings)

    async def create() -> list[str]:
        await wait_for_broker(settings)
        return await provision_topics(
            settings, internal=internal_topics(settings), must_create=True
        )

    created = asyncio.run(create())
    if getattr(args, "json", False):
        print(json.dumps({"created": created}))
        return 0
    print(f"created {len(created)} topic(s): {', '.join(created) or 'none, all exist'}")
    return 0


def _topics_acls(args: argparse.Namespace, settings: RollguardSettings) -> int:
    from rollguard_shell.access import MAX_TOPIC_NAME, acl_script, markdown_table, topic_names

    if not (args.principal_type.isascii() and args.principal_type.isidentifier()):
        raise UsageError(f"--principal-type {args.principal_type!r}: a name such as User")
    prefix = settings.topic_prefix
    if not prefix or prefix.startswith("-"):
        # Empty, the admin's prefixed grant would cover every topic of the cluster; a leading
        # dash reads as an option to kafka-acls.sh.
        raise UsageError(
            f"ROLLGUARD_TOPIC_PREFIX {prefix!r}: ACLs need a prefix of their own that does "
            "not start with '-' (such as rollguard.)"
        )
    longest = max(len(prefix + name) for name in topic_names())
    if longest > MAX_TOPIC_NAME:
        raise UsageError(
            f"ROLLGUARD_TOPIC_PREFIX is {len(prefix)} characters: topic names would reach "
            f"{longest}, past Kafka's {MAX_TOPIC_NAME}"
        )
    if args.table:
        print(markdown_table())
    else:
        print(acl_script(settings.topic_prefix, principal_type=args.principal_type), end="")
    return 0


def _schemas_export(args: argparse.Namespace, settings: RollguardSettings) -> int:
    from rollguard import schemas
    from rollguard_services.api.routes import openapi_spec

    spec_path = args.dir / "openapi" / "rollguard-api.json"
    if args.check:
        stale = schemas.stale(args.dir)
        if not spec_path.is_file() or spec_path.read_bytes() != openapi_spec():
            stale.append(str(spec_path.relative_to(args.dir)))
        if stale:
            print(
                f"rollguard: stale schemas in {args.dir}: {', '.join(stale)} "
                "(run rollguard schemas export)",
                file=sys.stderr,
            )
            return ExitCode.NOT_READY
        print(f"{args.dir}: up to date")
        return 0
    with writing("--dir"):
        written = schemas.export(args.dir)
        spec_path.parent.mkdir(exist_ok=True)
        spec_path.write_bytes(openapi_spec())
    print(f"wrote {len(written)} schema(s) and the API's OpenAPI spec to {args.dir}")
    return 0


def _keys_generate(args: argparse.Namespace, settings: RollguardSettings) -> int:
    from rollguard.signing import generate_keypair, load_signer

    role = args.role
    private = args.private or settings.key_file(role)
    trusted = args.trusted_dir or settings.resolved_trusted_keys_dir / role
    if private.exists():
        if not args.rotate:
            raise UsageError(
                f"{private} exists; --rotate to make a new {role} key (the old one stays "
                "trusted until `rollguard keys retire`)"
            )
        old = load_signer(private, role)
        aside = private.with_name(f"{private.stem}.{old.key_id}.previous{private.suffix}")
        with writing("--private"):
            private.rename(aside)
        print(f"moved {role} key {old.key_id} to {aside}; still trusted until retired")
    with writing("--private, --trusted-dir or ROLLGUARD_STATE_DIR"):
        kid = generate_keypair(private, trusted)
    print(f"{role} key {kid}: private {private}, public {trusted / (kid + '.pub')}")
    if args.rotate:
        print(
            f"running services trust it within a second; restart the {role} (or, for the "
            f"deployer, the next `deploy record` does) so it signs with it, then "
            f"`rollguard keys retire` the old one"
        )
    return 0


def _trusted_files(settings: RollguardSettings) -> list[tuple[str, str, Path]]:
    """(role, key id, file) of every trusted public key, as the services read them."""
    from rollguard.signing import load_trust, trusted_keys

    root = settings.resolved_trusted_keys_dir
    load_trust(root)  # refuses what a service would refuse: a bad file, a key with two roles
    return [(role, kid, path) for role, kid, path, _ in trusted_keys(root)]


def _keys_list(args: argparse.Namespace, settings: RollguardSettings) -> int:
    from rollguard.signing import ROLES, load_signer

    held = {}
    for role in ROLES:
        path = settings.key_file(role)
        if path.exists():
            held[load_signer(path, role).key_id] = path
    rows = _trusted_files(settings)
    if args.json:
        print(
            json.dumps(
                [
                    {"role": role, "key_id": kid, "private_key": str(held.get(kid) or "") or None}
                    for role, kid, _ in rows
                ]
            )
        )
        return 0
    if not rows:
        print(f"no trusted keys under {settings.resolved_trusted_keys_dir}")
        return 0
    print(f"{'role':<10} {'key id':<18} private key here")
    for trusted_as, kid, _ in rows:
        print(f"{trusted_as:<10} {kid:<18} {held.get(kid, '-')}")
    return 0


#: What a role's key signed that compacted topics keep, and what to do about it when the key
#: is retired (services starting later refuse what it signed). The detector signs its own
#: baselines again at start.
RETAINED = {
    "deployer": "deployments and imported baselines it signed stay on their compacted topics; "
    "services started later refuse them: record the live and known-good versions again "
    "(rollguard deploy record) and import the baselines again with the new key",
    "executor": "the invalidations and pointer moves it signed stay on their compacted topics; "
    "downstream readers started later refuse them",
    "decider": "the known-good marks and model status it signed stay on compacted topics; a "
    "model status is signed again at its next change, a known-good mark at the next bake",
}


def _keys_retire(args: argparse.Namespace, settings: RollguardSettings) -> int:
    from datetime import UTC, datetime, timedelta

    from rollguard.signing import ROLES, load_signer, retire_key
    from rollguard_shell.commands.ledger import parse_since

    rows = _trusted_files(settings)
    found = [(role, path) for role, kid, path in rows if kid == args.key_id]
    if not found:
        raise UsageError(f"no trusted key {args.key_id} (rollguard keys list)")
    role = found[0][0]
    now = datetime.now(UTC)
    at = parse_since(args.since) if args.since else now
    if at > now + timedelta(seconds=1):  # later would keep trusting what it signs from now on
        raise UsageError(f"--since {args.since}: a time to come; give now or earlier")
    signing_here = [
        r
        for r in ROLES
        if settings.key_file(r).exists()
        and load_signer(settings.key_file(r), r).key_id == args.key_id
    ]
    left = {kid for r, kid, _ in rows if r == role and kid != args.key_id}
    if not args.force and (signing_here or not left):
        why = (
            f"the {role} here signs with it ({settings.key_file(role)})"
            if signing_here
            else f"it is the last trusted {role} key"
        )
        raise UsageError(
            f"not retiring {args.key_id}: {why}; everything the {role} signs would be refused. "
            f"Rotate first (rollguard keys generate --role {role} --rotate), restart the {role} "
            "so it signs with the new key, then retire; or --force"
        )
    root = settings.resolved_trusted_keys_dir
    with writing("ROLLGUARD_TRUSTED_KEYS_DIR"):
        for _, path in found:
            retire_key(root, role, path, at)  # type: ignore[arg-type]
    print(
        f"retired {args.key_id} ({role}) at {at.isoformat()}: running services refuse what it "
        "signs within a second; ledger entries recorded before then stay trusted"
    )
    retained = RETAINED.get(role)
    if retained:
        print(f"note: {retained}")
    return 0
