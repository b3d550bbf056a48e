"""The database a process uses: the configured URL, or an embedded PostgreSQL under the data
directory, opened, migrated and (embedded) supervised.

The embedded PostgreSQL is supervised: `Database.supervise` watches its postmaster and starts it
again with back-off when it has died (SIGKILL, OOM killer), while the store writers spool to disk
and retry; when it is back they replay the spool and every fix is stored once. The pipeline runs
`supervise` as a maintenance child of whichever process role opened the database
(`embedded_supervisor`); with `SOAR_DATABASE_URL` nothing is started or watched here.

May import: soar.backoff, soar.config, soar.store
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import structlog
import trio
from prometheus_client import Counter, Gauge

from soar.backoff import Backoff
from soar.config import ConfigError, Settings

if TYPE_CHECKING:
    from soar.store.embedded import EmbeddedPostgres

log = structlog.get_logger(__name__)

EMBEDDED_UP = Gauge(
    "soar_database_embedded_up", "1 while the embedded PostgreSQL's postmaster runs, else 0"
)
EMBEDDED_RESTARTS = Counter(
    "soar_database_embedded_restarts_total",
    "Attempts to start the embedded PostgreSQL again after its postmaster died, by result",
    ["result"],
)

#: how often the postmaster is looked at (a pid file and /proc: cheap)
CHECK_EVERY_S = 1.0

#: the databases with an embedded server opened in this process, by URL
_open: dict[str, Database] = {}


class Database:
    """The database this process uses; owns the embedded server when there is one."""

    def __init__(self, url: str, embedded: EmbeddedPostgres | None = None) -> None:
        self.url = url
        self.embedded = embedded
        if embedded is not None:
            _open[url] = self

    def stop(self) -> None:
        if self.embedded is not None:
            _open.pop(self.url, None)
            self.embedded.stop()
            log.info("database.embedded_stopped")
            self.embedded = None

    async def supervise(
        self, *, check_every: float = CHECK_EVERY_S, backoff: Backoff | None = None
    ) -> None:
        """Trio task: start the embedded PostgreSQL again whenever its postmaster has died."""
        embedded = self.embedded
        if embedded is None:
            return
        backoff = backoff or Backoff(base=0.5, cap=30.0, healthy_after=60.0)
        while True:
            if await trio.to_thread.run_sync(embedded.postmaster_alive):
                EMBEDDED_UP.set(1)
                await trio.sleep(check_every)
                continue
            EMBEDDED_UP.set(0)
            log.error("database.embedded_down", data_dir=str(embedded.data_dir),
                      action="restarting; the writers spool to disk meanwhile")
            attempts = 0
            while True:
                attempts += 1
                try:
                    started = await trio.to_thread.run_sync(embedded.restart_if_down)
                except Exception as exc:  # pg_ctl failed or timed out: try again later
                    EMBEDDED_RESTARTS.labels(result="failed").inc()
                    delay = backoff.next_delay()
                    log.warning("database.embedded_restart_failed", attempt=attempts,
                                retry_in_s=round(delay, 2),
                                error=(str(getattr(exc, "output", "") or exc))[:300])
                    await trio.sleep(delay)
                    continue
                break
            backoff.reset()
            if started:
                EMBEDDED_RESTARTS.labels(result="ok").inc()
                log.warning("database.embedded_restarted", attempts=attempts,
                            data_dir=str(embedded.data_dir))
            EMBEDDED_UP.set(1)


def embedded_supervisor(url: str) -> Callable[[], Awaitable[None]] | None:
    """The supervising task of the embedded PostgreSQL this process opened at `url`, if any."""
    db = _open.get(url)
    return db.supervise if db is not None else None


def check_reachable(url: str, key: str = "database_url") -> None:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{key}: cannot connect to the database: {first}") from None


def open_database(settings: Settings) -> Database:
    """Blocking: start or reach the database and apply migrations. Run it in a thread."""
    if settings.database_url:
        check_reachable(settings.database_url)
        db = Database(settings.database_url)
    else:
        from soar.store.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres()
        data_dir = Path(settings.data_dir) / "postgres"
        try:
            url = embedded.start(data_dir)
        except Exception as exc:
            raise ConfigError(f"data_dir: cannot start the embedded PostgreSQL in {data_dir}: {exc}") from None
        log.info("database.embedded_started", data_dir=str(data_dir))
        db = Database(url, embedded)
    from soar.store.migrate import migrate

    try:
        applied = migrate(db.url)
    except Exception:
        db.stop()
        raise
    log.info("database.migrated", applied=applied)
    return db
