"""baseline import: publish what good looks like for a model version from a CSV/Parquet file,
signed with the deployer key (the detector installs only baselines signed by a trusted key)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from rollguard.settings import RollguardSettings
from rollguard_shell.commands import Subparsers, group, require_broker


def register(sub: Subparsers) -> None:
    baseline = group(sub, "baseline", "baselines the detector compares versions with")
    imp = baseline.add_parser(
        "import",
        help="build baseline snapshots from a table and publish them to the baselines topic",
        description=(
            "Columns: prediction (required), feature:<name>, metric:<name> (numeric per "
            "prediction, e.g. 0/1 clicks for ctr). CSV with a header row, or Parquet. The "
            "snapshots are signed with the deployer key (ROLLGUARD_KEYS_DIR/deployer.pem)."
        ),
    )
    imp.add_argument("--model-id", required=True)
    imp.add_argument("--model-version", required=True)
    imp.add_argument("--min-rows", type=int, default=None, help="refuse smaller tables")
    imp.add_argument("--dry-run", action="store_true", help="check and summarise, publish nothing")
    imp.add_argument("file", type=Path)
    imp.set_defaults(handler=_import)


def _import(args: argparse.Namespace, settings: RollguardSettings) -> int:
    from rollguard import baselines, topics
    from rollguard.bus import start_control_producer, wait_for_broker
    from rollguard.signing import signer_of

    snapshots = baselines.snapshots_from_table(
        args.model_id,
        args.model_version,
        baselines.read_table(args.file),
        source=str(args.file),
        min_rows=args.min_rows if args.min_rows is not None else baselines.MIN_ROWS,
    )
    summary = ", ".join(f"{s.signal} (n={s.n})" for s in snapshots)
    if args.dry_run:
        print(f"{args.file}: {len(snapshots)} snapshot(s): {summary}")
        return 0
    require_broker(settings)
    # Signed before the broker is asked: a missing key is one line, and nothing is half sent.
    signer = signer_of(settings, "deployer")
    snapshots = [signer.sign(s) for s in snapshots]

    async def publish() -> None:
        await wait_for_broker(settings)
        producer, _ = await start_control_producer(settings)
        try:
            await baselines.publish(producer, settings.topic(topics.BASELINES.name), snapshots)
        finally:
            await producer.stop()

    asyncio.run(publish())
    print(
        f"published {len(snapshots)} baseline snapshot(s) for {args.model_id} "
        f"{args.model_version}, signed by deployer key {signer.key_id}: {summary}"
    )
    return 0
