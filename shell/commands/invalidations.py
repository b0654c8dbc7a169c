"""invalidations: which model versions' outputs are invalid, and over which interval."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from rollguard.settings import RollguardSettings
from rollguard_shell.commands import Subparsers, group, require_broker


def register(sub: Subparsers) -> None:
    invalidations = group(sub, "invalidations", "outputs of rolled-back versions")
    listing = invalidations.add_parser(
        "list", help="every invalidation on the topic, oldest interval first"
    )
    listing.add_argument("--model-id", help="only this model")
    listing.add_argument("--model-version", help="only this bad version")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=_list)


def _list(args: argparse.Namespace, settings: RollguardSettings) -> int:
    from rollguard.bus import wait_for_broker
    from rollguard.invalidations import InvalidationClient, InvalidationIndex
    from rollguard.signing import trust_of

    require_broker(settings)

    async def read() -> InvalidationIndex:
        await wait_for_broker(settings)
        # only what an executor key signed: a forged invalidation would drop good outputs
        async with InvalidationClient(settings, trust=trust_of(settings)) as client:
            return await client.catch_up()

    index = asyncio.run(read())
    if index.untrusted:
        print(
            f"rollguard: {index.untrusted} invalidation(s) on the topic not signed by a trusted "
            "executor key were left out",
            file=sys.stderr,
        )
    found = list(index.matching(args.model_id, args.model_version))
    for inv in found:
        if args.json:
            print(json.dumps(inv.model_dump(mode="json", by_alias=True)))
        else:
            print(
                f"{inv.model_id} {','.join(inv.bad_versions)} "
                f"{inv.valid_from.isoformat()} → {inv.valid_to.isoformat()} "
                f"command {inv.command_id}"
            )
    if not args.json:
        print(f"{len(found)} invalidation(s)")
    return 0
