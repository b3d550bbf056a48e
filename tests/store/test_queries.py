from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import psycopg

from soar.records import Fix, FlightRow, Protocol
from soar.store.queries import count_rows, open_flights, time_out_stale_flights
from soar.store.tables import FixFamily, FlightFamily
from tests.support import write_rows


async def test_open_flights_come_back_with_their_last_fixes(
    db_url: str, capture_fixes: list[Fix], spool_dir: Path
) -> None:
    fixes = capture_fixes
    by_aircraft: dict[int, list] = {}  # type: ignore[type-arg]
    for fix in fixes:
        by_aircraft.setdefault(fix.aircraft_id, []).append(fix)
    busy = sorted(by_aircraft, key=lambda a: -len(by_aircraft[a]))[:3]
    flights = [
        FlightRow(
            uuid.uuid4(),
            a,
            Protocol.SBS,
            by_aircraft[a][0].received_us,
            by_aircraft[a][-2].received_us,  # the newest fix is after the flight's last
        )
        for a in busy
    ]
    closed = dataclasses.replace(flights[2], landing_us=flights[2].last_fix_us, end_reason="landed")
    await write_rows(db_url, FixFamily(), fixes, spool_dir)
    await write_rows(db_url, FlightFamily(), [*flights, closed], spool_dir)

    with psycopg.connect(db_url) as conn:
        restored = open_flights(conn, last_fixes=4)
        only_first = open_flights(
            conn, shards=[0], shard_of=lambda a: 0 if a == busy[0] else 1, last_fixes=4
        )
    assert {o.flight.id for o in restored} == {flights[0].id, flights[1].id}
    for item in restored:
        expected = by_aircraft[item.flight.aircraft_id][-5:-1]
        assert [f.received_us for f in item.fixes] == [f.received_us for f in expected]
        assert [(f.lat, f.lon) for f in item.fixes] == [(f.lat, f.lon) for f in expected]
        assert item.flight.first_fix_us == by_aircraft[item.flight.aircraft_id][0].received_us
    assert [o.flight.id for o in only_first] == [flights[0].id]


async def test_stale_open_flights_time_out(db_url: str, spool_dir: Path) -> None:
    hour = 3_600_000_000
    now = 100 * hour
    stale = FlightRow(uuid.uuid4(), 1, Protocol.OGN, now - 3 * hour, now - 2 * hour)
    fresh = FlightRow(uuid.uuid4(), 2, Protocol.OGN, now - 3 * hour, now - hour // 2)
    await write_rows(db_url, FlightFamily(), [stale, fresh], spool_dir)
    with psycopg.connect(db_url) as conn:
        assert time_out_stale_flights(conn, now) == 1
        assert time_out_stale_flights(conn, now) == 0
        assert [o.flight.id for o in open_flights(conn)] == [fresh.id]
        assert count_rows(conn, "flights") == 2
        row = conn.execute(
            "SELECT end_reason, timeout_phase FROM flights WHERE id = %s", (stale.id,)
        ).fetchone()
    assert row == ("timed_out", "unknown")
