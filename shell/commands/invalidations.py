"""invalidations: which model versions' outputs are invalid, and over which interval."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from rollguard.errors import UsageError
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
    drop = invalidations.add_parser(
        "drop",
        help="drop the outputs the trusted invalidations name from your stores (idempotent)",
        description="Apply every invalidation an executor key signed to a Redis prediction "
        "cache (rollguard.downstream.RedisOutputs layout), Parquet files and Delta tables of "
        "batch outputs (columns model_id, model_version and a timestamp). Applied twice, the "
        "second time drops nothing.",
    )
    drop.add_argument("--redis", metavar="URL", help="redis://host:6379/0")
    drop.add_argument("--redis-prefix", default="rollguard:outputs", help="the cache's key prefix")
    drop.add_argument("--parquet", metavar="PATH", action="append", default=[], type=Path)
    drop.add_argument("--delta", metavar="URI", action="append", default=[])
    drop.add_argument("--ts-column", default="ts", help="when each output was made (default ts)")
    drop.add_argument("--model-id", help="only this model's invalidations")
    drop.add_argument(
        "--follow",
        action="store_true",
        help="keep applying new invalidations as they come, until interrupted",
    )
    drop.add_argument("--json", action="store_true", help="one JSON object per pass")
    drop.set_defaults(handler=_drop)


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


def _drop(args: argparse.Namespace, settings: RollguardSettings) -> int:
    from rollguard.bus import wait_for_broker
    from rollguard.downstream import RedisOutputs, drop_from_delta, drop_from_parquet
    from rollguard.invalidations import InvalidationClient
    from rollguard.signing import trust_of

    if not (args.redis or args.parquet or args.delta):
        raise UsageError("name at least one store: --redis, --parquet or --delta")
    for path in args.parquet:
        if not path.is_file():
            raise UsageError(f"--parquet {path}: no such file")
    require_broker(settings)
    applied: set[str] = set()  # event ids this run applied already (each store is idempotent)

    async def run() -> int:
        await wait_for_broker(settings)
        cache = None
        if args.redis:
            import redis.asyncio as aioredis

            cache = RedisOutputs(aioredis.from_url(args.redis), args.redis_prefix)
        async with InvalidationClient(settings, trust=trust_of(settings)) as client:
            while True:
                index = await client.catch_up()
                fresh = [i for i in index.matching(args.model_id) if i.event_id not in applied]
                counts: dict[str, Any] = {"invalidations": len(fresh), "untrusted": index.untrusted}
                if cache is not None:
                    counts["redis"] = sum([await cache.drop(i) for i in fresh])
                for path in args.parquet:
                    counts[f"parquet:{path}"] = drop_from_parquet(path, fresh, args.ts_column)
                for uri in args.delta:
                    counts[f"delta:{uri}"] = drop_from_delta(uri, fresh, args.ts_column)
                applied.update(i.event_id for i in fresh)
                if fresh or not args.follow:
                    if args.json:
                        print(json.dumps(counts), flush=True)
                    else:
                        stores = ", ".join(
                            f"{k} {v}"
                            for k, v in counts.items()
                            if k not in ("invalidations", "untrusted")
                        )
                        print(
                            f"{len(fresh)} invalidation(s) applied; outputs dropped: {stores}",
                            flush=True,
                        )
                if not args.follow:
                    return 0
                await asyncio.sleep(2.0)

    try:
        return asyncio.run(run())
    except OSError as exc:
        raise UsageError(f"a store: {exc}") from exc
