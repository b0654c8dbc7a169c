"""Error hierarchy: behaviour (``retriable``, exit status) lives on the class, never in message text."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What the exit status of the `rollguard` command means (README, "Exit codes")."""

    OK = 0
    #: The command ran and did not do its job: the demo did not roll back, a database that
    #: is there could not be read or written.
    FAILED = 1
    #: Fix the command line or the setup: a bad argument, setting, policy, URL or path, a
    #: ledger that is not there, an optional dependency that is not installed.
    USAGE = 2
    #: No broker: none answered at the address, none is configured, the embedded one did not
    #: start.
    NO_BROKER = 3
    #: A check answered no: `deploy check` (not ready), `schemas export --check` (stale).
    NOT_READY = 4
    #: `ledger verify`: the chain or a checkpoint does not hold.
    NOT_VERIFIED = 5
    #: `rollback`, `unlock`, `approve`: the decider answered no (the reasons are printed).
    REFUSED = 6
    #: `rollback`, `unlock`, `approve`: no answer, or not the one waited for (``--wait``),
    #: within ``--timeout``.
    TIMED_OUT = 7
    INTERRUPTED = 130  # SIGINT, Ctrl-C
    BROKEN_PIPE = 141  # the reader of stdout went away
    TERMINATED = 143  # SIGTERM


class RollguardError(Exception):
    """Base of every error rollguard raises on purpose."""

    retriable: bool = False
    #: Exit status the CLI uses when this error reaches it.
    exit_code: int = ExitCode.FAILED


class UsageError(RollguardError):
    """The user asked for something that cannot work as asked (bad argument, missing file)."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """A settings value or policy file is invalid; the message names where."""


class MissingDependency(UsageError):
    """A setting asks for an optional dependency that is not installed; the message names the
    extra to install."""


class BrokerUnavailable(RollguardError):
    """No Kafka-protocol broker answered at the configured address."""

    retriable = True
    exit_code = ExitCode.NO_BROKER


class BrokerMissing(RollguardError):
    """A command that needs a broker has none: no ROLLGUARD_KAFKA_BOOTSTRAP and no
    `rollguard up` running on the state directory."""

    exit_code = ExitCode.NO_BROKER


class EmbeddedBrokerError(RollguardError):
    """The embedded broker binary is missing or did not start."""

    exit_code = ExitCode.NO_BROKER


class LedgerError(RollguardError):
    """The ledger store cannot be read or written."""

    retriable = True


class LedgerMissing(LedgerError):
    """A command that only reads the ledger found none where it was pointed."""

    retriable = False
    exit_code = ExitCode.USAGE


class LedgerCorrupt(LedgerError):
    """An entry's stored columns cannot be read back as an entry (bytes that are not JSON
    text, a time that is not a time): the ledger does not verify, whatever read it."""

    retriable = False
    exit_code = ExitCode.NOT_VERIFIED


def yaml_problem(path: object, exc: Exception) -> str:
    """One line for a YAML syntax error: ``file:line:column: problem`` (PyYAML's own text
    spans several lines, with a caret drawing)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    return f"{where}: not valid YAML: {problem}"
