"""The `rollguard` command. User errors print one line and exit non-zero; no tracebacks."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pydantic import ValidationError

from rollguard.errors import RollguardError, UsageError
from rollguard.logs import configure_logging
from rollguard.settings import RollguardSettings

if TYPE_CHECKING:
    from rollguard.demo import DemoReport


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from rollguard.runner import SERVICES

    p = _Parser(prog="rollguard", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="detect and roll back a bad deployment, end to end")
    demo.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    demo.add_argument("--rate", type=float, default=200.0, help="requests per second")
    demo.add_argument("--warmup", type=float, default=3.0, help="seconds of good traffic first")
    demo.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for rollback")

    up = sub.add_parser("up", help="run every service in one process until interrupted")
    up.add_argument("--with-router", action="store_true", help="also run the reference router")

    run = sub.add_parser("run", help="run one service (what containers use)")
    run.add_argument("service", choices=sorted(SERVICES))

    topics_p = sub.add_parser("topics", help="topic provisioning")
    topics_sub = topics_p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    topics_sub.add_parser("create", help="create missing topics with explicit partitions")

    schemas_p = sub.add_parser("schemas", help="event JSON Schemas")
    schemas_sub = schemas_p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    export = schemas_sub.add_parser("export", help="write schemas/*.json from the event models")
    export.add_argument("--dir", type=Path, default=Path("schemas"))
    export.add_argument("--check", action="store_true", help="fail if the files are stale")

    ledger = sub.add_parser("ledger", help="the tamper-evident ledger")
    ledger_sub = ledger.add_subparsers(dest="action", required=True, parser_class=_Parser)
    verify = ledger_sub.add_parser("verify", help="check every link of the hash chain")
    verify.add_argument("--url", help="SQLAlchemy URL (default: ROLLGUARD_LEDGER_URL)")

    keys = sub.add_parser("keys", help="command-signing keys")
    keys_sub = keys.add_subparsers(dest="action", required=True, parser_class=_Parser)
    gen = keys_sub.add_parser("generate", help="write an Ed25519 key pair")
    gen.add_argument("--private", type=Path, help="private key path (default under state dir)")
    gen.add_argument("--trusted-dir", type=Path, help="where the public key goes")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        try:
            settings = RollguardSettings()
        except ValidationError as exc:
            err = exc.errors()[0]
            field = "ROLLGUARD_" + str(err["loc"][0]).upper() if err["loc"] else "settings"
            raise UsageError(f"{field}: {err['msg']}") from None
        code = _dispatch(args, settings)
    except RollguardError as exc:
        print(f"rollguard: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("rollguard: interrupted; everything it started has stopped", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code)


def _dispatch(args: argparse.Namespace, settings: RollguardSettings) -> int:
    if args.command == "demo":
        return _demo(args, settings)
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "up":
        return asyncio.run(_up(settings, with_router=args.with_router))
    if args.command == "run":
        if settings.embedded:
            raise UsageError(
                "rollguard run needs ROLLGUARD_KAFKA_BOOTSTRAP; `rollguard up` starts an"
                " embedded broker"
            )
        return asyncio.run(_up(settings, only=args.service))
    if args.command == "topics":
        return asyncio.run(_topics_create(settings))
    if args.command == "schemas":
        return _schemas(args)
    if args.command == "ledger":
        return _ledger_verify(args.url or settings.resolved_ledger_url)
    if args.command == "keys":
        return _keys(args, settings)
    raise UsageError(f"unknown command {args.command}")


def _demo(args: argparse.Namespace, settings: RollguardSettings) -> int:
    from rich.console import Console

    from rollguard.demo import run_demo

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.state_dir / "demo.log", "w") as logf:
        configure_logging(settings.log_level, "json", stream=logf)
        err = Console(stderr=True)
        report = asyncio.run(
            run_demo(
                settings,
                console=err,
                live_display=err.is_terminal,
                rate_rps=args.rate,
                warmup_s=args.warmup,
                timeout_s=args.timeout,
            )
        )
    ok = report.rollback_applied and report.ledger_verified
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        _print_report(report)
    if not ok:
        reason = report.reason or "the ledger did not verify"
        print(
            f"rollguard: demo failed: {reason} (logs: {settings.state_dir}/demo.log)",
            file=sys.stderr,
        )
    return 0 if ok else 1


def _print_report(report: DemoReport) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="rollguard demo", show_header=False)
    for key, value in report.as_dict().items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        table.add_row(key, Text(shown))
    console = Console()
    console.print(table)
    console.print(Text(report.headline(), style="bold"))


async def _up(
    settings: RollguardSettings, *, with_router: bool = False, only: str | None = None
) -> int:
    from rollguard.logs import get_logger
    from rollguard.runner import CORE_SERVICES, build_service, ensure_keys, kafka, run_services

    log = get_logger("rollguard")
    names = [only] if only else [*CORE_SERVICES, *(["router"] if with_router else [])]
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert main_task is not None
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    async with kafka(settings) as live_settings:
        if settings.embedded or only in ("decider", None):
            ensure_keys(live_settings)
        services = [build_service(n, live_settings) for n in names]
        log.info("running", services=names, bootstrap=live_settings.kafka_bootstrap)
        try:
            await run_services(services)
        except asyncio.CancelledError:
            log.info("shutting_down", services=names)
    return 0


async def _topics_create(settings: RollguardSettings) -> int:
    from rollguard.bus import provision_topics, wait_for_broker

    if settings.embedded:
        raise UsageError("set ROLLGUARD_KAFKA_BOOTSTRAP to the Kafka to provision")
    await wait_for_broker(settings)
    created = await provision_topics(settings)
    print(f"created {len(created)} topic(s): {', '.join(created) or 'none, all exist'}")
    return 0


def _schemas(args: argparse.Namespace) -> int:
    from rollguard import schemas

    if args.check:
        stale = schemas.stale(args.dir)
        if stale:
            print(f"stale schemas in {args.dir}: {', '.join(stale)} (run rollguard schemas export)")
            return 1
        print(f"{args.dir}: up to date")
        return 0
    written = schemas.export(args.dir)
    print(f"wrote {len(written)} schema(s) to {args.dir}")
    return 0


def _ledger_verify(url: str) -> int:
    from services.ledger.store import LedgerStore

    store = LedgerStore(url)
    try:
        report = store.verify()
    finally:
        store.close()
    if report.ok:
        print(f"ledger ok: {report.entries} entries, head {report.head_hash[:16]}")
        return 0
    print(f"ledger BROKEN at seq {report.first_bad_seq}: {report.reason}")
    return 1


def _keys(args: argparse.Namespace, settings: RollguardSettings) -> int:
    from rollguard.signing import generate_keypair

    private = args.private or settings.resolved_signing_key_file
    trusted = args.trusted_dir or settings.resolved_trusted_keys_dir
    if private.exists():
        raise UsageError(f"{private} exists; remove it first to rotate")
    kid = generate_keypair(private, trusted)
    print(f"key {kid}: private {private}, public {trusted / (kid + '.pub')}")
    return 0


if __name__ == "__main__":
    main()
