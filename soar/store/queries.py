"""The store's own reads, in one place: the open flights a process restores (with their last
fixes), stale flights timed out, and row counts. The web's reads are `soar.web.queries`; the
privacy query is `soar.tracking.privacy`'s.

Sync functions taking a psycopg connection; parameterised SQL only. From trio, call them through
`trio.to_thread.run_sync` with a connection from the pool:

    def load(shards):
        with pool.connection() as conn:
            return open_flights(conn, shards=shards, shard_of=router.shard_of)
    restored = await trio.to_thread.run_sync(load, [0, 1])

Access paths the indexes are built for (see migrations/0001_initial.sql):
- aircraft in a bounding box: `point(lon, lat) <@ box(point(west, south), point(east, north))`
  on `aircraft` (GiST), with `last_fix_at` for recency;
- an aircraft's fixes by their own time, and a flight's track: the index
  (aircraft_id, coalesce(time, received_at)) (`FIX_TIME`; rows from before migration 0003
  have no `time`), e.g. `aircraft_id = f.aircraft_id AND coalesce(time, received_at) BETWEEN
  f.first_fix_at AND f.last_fix_at` (plus `flight_id = f.id` to be exact); the primary key
  (aircraft_id, received_at) is the storage key, in receive time;
- flights by day: `flights.started_at` (takeoff, or first fix when first seen airborne);
  by airport: `departure_airport` / `arrival_airport` with `started_at`.

May import: soar.records, soar.store.tables, soar.timeconv
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from soar.records import (
    AddressType,
    Fix,
    FlightPhase,
    FlightRow,
    Protocol,
    aircraft_key_of_id,
)
from soar.store.tables import FLIGHT_COLUMNS
from soar.timeconv import ts, us_or_none
from soar.timeconv import us as us  # the web reads rows through it: exported from here too

Connection = psycopg.Connection[Any]

#: A fix's own time in SQL, the expression `fixes_by_time` indexes (see 0003_fix_time.sql).
FIX_TIME = "coalesce(time, received_at)"
_OPEN = "landing_at IS NULL AND timed_out_at IS NULL AND end_reason IS NULL"
_COUNTABLE = frozenset(
    {"aircraft", "fixes", "flights", "receivers", "receiver_statuses", "server_messages"}
)


# ---- restoring tracking state -------------------------------------------------------------


@dataclass(slots=True)
class OpenFlight:
    """An open flight and its aircraft's latest fixes (oldest first), to restore a shard.

    `positions` (own times in µs, latitudes, longitudes; oldest first), when asked for, reach
    further back than `fixes`: the duplicate rules for late fixes need no more than these,
    at 24 bytes a fix instead of a whole row.
    """

    flight: FlightRow
    fixes: list[Fix] = field(default_factory=list)
    positions: tuple[list[int], list[float], list[float]] | None = None


def flight_from_row(row: dict[str, Any]) -> FlightRow:
    return FlightRow(
        id=row["id"],
        aircraft_id=row["aircraft_id"],
        protocol=Protocol(row["protocol"]),
        first_fix_us=us(row["first_fix_at"]),
        last_fix_us=us(row["last_fix_at"]),
        takeoff_us=us_or_none(row["takeoff_at"]),
        landing_us=us_or_none(row["landing_at"]),
        timed_out_us=us_or_none(row["timed_out_at"]),
        timeout_phase=None if row["timeout_phase"] is None else FlightPhase(row["timeout_phase"]),
        callsign=row["callsign"],
        departure_airport=row["departure_airport"],
        arrival_airport=row["arrival_airport"],
        takeoff_runway=row["takeoff_runway"],
        landing_runway=row["landing_runway"],
        distance_m=row["distance_m"],
        min_lat=row["min_lat"],
        min_lon=row["min_lon"],
        max_lat=row["max_lat"],
        max_lon=row["max_lon"],
        min_altitude_ft=row["min_altitude_ft"],
        max_altitude_ft=row["max_altitude_ft"],
        max_agl_ft=row["max_agl_ft"],
        fix_count=row["fix_count"],
        spurious_reason=row["spurious_reason"],
        tow_aircraft_id=row["tow_aircraft_id"],
        release_us=us_or_none(row["release_at"]),
        release_altitude_ft=row["release_altitude_ft"],
        release_height_ft=row["release_height_ft"],
        end_reason=row["end_reason"],
        as_of_us=us(row["as_of"] or row["last_fix_at"]),
    )


def fix_from_row(row: dict[str, Any]) -> Fix:
    address_type, address = aircraft_key_of_id(row["aircraft_id"])
    return Fix(
        protocol=Protocol(row["protocol"]),
        address_type=AddressType(address_type),
        address=address,
        received_us=us(row["received_at"]),
        lat=row["lat"],
        lon=row["lon"],
        time_us=us(row["time"] or row["received_at"]),
        altitude_ft=row["altitude_ft"],
        ground_speed_kt=row["ground_speed_kt"],
        track_deg=row["track_deg"],
        climb_fpm=row["climb_fpm"],
        turn_rate=row["turn_rate"],
        callsign=row["callsign"],
        squawk=row["squawk"],
        on_ground=row["on_ground"],
        receiver=row["receiver"],
        signal_db=row["signal_db"],
        bit_errors=row["bit_errors"],
        freq_offset_khz=row["freq_offset_khz"],
        packet_time=row["packet_time"],
        source=row["source"],
        agl_ft=row["agl_ft"],
        is_active=row["is_active"],
        flight_id=row["flight_id"],
    )


def open_flights(
    conn: Connection,
    *,
    shards: Collection[int] | None = None,
    shard_of: Callable[[int], int] | None = None,
    last_fixes: int = 10,
    history: dt.timedelta = dt.timedelta(hours=2),
    last_positions: int = 0,
) -> list[OpenFlight]:
    """Open flights with their aircraft's last `last_fixes` fixes (within `history` of the
    flight's last fix), for the shards in `shards` (all when None); with `last_positions`,
    the times and positions of up to that many last fixes as well (`OpenFlight.positions`).

    `shard_of(aircraft_id) -> shard index` is the tracking router's own function, so the store
    never duplicates the shard hash. Everything at once: for thousands of flights read
    `open_flight_rows` and then `with_last_fixes` a chunk at a time.
    """
    return with_last_fixes(
        conn, open_flight_rows(conn, shards=shards, shard_of=shard_of),
        last_fixes=last_fixes, history=history, last_positions=last_positions,
    )


def open_flight_rows(
    conn: Connection,
    *,
    shards: Collection[int] | None = None,
    shard_of: Callable[[int], int] | None = None,
) -> list[FlightRow]:
    """The open flights of the shards in `shards` (all when None), by aircraft."""
    if shards is not None and shard_of is None:
        raise ValueError("selecting shards needs shard_of")
    columns = sql.SQL(", ").join(sql.Identifier(name) for name, _ in FLIGHT_COLUMNS)
    with conn.cursor(row_factory=dict_row) as cur:
        flights = [
            flight_from_row(row)
            for row in cur.execute(
                sql.SQL("SELECT {} FROM flights WHERE " + _OPEN + " ORDER BY aircraft_id").format(
                    columns
                )
            ).fetchall()
        ]
    if shards is not None and shard_of is not None:
        wanted = set(shards)
        flights = [f for f in flights if shard_of(f.aircraft_id) in wanted]
    return flights


def with_last_fixes(
    conn: Connection,
    flights: list[FlightRow],
    *,
    last_fixes: int,
    history: dt.timedelta = dt.timedelta(hours=2),
    last_positions: int = 0,
) -> list[OpenFlight]:
    """`flights` with their aircraft's last `last_fixes` fixes within `history` of each
    flight's last fix (and `last_positions` times and positions: see `open_flights`)."""
    if not flights:
        return []
    by_aircraft = {f.aircraft_id: OpenFlight(f) for f in flights}
    # One round trip per kind: the latest fixes of every aircraft (lateral, index-backed).
    lateral = (
        " FROM unnest(%s::bigint[], %s::timestamptz[]) AS f(aircraft_id, last_fix_at)"
        " CROSS JOIN LATERAL ("
        "   SELECT {columns} FROM fixes"
        "   WHERE fixes.aircraft_id = f.aircraft_id"
        f"     AND {FIX_TIME} <= f.last_fix_at"
        f"     AND {FIX_TIME} > f.last_fix_at - %s"
        f"   ORDER BY {FIX_TIME} DESC LIMIT %s) AS x"
    )
    keys = ([f.aircraft_id for f in flights], [ts(f.last_fix_us) for f in flights], history)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT x.*" + lateral.format(columns="*")
            + " ORDER BY x.aircraft_id, coalesce(x.time, x.received_at)",
            (*keys, last_fixes),
        )
        for row in cur:
            by_aircraft[row["aircraft_id"]].fixes.append(fix_from_row(row))
    if last_positions > 0:
        # Aggregated in the database: three lists per aircraft, not a row per fix.
        with conn.cursor() as cur:
            cur.execute(
                "SELECT f.aircraft_id, array_agg(x.t ORDER BY x.t),"
                " array_agg(x.lat ORDER BY x.t), array_agg(x.lon ORDER BY x.t)"
                + lateral.format(
                    columns=f"(extract(epoch FROM {FIX_TIME}) * 1000000)::bigint AS t, lat, lon"
                )
                + " GROUP BY f.aircraft_id",
                (*keys, last_positions),
            )
            for ident, times, lats, lons in cur:
                by_aircraft[ident].positions = (times, lats, lons)
    return list(by_aircraft.values())


# ---- maintenance --------------------------------------------------------------------------


def time_out_stale_flights(
    conn: Connection, now_us: int, older_than: dt.timedelta = dt.timedelta(hours=1)
) -> int:
    """Close open flights whose last fix is older than `older_than` at `now_us` as timed out.

    For start-up after downtime: flights left open by a process that stopped are timed out at
    `now_us` with phase unknown. Returns how many. Commits.
    """
    with conn.transaction():
        cur = conn.execute(
            "UPDATE flights SET timed_out_at = %s, timeout_phase = coalesce(timeout_phase, %s),"
            " end_reason = 'timed_out', updated_at = now()"
            " WHERE " + _OPEN + " AND last_fix_at < %s",
            (ts(now_us), FlightPhase.UNKNOWN.value, ts(now_us) - older_than),
        )
        return max(cur.rowcount, 0)


# ---- counts (tests, health) ---------------------------------------------------------------


def count_rows(conn: Connection, table: str) -> int:
    if table not in _COUNTABLE:
        raise ValueError(f"not a soar table: {table}")
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


def count_fix_keys(conn: Connection) -> tuple[int, int]:
    """(rows, distinct (aircraft_id, received_at)) in `fixes`: equal unless something doubled."""
    row = conn.execute(
        "SELECT count(*), count(DISTINCT (aircraft_id, received_at)) FROM fixes"
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def fix_keys(conn: Connection) -> set[tuple[int, int]]:
    """Every stored (aircraft_id, received_us): to compare against what was sent."""
    return {
        (aircraft, us(received))
        for aircraft, received in conn.execute("SELECT aircraft_id, received_at FROM fixes")
    }
