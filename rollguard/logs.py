"""structlog set-up, done once at the entrypoint: JSON off a terminal, readable on one."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

from rollguard.outage import OUTAGES


def _logger_name(_: Any, __: str, event: Any) -> Any:
    """A library's line names its logger under the key rollguard's own lines use."""
    event["logger_name"] = event["_record"].name
    return event


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
    # Libraries (aiokafka, faust, mode, asyncio) log through stdlib; keep them to warnings and
    # above, rendered like ours: one JSON object a line off a terminal, a traceback included.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[_logger_name, *shared],
        )
    )
    handler.addFilter(OUTAGES)  # an outage is two lines (rollguard.outage)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    for noisy in ("faust", "mode", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "debug" else logging.INFO)


def get_logger(name: str) -> Any:
    """A lazy logger: it takes the configuration in force when it first logs, not at import."""
    return structlog.get_logger(logger_name=name)
