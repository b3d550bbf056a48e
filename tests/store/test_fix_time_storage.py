"""Two times per fix in PostgreSQL (migration 0003): the own time stored and read back, a
re-decided fix updated in place, the newest flight row kept, the aircraft's first fix."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from soar.records import AddressType, AircraftSeen, Fix, FlightRow, Protocol
from soar.store.migrate import migrate, migrations
from soar.store.queries import open_flights
from soar.store.tables import AircraftFamily, FixFamily, FlightFamily, ts
from tests.support import ogn_trace_fixes, write_rows

TRACE = "ogn/soar-flight-descended-out-of-range-then-took-off.txt"
S = 1_000_000



async def test_fixes_keep_both_times_and_a_revision_updates_the_row(
    db_url: str, testdata: Path, spool_dir: Path
) -> None:
    fixes = ogn_trace_fixes(testdata / TRACE)[:20]
    assert all(f.time_us != f.received_us for f in fixes)  # 0.04 to 2 s apart on this trace
    first, rest = fixes[:10], fixes[10:]
    fixes[4].is_active = False
    await write_rows(db_url, FixFamily(), first, spool_dir)
    flight = uuid.uuid4()

    def revision(fix: Fix) -> Fix:  # what the shard sends for a FixRevised
        out = copy.copy(fix)
        out.flight_id, out.is_active, out.revision = flight, True, True
        return out

    # a revision of a stored fix; a fix and its revision in one batch; a late copy of a stored
    # fix (a replay) that must not overwrite it
    stale = copy.copy(fixes[4])
    stale.is_active, stale.flight_id = None, uuid.uuid4()
    await write_rows(db_url, FixFamily(), [revision(fixes[5]), *rest, revision(fixes[15]), stale],
                 spool_dir)
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT received_at, time, flight_id, is_active FROM fixes ORDER BY time"
        ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [(ts(f.received_us), ts(f.time_us)) for f in fixes]
    assert rows[5][2:] == rows[15][2:] == (flight, True)
    assert [r[2] for r in rows].count(None) == 18
    assert rows[4][2:] == (None, False)  # as first written


async def test_a_re_decided_flight_replaces_its_row_even_with_an_earlier_last_fix(
    db_url: str, spool_dir: Path
) -> None:
    ident = uuid.uuid4()
    base = 1_711_727_000 * S
    first = FlightRow(ident, 1, Protocol.OGN, base, base + 300 * S, as_of_us=base + 300 * S)
    # a late fix merged before the landing: the flight ends earlier, known at the same moment
    merged = FlightRow(ident, 1, Protocol.OGN, base, base + 100 * S, landing_us=base + 90 * S,
                       end_reason="landed", as_of_us=base + 300 * S)
    # a spooled older state replayed after both: refused
    older = FlightRow(ident, 1, Protocol.OGN, base, base + 200 * S, as_of_us=base + 200 * S)
    for row in (first, merged, older):
        await write_rows(db_url, FlightFamily(), [row], spool_dir)
    with psycopg.connect(db_url) as conn:
        stored = conn.execute(
            "SELECT last_fix_at, landing_at, end_reason, as_of FROM flights"
        ).fetchall()
    assert stored == [(ts(base + 100 * S), ts(base + 90 * S), "landed", ts(base + 300 * S))]


async def test_aircraft_first_seen_is_its_first_fix_and_the_category_is_stored(
    db_url: str, spool_dir: Path
) -> None:
    base = 1_711_727_000 * S

    def seen(t: int, category: str | None) -> AircraftSeen:
        return AircraftSeen(0x01_4B_06_78, AddressType.ICAO, 0x4B0678, base + t * S, 47.0, 8.0,
                            protocol=Protocol.BEAST, category=category, first_seen_us=base + t * S)

    # one batch, as the writer coalesces it: the first fix, then sightings every 10 s
    await write_rows(db_url, AircraftFamily(), [seen(0, "A3"), seen(10, None), seen(20, None)],
                 spool_dir)
    await write_rows(db_url, AircraftFamily(), [seen(30, None)], spool_dir)
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT first_seen_at, last_fix_at, category FROM aircraft").fetchone()
    assert row == (ts(base), ts(base + 30 * S), "A3")


async def test_open_flights_restore_by_own_time(
    db_url: str, testdata: Path, spool_dir: Path
) -> None:
    fixes = ogn_trace_fixes(testdata / TRACE)[:30]
    row = FlightRow(uuid.uuid4(), fixes[0].aircraft_id, Protocol.OGN, fixes[0].time_us,
                    fixes[19].time_us)
    await write_rows(db_url, FixFamily(), fixes, spool_dir)
    await write_rows(db_url, FlightFamily(), [row], spool_dir)
    with psycopg.connect(db_url) as conn:
        (restored,) = open_flights(conn, last_fixes=4)
    assert [f.time_us for f in restored.fixes] == [f.time_us for f in fixes[16:20]]
    assert [f.received_us for f in restored.fixes] == [f.received_us for f in fixes[16:20]]


def test_migration_0003_on_a_populated_database(pg_server) -> None:  # type: ignore[no-untyped-def]
    # A database at 0002 with fixes and flights in it: 0003 adds the columns and the index,
    # and the old rows read back with their receive time standing in for their own time.
    admin = pg_server.url
    name = "soar_migrate_0003"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(admin, dbname=name)
    before = [m for m in migrations() if m.name < "0003"]
    received = ts(1_711_727_000 * S)
    with psycopg.connect(url) as conn:
        for m in before:
            conn.execute(m.sql.encode())
        conn.execute(
            "CREATE TABLE schema_migrations (name text PRIMARY KEY, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for m in before:
            conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (m.name, m.checksum))
        conn.execute(
            "INSERT INTO fixes (received_at, aircraft_id, lat, lon, protocol)"
            " VALUES (%s, 1, 47.8, 11.4, 'ogn')", (received,)
        )
        conn.execute(
            "INSERT INTO flights (id, aircraft_id, protocol, first_fix_at, last_fix_at)"
            " VALUES (%s, 1, 'ogn', %s, %s)", (uuid.uuid4(), received, received)
        )
    assert migrate(url) == [m.name for m in migrations() if m.name >= "0003"]
    with psycopg.connect(url) as conn:
        fix = conn.execute("SELECT time, coalesce(time, received_at) FROM fixes").fetchone()
        flight = conn.execute("SELECT as_of FROM flights").fetchone()
        indexes = [r[0] for r in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'fixes_default'"
        )]
    assert fix == (None, received)
    assert flight == (None,)
    # the index for own-time order reached the existing partition too
    assert any("COALESCE(\"time\", received_at)" in d for d in indexes), indexes
