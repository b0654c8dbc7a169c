"""demo, up, run: the commands that start services."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rollguard.authority import TokenRegistry
from rollguard.logs import configure_logging, get_logger
from rollguard.secrets import check_private
from rollguard.settings import RollguardSettings
from rollguard_services.notifier.settings import NotifierSettings
from rollguard_shell import SERVICE_NAMES
from rollguard_shell.commands import (
    Subparsers,
    database_url,
    require_broker,
    writable_state_dir,
)
from rollguard_shell.stopping import Stopped, run_stoppable

# The runner and the demo are imported by the handlers that use them: they import every
# service, which the other commands and --help do not need.


def register(sub: Subparsers) -> None:
    demo = sub.add_parser("demo", help="detect and roll back a bad deployment, end to end")
    demo.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    demo.add_argument("--rate", type=float, default=200.0, help="requests per second")
    demo.add_argument("--warmup", type=float, default=3.0, help="seconds of good traffic first")
    demo.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for rollback")
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep everything up after the report, the dashboard showing the incident, "
        "until Ctrl-C",
    )
    demo.set_defaults(handler=_demo, logs=False)

    up = sub.add_parser("up", help="run every service in one process until interrupted")
    up.add_argument("--with-router", action="store_true", help="also run the reference router")
    up.set_defaults(handler=_up)

    run = sub.add_parser("run", help="run one service (what containers use)")
    run.add_argument("service", choices=sorted(SERVICE_NAMES))
    run.set_defaults(handler=_run)


def _demo(args: argparse.Namespace, settings: RollguardSettings) -> int:
    writable_state_dir(settings)  # before the demo's imports: every service, seconds

    from rich.console import Console

    from rollguard_shell.demo import DemoReport, run_demo

    kept: list[int] = []  # the report's exit code, once shown (--keep)

    def shown(report: DemoReport) -> None:
        kept.append(_show_report(args, settings, report))
        url = report.dashboard_url
        print(
            f"dashboard: {url} (and its API: {url}/docs); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )

    with open(settings.state_dir / "demo.log", "w") as logf:
        configure_logging(settings.log_level, "json", stream=logf)
        err = Console(stderr=True)
        try:
            report = run_stoppable(
                run_demo(
                    settings,
                    console=err,
                    live_display=err.is_terminal,
                    rate_rps=args.rate,
                    warmup_s=args.warmup,
                    timeout_s=args.timeout,
                    keep=shown if args.keep else None,
                )
            )
        except Stopped:
            if kept:  # --keep, stopped after its report: the report's word, not 130
                print("rollguard: demo stopped; everything it started has stopped", file=sys.stderr)
                return kept[0]
            raise
    return _show_report(args, settings, report)


def _show_report(args: argparse.Namespace, settings: RollguardSettings, report: Any) -> int:
    """Print the demo's report (a table, or one JSON object); its exit code."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    ok = report.rollback_applied and report.ledger_verified
    if args.json:
        print(json.dumps(report.as_dict()), flush=True)
    else:
        table = Table(title="rollguard demo", show_header=False)
        for key, value in report.as_dict().items():
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            table.add_row(key, Text(shown))
        out = Console()
        out.print(table)
        out.print(Text(report.headline(), style="bold"))
    if not ok:
        reason = report.reason or "the ledger did not verify"
        print(
            f"rollguard: demo failed: {reason} (logs: {settings.state_dir}/demo.log)",
            file=sys.stderr,
        )
    return 0 if ok else 1


def _up(args: argparse.Namespace, settings: RollguardSettings) -> int:
    # Before the runner's imports (every service, seconds): up records its broker in the
    # state directory, and its services use every database.
    _ready_to_serve(settings, list(SERVICE_NAMES), up=True)
    from rollguard_shell.runner import CORE_SERVICES

    names = [*CORE_SERVICES, *(["router"] if args.with_router else [])]
    return run_stoppable(_serve(settings, names, record=True))


def _run(args: argparse.Namespace, settings: RollguardSettings) -> int:
    require_broker(settings)
    _ready_to_serve(settings, [args.service])
    return run_stoppable(_serve(settings, [args.service]))


#: The services that write under the state directory (keys, databases, checkpoints); the
#: router and the detector may run where it is read-only.
_KEEP_STATE = {"decider", "executor", "ledger", "notifier"}


def _ready_to_serve(settings: RollguardSettings, names: list[str], *, up: bool = False) -> None:
    """What the services would otherwise find out with a traceback, once running: a state
    directory that cannot be written, a database URL that is not one or whose driver is not
    installed; or only once the broker answers: a decider's key or tokens file that group or
    others may read."""
    if up or _KEEP_STATE.intersection(names):
        writable_state_dir(settings)
    if "decider" in names:
        key = settings.resolved_signing_key_file
        if key.exists():  # a missing one is made (the default place) or refused by the decider
            check_private(key, "signing key")
        TokenRegistry.load(settings.resolved_tokens_file)
    urls = {
        "ledger": ("ROLLGUARD_LEDGER_URL", settings.ledger_url),
        "executor": ("ROLLGUARD_EXECUTOR_DB_URL", settings.executor_db_url),
        "notifier": ("ROLLGUARD_NOTIFIER_OUTBOX_URL", NotifierSettings().outbox_url),
    }
    for name in names:
        where, url = urls.get(name, ("", None))
        if url:
            database_url(url, where)


async def _serve(settings: RollguardSettings, names: list[str], *, record: bool = False) -> int:
    from rollguard import signing
    from rollguard_shell.probes import serving
    from rollguard_shell.runner import (
        SIGNING_ROLES,
        build_service,
        ensure_alertmanager_secret,
        ensure_keys,
        kafka,
        run_services,
    )

    log = get_logger("rollguard")
    async with kafka(settings, record=record) as live_settings:
        # `up` runs every service and the CLI beside it: every role's key; `run` a service
        # alone (one container): its own key only, never another role's.
        roles = (
            signing.ROLES
            if record
            else tuple(SIGNING_ROLES[n] for n in names if n in SIGNING_ROLES)
        )
        ensure_keys(live_settings, roles)
        if record and "api" in names:
            ensure_alertmanager_secret(live_settings)
        services = [build_service(n, live_settings) for n in names]
        log.info("running", services=names, bootstrap=live_settings.kafka_bootstrap)
        # The API serves the probes of its process itself; any other process on request.
        port = None if "api" in names else settings.probe_port
        async with serving(services, settings.probe_host, port):
            await run_services(services)  # until a signal cancels it (rollguard_shell.stopping)
    return 0
