"""Error hierarchy: behaviour (``retriable``, exit status) lives on the class, never in message text."""

from __future__ import annotations


class RollguardError(Exception):
    """Base of every error rollguard raises on purpose."""

    retriable: bool = False
    #: Exit status the CLI uses when this error reaches it.
    exit_code: int = 1


class UsageError(RollguardError):
    """The user asked for something that cannot work as asked (bad argument, missing file)."""

    exit_code = 2


class ConfigError(UsageError):
    """A settings value or policy file is invalid; the message names where."""


class BrokerUnavailable(RollguardError):
    """No Kafka-protocol broker answered at the configured address."""

    retriable = True
    exit_code = 3


class EmbeddedBrokerError(RollguardError):
    """The embedded broker binary is missing or did not start."""

    exit_code = 3


class LedgerError(RollguardError):
    """The ledger store cannot be read or written."""

    retriable = True


class LedgerMissing(LedgerError):
    """A command that only reads the ledger found none where it was pointed."""

    retriable = False
    exit_code = 2
