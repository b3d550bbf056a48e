from __future__ import annotations

import datetime as dt
import threading

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from soar.store.migrate import migrate, migrations
from soar.store.partitions import (
    drop_partitions_before,
    ensure_partitions,
    existing_partitions,
    maintain_once,
    partition_name,
)


def _fresh_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(admin_url, dbname=name)


def test_migrate_applies_every_file_once(pg_server) -> None:  # type: ignore[no-untyped-def]
    url = _fresh_database(pg_server.url, "soar_migrate_once")
    shipped = [m.name for m in migrations()]
    assert shipped and shipped == sorted(shipped)

    assert migrate(url) == shipped
    with psycopg.connect(url) as conn:
        tables_before = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        ).fetchone()
    assert migrate(url) == []
    with psycopg.connect(url) as conn:
        recorded = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
        tables_after = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        ).fetchone()
    assert recorded == shipped
    assert tables_before == tables_after


def test_concurrent_migrations_do_not_race(pg_server) -> None:  # type: ignore[no-untyped-def]
    url = _fresh_database(pg_server.url, "soar_migrate_race")
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            results.append(migrate(url))
        except BaseException as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results, key=len) == [[], [], [m.name for m in migrations()]]


def test_ensure_partitions_creates_days_ahead_idempotently(db_url: str) -> None:
    day = dt.date(2026, 2, 24)
    with psycopg.connect(db_url, autocommit=True) as conn:
        created = ensure_partitions(conn, day, 3)
        assert created == [partition_name(day + dt.timedelta(days=i)) for i in range(4)]
        assert ensure_partitions(conn, day, 3) == []
        assert set(created) <= existing_partitions(conn)
        assert "fixes_default" in existing_partitions(conn)


def test_rows_in_default_partition_move_into_a_new_day(db_url: str) -> None:
    day = dt.date(2025, 12, 23)
    noon = dt.datetime(2025, 12, 23, 12, tzinfo=dt.UTC)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO fixes (received_at, aircraft_id, lat, lon, protocol)"
            " VALUES (%s, 1, 50, 4, 'ogn'), (%s, 1, 50, 4, 'ogn')",
            (noon, noon + dt.timedelta(days=1)),
        )
        assert ensure_partitions(conn, day, 0) == [partition_name(day)]
        in_day = conn.execute(f"SELECT count(*) FROM {partition_name(day)}").fetchone()
        in_default = conn.execute("SELECT count(*) FROM fixes_default").fetchone()
        total = conn.execute("SELECT count(*) FROM fixes").fetchone()
    assert (in_day, in_default, total) == ((1,), (1,), (2,))


def test_retention_drops_whole_days_before_the_kept_ones_and_nothing_else(db_url: str) -> None:
    today = dt.date(2026, 3, 20)

    def noon(days_ago: int) -> dt.datetime:
        return dt.datetime.combine(today - dt.timedelta(days=days_ago), dt.time(12), dt.UTC)

    with psycopg.connect(db_url, autocommit=True) as conn:
        ensure_partitions(conn, today - dt.timedelta(days=10), 10)
        conn.execute(
            "INSERT INTO fixes (received_at, aircraft_id, lat, lon, protocol)"
            " VALUES (%s, 1, 50, 4, 'ogn'), (%s, 1, 50, 4, 'ogn'), (%s, 1, 50, 4, 'ogn')",
            (noon(9), noon(2), noon(0)),
        )
        # keeping 3 days: today and the two before it
        created, dropped = maintain_once(conn, today, days_ahead=1, retention_days=3)
        assert created == [partition_name(today + dt.timedelta(days=1))]
        assert dropped == [partition_name(today - dt.timedelta(days=d)) for d in range(10, 2, -1)]
        kept = {partition_name(today - dt.timedelta(days=d)) for d in range(3)}
        assert kept <= existing_partitions(conn)
        rows = [r[0] for r in conn.execute("SELECT received_at FROM fixes ORDER BY 1")]
        assert rows == [noon(2), noon(0)]
        # idempotent; and 0 keeps everything
        assert maintain_once(conn, today, days_ahead=1, retention_days=3) == ([], [])
        assert maintain_once(conn, today + dt.timedelta(days=30), days_ahead=0,
                             retention_days=0)[1] == []


def test_retention_of_one_day_never_creates_a_day_only_to_drop_it(db_url: str) -> None:
    today = dt.date(2026, 4, 2)
    with psycopg.connect(db_url, autocommit=True) as conn:
        created, dropped = maintain_once(conn, today, days_ahead=1, retention_days=1)
        assert created == [partition_name(today), partition_name(today + dt.timedelta(days=1))]
        assert dropped == []


def test_a_retention_drop_behind_a_long_reader_is_postponed_not_queued(db_url: str) -> None:
    # DROP needs an exclusive lock on `fixes`; waiting behind a pg_dump would queue every COPY
    # behind it. It gives up after DROP_LOCK_TIMEOUT and the next hourly run tries again.
    old = dt.date(2026, 1, 10)
    with psycopg.connect(db_url, autocommit=True) as conn, psycopg.connect(db_url) as reader:
        ensure_partitions(conn, old, 0)
        reader.execute("SELECT count(*) FROM fixes")  # holds ACCESS SHARE until it commits
        assert drop_partitions_before(conn, old + dt.timedelta(days=1)) == []
        assert partition_name(old) in existing_partitions(conn)
        reader.commit()
        assert drop_partitions_before(conn, old + dt.timedelta(days=1)) == [partition_name(old)]
        # a second process finding it gone skips it without an error
        assert drop_partitions_before(conn, old + dt.timedelta(days=1)) == []
