"""Daily partitions of `fixes`, created ahead of time by a maintenance task, never on the hot path.

A fix whose day has no partition lands in `fixes_default`. Creating that day's partition later
would fail while the default partition holds rows of that day, so `ensure_partitions` moves them
into the new table before attaching it, in one transaction.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import structlog
import trio
from prometheus_client import Counter
from psycopg import sql
from psycopg_pool import ConnectionPool

log = structlog.get_logger(__name__)

PARTITIONS_CREATED = Counter(
    "soar_store_partitions_created_total", "Daily fixes partitions created"
)
PARTITION_ERRORS = Counter("soar_store_partition_errors_total", "Failed partition maintenance runs")
PARTITIONS_DROPPED = Counter(
    "soar_store_partitions_dropped_total", "Daily fixes partitions dropped for retention"
)


def partition_name(day: dt.date) -> str:
    return f"fixes_p{day:%Y%m%d}"


def _bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=1)


def existing_partitions(conn: psycopg.Connection[Any]) -> set[str]:
    with conn.transaction():
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent"
            " WHERE p.relname = 'fixes'"
        ).fetchall()
    return {str(row[0]) for row in rows}


def ensure_partitions(
    conn: psycopg.Connection[Any], from_day: dt.date, days_ahead: int
) -> list[str]:
    """Create the daily partitions for `from_day` and the `days_ahead` days after it.

    Returns the names created. Idempotent; each partition is its own transaction, so call it
    with no transaction open on `conn`.
    """
    created: list[str] = []
    present = existing_partitions(conn)
    for offset in range(days_ahead + 1):
        day = from_day + dt.timedelta(days=offset)
        name = partition_name(day)
        if name in present:
            continue
        start, end = _bounds(day)
        table = sql.Identifier(name)
        with conn.transaction():
            # Same lock order as writers (parent first) so this cannot deadlock with a COPY.
            conn.execute("LOCK TABLE fixes IN SHARE UPDATE EXCLUSIVE MODE")
            # Another process (a second `soar track`) may have made it while we waited.
            if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() != (None,):
                continue
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (LIKE fixes INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
                ).format(table)
            )
            moved = conn.execute(
                sql.SQL(
                    "WITH gone AS (DELETE FROM fixes_default"
                    " WHERE received_at >= %s AND received_at < %s RETURNING *)"
                    " INSERT INTO {} SELECT * FROM gone"
                ).format(table),
                (start, end),
            ).rowcount
            # DDL takes no bind parameters: the bounds go in as literals.
            conn.execute(
                sql.SQL(
                    "ALTER TABLE fixes ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})"
                ).format(table, sql.Literal(start), sql.Literal(end))
            )
        PARTITIONS_CREATED.inc()
        log.debug("partitions.created", partition=name, moved_from_default=moved)
        created.append(name)
    return created


#: How long a retention drop waits for its lock. DROP takes an ACCESS EXCLUSIVE lock on `fixes`;
#: waiting behind a long reader (a pg_dump, a slow query) would queue every writer's COPY
#: behind it. Give up instead and try again at the next maintenance run.
DROP_LOCK_TIMEOUT = "1s"


def drop_partitions_before(conn: psycopg.Connection[Any], day: dt.date) -> list[str]:
    """Drop daily partitions wholly before `day` (retention). Returns the names dropped.

    A partition whose lock is not had within `DROP_LOCK_TIMEOUT` is left for the next run
    (logged); one another process dropped first is skipped.
    """
    dropped: list[str] = []
    for name in sorted(existing_partitions(conn)):
        if not name.startswith("fixes_p") or len(name) != len("fixes_p20250101"):
            continue
        part_day = dt.datetime.strptime(name[len("fixes_p") :], "%Y%m%d").date()
        if part_day >= day:
            continue
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(DROP_LOCK_TIMEOUT)))
                # every track runs retention: another one may have dropped it a moment ago
                exists = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
                if exists is None or exists[0] is None:
                    continue
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
        except psycopg.errors.LockNotAvailable:
            log.warning("partitions.drop_postponed", partition=name, reason="lock_timeout",
                        lock_timeout=DROP_LOCK_TIMEOUT)
            continue
        PARTITIONS_DROPPED.inc()
        log.debug("partitions.dropped", partition=name)
        dropped.append(name)
    return dropped


def maintain_once(
    conn: psycopg.Connection[Any], today: dt.date, *, days_ahead: int = 7, retention_days: int = 0
) -> tuple[list[str], list[str]]:
    """Partitions from yesterday to `days_ahead` days ahead; with `retention_days`, drop the days
    before the last `retention_days` (today included). Returns (created, dropped)."""
    first = today - dt.timedelta(days=1)
    keep_from = today - dt.timedelta(days=retention_days - 1) if retention_days > 0 else None
    if keep_from is not None and keep_from > first:
        first = keep_from  # never create a day only to drop it
    created = ensure_partitions(conn, first, (today - first).days + days_ahead)
    dropped = drop_partitions_before(conn, keep_from) if keep_from is not None else []
    return created, dropped


async def maintain_partitions(
    pool: ConnectionPool,
    *,
    days_ahead: int = 7,
    retention_days: int = 0,
    interval_s: float = 3600.0,
) -> None:
    """Trio task: `maintain_once` now and every interval (UTC days).

    A failed run is logged and counted, and tried again at the next interval.
    """

    def run_once() -> tuple[list[str], list[str]]:
        today = dt.datetime.now(dt.UTC).date()
        with pool.connection() as conn:
            return maintain_once(conn, today, days_ahead=days_ahead, retention_days=retention_days)

    while True:
        try:
            created, dropped = await trio.to_thread.run_sync(run_once)
        except (psycopg.Error, OSError) as exc:
            PARTITION_ERRORS.inc()
            log.warning("partitions.maintenance_failed", error=str(exc))
        else:
            # One line per run, not per partition: a fresh database makes nine at once.
            if created or dropped:
                log.info("partitions.maintained", created=len(created), dropped=len(dropped),
                         newest=max(created, default=None), oldest_dropped=min(dropped, default=None))
        await trio.sleep(interval_s)
