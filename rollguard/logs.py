"""structlog set-up, done once at the entrypoint: JSON off a terminal, readable on one."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

from rollguard.outage import OUTAGES


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    json = fmt == "json" or (fmt == "auto" and not out.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries (aiokafka, faust, mode) log through stdlib; keep them to warnings and above.
    logging.basicConfig(level=logging.WARNING, stream=out, force=True)
    for handler in logging.getLogger().handlers:  # an outage is two lines (rollguard.outage)
        handler.addFilter(OUTAGES)
    for noisy in ("faust", "mode", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "debug" else logging.INFO)


def get_logger(name: str) -> Any:
    """A lazy logger: it takes the configuration in force when it first logs, not at import."""
    return structlog.get_logger(logger_name=name)
