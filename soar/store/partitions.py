"""Daily partitions of `fixes`, created ahead of time by a maintenance task, never on the hot path.

A fix whose day has no partition lands in `fixes_default`. Creating that day's partition later
would fail while the default partition holds rows of that day, so `ensure_partitions` moves them
into the new table before attaching it, in one transaction.

Retention (`fixes_retention_days`) drops whole days, and a drop cannot be undone, so it does not
take the wall clock's word alone. Its "now" is the older of the wall clock and the newest
receive time stored (the data's own clock); and when the wall clock is more than
`CLOCK_AHEAD_LIMIT` ahead of that newest receive time, nothing is dropped at all: a clock
stepped ten years ahead would otherwise drop every day there is (issue 18). That run is logged
(`retention.clock_ahead`, both times) and counted (`soar_store_retention_skipped_total`). The
same holds for a database that holds only old data (a replayed capture): retention waits until
fresh data arrives. Partitions are still created for the wall clock's days, since that is the
clock live fixes are stamped with.

May import: nothing of soar
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
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
RETENTION_SKIPPED = Counter(
    "soar_store_retention_skipped_total",
    "Retention runs that dropped nothing because the wall clock was not to be trusted",
    ["reason"],
)

#: how far the wall clock may run ahead of the newest stored receive time before retention
#: distrusts it (feeds send something every few seconds; a whole day of silence is not a feed)
CLOCK_AHEAD_LIMIT = dt.timedelta(days=1)


def wall_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def partition_name(day: dt.date) -> str:
    return f"fixes_p{day:%Y%m%d}"


def _partition_day(name: str) -> dt.date | None:
    """The day of a daily partition's name; None for any other table."""
    if not name.startswith("fixes_p") or len(name) != len("fixes_p20250101"):
        return None
    try:
        return dt.datetime.strptime(name[len("fixes_p") :], "%Y%m%d").date()
    except ValueError:
        return None


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
        part_day = _partition_day(name)
        if part_day is None or part_day >= day:
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


def newest_stored_at(conn: psycopg.Connection[Any]) -> dt.datetime | None:
    """The newest receive time stored: of a fix (each aircraft's `last_fix_at`, indexed) or of a
    receiver's packet (a few thousand rows). `max(received_at)` over `fixes` would read every
    partition; receivers count too because a quiet club site may see no aircraft for days while
    its receivers report every few minutes. Fixes with no aircraft row (loaded by hand) are
    found in the newest partition that holds any."""
    with conn.transaction():
        row = conn.execute(
            "SELECT greatest((SELECT max(last_fix_at) FROM aircraft),"
            " (SELECT max(latest_packet_at) FROM receivers))"
        ).fetchone()
    if row is not None and row[0] is not None:
        return row[0]  # type: ignore[no-any-return]
    return _newest_fix(conn)


def _newest_fix(conn: psycopg.Connection[Any]) -> dt.datetime | None:
    days = sorted((n for n in existing_partitions(conn) if _partition_day(n) is not None),
                  reverse=True)
    with conn.transaction():
        # the default partition holds the days that had no partition yet, whichever they are
        newest: dt.datetime | None = _scalar(conn, sql.SQL(
            "SELECT max(received_at) FROM fixes_default"))
        for name in days:
            table = sql.Identifier(name)
            if _scalar(conn, sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(table)):
                in_day: dt.datetime = _scalar(
                    conn, sql.SQL("SELECT max(received_at) FROM {}").format(table))
                return in_day if newest is None else max(in_day, newest)
    return newest


def _scalar(conn: psycopg.Connection[Any], query: sql.SQL | sql.Composed) -> Any:
    row = conn.execute(query).fetchone()
    return None if row is None else row[0]


def retention_keep_from(
    conn: psycopg.Connection[Any], now: dt.datetime, retention_days: int
) -> dt.date | None:
    """The first day retention keeps, by the data's clock; None: drop nothing this time."""
    newest = newest_stored_at(conn)
    if newest is None:
        data_now = now  # nothing stored, so nothing a drop could lose
    elif now - newest > CLOCK_AHEAD_LIMIT:
        RETENTION_SKIPPED.labels(reason="clock_ahead").inc()
        log.warning(
            "retention.clock_ahead", wall_clock=now.isoformat(), newest_stored=newest.isoformat(),
            ahead_days=round((now - newest) / dt.timedelta(days=1), 2),
            hint="the wall clock is ahead of every stored receive time: a clock step, or only "
                 "old data (a replay); no partition is dropped until fresh data arrives",
        )
        return None
    else:
        # a wall clock behind the data (stepped back) keeps more, never less
        data_now = min(now, newest)
    return data_now.astimezone(dt.UTC).date() - dt.timedelta(days=retention_days - 1)


def maintain_once(
    conn: psycopg.Connection[Any],
    now: dt.datetime | dt.date,
    *,
    days_ahead: int = 7,
    retention_days: int = 0,
) -> tuple[list[str], list[str]]:
    """Partitions from yesterday to `days_ahead` days ahead of `now` (the wall clock; a date is
    its midnight, UTC); with `retention_days`, drop the days before the last `retention_days`
    (today included) by the data's clock (`retention_keep_from`). Returns (created, dropped)."""
    if not isinstance(now, dt.datetime):
        now = dt.datetime.combine(now, dt.time(), dt.UTC)
    today = now.astimezone(dt.UTC).date()
    first = today - dt.timedelta(days=1)
    keep_from = retention_keep_from(conn, now, retention_days) if retention_days > 0 else None
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
    clock: Callable[[], dt.datetime] = wall_now,
) -> None:
    """Trio task: `maintain_once` now and every interval (UTC days, `clock` the wall clock).

    A failed run is logged and counted, and tried again at the next interval.
    """

    def run_once() -> tuple[list[str], list[str]]:
        with pool.connection() as conn:
            return maintain_once(
                conn, clock(), days_ahead=days_ahead, retention_days=retention_days
            )

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
