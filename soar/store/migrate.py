"""Schema migrations: numbered SQL files in `migrations/`, applied in order, recorded in a table.

Each file runs in its own transaction together with the row recording it, so a failing file
leaves nothing behind. A session-level advisory lock serialises concurrent `migrate()` calls
(two processes starting at once): the second waits, then finds nothing left to apply.

May import: nothing of soar
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
import structlog

log = structlog.get_logger(__name__)

#: Arbitrary but fixed: the advisory lock key guarding migrations ("soar" in ASCII).
MIGRATION_LOCK_KEY = 0x736F6172

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    """The migrations shipped with soar, in the order they apply."""
    found: list[Migration] = []
    for entry in resources.files("soar.store").joinpath("migrations").iterdir():
        if _NAME.match(entry.name):
            found.append(Migration(entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.name)
    numbers = [m.name[:4] for m in found]
    if len(set(numbers)) != len(numbers):
        raise RuntimeError(f"two migrations share a number: {numbers}")
    return found


def migrate(url: str) -> list[str]:
    """Apply the migrations not yet applied; return their names (empty when up to date)."""
    applied_now: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY,"
                " checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done: dict[str, str] = dict(
                conn.execute("SELECT name, checksum FROM schema_migrations").fetchall()
            )
            for migration in migrations():
                if migration.name in done:
                    if done[migration.name] != migration.checksum:
                        # Never re-run an applied file; a changed one is a mistake to see.
                        log.warning("migrate.changed_after_apply", migration=migration.name)
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (name, checksum) VALUES (%s, %s)",
                        (migration.name, migration.checksum),
                    )
                log.debug("migrate.applied", migration=migration.name)
                applied_now.append(migration.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied_now
