"""topics, schemas, keys: provisioning and housekeeping."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from rollguard.errors import ExitCode, UsageError
from rollguard.settings import RollguardSettings
from rollguard_shell.commands import Subparsers, group, require_broker, writing


def register(sub: Subparsers) -> None:
    topics = group(sub, "topics", "topic provisioning")
    topics.add_parser("create", help="create missing topics with explicit partitions").set_defaults(
        handler=_topics_create
    )

    schemas = group(sub, "schemas", "event JSON Schemas")
    export = schemas.add_parser("export", help="write schemas/*.json from the event models")
    export.add_argument("--dir", type=Path, default=Path("schemas"))
    export.add_argument("--check", action="store_true", help="fail if the files are stale")
    export.set_defaults(handler=_schemas_export)

    keys = group(sub, "keys", "command-signing keys")
    gen = keys.add_parser("generate", help="write an Ed25519 key pair")
    gen.add_argument("--private", type=Path, help="private key path (default under state dir)")
    gen.add_argument("--trusted-dir", type=Path, help="where the public key goes")
    gen.set_defaults(handler=_keys_generate)


def _topics_create(args: argparse.Namespace, settings: RollguardSettings) -> int:
    from rollguard.bus import provision_topics, wait_for_broker

    require_broker(settings)

    async def create() -> list[str]:
        await wait_for_broker(settings)
        return await provision_topics(settings)

    created = asyncio.run(create())
    print(f"created {len(created)} topic(s): {', '.join(created) or 'none, all exist'}")
    return 0


def _schemas_export(args: argparse.Namespace, settings: RollguardSettings) -> int:
    from rollguard import schemas

    if args.check:
        stale = schemas.stale(args.dir)
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
    print(f"wrote {len(written)} schema(s) to {args.dir}")
    return 0


def _keys_generate(args: argparse.Namespace, settings: RollguardSettings) -> int:
    from rollguard.signing import generate_keypair

    private = args.private or settings.resolved_signing_key_file
    trusted = args.trusted_dir or settings.resolved_trusted_keys_dir
    if private.exists():
        raise UsageError(f"{private} exists; remove it first to rotate")
    with writing("--private, --trusted-dir or ROLLGUARD_STATE_DIR"):
        kid = generate_keypair(private, trusted)
    print(f"key {kid}: private {private}, public {trusted / (kid + '.pub')}")
    return 0
