"""Retention by the data's clock (issue 18, item 3): a wall clock stepped ahead drops nothing,
a wall clock a little ahead or behind never drops a day the data still counts as recent."""

from __future__ import annotations

import datetime as dt

import psycopg
from structlog.testing import capture_logs

from soar.store.partitions import (
    RETENTION_SKIPPED,
    ensure_partitions,
    existing_partitions,
    maintain_once,
    newest_stored_at,
    partition_name,
)

DAY = dt.timedelta(days=1)
FIRST = dt.date(2026, 2, 20)


def _at(day: int, hour: int = 12) -> dt.datetime:
    return dt.datetime.combine(FIRST + day * DAY, dt.time(hour), dt.UTC)


def _skipped() -> float:
    return RETENTION_SKIPPED.labels(reason="clock_ahead")._value.get()


def _load(conn: psycopg.Connection, days: int = 5) -> None:  # type: ignore[type-arg]
    """A fix at noon of each of `days` days, in its partition, and the aircraft's row."""
    ensure_partitions(conn, FIRST, days - 1)
    for day in range(days):
        conn.execute(
            "INSERT INTO fixes (received_at, aircraft_id, lat, lon, protocol)"
            " VALUES (%s, 16777217, 50, 4, 'sbs')", (_at(day),))
    conn.execute(
        "INSERT INTO aircraft (id, address_type, address, last_fix_at)"
        " VALUES (16777217, 'icao', 1, %s)", (_at(days - 1),))


def _fixes(conn: psycopg.Connection) -> int:  # type: ignore[type-arg]
    row = conn.execute("SELECT count(*) FROM fixes").fetchone()
    assert row is not None
    return int(row[0])


def test_a_wall_clock_years_ahead_drops_nothing_and_says_so(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _load(conn)
        ahead = _at(4) + dt.timedelta(days=3653)
        before = _skipped()
        with capture_logs() as logs:
            created, dropped = maintain_once(conn, ahead, days_ahead=1, retention_days=90)
        assert dropped == []
        assert _fixes(conn) == 5
        assert {partition_name(FIRST + d * DAY) for d in range(5)} <= existing_partitions(conn)
        # partitions for the clock's own days still exist: live fixes are stamped with it
        assert partition_name(ahead.date()) in created
        assert _skipped() == before + 1
        (warning,) = [e for e in logs if e["event"] == "retention.clock_ahead"]
        assert warning["log_level"] == "warning"
        assert warning["wall_clock"] == ahead.isoformat()
        assert dt.datetime.fromisoformat(warning["newest_stored"]) == _at(4)


def test_a_day_of_slack_then_the_data_clock_decides(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _load(conn)
        before = _skipped()
        # 20 h after the newest fix: trusted; but the days kept count from the newest fix
        # (day 4), not from the wall clock (day 5): keeping 2 days keeps days 3 and 4
        _created, dropped = maintain_once(conn, _at(5, 8), days_ahead=0, retention_days=2)
        assert dropped == [partition_name(FIRST + d * DAY) for d in range(3)]
        assert _fixes(conn) == 2
        assert _skipped() == before


def test_a_wall_clock_stepped_back_keeps_more_never_less(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _load(conn)
        _created, dropped = maintain_once(conn, _at(2), days_ahead=0, retention_days=2)
        assert dropped == [partition_name(FIRST)]  # day 0; days 1..4 stay
        assert _fixes(conn) == 4


def test_receivers_keep_the_data_clock_of_a_quiet_site(db_url: str) -> None:
    # a club site sees no aircraft for days in winter; its receivers report all the time
    with psycopg.connect(db_url, autocommit=True) as conn:
        _load(conn)
        quiet = _at(4) + dt.timedelta(days=6)
        conn.execute("INSERT INTO receivers (name, first_seen_at, latest_packet_at)"
                     " VALUES ('Koenigsdf', %s, %s)", (_at(0), quiet))
        assert newest_stored_at(conn) == quiet
        before = _skipped()
        # six days without a fix: not a clock step; keeping 7 days keeps days 4..10
        _created, dropped = maintain_once(conn, quiet, days_ahead=0, retention_days=7)
        assert dropped == [partition_name(FIRST + d * DAY) for d in range(4)]
        assert _fixes(conn) == 1
        assert _skipped() == before


def test_fixes_without_aircraft_rows_still_give_the_data_clock(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _load(conn)
        conn.execute("DELETE FROM aircraft")
        assert newest_stored_at(conn) == _at(4)
        conn.execute(  # a later day with no partition of its own: in the default partition
            "INSERT INTO fixes (received_at, aircraft_id, lat, lon, protocol)"
            " VALUES (%s, 16777217, 50, 4, 'sbs')", (_at(9),))
        assert newest_stored_at(conn) == _at(9)
        assert maintain_once(conn, _at(9) + dt.timedelta(days=3653), days_ahead=0,
                             retention_days=1)[1] == []
