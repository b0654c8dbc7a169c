"""Subcommands of `rollguard`, one module per group, each with ``register(sub)``.

A handler takes the parsed arguments and the settings and returns the exit status; user
errors are raised as ``UsageError`` (one line, no traceback). Handlers are attached with
``set_defaults(handler=...)``; ``logs=False`` means the handler configures logging itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NoReturn

from rollguard.settings import RollguardSettings

Handler = Callable[[argparse.Namespace, RollguardSettings], int]
Subparsers = Any  # argparse's _SubParsersAction is private


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def group(sub: Subparsers, name: str, help_text: str) -> Subparsers:
    """A command with its own subcommands (``rollguard <name> <action>``)."""
    parser = sub.add_parser(name, help=help_text)
    return parser.add_subparsers(dest="action", required=True, parser_class=Parser)
