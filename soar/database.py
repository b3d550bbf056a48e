"""Pick the database: the configured URL, or an embedded PostgreSQL under the data directory."""

from __future__ import annotations

from pathlib import Path

import psycopg
import structlog

from soar.config import ConfigError, Settings

log = structlog.get_logger(__name__)


class Database:
    """The database this process uses; owns the embedded server when there is one."""

    def __init__(self, url: str, embedded: object | None = None) -> None:
        self.url = url
        self.embedded = embedded

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()  # type: ignore[attr-defined]
            log.info("database.embedded_stopped")
            self.embedded = None


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
