"""structlog set-up: JSON lines in production, coloured console on a terminal.

Every event carries the task that logged it: the supervisor binds `task` for its children, and
where nothing is bound the trio task's own name is used, so no line is anonymous.

While a progress bar is on screen (`soar replay`), `lines_above` sends every log line through
the bar's writer, so lines appear above the bar instead of being glued to it.

May import: nothing of soar
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


#: where log lines go instead of their stream while a progress bar is shown
_divert: Callable[[str], None] | None = None


class _LogStream:
    """The stream every log line is written to, as one `write` of the whole line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        divert = _divert
        if divert is not None:
            divert(text)
            return len(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


@contextmanager
def lines_above(write: Callable[[str], None]) -> Iterator[None]:
    """Within the block, log lines (their newline included) go to `write`: e.g. `tqdm.write`
    with `end=""`, which clears the bar, prints the line and redraws the bar below it."""
    global _divert
    previous, _divert = _divert, write
    try:
        yield
    finally:
        _divert = previous


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
        # WriteLogger writes a line and its newline at once (PrintLogger prints them apart)
        logger_factory=structlog.WriteLoggerFactory(
            file=_LogStream(stream)  # type: ignore[arg-type]  # write and flush are all it uses
        ),
        cache_logger_on_first_use=True,
    )
    # Libraries that use stdlib logging (hypercorn, psycopg_pool) go to stderr, warnings only.
    logging.basicConfig(level=logging.WARNING, stream=_LogStream(sys.stderr),
                        format="%(name)s %(levelname)s %(message)s")


@dataclass(slots=True)
class _Window:
    logged_at: float
    suppressed: int = 0


class RateLimited:
    """At most one log line per key per `period` seconds, for events a feed can repeat at line
    rate (2,500 bad lines are a metric and one line a minute, not 2,500 lines).

    The first occurrence of a key is logged at once; later ones within the period are counted
    and the next line that is logged carries that count as `suppressed`. Keys come from a small
    fixed vocabulary (protocol, field, kind), so the table stays small. The clock is injectable
    (monotonic by default, so a wall clock step neither floods nor silences the log).
    """

    def __init__(
        self, logger: Any, period: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.period = period
        self.clock = clock
        self._windows: dict[Hashable, _Window] = {}

    def log(self, key: Hashable, level: str, event: str, **fields: Any) -> bool:
        """Log `event` at `level` unless `key` was logged less than `period` ago (then count it).
        Returns whether a line was written."""
        now = self.clock()
        window = self._windows.get(key)
        if window is not None and now - window.logged_at < self.period:
            window.suppressed += 1
            return False
        suppressed = window.suppressed if window is not None else 0
        self._windows[key] = _Window(now)
        getattr(self.logger, level)(event, suppressed=suppressed, **fields)
        return True
