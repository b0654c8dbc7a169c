"""The `rollguard` command. User errors print one line and exit non-zero; no tracebacks."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from rollguard.discovery import BrokerRecord, with_running_broker
from rollguard.errors import ExitCode, RollguardError, UsageError
from rollguard.logs import configure_logging
from rollguard.settings import RollguardSettings
from rollguard_shell.commands import Parser, admin, baseline, incident, ledger, operations, running
from rollguard_shell.commands import drill as drill_cmd
from rollguard_shell.commands import invalidations as invalidations_cmd
from rollguard_shell.environment import SETTINGS, check_environment
from rollguard_shell.stopping import Stopped, ignore_further_signals

#: Every command group, in --help order. A new group is a module with register(sub).
GROUPS = (running, operations, admin, ledger, incident, baseline, invalidations_cmd, drill_cmd)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rollguard")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rollguard", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rollguard {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in GROUPS:
        module.register(sub)
    return parser


_S = TypeVar("_S", bound=BaseSettings)


def _validated(cls: type[_S]) -> _S:
    try:
        return cls()
    except ValidationError as exc:
        err = exc.errors()[0]
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        names = [str(part).upper() for part in err["loc"] if isinstance(part, str)]
        field = prefix + "__".join(names) if names else f"{prefix}* settings"
        raise UsageError(f"{field}: {err['msg']}") from None


def load_settings() -> RollguardSettings:
    """The shared settings; every service's settings are checked too, so that a bad value of
    any ROLLGUARD_* variable is one line before a command starts, as an unknown one is."""
    check_environment(os.environ)
    settings = _validated(RollguardSettings)
    for cls in SETTINGS:
        if cls is not RollguardSettings:
            _validated(cls)
    return settings


def refuse_second_up(settings: RollguardSettings) -> None:
    running = BrokerRecord.read(settings.state_dir) if settings.embedded else None
    if running is not None:
        raise UsageError(
            f"rollguard up is already running on {settings.state_dir} (pid {running.pid}, "
            f"broker at {running.bootstrap}); other commands use it as they are, or set "
            "ROLLGUARD_STATE_DIR for a second one"
        )


def _first_rollguard_error(group: BaseExceptionGroup[BaseException]) -> RollguardError | None:
    for exc in group.exceptions:
        if isinstance(exc, RollguardError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_rollguard_error(exc)
            if found is not None:
                return found
    return None


#: The commands that run services: each service's clients carry its name instead.
SERVICE_COMMANDS = ("up", "run", "demo")


def main(argv: Sequence[str] | None = None) -> None:
    # Ctrl-C stops any command, even one started as a background job of a script (which
    # inherits SIGINT ignored); the long-running ones stop cleanly (stopping.py).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "up":
            refuse_second_up(settings)
        elif args.command != "demo":  # the demo runs a broker of its own
            settings = with_running_broker(settings)
        if args.command not in SERVICE_COMMANDS:  # a service names its own clients
            settings = settings.model_copy(
                update={"client_id": f"{settings.client_id}-{args.command}"}
            )
        if getattr(args, "logs", True):
            configure_logging(settings.log_level, settings.log_format)
        code: int = args.handler(args, settings)
    except RollguardError as exc:
        print(f"rollguard: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except ExceptionGroup as group:
        # A service that gave up (the broker away past ROLLGUARD_BROKER_OUTAGE_LIMIT_S, say)
        # stops the others through the task group: one line, its exit code, as on its own.
        first = _first_rollguard_error(group)
        if first is None:
            raise
        print(f"rollguard: error: {first}", file=sys.stderr)
        raise SystemExit(first.exit_code) from None
    except BrokenPipeError:
        # The reader went away (`rollguard ledger export | head`): stop quietly, like cat.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(ExitCode.BROKEN_PIPE) from None
    except Stopped as stop:
        print(f"rollguard: {stop}; everything it started has stopped", file=sys.stderr)
        ignore_further_signals()
        raise SystemExit(stop.exit_code) from None
    except KeyboardInterrupt:
        print("rollguard: interrupted; everything it started has stopped", file=sys.stderr)
        raise SystemExit(ExitCode.INTERRUPTED) from None
    raise SystemExit(code)


if __name__ == "__main__":
    main()
