"""structlog set-up: JSON lines in production, coloured console on a terminal.

Every event carries the task that logged it: the supervisor binds `task` for its children, and
where nothing is bound the trio task's own name is used, so no line is anonymous.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
import trio


def _add_task(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    if "task" not in event:
        try:
            event["task"] = trio.lowlevel.current_task().name
        except RuntimeError:  # outside trio: start-up, CLI, worker threads
            event["task"] = "main"
    return event


def configure_logging(
    log_format: str = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """`stream` defaults to stdout; commands whose stdout is their output log to stderr."""
    stream = stream or sys.stdout
    use_json = log_format == "json" or (log_format == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_task,
    ]
    if use_json:
        processors.append(structlog.processors.dict_tracebacks)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    # Libraries that use stdlib logging (hypercorn, psycopg_pool) go to stderr, warnings only.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
